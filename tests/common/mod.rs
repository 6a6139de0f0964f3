//! Helpers shared by the integration tests (`mod common;` in each test file).
//!
//! Paths: the repository, the shared test audio (`../shared/audio/`), the
//! model directories fetched by `scripts/setup.sh`. Scoring: the text
//! normaliser and word error rate, identical to `benches/compare.py` so test
//! thresholds and benchmark tables measure the same thing. Audio: a plain
//! 16-bit PCM WAV writer for synthetic inputs (silence, tones, cut clips).
//!
//! Each test file uses only part of this module.
#![allow(dead_code)]

pub mod daemon;
pub mod numeric;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The repository root (the crate's manifest directory).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `scribed` binary cargo built for these integration tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_scribed"))
}

/// The shared test-audio folder, `../shared/audio/` beside the repository.
pub fn shared_audio_dir() -> PathBuf {
    repo().join("..").join("shared").join("audio")
}

/// A file in the shared test-audio folder, e.g. `shared_audio("jfk.wav")`.
pub fn shared_audio(name: &str) -> PathBuf {
    shared_audio_dir().join(name)
}

/// The models folder: `$MODELS_DIR` if set (as for `scripts/setup.sh`), else
/// `<repo>/models`.
pub fn models_root() -> PathBuf {
    match std::env::var_os("MODELS_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo().join("models"),
    }
}

/// A model directory such as `model_dir("tiny.en")` or `model_dir("base")`,
/// or `None` (after printing one "skipping: …" line) when its `model.bin` is
/// absent, so a test can `let Some(m) = model_dir("base") else { return };`.
pub fn model_dir(name: &str) -> Option<PathBuf> {
    let dir = models_root().join(name);
    if dir.join("model.bin").is_file() {
        Some(dir)
    } else {
        println!("skipping: model {} not found (run scripts/setup.sh --with-base)", dir.display());
        None
    }
}

/// One row of `../shared/audio/manifest.tsv`.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestEntry {
    /// File name inside the shared audio folder (join with `shared_audio`).
    pub file: String,
    /// Duration in seconds.
    pub seconds: f64,
    /// Reference transcript; `None` where the manifest says `[no reference]`.
    pub reference: Option<String>,
}

/// Parses `manifest.tsv` text: tab-separated, a header row naming at least
/// `file`, `seconds` and `reference_text` (any order, extra columns ignored).
pub fn parse_manifest(text: &str) -> Vec<ManifestEntry> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().expect("manifest is empty").split('\t').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .unwrap_or_else(|| panic!("manifest header has no '{name}' column: {header:?}"))
    };
    let (c_file, c_secs, c_ref) = (col("file"), col("seconds"), col("reference_text"));
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let field = |i: usize| fields.get(i).map(|f| f.trim()).unwrap_or("");
            let reference = field(c_ref);
            ManifestEntry {
                file: field(c_file).to_string(),
                seconds: field(c_secs).parse().unwrap_or_else(|_| panic!("bad seconds in manifest line: {line}")),
                reference: if reference.is_empty() || reference == "[no reference]" {
                    None
                } else {
                    Some(reference.to_string())
                },
            }
        })
        .collect()
}

/// Every entry of `../shared/audio/manifest.tsv`, in file order.
pub fn manifest() -> Vec<ManifestEntry> {
    let path = shared_audio("manifest.tsv");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_manifest(&text)
}

/// Words for scoring: lowercase; hyphens, dashes and slashes become spaces;
/// an apostrophe is kept only between two letters/digits ("don't",
/// "there's"), any other apostrophe and every other punctuation mark is
/// dropped; then split on whitespace. (`’` counts as an apostrophe.)
/// `benches/compare.py` implements exactly the same rules.
pub fn normalize(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().map(|c| if c == '\u{2019}' || c == '\u{2018}' { '\'' } else { c }).collect();
    let mut out = String::with_capacity(text.len());
    for (i, &c) in chars.iter().enumerate() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if c.is_whitespace() || matches!(c, '-' | '\u{2010}'..='\u{2015}' | '/') {
            out.push(' ');
        } else if c == '\'' {
            let before = i > 0 && chars[i - 1].is_alphanumeric();
            let after = chars.get(i + 1).is_some_and(|n| n.is_alphanumeric());
            if before && after {
                out.push('\'');
            }
        }
        // any other character (punctuation, symbols) is dropped
    }
    out.split_whitespace().map(str::to_string).collect()
}

/// Word-level edit distance between `reference` and `hypothesis` after
/// [`normalize`]: `(edits, reference word count)`. Sum both over files for a
/// corpus-level WER.
pub fn word_errors(reference: &str, hypothesis: &str) -> (usize, usize) {
    let r = normalize(reference);
    let h = normalize(hypothesis);
    // One row of the Levenshtein table at a time.
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    let mut cur = vec![0; h.len() + 1];
    for (i, rw) in r.iter().enumerate() {
        cur[0] = i + 1;
        for (j, hw) in h.iter().enumerate() {
            let sub = prev[j] + usize::from(rw != hw);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    (prev[h.len()], r.len())
}

/// Word error rate: edits / reference words. 0 when both are empty; with an
/// empty reference, the number of inserted words (as if divided by 1).
pub fn wer(reference: &str, hypothesis: &str) -> f64 {
    let (edits, words) = word_errors(reference, hypothesis);
    edits as f64 / words.max(1) as f64
}

/// Writes mono 16-bit PCM WAV: samples in [-1, 1] (clamped), `rate` Hz.
pub fn write_wav(path: impl AsRef<Path>, samples: &[f32], rate: u32) -> io::Result<()> {
    let data_len = u32::try_from(samples.len() * 2)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "WAV data over 4 GiB"))?;
    let mut buf = Vec::with_capacity(44 + samples.len() * 2);
    buf.extend_from_slice(b"RIFF");
    buf.extend_from_slice(&(36 + data_len).to_le_bytes());
    buf.extend_from_slice(b"WAVE");
    buf.extend_from_slice(b"fmt ");
    buf.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    buf.extend_from_slice(&1u16.to_le_bytes()); // PCM
    buf.extend_from_slice(&1u16.to_le_bytes()); // mono
    buf.extend_from_slice(&rate.to_le_bytes());
    buf.extend_from_slice(&(rate * 2).to_le_bytes()); // byte rate
    buf.extend_from_slice(&2u16.to_le_bytes()); // block align
    buf.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    buf.extend_from_slice(b"data");
    buf.extend_from_slice(&data_len.to_le_bytes());
    for &s in samples {
        let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
        buf.extend_from_slice(&v.to_le_bytes());
    }
    let mut f = fs::File::create(path)?;
    f.write_all(&buf)?;
    f.flush()
}

/// The metric families `systemd/grafana-dashboard.json`'s panels ask for
/// (a histogram's `_bucket`/`_sum`/`_count` named by its family).
pub fn dashboard_metrics() -> std::collections::BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("systemd/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut asked = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for name in
                expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("scribed_"))
            {
                let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
                asked.insert(family.to_string());
            }
        }
    }
    asked
}
