//! The voice activity detector on real speech, noise and pauses: every word
//! Whisper hears must be speech to it, steady noise must not be, and the
//! pauses endpointing needs must be there. Both detectors are measured and
//! printed side by side; the assertions hold the neural one (`vad =
//! "neural"`).

mod common;

use std::process::Command;

use common::daemon::load;
use common::*;
use scribed::audio::vad::{speech_frames, VadConfig, VadKind};

/// jfk, the LibriSpeech files and the two spontaneous-speech corpora.
const FILES: [&str; 8] = [
    "jfk.wav",
    "1089-134686-0000.wav",
    "1272-128104-0000.wav",
    "1688-142285-0000.wav",
    "2033-164914-0000.wav",
    "2830-3980-0043.wav",
    "acoustic_corpus.wav",
    "cold_corpus.wav",
];

/// Word spans (seconds) of each file, from the offline transcriber.
fn word_spans(model: &std::path::Path) -> Vec<Vec<(f64, f64)>> {
    let o = Command::new(bin())
        .args(["transcribe", "--beam", "1", "--threads", "2", "--format", "json", "--word-timestamps", "--model"])
        .arg(model)
        .args(FILES.map(shared_audio))
        .output()
        .expect("transcribe runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    out.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let words = v["segments"].as_array().unwrap().iter().flat_map(|s| s["words"].as_array().unwrap().clone());
            words.map(|w| (w["start"].as_f64().unwrap(), w["end"].as_f64().unwrap())).collect()
        })
        .collect()
}

/// Of the frames in the middle 80 % of each word, the share that is speech
/// (Whisper's word times stretch over pauses: "ask" in jfk spans the 0.7 s
/// after "Americans,", so this is well under 100 % for any detector that
/// hears pauses); and the words without a single speech frame.
fn recall(speech: &[bool], words: &[(f64, f64)]) -> (f64, usize) {
    let (mut inside, mut heard, mut lost) = (0, 0, 0);
    for &(s, e) in words {
        let pad = (e - s) * 0.1;
        let (a, b) = (((s + pad) * 100.0) as usize, (((e - pad) * 100.0) as usize).min(speech.len()));
        let n = speech[a.min(b)..b].iter().filter(|&&x| x).count();
        inside += b.saturating_sub(a);
        heard += n;
        lost += usize::from(n == 0 && b > a);
    }
    (heard as f64 / inside.max(1) as f64, lost)
}

fn share(speech: &[bool]) -> f64 {
    speech.iter().filter(|&&x| x).count() as f64 / speech.len().max(1) as f64
}

/// Deterministic noise: white, or brown (integrated white), at `rms`.
fn noise(seconds: f64, rms: f32, brown: bool, mut seed: u64) -> Vec<f32> {
    let mut level = 0.0f32;
    let raw: Vec<f32> = (0..(seconds * 16_000.0) as usize)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let white = (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            level = if brown { 0.998 * level + white } else { white };
            level
        })
        .collect();
    let now = (raw.iter().map(|x| x * x).sum::<f32>() / raw.len() as f32).sqrt();
    raw.iter().map(|x| x * rms / now).collect()
}

fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt()
}

#[test]
fn speech_is_heard_and_noise_is_not() {
    let Some(model) = model_dir("tiny.en") else { return };
    let spans = word_spans(&model);
    let kinds = [VadKind::Neural, VadKind::Energy];
    println!("{:<24} {:>16} {:>16}", "speech (word frames)", "neural", "energy");
    for (file, words) in FILES.iter().zip(&spans) {
        let audio = load(file);
        let got: Vec<(f64, usize)> =
            kinds.iter().map(|&k| recall(&speech_frames(&audio, VadConfig::of_kind(k)), words)).collect();
        let cell = |(r, lost): (f64, usize)| format!("{:5.1} % ({lost} lost)", r * 100.0);
        println!("{file:<24} {:>16} {:>16}", cell(got[0]), cell(got[1]));
        assert_eq!(got[0].1, 0, "{file}: words without a speech frame");
    }

    // Speech under noise at 10 dB SNR: still heard.
    let jfk = load("jfk.wav");
    let level = rms(&jfk) / 10f32.powf(10.0 / 20.0);
    let noisy: Vec<f32> = jfk.iter().zip(noise(11.0, level, false, 3)).map(|(s, n)| s + n).collect();
    let got: Vec<(f64, usize)> =
        kinds.iter().map(|&k| recall(&speech_frames(&noisy, VadConfig::of_kind(k)), &spans[0])).collect();
    println!(
        "jfk + white noise, 10 dB SNR: neural {:.1} % ({} lost), energy {:.1} % ({} lost)",
        got[0].0 * 100.0,
        got[0].1,
        got[1].0 * 100.0,
        got[1].1
    );
    assert!(got[0].0 >= 0.9 && got[0].1 == 0, "{:?}", got[0]);

    // Noise alone, starting after two seconds of silence (an energy gate's
    // noise floor is at the silence when it starts).
    println!("{:<24} {:>16} {:>16}", "noise (speech frames)", "neural", "energy");
    let hum: Vec<f32> =
        (0..16_000 * 30).map(|i| 0.02 * (i as f32 * 2.0 * std::f32::consts::PI * 50.0 / 16e3).sin()).collect();
    let cases = [
        ("white, -30 dBFS", noise(30.0, 0.03, false, 7)),
        ("white, -45 dBFS", noise(30.0, 0.0056, false, 9)),
        ("brown, -30 dBFS", noise(30.0, 0.03, true, 11)),
        ("hum 50 Hz + white", hum.iter().zip(noise(30.0, 0.01, false, 13)).map(|(a, b)| a + b).collect()),
    ];
    for (name, sound) in cases {
        let mut x = vec![0.0; 32_000];
        x.extend(sound);
        let got: Vec<f64> = kinds.iter().map(|&k| share(&speech_frames(&x, VadConfig::of_kind(k)))).collect();
        println!("{name:<24} {:>15.1}% {:>15.1}%", got[0] * 100.0, got[1] * 100.0);
        assert!(got[0] <= 0.01, "{name}: {:.1} % speech", got[0] * 100.0);
    }
}

/// jfk's pause after "Americans," (0.7 s, under crowd noise) is long enough
/// for `endpointing=300` once the hangover is spent.
#[test]
fn jfks_pause_is_not_speech() {
    let speech = speech_frames(&load("jfk.wav"), VadConfig::of_kind(VadKind::Neural));
    let longest = speech[100..900].split(|&s| s).map(<[bool]>::len).max().unwrap_or(0);
    println!("longest pause inside jfk: {} ms", longest * 10);
    assert!(longest >= 30, "longest pause inside jfk: {} ms", longest * 10);
}
