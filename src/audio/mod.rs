//! Audio front end: decoding files to samples, resampling to 16 kHz, and
//! Whisper's log-mel spectrogram.

pub mod decode;
pub mod mel;
pub mod resample;

/// Whisper's input rate.
pub const SAMPLE_RATE: u32 = 16_000;
