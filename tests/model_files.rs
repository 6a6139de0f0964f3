//! Loading the files of real model directories (`models/tiny.en`,
//! `models/base`): tokenizer and config values against
//! `shared/docs/ct2-whisper-format.md`, and robustness of every loader
//! against damaged copies (each must fail with a message naming the file and
//! the problem, never panic).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use scribed::model::config::ModelConfig;
use scribed::model::ct2::Ct2File;
use scribed::model::tokenizer::Tokenizer;

const TINY_EN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tiny.en");
const BASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/base");

/// The model directory, or `None` (after saying so) when it was not set up:
/// the models are downloaded, not committed.
fn model(dir: &'static str) -> Option<&'static Path> {
    let path = Path::new(dir);
    if path.join("model.bin").is_file() && path.join("vocabulary.txt").is_file() {
        Some(path)
    } else {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(dir);
        println!("skipping: models/{name} not present (run scripts/setup.sh)");
        None
    }
}

/// The tokenizer of a real model directory, loaded once per test binary.
fn tokenizer(dir: &Path) -> &'static Tokenizer {
    static TINY_EN_TOK: OnceLock<Tokenizer> = OnceLock::new();
    static BASE_TOK: OnceLock<Tokenizer> = OnceLock::new();
    let cell = if dir == Path::new(BASE) { &BASE_TOK } else { &TINY_EN_TOK };
    assert!(dir == Path::new(BASE) || dir == Path::new(TINY_EN), "only for the real models");
    cell.get_or_init(|| Tokenizer::load(dir).unwrap_or_else(|e| panic!("{e}")))
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("scribed-model-files-{}-{n}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn assert_mentions(message: &str, needles: &[&str]) {
    assert!(!message.contains('\n'), "one line expected: {message}");
    for needle in needles {
        assert!(message.contains(needle), "expected {needle:?} in: {message}");
    }
}

// ---------------------------------------------------------------- tokenizer

#[test]
fn tokenizer_vectors_tiny_en() {
    let Some(dir) = model(TINY_EN) else { return };
    let t = tokenizer(dir);
    let ids = t.encode(" And so my fellow Americans").unwrap();
    assert_eq!(ids, [843, 523, 616, 5891, 3399]);
    assert_eq!(t.decode(&ids), " And so my fellow Americans");
}

#[test]
fn tokenizer_vectors_base() {
    let Some(dir) = model(BASE) else { return };
    let t = tokenizer(dir);
    let ids = t.encode(" And so my fellow Americans").unwrap();
    assert_eq!(ids, [400, 370, 452, 7177, 6280]);
    assert_eq!(t.decode(&ids), " And so my fellow Americans");
}

#[test]
fn special_tokens_tiny_en() {
    let Some(dir) = model(TINY_EN) else { return };
    let t = tokenizer(dir);
    let s = *t.specials();
    assert_eq!(t.vocab_size(), 51864);
    assert_eq!(
        (s.eot, s.sot, s.translate, s.transcribe, s.sot_lm, s.sot_prev),
        (50256, 50257, 50357, 50358, 50359, 50360)
    );
    assert_eq!((s.no_speech, s.no_timestamps, s.timestamp_begin, s.timestamp_end), (50361, 50362, 50363, 51863));
    assert!(!s.multilingual && !t.is_multilingual());
    assert_eq!(t.token_str(s.no_speech), Some("<|nocaptions|>"));
    assert_eq!(t.token_str(s.timestamp_begin), Some("<|0.00|>"));
    assert_eq!(t.token_str(220), Some("Ġ"));
    assert_eq!(t.token_bytes(220), b" ");
}

#[test]
fn special_tokens_base() {
    let Some(dir) = model(BASE) else { return };
    let t = tokenizer(dir);
    let s = *t.specials();
    assert_eq!(t.vocab_size(), 51865);
    assert_eq!(t.token_str(50256), Some(""), "the empty token is a real line");
    assert_eq!(
        (s.eot, s.sot, s.translate, s.transcribe, s.sot_lm, s.sot_prev),
        (50257, 50258, 50358, 50359, 50360, 50361)
    );
    assert_eq!((s.no_speech, s.no_timestamps, s.timestamp_begin, s.timestamp_end), (50362, 50363, 50364, 51864));
    assert!(s.multilingual && t.is_multilingual());
    assert_eq!(t.token_str(s.timestamp_end), Some("<|30.00|>"));
}

#[test]
fn decode_round_trips_non_ascii() {
    for dir in [TINY_EN, BASE] {
        let Some(dir) = model(dir) else { continue };
        let t = tokenizer(dir);
        for text in ["Grüße, 日本語", " naïve café — “quoted” 🎉", "a\nb\tc  d"] {
            let ids = t.encode(text).unwrap();
            assert_eq!(t.decode(&ids), text, "{}", dir.display());
            assert_eq!(t.decode_bytes(&ids), text.as_bytes());
            let joined: Vec<u8> = ids.iter().flat_map(|&id| t.token_bytes(id).to_vec()).collect();
            assert_eq!(joined, text.as_bytes());
        }
    }
}

#[test]
fn decode_skips_control_and_timestamp_tokens() {
    let Some(dir) = model(BASE) else { return };
    let t = tokenizer(dir);
    let s = *t.specials();
    let en = t.language_token("en").unwrap();
    let mut ids = vec![s.sot_prev, s.sot, en, s.transcribe, s.timestamp_begin];
    ids.extend(t.encode(" Grüße").unwrap());
    ids.extend([s.timestamp_begin + 50, s.timestamp_end, s.eot, 50256, u32::MAX]);
    assert_eq!(t.decode(&ids), " Grüße");
}

#[test]
fn characters_split_across_tokens_decode_as_a_whole() {
    let Some(dir) = model(TINY_EN) else { return };
    let t = tokenizer(dir);
    let ids = t.encode("日本語").unwrap();
    assert!(ids.len() > 1);
    // Some token ends mid-character: decoded alone it is not valid UTF-8.
    assert!(ids.iter().any(|&id| std::str::from_utf8(t.token_bytes(id)).is_err()));
    assert_eq!(t.decode(&ids), "日本語");
}

#[test]
fn special_token_text_in_a_prompt_stays_text() {
    for dir in [TINY_EN, BASE] {
        let Some(dir) = model(dir) else { continue };
        let t = tokenizer(dir);
        let ids = t.encode(" <|endoftext|><|en|>").unwrap();
        assert!(ids.iter().all(|&id| id < t.specials().eot), "{ids:?}");
        assert_eq!(t.decode(&ids), " <|endoftext|><|en|>");
    }
}

#[test]
fn languages_base() {
    let Some(dir) = model(BASE) else { return };
    let t = tokenizer(dir);
    for name in ["en", "English", "ENGLISH", " english "] {
        assert_eq!(t.language_token(name), Some(50259), "{name}");
    }
    assert_eq!(t.language_token("German"), Some(50261));
    assert_eq!(t.language_token("Hebrew"), Some(50279));
    assert_eq!(t.token_str(50279), Some("<|he|>"));
    assert_eq!(t.language_token("castilian"), t.language_token("es"));
    assert_eq!(t.language_token("yue"), None, "base predates Cantonese");
    assert_eq!(t.language_token("klingon"), None);
    assert_eq!(t.language_code(50259), Some("en"));
    assert_eq!(t.language_code(t.specials().transcribe), None);
    let langs = t.language_tokens();
    assert_eq!(langs.len(), 99);
    assert_eq!(langs.first(), Some(&(50259, "en")));
    assert_eq!(langs.last(), Some(&(50357, "su")));
    // Here the config's candidates agree with the vocabulary.
    let config = ModelConfig::load(dir).unwrap();
    assert_eq!(config.lang_ids, langs.iter().map(|&(id, _)| id).collect::<Vec<_>>());
}

#[test]
fn languages_tiny_en() {
    let Some(dir) = model(TINY_EN) else { return };
    let t = tokenizer(dir);
    assert_eq!(t.language_token("en"), Some(50258));
    assert_eq!(t.language_token("english"), Some(50258));
    assert_eq!(t.token_str(50258), Some("<|en|>"));
    let langs = t.language_tokens();
    assert_eq!(langs.len(), 99);
    assert_eq!(langs.first(), Some(&(50258, "en")));
    assert_eq!(langs.last(), Some(&(50356, "su")));
    // This vocabulary spells Hebrew with the retired code: `<|iw|>`.
    assert_eq!(t.token_str(50278), Some("<|iw|>"));
    assert_eq!(t.language_token("he"), Some(50278));
    assert_eq!(t.language_token("iw"), Some(50278));
    assert_eq!(t.language_code(50278), Some("he"));
    // The doc's quirk: config.json lists the multilingual ids, without <|en|>.
    let config = ModelConfig::load(dir).unwrap();
    assert!(!config.lang_ids.contains(&50258));
    assert_eq!(config.lang_ids.first(), Some(&50259));
}

// ------------------------------------------------------------------- config

#[test]
fn config_tiny_en() {
    let Some(dir) = model(TINY_EN) else { return };
    let mut c = ModelConfig::load(dir).unwrap();
    assert_eq!(c.alignment_heads, [(1, 0), (2, 0), (2, 5), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)]);
    assert_eq!(c.suppress_ids_begin, [220, 50256]);
    assert_eq!(c.suppress_ids.len(), 90);
    assert_eq!(c.lang_ids, (50259..=50356).collect::<Vec<_>>());
    // Nothing to fill in, and every id is in range.
    let before = c.clone();
    c.resolve(tokenizer(dir)).unwrap();
    assert_eq!(c, before);
}

#[test]
fn config_base() {
    let Some(dir) = model(BASE) else { return };
    let mut c = ModelConfig::load(dir).unwrap();
    assert_eq!(c.alignment_heads, [(3, 1), (4, 2), (4, 3), (4, 7), (5, 1), (5, 2), (5, 4), (5, 6)]);
    assert_eq!(c.suppress_ids_begin, [220, 50257]);
    assert_eq!(c.suppress_ids.len(), 88);
    let t = tokenizer(dir);
    let s = *t.specials();
    for id in [s.sot, s.translate, s.transcribe, s.sot_lm, s.sot_prev, s.no_speech] {
        assert!(c.suppress_ids.contains(&id), "{id}");
    }
    let before = c.clone();
    c.resolve(t).unwrap();
    assert_eq!(c, before);
}

#[test]
fn config_defaults_come_from_the_vocabulary() {
    let Some(dir) = model(BASE) else { return };
    let t = tokenizer(dir);
    let tmp = TempDir::new("config-defaults");
    tmp.write("config.json", b"{}");
    let mut c = ModelConfig::load(&tmp.0).unwrap();
    c.resolve(t).unwrap();
    assert_eq!(c.suppress_ids_begin, [220, 50257]);
    assert_eq!(c.lang_ids.len(), 99);
    assert!(c.alignment_heads.is_empty());
    assert!(c.suppress_ids.contains(&t.specials().sot));
}

#[test]
fn config_ids_beyond_the_vocabulary_are_rejected() {
    let Some(dir) = model(TINY_EN) else { return };
    let tmp = TempDir::new("config-range");
    tmp.write("config.json", br#"{"suppress_ids": [1, 51864]}"#);
    let mut c = ModelConfig::load(&tmp.0).unwrap();
    let e = c.resolve(tokenizer(dir)).unwrap_err().to_string();
    assert_mentions(&e, &["config.json", "suppress_ids", "51864"]);
}

// ----------------------------------------------------- text file robustness

#[test]
fn missing_files_are_named() {
    let tmp = TempDir::new("empty");
    let e = Tokenizer::load(&tmp.0).unwrap_err().to_string();
    assert_mentions(&e, &["vocabulary.txt", "not found"]);
    let e = ModelConfig::load(&tmp.0).unwrap_err().to_string();
    assert_mentions(&e, &["config.json", "not found"]);
}

#[test]
fn config_that_is_not_json() {
    let tmp = TempDir::new("bad-config");
    for (text, needle) in
        [(&b"alignment_heads = 1"[..], "malformed"), (b"{\"lang_ids\": [1,", "malformed"), (b"", "EOF")]
    {
        tmp.write("config.json", text);
        let e = ModelConfig::load(&tmp.0).unwrap_err().to_string();
        assert_mentions(&e, &["config.json", needle]);
    }
}

#[test]
fn vocabulary_with_too_few_lines() {
    let tmp = TempDir::new("short-vocab");
    tmp.write("vocabulary.txt", b"a\nb\n<|endoftext|>\n");
    let e = Tokenizer::load(&tmp.0).unwrap_err().to_string();
    assert_mentions(&e, &["vocabulary.txt", "3 tokens", "not a Whisper vocabulary"]);
}

#[test]
fn vocabulary_with_crlf_or_cut_short() {
    let Some(dir) = model(TINY_EN) else { return };
    let vocab = fs::read(dir.join("vocabulary.txt")).unwrap();
    let tmp = TempDir::new("crlf-vocab");

    let crlf = String::from_utf8(vocab.clone()).unwrap().replace('\n', "\r\n");
    tmp.write("vocabulary.txt", crlf.as_bytes());
    let e = Tokenizer::load(&tmp.0).unwrap_err().to_string();
    assert_mentions(&e, &["vocabulary.txt", "CRLF", "line 1"]);

    // Long enough to look plausible, but the timestamps are gone.
    let lines = vocab.split(|&b| b == b'\n').take(51_500).collect::<Vec<_>>().join(&b'\n');
    tmp.write("vocabulary.txt", &lines);
    let e = Tokenizer::load(&tmp.0).unwrap_err().to_string();
    assert_mentions(&e, &["vocabulary.txt", "timestamp"]);
}

#[test]
fn tokenizer_json_is_optional_for_decoding_only() {
    let Some(dir) = model(TINY_EN) else { return };
    let tmp = TempDir::new("no-tokenizer-json");
    tmp.write("vocabulary.txt", &fs::read(dir.join("vocabulary.txt")).unwrap());
    let t = Tokenizer::load(&tmp.0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.decode(&[843, 523, 616, 5891, 3399]), " And so my fellow Americans");
    let e = t.encode("hello").unwrap_err().to_string();
    assert_mentions(&e, &["tokenizer.json", "prompt"]);
}

#[test]
fn tokenizer_json_that_is_broken_or_from_another_model() {
    let (Some(tiny), Some(base)) = (model(TINY_EN), model(BASE)) else { return };
    let tmp = TempDir::new("mixed-tokenizer");
    tmp.write("vocabulary.txt", &fs::read(tiny.join("vocabulary.txt")).unwrap());

    tmp.write("tokenizer.json", &fs::read(base.join("tokenizer.json")).unwrap());
    let e = Tokenizer::load(&tmp.0).unwrap_err().to_string();
    assert_mentions(&e, &["tokenizer.json", "different models"]);

    tmp.write("tokenizer.json", b"{\"model\": 42}");
    let e = Tokenizer::load(&tmp.0).unwrap_err().to_string();
    assert_mentions(&e, &["tokenizer.json", "cannot load the tokenizer"]);
}

// ---------------------------------------------------------------- model.bin

/// Where things are in a `model.bin`, found by walking the format (doc §2),
/// so that corruptions land exactly where each test means them to.
struct Layout {
    /// Start of each record's name bytes, its payload, and payload size.
    records: Vec<(String, usize, usize, usize)>,
    alias_start: usize,
}

fn layout(b: &[u8]) -> Layout {
    let u16_at = |p: usize| u16::from_le_bytes([b[p], b[p + 1]]) as usize;
    let u32_at = |p: usize| u32::from_le_bytes([b[p], b[p + 1], b[p + 2], b[p + 3]]) as usize;
    let mut p = 4;
    p += 2 + u16_at(p) + 4; // spec name, revision
    let count = u32_at(p);
    p += 4;
    let mut records = Vec::new();
    for _ in 0..count {
        let len = u16_at(p);
        let name = String::from_utf8(b[p + 2..p + 1 + len].to_vec()).unwrap();
        let name_at = p + 2;
        p += 2 + len;
        let rank = b[p] as usize;
        p += 1 + 4 * rank + 1; // rank, dims, dtype
        let bytes = u32_at(p);
        p += 4;
        records.push((name, name_at, p, bytes));
        p += bytes;
    }
    Layout { records, alias_start: p }
}

/// The bytes of tiny.en's model.bin, read once per test binary.
fn tiny_bin() -> Option<&'static [u8]> {
    static BIN: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    BIN.get_or_init(|| model(TINY_EN).map(|dir| fs::read(dir.join("model.bin")).unwrap())).as_deref()
}

/// Writes `bytes` as a model.bin copy and returns the error opening it.
fn open_err(bytes: &[u8], tag: &str) -> String {
    let tmp = TempDir::new(tag);
    let path = tmp.write("model.bin", bytes);
    match Ct2File::open(&path) {
        Ok(_) => panic!("{tag}: a damaged model.bin opened"),
        Err(e) => {
            let e = e.to_string();
            assert_mentions(&e, &[&path.display().to_string()]);
            e
        }
    }
}

#[test]
fn real_model_bin_opens() {
    let Some(dir) = model(TINY_EN) else { return };
    let f = Ct2File::open(dir.join("model.bin")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((f.spec_name.as_str(), f.spec_revision), ("WhisperSpec", 3));
    assert_eq!(f.names().count(), 148 + 1, "148 variables and the alias");
    assert_eq!(f.scalar("encoder/num_heads").unwrap(), 6);
    assert_eq!(f.scalar("decoder/num_heads").unwrap(), 6);
    assert_eq!(f.scalar("decoder/activation").unwrap(), 3);
    assert_eq!(f.scalar("decoder/alignment_layer").unwrap(), -1);
    let emb = f.get_shaped("decoder/embeddings/weight", &[51864, 384]).unwrap();
    let proj = f.get("decoder/projection/weight").unwrap();
    assert_eq!(proj.shape, emb.shape);
    assert_eq!(proj.to_f32()[..64], emb.to_f32()[..64]);
    let e = f.get("decoder/layer_9/ffn/linear_0/weight").unwrap_err().to_string();
    assert_mentions(&e, &["model.bin", "missing", "layer_9"]);
}

#[test]
fn real_base_model_bin_opens() {
    let Some(dir) = model(BASE) else { return };
    let f = Ct2File::open(dir.join("model.bin")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(f.names().count(), 212 + 1);
    assert_eq!(f.scalar("encoder/num_heads").unwrap(), 8);
    assert_eq!(f.get("decoder/projection/weight").unwrap().shape, [51865, 512]);
}

#[test]
fn truncated_model_bin() {
    let Some(bin) = tiny_bin() else { return };
    let l = layout(bin);
    assert_eq!(l.records.len(), 148);
    assert_eq!(l.alias_start + 60, bin.len(), "one alias: count + two strings");
    let (emb, _, emb_payload, _) = &l.records[4];
    assert_eq!(emb, "decoder/embeddings/weight");
    let (_, name_at, _, _) = &l.records[1];
    for (cut, needles) in [
        (0, &["truncated", "header"][..]),
        (3, &["truncated", "header"]),
        (10, &["truncated", "spec name"]),
        (24, &["truncated", "header"]),
        (name_at + 4, &["truncated", "variable name"]),
        (emb_payload + 1001, &["truncated", "decoder/embeddings/weight"]),
        (l.alias_start, &["truncated", "alias section"]),
        (bin.len() - 1, &["truncated", "alias section"]),
    ] {
        let e = open_err(&bin[..cut], &format!("cut-{cut}"));
        assert_mentions(&e, needles);
    }
}

#[test]
fn corrupted_model_bin() {
    let Some(bin) = tiny_bin() else { return };
    let l = layout(bin);
    let (name, _, payload, size) =
        l.records.iter().find(|r| r.0 == "decoder/layer_0/attention/layer_norm/gamma").unwrap();

    for (bits, what) in [(0x7e00u16, "nan"), (0x7c00, "inf")] {
        // The check fires as the tensor is read, before the cut is reached.
        let mut bad = bin[..payload + size].to_vec();
        bad[*payload..payload + 2].copy_from_slice(&bits.to_le_bytes());
        let e = open_err(&bad, what);
        assert_mentions(&e, &[name, "NaN"]);
    }

    for (at, flip) in [(0, 0x01), (0, 0xff), (3, 0x80)] {
        let mut bad = bin[..4096].to_vec();
        bad[at] ^= flip;
        let e = open_err(&bad, "version");
        assert_mentions(&e, &["binary version"]);
    }

    // An unknown dtype code and a payload size that disagrees with the shape.
    let (name, _, payload, _) = &l.records[4];
    let mut bad = bin[..payload + 16].to_vec();
    bad[payload - 5] = 9;
    assert_mentions(&open_err(&bad, "dtype"), &[name, "data type"]);
    let mut bad = bin[..payload + 16].to_vec();
    bad[payload - 4] ^= 0x02;
    assert_mentions(&open_err(&bad, "num-bytes"), &[name, "payload bytes"]);

    let mut bad = bin.to_vec();
    bad.extend_from_slice(b"junk");
    assert_mentions(&open_err(&bad, "trailing"), &["4 unexpected bytes"]);
}

/// Deterministic noise (xorshift), so a failure can be replayed.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

#[test]
fn garbage_and_empty_model_bin() {
    assert_mentions(&open_err(&[], "empty"), &["truncated", "header"]);
    for seed in 1..=8 {
        open_err(&noise(4096, seed), "noise");
    }
    // A valid header followed by noise exercises the record parser instead.
    let Some(bin) = tiny_bin() else { return };
    for seed in 1..=32 {
        let mut bad = bin[..26].to_vec();
        bad.extend(noise(4096, seed));
        open_err(&bad, "header-noise");
    }
    let e = open_err(&std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap(), "text");
    assert_mentions(&e, &["not a CTranslate2 model"]);
}

/// A shape whose element count overflows u64 must be an error, not an
/// arithmetic-overflow panic.
#[test]
fn model_bin_with_overflowing_shape() {
    let mut bad = Vec::new();
    bad.extend(6u32.to_le_bytes());
    bad.extend(12u16.to_le_bytes());
    bad.extend(b"WhisperSpec\0");
    bad.extend(3u32.to_le_bytes());
    bad.extend(1u32.to_le_bytes()); // one variable
    bad.extend(2u16.to_le_bytes());
    bad.extend(b"x\0");
    bad.push(3); // rank
    for _ in 0..3 {
        bad.extend(u32::MAX.to_le_bytes());
    }
    bad.push(4); // float16
    bad.extend(0u32.to_le_bytes());
    open_err(&bad, "overflow");
}

/// A header claiming four billion variables must fail on the missing data,
/// not abort the process trying to reserve room for them.
#[test]
fn model_bin_with_absurd_variable_count() {
    let mut bad = Vec::new();
    bad.extend(6u32.to_le_bytes());
    bad.extend(12u16.to_le_bytes());
    bad.extend(b"WhisperSpec\0");
    bad.extend(3u32.to_le_bytes());
    bad.extend(u32::MAX.to_le_bytes());
    let e = open_err(&bad, "count");
    assert_mentions(&e, &["truncated"]);
}
