//! A fake engine that hears words in tones: tests of the network side (the
//! session, the protocol, admission) run on it in milliseconds, without a
//! model, and know exactly which words the audio holds.

use crate::decode::{DecodeError, DecodeOptions, Segment, Transcript, Word};
use crate::engine::{Engine, EngineStream};
use crate::model::ModelError;

/// Words in tones: every run of 10 ms frames at the same peak amplitude
/// (k / 20, k = 1..=10) is one word, `NAMES[k]`. A prompt containing
/// [`FAIL`] makes the transcription fail, as a device error would.
pub struct ToneEngine;

pub const NAMES: [&str; 11] = ["", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"];
pub const FAIL: &str = "fail-here";

impl Engine for ToneEngine {
    fn name(&self) -> &str {
        "tones"
    }
    fn uuid(&self) -> &str {
        "00000000-0000-8000-8000-000000000000"
    }
    fn is_multilingual(&self) -> bool {
        false
    }
    fn resolve_language(&self, code_or_name: &str) -> Result<&'static str, DecodeError> {
        match code_or_name {
            "en" | "english" => Ok("en"),
            other => Err(DecodeError::EnglishOnly(other.into())),
        }
    }
    fn stream(&self, _max_seqs: usize) -> Result<Box<dyn EngineStream + '_>, ModelError> {
        Ok(Box::new(ToneStream))
    }
}

struct ToneStream;

impl EngineStream for ToneStream {
    fn transcribe(&mut self, audio: &[f32], opts: &DecodeOptions) -> Result<Transcript, DecodeError> {
        if opts.initial_prompt.as_deref().is_some_and(|p| p.contains(FAIL)) {
            return Err(DecodeError::Prompt("the fake device failed".into()));
        }
        let levels: Vec<usize> =
            audio.chunks(160).map(|f| (f.iter().fold(0f32, |m, x| m.max(x.abs())) * 20.0).round() as usize).collect();
        let mut words = Vec::new();
        let mut i = 0;
        while i < levels.len() {
            let j = i + levels[i..].iter().take_while(|&&k| k == levels[i]).count();
            // Runs shorter than 50 ms are the resampler's edges between tones.
            if (1..NAMES.len()).contains(&levels[i]) && j - i >= 5 {
                let (start, end) = (i as f64 * 0.01, j as f64 * 0.01);
                words.push(Word { word: format!(" {}", NAMES[levels[i]]), start, end, probability: 0.9 });
            }
            i = j;
        }
        let duration = audio.len() as f64 / 16_000.0;
        let segment = Segment {
            id: 0,
            seek: 0,
            start: 0.0,
            end: duration,
            text: words.iter().map(|w| w.word.as_str()).collect(),
            tokens: Vec::new(),
            temperature: 0.0,
            avg_logprob: -0.1,
            compression_ratio: 1.0,
            no_speech_prob: 0.0,
            words: Some(words),
        };
        Ok(Transcript { language: "en".into(), language_probability: 1.0, duration, segments: vec![segment] })
    }
}

/// 16 kHz linear16 bytes of `silence_s` of silence, then the words `ks` as
/// 0.3 s tones with 0.1 s gaps.
pub fn linear16(silence_s: f64, ks: &[usize]) -> Vec<u8> {
    let mut x = vec![0f32; (silence_s * 16_000.0) as usize];
    for &k in ks {
        let amp = k as f32 / 20.0;
        x.extend((0..4_800).map(|i| amp * (i as f32 * 2.0 * std::f32::consts::PI * 400.0 / 16_000.0).sin()));
        x.extend(std::iter::repeat_n(0.0, 1_600));
    }
    x.iter().flat_map(|s| ((s * 32_767.0) as i16).to_le_bytes()).collect()
}
