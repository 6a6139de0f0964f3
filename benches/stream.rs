//! Streaming benchmark: replays the shared audio through the real daemon over
//! real websockets at real-time pace and reports what a live-captioning user
//! feels — interim and final word latency, streaming vs offline word error
//! rate, how many concurrent sessions keep up — and, with `--soak-hours`,
//! whether memory or latency grow over a long session.
//!
//! ```text
//! cargo bench --bench stream                                  # 1 session, 6 files
//! cargo bench --bench stream -- --sessions 1,2,3 --files 6    # capacity sweep
//! cargo bench --bench stream -- --soak-hours 3 --speed 2      # no-growth run
//! ```
//!
//! It starts its own daemon (this build's `scribed serve` on a free loopback
//! port) and stops it at the end; `--url` uses a running one instead.
//!
//! Latency of a word: the time its final (or first interim) result arrived
//! minus the time the end of its audio was sent (stream start + word end /
//! speed). A word's first interim is the first result of any kind holding a
//! word with the same text starting within 0.5 s of it. Offline WER is
//! computed in-process (greedy, the same model) before streaming starts.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// A running daemon; by default the benchmark starts its own.
    #[arg(long)]
    url: Option<String>,
    /// Concurrent sessions; a comma-separated list runs one row each.
    #[arg(long, default_value = "1", value_delimiter = ',')]
    sessions: Vec<usize>,
    /// Playback speed (1 = real time).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    #[arg(long, default_value = "../shared/audio")]
    audio_dir: PathBuf,
    #[arg(long, default_value = "models/tiny.en")]
    model: PathBuf,
    /// Which files each session replays: `issue` (issue 9's 12 files: 11 with
    /// references, 207 words, then apollo11.wav, 89 s of continuous speech)
    /// or `manifest` (the first `--files` reference files under 40 s, in
    /// manifest order: the set of the earlier results) or `long` (apollo11.wav
    /// alone: a quick look at continuous speech, e.g. under four sessions;
    /// the reference files' columns stay empty).
    #[arg(long, default_value = "issue")]
    set: String,
    /// Files per session with `--set manifest`.
    #[arg(long, default_value_t = 6)]
    files: usize,
    /// Send `Finalize` right after the last audio frame of each file and time
    /// the `from_finalize` reply (files with a reference only).
    #[arg(long)]
    finalize: bool,
    /// The daemon binary to start (default: this build's `scribed`), to time
    /// another build with the same client.
    #[arg(long)]
    scribed: Option<PathBuf>,
    /// Instead of the latency run: one session streaming all reference files
    /// joined, repeated for this many hours of audio.
    #[arg(long)]
    soak_hours: Option<f64>,
    /// Seconds between RSS/lag samples in the soak run.
    #[arg(long, default_value_t = 10.0)]
    sample_every: f64,
    /// Before streaming, also run offline greedy with the encoder input cut
    /// to the audio plus this many mel frames of padding (the daemon's
    /// `AudioCtx` otherwise), one WER figure each: what shortening the audio
    /// context alone costs.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    ctx_padding: Vec<usize>,
    /// A TOML file for the daemon the benchmark starts (`scribed serve
    /// --config`), e.g. `commit = "alignment"` or `compute_slots = 2`.
    #[arg(long)]
    daemon_config: Option<PathBuf>,
    /// A Python with faster-whisper, to time it offline on the same files in
    /// the same run (default: `.venv-bench/bin/python` when it exists, as
    /// `benches/compare.py` sets it up; none: the line is left out).
    #[arg(long)]
    fw_python: Option<PathBuf>,
    /// Also write every final word's latency to this file (tab-separated:
    /// sessions, file, word, offline end in s, latency in s), to see which
    /// words make a p95.
    #[arg(long)]
    word_log: Option<PathBuf>,
    /// `cargo bench` passes this; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let refs = reference_files(&a.audio_dir)?;
    let max = a.sessions.iter().copied().max().unwrap_or(1).max(1);
    let daemon = match &a.url {
        Some(_) => None,
        None => Some(Daemon::start(&a, max + 1)?),
    };
    let url = a.url.clone().unwrap_or_else(|| format!("ws://{}", daemon.as_ref().map_or("", |d| d.addr.as_str())));
    let pid = daemon.as_ref().map(|d| d.child.id());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match a.soak_hours {
        Some(hours) => soak(&rt, &a, &url, pid, &refs, hours)?,
        None => latency(&rt, &a, &url, pid, &refs)?,
    }
    drop(daemon);
    Ok(())
}

/// faster-whisper's offline greedy time (float32, 2 threads, in its own
/// process, `benches/fw_run.py`) and WER on the files of the run, beside
/// scribed's: the yardstick that makes figures from other machines
/// comparable.
fn faster_whisper_line(a: &Args, clips: &[Clip], scribed_secs: f64) {
    let default = PathBuf::from(".venv-bench/bin/python");
    let Some(python) = a.fw_python.clone().or_else(|| default.exists().then_some(default)) else {
        println!("faster-whisper: not timed (no --fw-python and no .venv-bench; `python3 benches/compare.py --skip-scribed` sets it up)");
        return;
    };
    let files: Vec<PathBuf> = clips.iter().map(|c| a.audio_dir.join(&c.name)).collect();
    let out = Command::new(&python)
        .arg("benches/fw_run.py")
        .args(["--beam", "1", "--threads", "2", "--model"])
        .arg(&a.model)
        .args(&files)
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .stderr(Stdio::inherit())
        .output();
    let Ok(out) = out.map_err(|e| println!("faster-whisper: {python:?} did not run: {e}")) else { return };
    let (mut secs, mut errors, mut words) = (0.0, 0, 0);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        let Some(t) = v["transcribe_s"].as_f64() else { continue };
        secs += t;
        let name = v["file"].as_str().and_then(|f| f.rsplit('/').next()).unwrap_or_default();
        if let Some(r) = clips.iter().find(|c| c.name == name).and_then(|c| c.reference.as_ref()) {
            let (e, n) = word_errors(r, v["text"].as_str().unwrap_or_default());
            (errors, words) = (errors + e, words + n);
        }
    }
    println!(
        "faster-whisper offline greedy (float32, 2 threads): {secs:.1} s for the same files, WER {:.2} %; scribed offline / faster-whisper = {:.2}; load {}",
        100.0 * errors as f64 / words.max(1) as f64,
        scribed_secs / secs.max(1e-9),
        loadavg()
    );
}

/// `(file, reference transcript)` of every file with a reference, shortest
/// clips first as in the manifest.
fn reference_files(dir: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    let manifest = std::fs::read_to_string(dir.join("manifest.tsv"))?;
    Ok(manifest
        .lines()
        .skip(1)
        .filter_map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            let (file, secs, reference) = (c.first()?, c.get(1)?.parse::<f64>().ok()?, c.get(2)?);
            (!reference.starts_with('[') && secs < 40.0).then(|| (file.to_string(), reference.to_string()))
        })
        .collect())
}

/// This build's daemon on a free loopback port, stopped with SIGTERM on drop.
struct Daemon {
    child: Child,
    addr: String,
}

impl Daemon {
    fn start(a: &Args, max_sessions: usize) -> anyhow::Result<Daemon> {
        let bin = a.scribed.clone().unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_scribed")));
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--max-sessions", &max_sessions.to_string(), "--model"])
            .arg(&a.model);
        if let Some(config) = &a.daemon_config {
            cmd.arg("--config").arg(config);
        }
        // The bench's own RUST_LOG reaches the daemon (a trace of a slow
        // run, `RUST_LOG=scribed::session=trace`); quiet otherwise.
        let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        let mut child = cmd.env("RUST_LOG", log).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?).read_line(&mut line)?;
        let addr = line.trim().strip_prefix("listening on ").map(str::to_string);
        match addr {
            Some(addr) => Ok(Daemon { child, addr }),
            None => {
                let _ = child.kill();
                anyhow::bail!("the daemon did not start (said {line:?})")
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

fn norm(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| {
            w.chars().filter(|c| c.is_alphanumeric() || *c == '\'').flat_map(char::to_lowercase).collect::<String>()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

fn word_errors(reference: &str, hyp: &str) -> (usize, usize) {
    let (r, h) = (norm(reference), norm(hyp));
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(rw != hw)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    (prev[h.len()], r.len())
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn words(m: &Value) -> Vec<Value> {
    m["channel"]["alternatives"][0]["words"].as_array().cloned().unwrap_or_default()
}

fn to_linear16(samples: &[f32]) -> Vec<Vec<u8>> {
    samples
        .chunks(320)
        .map(|c| c.iter().flat_map(|&x| ((x.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes()).collect())
        .collect()
}

/// What one streamed file gave back: every message with its arrival time,
/// the stream's start, and (with `finalize`) the seconds from the
/// `Finalize` message to the first `from_finalize` result.
struct Streamed {
    msgs: Vec<(Instant, Value)>,
    t0: Instant,
    finalize_reply: Option<f64>,
}

/// Streams `samples` as one session in 20 ms frames at `speed`, then
/// (with `finalize`) `Finalize`, then `CloseStream`.
async fn stream_one(url: &str, samples: &[f32], speed: f64, finalize: bool) -> anyhow::Result<Streamed> {
    let full = format!("{url}/v1/listen?encoding=linear16&sample_rate=16000&interim_results=true");
    let (ws, _) = tokio_tungstenite::connect_async(full.as_str()).await?;
    let (mut tx, mut rx) = ws.split();
    let frames = to_linear16(samples);
    let t0 = Instant::now();
    let start = tokio::time::Instant::from_std(t0);
    let gap = Duration::from_secs_f64(0.02 / speed);
    let finalize_sent = Arc::new(Mutex::new(None::<Instant>));
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel::<()>();
    let sent_at = finalize_sent.clone();
    let sender = async move {
        for (i, f) in frames.into_iter().enumerate() {
            // A frame is sent once all of its audio has "happened".
            tokio::time::sleep_until(start + gap * (i as u32 + 1)).await;
            if tx.send(Message::binary(f)).await.is_err() {
                return;
            }
        }
        if finalize {
            if let Ok(mut s) = sent_at.lock() {
                *s = Some(Instant::now());
            }
            let _ = tx.send(Message::text(r#"{"type":"Finalize"}"#)).await;
            // Close only once the reply is in, as a voice agent would.
            let _ = tokio::time::timeout(Duration::from_secs(60), reply_rx).await;
        }
        let _ = tx.send(Message::text(r#"{"type":"CloseStream"}"#)).await;
        tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
    };
    let receiver = async {
        let mut got = Vec::new();
        let mut reply = None;
        let mut reply_tx = Some(reply_tx);
        while let Some(Ok(m)) = rx.next().await {
            match m {
                Message::Text(t) => {
                    let now = Instant::now();
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    if reply.is_none() && v["type"] == "Results" && v["from_finalize"] == true {
                        let sent = finalize_sent.lock().ok().and_then(|s| *s);
                        if let Some(sent) = sent {
                            reply = Some(now.saturating_duration_since(sent).as_secs_f64());
                            if let Some(r) = reply_tx.take() {
                                let _ = r.send(());
                            }
                        }
                    }
                    got.push((now, v));
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        (got, reply)
    };
    tokio::select! {
        (msgs, finalize_reply) = receiver => Ok(Streamed { msgs, t0, finalize_reply }),
        _ = sender => anyhow::bail!("the daemon never closed the stream"),
    }
}

#[derive(Default)]
struct Tally {
    /// Final latency from the offline word end of the matched word.
    fin: Vec<f64>,
    /// Final latency from the streamed word's own end time (the earlier
    /// definition of this benchmark).
    fin_own: Vec<f64>,
    interim: Vec<f64>,
    errors: usize,
    words: usize,
    lag: Vec<f64>,
    finalize: Vec<f64>,
    /// (file, word, offline end, latency) of every final word.
    word_log: Vec<(String, String, f64, f64)>,
}

/// One file of the run: its audio, its reference (if any), and the offline
/// greedy transcript's words (normalised) with their end times.
struct Clip {
    name: String,
    samples: Vec<f32>,
    reference: Option<String>,
    offline: Vec<(String, f64)>,
}

/// Words of the streamed and the offline transcript this far apart (their
/// ends) are not the same word, seconds. Without a bound, apollo11.wav's
/// "How much? How much?" at 86-88 s lined up with the offline "how much"
/// at 77.5 s and counted 10 s of latency each.
const SAME_WORD_S: f64 = 3.0;

/// For each word of `hyp` (text, end), the index of the word of `base` it
/// lines up with (same or substituted word, ends within [`SAME_WORD_S`]) in
/// a minimum-edit alignment.
fn align_words(hyp: &[(String, f64)], base: &[(String, f64)]) -> Vec<Option<usize>> {
    let (n, m) = (hyp.len(), base.len());
    // Too far apart costs as much as a deletion and an insertion.
    let cost = |i: usize, j: usize| {
        let (h, b) = (&hyp[i], &base[j]);
        if (h.1 - b.1).abs() > SAME_WORD_S {
            2
        } else {
            usize::from(h.0 != b.0)
        }
    };
    let mut d = vec![vec![0usize; m + 1]; n + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, x) in d[0].iter_mut().enumerate() {
        *x = j;
    }
    for i in 1..=n {
        for j in 1..=m {
            let sub = d[i - 1][j - 1] + cost(i - 1, j - 1);
            d[i][j] = sub.min(d[i - 1][j] + 1).min(d[i][j - 1] + 1);
        }
    }
    let mut out = vec![None; n];
    let (mut i, mut j) = (n, m);
    while i > 0 && j > 0 {
        let c = cost(i - 1, j - 1);
        if c < 2 && d[i][j] == d[i - 1][j - 1] + c {
            out[i - 1] = Some(j - 1);
            i -= 1;
            j -= 1;
        } else if d[i][j] == d[i - 1][j] + 1 {
            i -= 1;
        } else {
            j -= 1;
        }
    }
    out
}

fn score(s: &Streamed, speed: f64, clip: &Clip, t: &mut Tally) {
    let (msgs, t0) = (&s.msgs, s.t0);
    let mut finals = String::new();
    // (normalised word, own end, arrival) of every final word.
    let mut fin_words: Vec<(String, f64, Instant)> = Vec::new();
    for (at, m) in msgs {
        if m["type"] == "Metadata" {
            t.lag.push(m["lag_seconds"].as_f64().unwrap_or(0.0));
        }
        if m["type"] != "Results" || m["is_final"] != true {
            continue;
        }
        finals.push(' ');
        finals.push_str(m["channel"]["alternatives"][0]["transcript"].as_str().unwrap_or(""));
        for w in words(m) {
            let (ws, we) = (w["start"].as_f64().unwrap_or(0.0), w["end"].as_f64().unwrap_or(0.0));
            let spoken = t0 + Duration::from_secs_f64(we / speed);
            t.fin_own.push(at.saturating_duration_since(spoken).as_secs_f64());
            let first = msgs
                .iter()
                .filter(|(_, m2)| m2["type"] == "Results")
                .find(|(_, m2)| {
                    words(m2)
                        .iter()
                        .any(|w2| w2["word"] == w["word"] && (w2["start"].as_f64().unwrap_or(-9.0) - ws).abs() < 0.5)
                })
                .map_or(*at, |(a, _)| *a);
            t.interim.push(first.saturating_duration_since(spoken).as_secs_f64());
            let text = w["punctuated_word"].as_str().or(w["word"].as_str()).unwrap_or("");
            for n in norm(text) {
                fin_words.push((n, we, *at));
            }
        }
    }
    // Latency from the end of the word's audio as the offline transcript
    // places it (the same clock for every build), own end when unmatched.
    let hyp: Vec<(String, f64)> = fin_words.iter().map(|w| (w.0.clone(), w.1)).collect();
    for (k, j) in align_words(&hyp, &clip.offline).into_iter().enumerate() {
        let end = j.map_or(fin_words[k].1, |j| clip.offline[j].1);
        let spoken = t0 + Duration::from_secs_f64(end / speed);
        let latency = fin_words[k].2.saturating_duration_since(spoken).as_secs_f64();
        t.fin.push(latency);
        t.word_log.push((clip.name.clone(), fin_words[k].0.clone(), end, latency));
    }
    if let Some(r) = s.finalize_reply {
        t.finalize.push(r);
    }
    if let Some(reference) = &clip.reference {
        let (e, n) = word_errors(reference, &finals);
        if e > 0 {
            // What the WER is made of, to compare builds word by word.
            eprintln!("{}: {e} word errors: {}", clip.name, finals.trim());
        }
        t.errors += e;
        t.words += n;
    }
}

/// The files of the run, in order: issue 9's set, or the first `files`
/// reference files of the manifest.
fn pick_files(a: &Args, refs: &[(String, String)]) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let reference = |f: &str| refs.iter().find(|(n, _)| n == f).map(|(_, r)| r.clone());
    match a.set.as_str() {
        "issue" => Ok(ISSUE_FILES
            .iter()
            .map(|f| {
                let f = if f.ends_with(".wav") { f.to_string() } else { format!("{f}.wav") };
                let r = reference(&f);
                (f, r)
            })
            .collect()),
        "manifest" => Ok(refs.iter().take(a.files).map(|(f, r)| (f.clone(), Some(r.clone()))).collect()),
        "long" => Ok(ISSUE_FILES
            .iter()
            .filter(|f| f.ends_with(".wav") && reference(f).is_none())
            .map(|f| (f.to_string(), None))
            .collect()),
        other => anyhow::bail!("--set {other}: expected issue, manifest or long"),
    }
}

/// Issue 9's files: 11 with references (207 words), then 89 s of continuous
/// speech without one.
const ISSUE_FILES: [&str; 12] = [
    "jfk.wav",
    "1089-134686-0000",
    "1089-134686-0002",
    "1089-134691-0001",
    "1272-128104-0000",
    "1688-142285-0003",
    "1998-15444-0001",
    "2033-164914-0003",
    "2414-128291-0001",
    "2609-156975-0000",
    "2412-153948-0000",
    "apollo11.wav",
];

/// Appends `words` (file, word, offline end, latency) to `path`, one line
/// each, tab-separated, after the number of sessions of the row.
fn write_word_log<'a>(
    path: &Path,
    sessions: usize,
    words: impl Iterator<Item = &'a (String, String, f64, f64)>,
) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    for (file, word, end, latency) in words {
        writeln!(f, "{sessions}\t{file}\t{word}\t{end:.2}\t{latency:.3}")?;
    }
    Ok(())
}

/// User + system CPU seconds of a process so far, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    // Clock ticks: `getconf CLK_TCK` is 100 on Linux.
    Some((utime + stime) / 100.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The latency run: the chosen files per session, for each session count in
/// `--sessions`, one table row each.
fn latency(
    rt: &tokio::runtime::Runtime,
    a: &Args,
    url: &str,
    pid: Option<u32>,
    refs: &[(String, String)],
) -> anyhow::Result<()> {
    let files = pick_files(a, refs)?;
    // Offline transcripts first, so they do not compete with the streams:
    // greedy text for the WER, and greedy with word timestamps for the word
    // end times latency is measured from.
    let model = scribed::model::Whisper::load(&a.model, scribed::backend::cpu::Cpu)?;
    let opts = scribed::decode::DecodeOptions { beam_size: 1, ..Default::default() };
    let timed = scribed::decode::DecodeOptions { word_timestamps: true, ..opts.clone() };
    let mut tr = scribed::decode::Transcriber::new(&model, opts.max_seqs())?;
    let mut offline = (0, 0);
    let mut offline_trimmed = vec![0; a.ctx_padding.len()];
    let mut clips = Vec::new();
    let mut offline_secs = 0.0;
    let mut audio_secs = 0.0;
    for (f, r) in files {
        let samples = scribed::audio::load_mono_16k(&a.audio_dir.join(&f))?;
        audio_secs += samples.len() as f64 / 16_000.0;
        let t = Instant::now();
        let text = tr.transcribe(&samples, &opts, &mut |_| {})?.text();
        offline_secs += t.elapsed().as_secs_f64();
        if let Some(r) = &r {
            let (e, n) = word_errors(r, &text);
            offline = (offline.0 + e, offline.1 + n);
            for (k, &padding) in a.ctx_padding.iter().enumerate() {
                let ctx = scribed::decode::AudioCtx { padding, ..Default::default() };
                let trimmed = scribed::decode::DecodeOptions { audio_ctx: Some(ctx), ..opts.clone() };
                offline_trimmed[k] += word_errors(r, &tr.transcribe(&samples, &trimmed, &mut |_| {})?.text()).0;
            }
        }
        let words: Vec<(String, f64)> = tr
            .transcribe(&samples, &timed, &mut |_| {})?
            .segments
            .iter()
            .flat_map(|s| s.words.iter().flatten())
            .flat_map(|w| norm(&w.word).into_iter().map(move |n| (n, w.end)))
            .collect();
        if a.finalize && r.is_none() {
            continue;
        }
        clips.push(Clip { name: f, samples, reference: r, offline: words });
    }
    drop(tr);
    drop(model);
    let trimmed: Vec<String> = a
        .ctx_padding
        .iter()
        .zip(&offline_trimmed)
        .map(|(p, e)| format!("{:.2} % (padding {p} frames)", 100.0 * *e as f64 / offline.1.max(1) as f64))
        .collect();
    println!(
        "offline greedy (scribed, in-process): {offline_secs:.1} s for {audio_secs:.1} s of audio; WER {:.2} % with the full 30 s window, with only the audio that is there: {}; load {}",
        100.0 * offline.0 as f64 / offline.1.max(1) as f64,
        trimmed.join(", "),
        loadavg()
    );
    faster_whisper_line(a, &clips, offline_secs);
    let audio = Arc::new(clips);
    let has_long = audio.iter().any(|c| c.reference.is_none());
    let long_name = audio.iter().find(|c| c.reference.is_none()).map_or(String::new(), |c| c.name.clone());
    println!(
        "| sessions | final p50 (refs) | final p95 (refs) | final p95 ({}) | final p50/p95 own times (refs) | interim p50 | interim p95 | WER streaming | WER offline | CPU s per audio s | worst lag | Finalize→reply p50 | Finalize→reply p95 | wall | load before → after |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        if has_long { long_name.as_str() } else { "-" }
    );
    let per_session_audio: f64 = audio.iter().map(|c| c.samples.len() as f64 / 16_000.0).sum();
    for &sessions in &a.sessions {
        let refs_tally = Arc::new(Mutex::new(Tally::default()));
        let long_tally = Arc::new(Mutex::new(Tally::default()));
        let load0 = loadavg();
        let cpu0 = pid.and_then(cpu_seconds);
        let wall = Instant::now();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for s in 0..sessions {
                let (audio, refs_tally, long_tally, url, speed, fin) =
                    (audio.clone(), refs_tally.clone(), long_tally.clone(), url.to_string(), a.speed, a.finalize);
                tasks.push(tokio::spawn(async move {
                    // Stagger the sessions so their utterances do not align.
                    tokio::time::sleep(Duration::from_millis(700 * s as u64)).await;
                    for clip in audio.iter() {
                        let got = stream_one(&url, &clip.samples, speed, fin).await?;
                        let tally = if clip.reference.is_some() { &refs_tally } else { &long_tally };
                        let mut t = tally.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                        score(&got, speed, clip, &mut t);
                    }
                    anyhow::Ok(())
                }));
            }
            for t in tasks {
                t.await??;
            }
            anyhow::Ok(())
        })?;
        let cpu = match (cpu0, pid.and_then(cpu_seconds)) {
            (Some(a0), Some(a1)) => format!("{:.2}", (a1 - a0) / (per_session_audio * sessions as f64)),
            _ => "-".into(),
        };
        let mut t = refs_tally.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut l = long_tally.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        if let Some(path) = &a.word_log {
            write_word_log(path, sessions, t.word_log.iter().chain(&l.word_log))?;
        }
        let lag = t.lag.iter().chain(&l.lag).copied().fold(0.0, f64::max);
        let long95 = if has_long { format!("{:.2} s", pct(&mut l.fin, 0.95)) } else { "-".into() };
        let (f50, f95) = if t.finalize.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            (format!("{:.2} s", pct(&mut t.finalize, 0.5)), format!("{:.2} s", pct(&mut t.finalize, 0.95)))
        };
        let wer = |errors: usize, words: usize| {
            if words == 0 {
                "-".to_string()
            } else {
                format!("{:.2} %", 100.0 * errors as f64 / words as f64)
            }
        };
        println!(
            "| {sessions} | {:.2} s | {:.2} s | {long95} | {:.2} / {:.2} s | {:.2} s | {:.2} s | {} | {} | {cpu} | {:.2} s | {f50} | {f95} | {:.0} s | {load0} → {} |",
            pct(&mut t.fin, 0.5),
            pct(&mut t.fin, 0.95),
            pct(&mut t.fin_own, 0.5),
            pct(&mut t.fin_own, 0.95),
            pct(&mut t.interim, 0.5),
            pct(&mut t.interim, 0.95),
            wer(t.errors, t.words),
            wer(offline.0, offline.1),
            lag,
            wall.elapsed().as_secs_f64(),
            loadavg()
        );
    }
    println!(
        "speed {}x, {} files per session ({} reference words){}",
        a.speed,
        audio.len(),
        offline.1,
        if a.finalize { ", Finalize after each file's last frame" } else { "" }
    );
    Ok(())
}

/// One sample of the daemon's state during the soak run.
struct Sample {
    /// Audio sent so far, seconds.
    audio: f64,
    rss_mib: f64,
    lag: f64,
    /// Daemon-wide `(hypotheses, inference seconds)` so far.
    inference: (f64, f64),
}

/// The no-growth run: every reference file joined (a second of silence
/// between them) and repeated to `hours` of audio, streamed as one session.
/// One row per block of repetitions: final latency, word error rate against
/// the references, the daemon's RSS and lag.
fn soak(
    rt: &tokio::runtime::Runtime,
    a: &Args,
    url: &str,
    pid: Option<u32>,
    refs: &[(String, String)],
    hours: f64,
) -> anyhow::Result<()> {
    let mut once = Vec::new();
    let mut reference = String::new();
    for (f, r) in refs {
        once.extend(scribed::audio::load_mono_16k(&a.audio_dir.join(f))?);
        once.extend(std::iter::repeat_n(0.0f32, 16_000));
        reference.push(' ');
        reference.push_str(r);
    }
    let rep_secs = once.len() as f64 / 16_000.0;
    let reps = ((hours * 3600.0) / rep_secs).ceil().max(1.0) as usize;
    // About ten rows, whatever the length.
    let per_row = reps.div_ceil(10);
    let frames: Vec<Vec<u8>> = to_linear16(&once);
    let total_frames = frames.len() * reps;
    eprintln!("soak: {reps} × {rep_secs:.0} s = {:.2} h of audio at {}x", reps as f64 * rep_secs / 3600.0, a.speed);

    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let metrics_addr = url.trim_start_matches("ws://").to_string();
    let (msgs, t0) = rt.block_on(async {
        let full = format!("{url}/v1/listen?encoding=linear16&sample_rate=16000&interim_results=true");
        let (ws, _) = tokio_tungstenite::connect_async(full.as_str()).await?;
        let (mut tx, mut rx) = ws.split();
        let t0 = Instant::now();
        let start = tokio::time::Instant::from_std(t0);
        let gap = Duration::from_secs_f64(0.02 / a.speed);
        let sent_tx = sent.clone();
        let sender = async move {
            for i in 0..total_frames {
                tokio::time::sleep_until(start + gap.mul_f64((i + 1) as f64)).await;
                if tx.send(Message::binary(frames[i % frames.len()].clone())).await.is_err() {
                    return;
                }
                sent_tx.store(i as u64 + 1, std::sync::atomic::Ordering::Relaxed);
            }
            let _ = tx.send(Message::text(r#"{"type":"CloseStream"}"#)).await;
            tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
        };
        let (samples2, sent2) = (samples.clone(), sent.clone());
        let every = Duration::from_secs_f64(a.sample_every);
        let sampler = async move {
            loop {
                tokio::time::sleep(every).await;
                let audio = sent2.load(std::sync::atomic::Ordering::Relaxed) as f64 * 0.02;
                let rss_mib = pid.and_then(rss_mib).unwrap_or(f64::NAN);
                let m = scrape(&metrics_addr);
                let get = |name: &str| m.iter().find(|(k, _)| k == name).map_or(f64::NAN, |(_, v)| *v);
                let lag = get("scribed_lag_seconds_max");
                let inference = (get("scribed_transcriptions_total"), get("scribed_inference_seconds_total"));
                if let Ok(mut s) = samples2.lock() {
                    s.push(Sample { audio, rss_mib, lag, inference });
                }
            }
        };
        let receiver = async {
            let mut got = Vec::new();
            let mut next_report = 600.0;
            while let Some(Ok(m)) = rx.next().await {
                if let Message::Text(t) = m {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    if v["type"] == "Results" && v["is_final"] == true {
                        let end = v["start"].as_f64().unwrap_or(0.0);
                        if end > next_report {
                            eprintln!("soak: {:.0} min of audio, {:.0} s wall", end / 60.0, t0.elapsed().as_secs_f64());
                            next_report += 600.0;
                        }
                        got.push((Instant::now(), v));
                    } else if v["type"] == "Metadata" {
                        got.push((Instant::now(), v));
                    }
                } else if let Message::Close(_) = m {
                    break;
                }
            }
            got
        };
        tokio::select! {
            got = receiver => anyhow::Ok((got, t0)),
            _ = sender => anyhow::bail!("the daemon never closed the stream"),
            _ = sampler => unreachable!(),
        }
    })?;

    // Rows: final words bucketed by the repetition they start in.
    let rows = reps.div_ceil(per_row);
    let mut lat = vec![Vec::new(); rows];
    let mut hyp = vec![String::new(); rows];
    let mut reps_in = vec![0usize; rows];
    for r in 0..reps {
        reps_in[r / per_row] += 1;
    }
    let mut meta_lag = f64::NAN;
    for (at, m) in &msgs {
        if m["type"] == "Metadata" {
            meta_lag = m["lag_seconds"].as_f64().unwrap_or(f64::NAN);
            continue;
        }
        for w in words(m) {
            let (ws, we) = (w["start"].as_f64().unwrap_or(0.0), w["end"].as_f64().unwrap_or(0.0));
            let row = ((ws / rep_secs) as usize / per_row).min(rows - 1);
            lat[row].push(at.saturating_duration_since(t0 + Duration::from_secs_f64(we / a.speed)).as_secs_f64());
            hyp[row].push(' ');
            hyp[row].push_str(w["punctuated_word"].as_str().or(w["word"].as_str()).unwrap_or(""));
        }
    }
    let samples = samples.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    println!(
        "| audio (h) | final p50 | final p95 | WER | RSS max (MiB) | lag max | ms per hypothesis | words |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in 0..rows {
        let (from, to) = ((row * per_row) as f64 * rep_secs, ((row * per_row + reps_in[row]) as f64) * rep_secs);
        let refs_text = std::iter::repeat_n(reference.as_str(), reps_in[row]).collect::<Vec<_>>().join(" ");
        let (e, n) = word_errors(&refs_text, &hyp[row]);
        let in_row: Vec<&Sample> = samples.iter().filter(|s| s.audio >= from && s.audio < to).collect();
        let (rss, lag) = in_row.iter().fold((f64::NAN, f64::NAN), |(r, l), s| (r.max(s.rss_mib), l.max(s.lag)));
        // Mean compute time of one hypothesis within the row.
        let per_hyp = match (in_row.first(), in_row.last()) {
            (Some(a), Some(b)) if b.inference.0 > a.inference.0 => {
                1e3 * (b.inference.1 - a.inference.1) / (b.inference.0 - a.inference.0)
            }
            _ => f64::NAN,
        };
        let n_words = lat[row].len();
        println!(
            "| {:.2}–{:.2} | {:.2} s | {:.2} s | {:.2} % | {:.1} | {:.2} s | {per_hyp:.0} | {} |",
            from / 3600.0,
            to / 3600.0,
            pct(&mut lat[row], 0.5),
            pct(&mut lat[row], 0.95),
            100.0 * e as f64 / n.max(1) as f64,
            rss,
            lag,
            n_words
        );
    }
    println!(
        "{reps} repetitions of {rep_secs:.1} s at {}x, wall {:.0} s, final Metadata lag {meta_lag:.2} s",
        a.speed,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Resident set size of a process, MiB, from `/proc`.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Every sample line of the daemon's `/metrics` (empty when unreachable).
fn scrape(addr: &str) -> Vec<(String, f64)> {
    let get = || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    };
    get()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}
