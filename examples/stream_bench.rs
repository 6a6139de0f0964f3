//! Streaming benchmark: replays the shared audio through a running daemon at
//! real-time pace, `--sessions N` clients at once, and reports interim and
//! final word latency (p50/p95) and streaming vs offline word error rate.
//!
//! ```text
//! scribed serve --max-sessions 8 &
//! cargo run --release --example stream_bench -- --url ws://127.0.0.1:8080 --sessions 1
//! ```
//!
//! Latency of a word: the time its final (or first interim) result arrived
//! minus the time the end of its audio was sent (stream start + word end /
//! speed). A word's first interim is the first result of any kind holding a
//! word with the same text starting within 0.5 s of it. Offline WER is
//! computed in-process (greedy, the same model) before streaming starts.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

struct Args {
    url: String,
    sessions: usize,
    speed: f64,
    audio_dir: PathBuf,
    model: PathBuf,
    limit: usize,
}

fn args() -> Args {
    let mut a = Args {
        url: "ws://127.0.0.1:8080".into(),
        sessions: 1,
        speed: 1.0,
        audio_dir: PathBuf::from("../shared/audio"),
        model: PathBuf::from("models/tiny.en"),
        limit: 11,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--url" => a.url = v,
            "--sessions" => a.sessions = v.parse().unwrap_or(1),
            "--speed" => a.speed = v.parse().unwrap_or(1.0),
            "--audio-dir" => a.audio_dir = v.into(),
            "--model" => a.model = v.into(),
            "--files" => a.limit = v.parse().unwrap_or(11),
            _ => eprintln!("unknown option {k}"),
        }
    }
    a
}

fn norm(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| w.chars().filter(|c| c.is_alphanumeric() || *c == '\'').flat_map(char::to_lowercase).collect::<String>())
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

#[derive(Default)]
struct Tally {
    interim: Vec<f64>,
    fin: Vec<f64>,
    errors: usize,
    words: usize,
    lag: Vec<f64>,
}

async fn stream_one(url: &str, samples: &[f32], speed: f64) -> (Vec<(Instant, Value)>, Instant) {
    let full = format!("{url}/v1/listen?encoding=linear16&sample_rate=16000&interim_results=true");
    let (ws, _) = tokio_tungstenite::connect_async(full.as_str()).await.expect("connect");
    let (mut tx, mut rx) = ws.split();
    let frames: Vec<Vec<u8>> = samples
        .chunks(320)
        .map(|c| c.iter().flat_map(|&x| ((x.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes()).collect())
        .collect();
    let t0 = Instant::now();
    let start = tokio::time::Instant::from_std(t0);
    let gap = Duration::from_secs_f64(0.02 / speed);
    let sender = async move {
        for (i, f) in frames.into_iter().enumerate() {
            // A frame is sent once all of its audio has "happened".
            tokio::time::sleep_until(start + gap * (i as u32 + 1)).await;
            if tx.send(Message::binary(f)).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Message::text(r#"{"type":"CloseStream"}"#)).await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
    };
    let receiver = async {
        let mut got = Vec::new();
        while let Some(Ok(m)) = rx.next().await {
            match m {
                Message::Text(t) => got.push((Instant::now(), serde_json::from_str(t.as_str()).unwrap_or(Value::Null))),
                Message::Close(_) => break,
                _ => {}
            }
        }
        got
    };
    tokio::select! { got = receiver => (got, t0), _ = sender => unreachable!() }
}

fn score(msgs: &[(Instant, Value)], t0: Instant, speed: f64, reference: &str, offline: &str, t: &mut Tally) -> (usize, usize) {
    let words = |m: &Value| m["channel"]["alternatives"][0]["words"].as_array().cloned().unwrap_or_default();
    let mut finals = String::new();
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
            t.fin.push(at.saturating_duration_since(spoken).as_secs_f64());
            let first = msgs
                .iter()
                .filter(|(_, m2)| m2["type"] == "Results")
                .find(|(_, m2)| {
                    words(m2).iter().any(|w2| {
                        w2["word"] == w["word"] && (w2["start"].as_f64().unwrap_or(-9.0) - ws).abs() < 0.5
                    })
                })
                .map_or(*at, |(a, _)| *a);
            t.interim.push(first.saturating_duration_since(spoken).as_secs_f64());
        }
    }
    let (e, n) = word_errors(reference, &finals);
    t.errors += e;
    t.words += n;
    word_errors(reference, offline)
}

fn main() {
    let a = args();
    let manifest = std::fs::read_to_string(a.audio_dir.join("manifest.tsv")).expect("manifest.tsv");
    let files: Vec<(String, String)> = manifest
        .lines()
        .skip(1)
        .filter_map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            let (file, secs, reference) = (c.first()?, c.get(1)?.parse::<f64>().ok()?, c.get(2)?);
            (!reference.starts_with('[') && secs < 40.0).then(|| (file.to_string(), reference.to_string()))
        })
        .take(a.limit)
        .collect();
    // Offline transcripts first, so they do not compete with the streams.
    let model = scribed::model::Whisper::load(&a.model, scribed::backend::cpu::Cpu).expect("model");
    let opts = scribed::decode::DecodeOptions { beam_size: 1, ..Default::default() };
    let mut tr = scribed::decode::Transcriber::new(&model, opts.max_seqs()).expect("state");
    let audio: Vec<(String, Vec<f32>, String, String)> = files
        .into_iter()
        .map(|(f, r)| {
            let s = scribed::audio::load_mono_16k(&a.audio_dir.join(&f)).expect("audio");
            let off = tr.transcribe(&s, &opts, &mut |_| {}).expect("offline").text();
            (f, s, r, off)
        })
        .collect();
    drop(tr);
    drop(model);
    let audio = Arc::new(audio);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let offline_err = Arc::new(Mutex::new((0usize, 0usize)));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let wall = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for s in 0..a.sessions {
            let (audio, tally, offline_err, url, speed) = (audio.clone(), tally.clone(), offline_err.clone(), a.url.clone(), a.speed);
            tasks.push(tokio::spawn(async move {
                // Stagger the sessions so their utterances do not align.
                tokio::time::sleep(Duration::from_millis(700 * s as u64)).await;
                for (f, samples, reference, off) in audio.iter() {
                    let (msgs, t0) = stream_one(&url, samples, speed).await;
                    let mut t = tally.lock().unwrap();
                    let (eo, no) = score(&msgs, t0, speed, reference, off, &mut t);
                    if s == 0 {
                        let mut o = offline_err.lock().unwrap();
                        o.0 += eo;
                        o.1 += no;
                        eprintln!("{f}: done");
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let mut t = tally.lock().unwrap();
    let o = *offline_err.lock().unwrap();
    let lag_max = t.lag.iter().copied().fold(0.0, f64::max);
    println!("sessions: {}  speed: {}x  files: {}  wall: {:.1} s", a.sessions, a.speed, audio.len(), wall.elapsed().as_secs_f64());
    println!("final latency   p50 {:.2} s  p95 {:.2} s  (n={})", pct(&mut t.fin, 0.5), pct(&mut t.fin, 0.95), t.fin.len());
    println!("interim latency p50 {:.2} s  p95 {:.2} s", pct(&mut t.interim, 0.5), pct(&mut t.interim, 0.95));
    println!(
        "WER streaming {:.2}%  offline greedy {:.2}%  (words {})",
        100.0 * t.errors as f64 / t.words.max(1) as f64,
        100.0 * o.0 as f64 / o.1.max(1) as f64,
        t.words
    );
    println!("worst Metadata lag {lag_max:.2} s");
}
