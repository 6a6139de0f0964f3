//! Decoding: turning the model's logits into timestamped text.
//!
//! - [`rules`]: which tokens may come next (suppression, Whisper's timestamp
//!   grammar), applied to every step's logits;
//! - [`search`]: greedy, sampling and beam search over one 30 s window, with
//!   faster-whisper's temperature fallback;
//! - [`longform`]: audio of any length, window after window (seek by the last
//!   timestamp, condition on the previous text, skip silence);
//! - [`alignment`]: word-level timestamps from the cross-attention of the
//!   alignment heads (dynamic time warping).

pub mod alignment;
pub mod longform;
pub mod rules;
pub mod search;

pub use longform::Transcriber;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What to do with the audio: faster-whisper's `transcribe` options, with its
/// defaults.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// Beam width at temperature 0; 1 is greedy.
    pub beam_size: usize,
    /// Candidates sampled at each temperature above 0.
    pub best_of: usize,
    pub patience: f32,
    pub length_penalty: f32,
    /// Tried in order until a window's result passes the thresholds below.
    pub temperatures: Vec<f32>,
    pub compression_ratio_threshold: Option<f32>,
    pub log_prob_threshold: Option<f32>,
    pub no_speech_threshold: Option<f32>,
    pub condition_on_previous_text: bool,
    pub prompt_reset_on_temperature: f32,
    /// Text that conditions the first window (names, spellings, style).
    pub initial_prompt: Option<String>,
    /// Language code (`en`, `de`, …); `None` detects it on multilingual models.
    pub language: Option<String>,
    pub task: Task,
    pub without_timestamps: bool,
    /// Latest first timestamp, seconds.
    pub max_initial_timestamp: f32,
    pub word_timestamps: bool,
    pub suppress_blank: bool,
    /// Skip windows in which the voice activity detector finds no speech.
    pub vad: bool,
    /// Seed of the sampler used at temperatures above 0 (reproducible runs).
    pub seed: u64,
    /// Stops the work early when set from another thread (a session whose
    /// client went away): checked before each window and between decoder steps.
    pub cancel: Cancel,
    /// Encode only the audio that is there (whisper.cpp's `audio_ctx`)
    /// instead of the window padded to 30 s. `None` (the default, and what
    /// offline transcription uses) keeps faster-whisper's full window.
    pub audio_ctx: Option<AudioCtx>,
    /// Text the first window's output begins with (faster-whisper's
    /// `prefix`): fed to the decoder in one forward pass after the prompt,
    /// then only what follows it is decoded. The streaming worker passes the
    /// words of the utterance that are already final.
    pub prefix: Option<String>,
}

/// A shortened encoder input: a window's content, plus `padding` mel frames,
/// at least `min` frames, rounded up to a multiple of `granularity` mel
/// frames (at most 30 s). The positional embedding, the decoder's
/// cross-attention, the latest timestamp allowed and the word alignment all
/// use that length.
///
/// Whisper was trained on 30 s windows: on a short context it can fall into
/// a repetition loop. With a shortened context the decoder therefore stops a
/// hypothesis that repeats itself, and [`OnLoop`] says what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioCtx {
    /// Mel frames (10 ms) of zero-padding after the content.
    pub padding: usize,
    /// Shortest input, mel frames.
    pub min: usize,
    /// Mel frames the length is rounded up to; even (two mel frames per
    /// encoder position).
    pub granularity: usize,
    pub on_loop: OnLoop,
}

/// What a shortened window that loops becomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnLoop {
    /// Decoded again over the full 30 s, as Whisper was trained (an
    /// encoder pass over 30 s and a second decode: what a final hypothesis
    /// pays to be right).
    #[default]
    FullWindow,
    /// Its repetitions dropped (the looped text kept once) and the window
    /// ended there, with no later window over the rest of the audio: cheap,
    /// for a hypothesis whose words count only once a later one agrees.
    Cut,
}

impl Default for AudioCtx {
    fn default() -> Self {
        // 2 s of padding, 1 s steps, never under 10 s. On tiny.en, contexts
        // of a few seconds looped in about one partial hypothesis in four
        // (content + 1 s, no minimum: 12 of 42). Once a step's loop is cut
        // rather than decoded again over 30 s (`OnLoop::Cut`), 10 s against
        // 15 s (benches/results/streaming.md, "A 10 s minimum context"):
        // CPU per audio second 0.53-0.64 -> 0.47-0.53, streaming WER
        // 6.76-8.21 % -> 5.80-6.76 %, four sessions no worse; apollo11's p95
        // (a chant the hypotheses flip on) worse, median of six runs 4.0 -> 5.5 s.
        AudioCtx { padding: 200, min: 1000, granularity: 100, on_loop: OnLoop::FullWindow }
    }
}

impl AudioCtx {
    /// Mel frames to encode for a window with `content` frames of audio.
    pub fn frames(&self, content: usize) -> usize {
        let g = self.granularity.max(2).next_multiple_of(2);
        (content + self.padding).max(self.min).max(1).next_multiple_of(g).min(crate::model::WINDOW_FRAMES)
    }
}

/// A flag that abandons a transcription in progress. Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Transcribe,
    Translate,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            beam_size: 5,
            best_of: 5,
            patience: 1.0,
            length_penalty: 1.0,
            temperatures: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            compression_ratio_threshold: Some(2.4),
            log_prob_threshold: Some(-1.0),
            no_speech_threshold: Some(0.6),
            condition_on_previous_text: true,
            prompt_reset_on_temperature: 0.5,
            initial_prompt: None,
            language: None,
            task: Task::Transcribe,
            without_timestamps: false,
            max_initial_timestamp: 1.0,
            word_timestamps: false,
            suppress_blank: true,
            vad: true,
            seed: 0,
            cancel: Cancel::default(),
            audio_ctx: None,
            prefix: None,
        }
    }
}

impl DecodeOptions {
    /// Sequences decoded side by side at most (sizes the decoder state).
    pub fn max_seqs(&self) -> usize {
        let sampling = self.temperatures.iter().any(|&t| t > 0.0);
        self.beam_size.max(if sampling { self.best_of } else { 1 }).max(1)
    }
}

/// A word with its time span (seconds from the start of the audio).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Word {
    pub word: String,
    pub start: f64,
    pub end: f64,
    pub probability: f32,
}

/// A stretch of text between two timestamp tokens.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Segment {
    pub id: usize,
    /// Window start, in mel frames (10 ms), as faster-whisper reports it.
    pub seek: usize,
    pub start: f64,
    pub end: f64,
    pub text: String,
    pub tokens: Vec<u32>,
    pub temperature: f32,
    pub avg_logprob: f32,
    pub compression_ratio: f32,
    pub no_speech_prob: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub words: Option<Vec<Word>>,
}

/// The whole result for one audio input.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Transcript {
    pub language: String,
    pub language_probability: f32,
    pub duration: f64,
    pub segments: Vec<Segment>,
}

impl Transcript {
    /// The segments' text joined, with Whisper's leading space removed.
    pub fn text(&self) -> String {
        self.segments.iter().map(|s| s.text.as_str()).collect::<String>().trim().to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown language `{0}`: not a language Whisper knows (use a code such as en, de, fr)")]
    UnknownLanguage(String),
    #[error("this model is English-only; language `{0}` needs a multilingual model")]
    EnglishOnly(String),
    #[error("the initial prompt cannot be encoded: {0}")]
    Prompt(String),
    #[error("cancelled")]
    Cancelled,
    /// The compute device failed mid-decode (a CUDA error): the text so far
    /// cannot be trusted, so none is returned.
    #[error("compute backend: {0}")]
    Backend(#[from] crate::backend::BackendError),
}

/// The language code of a requested code or English name (`de`, `german`),
/// checked against the model's vocabulary: the one place that decides
/// whether a model can serve a language (offline decoding, and the daemon
/// before it accepts a session).
pub fn resolve_language(
    tok: &crate::model::tokenizer::Tokenizer,
    requested: &str,
) -> Result<&'static str, DecodeError> {
    let code = tok
        .language_token(requested)
        .and_then(|id| tok.language_code(id))
        .ok_or_else(|| DecodeError::UnknownLanguage(requested.into()))?;
    if !tok.is_multilingual() && code != "en" {
        return Err(DecodeError::EnglishOnly(requested.into()));
    }
    Ok(code)
}
