//! Offline transcription output: a [`Transcript`] rendered as plain text,
//! JSON, SubRip (SRT) or WebVTT.

use std::fmt::Write as _;
use std::path::Path;

use crate::audio::round3;
use crate::decode::Transcript;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per segment.
    Text,
    /// One JSON object per file, one per line.
    Json,
    Srt,
    Vtt,
}

pub fn render(t: &Transcript, file: &Path, format: Format) -> String {
    match format {
        Format::Text => t.segments.iter().map(|s| format!("{}\n", s.text.trim())).collect(),
        Format::Json => json(t, file),
        Format::Srt => subtitles(t, ",", false),
        Format::Vtt => subtitles(t, ".", true),
    }
}

fn json(t: &Transcript, file: &Path) -> String {
    let segments: Vec<serde_json::Value> = t
        .segments
        .iter()
        .map(|s| {
            let mut v = serde_json::json!({
                "id": s.id,
                "start": round3(s.start),
                "end": round3(s.end),
                "text": s.text,
                "avg_logprob": s.avg_logprob,
                "no_speech_prob": s.no_speech_prob,
                "compression_ratio": s.compression_ratio,
                "temperature": s.temperature,
            });
            if let Some(words) = &s.words {
                v["words"] = words
                    .iter()
                    .map(|w| serde_json::json!({"word": w.word, "start": round3(w.start), "end": round3(w.end), "probability": w.probability}))
                    .collect();
            }
            v
        })
        .collect();
    let v = serde_json::json!({
        "file": file.display().to_string(),
        "language": t.language,
        "language_probability": t.language_probability,
        "duration": round3(t.duration),
        "text": t.text(),
        "segments": segments,
    });
    format!("{v}\n")
}

/// `HH:MM:SS<sep>mmm`
fn clock(seconds: f64, sep: &str) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    format!("{:02}:{:02}:{:02}{sep}{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

fn subtitles(t: &Transcript, sep: &str, vtt: bool) -> String {
    let mut out = String::new();
    if vtt {
        out.push_str("WEBVTT\n\n");
    }
    for (i, s) in t.segments.iter().enumerate() {
        if !vtt {
            let _ = writeln!(out, "{}", i + 1);
        }
        let _ = writeln!(out, "{} --> {}\n{}\n", clock(s.start, sep), clock(s.end, sep), s.text.trim());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Segment;

    fn sample() -> Transcript {
        let seg = |id, start, end, text: &str| Segment {
            id,
            seek: 0,
            start,
            end,
            text: text.into(),
            tokens: vec![],
            temperature: 0.0,
            avg_logprob: -0.2,
            compression_ratio: 1.2,
            no_speech_prob: 0.01,
            words: None,
        };
        Transcript {
            language: "en".into(),
            language_probability: 1.0,
            duration: 3725.5,
            segments: vec![seg(0, 0.0, 7.74, " Hello there"), seg(1, 3661.0, 3662.5, " General Kenobi.")],
        }
    }

    #[test]
    fn srt_and_vtt_timestamps() {
        let t = sample();
        let srt = render(&t, Path::new("x.wav"), Format::Srt);
        assert!(srt.starts_with("1\n00:00:00,000 --> 00:00:07,740\nHello there\n\n2\n01:01:01,000 --> 01:01:02,500\n"));
        let vtt = render(&t, Path::new("x.wav"), Format::Vtt);
        assert!(vtt.starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:07.740\nHello there\n"));
    }

    #[test]
    fn json_is_one_line_and_parses() {
        let out = render(&sample(), Path::new("a.wav"), Format::Json);
        assert_eq!(out.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["text"], "Hello there General Kenobi.");
        assert_eq!(v["segments"][1]["start"], 3661.0);
    }

    #[test]
    fn text_is_one_line_per_segment() {
        assert_eq!(render(&sample(), Path::new("a"), Format::Text), "Hello there\nGeneral Kenobi.\n");
    }
}
