//! Audio front end: decoding files to samples, resampling to 16 kHz, and
//! Whisper's log-mel spectrogram.

pub mod decode;
pub mod mel;
pub mod pcm;
pub mod resample;
pub mod vad;

pub use decode::{decode_file, load_mono_16k, AudioError, DecodedAudio};
pub use mel::{Mel, MelFrontend};
pub use resample::Resampler;

/// Whisper's input rate.
pub const SAMPLE_RATE: u32 = 16_000;
