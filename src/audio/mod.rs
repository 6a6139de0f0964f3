//! Audio front end: reading audio files to samples, resampling to 16 kHz, and
//! Whisper's log-mel spectrogram.

pub mod file;
pub mod mel;
pub mod pcm;
pub mod resample;
pub mod vad;

pub use file::{decode_file, load_mono_16k, AudioError, DecodedAudio};
pub use mel::{Mel, MelFrontend};
pub use resample::Resampler;

/// Whisper's input rate.
pub const SAMPLE_RATE: u32 = 16_000;

/// Seconds of 16 kHz audio in `samples`.
pub fn seconds(samples: u64) -> f64 {
    samples as f64 / f64::from(SAMPLE_RATE)
}

/// A time in seconds to the millisecond, as every output carries it.
pub fn round3(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// Makes samples safe for the resampler and the mel front end: NaN becomes
/// silence and everything is clipped to full scale, as a DAC would. Float
/// audio far outside ±1 (1e37, ±Inf) otherwise overflows the FFTs to NaN,
/// which rubato refuses with a panic.
pub fn sanitize(samples: &mut [f32]) {
    for x in samples {
        *x = if x.is_nan() { 0.0 } else { x.clamp(-1.0, 1.0) };
    }
}
