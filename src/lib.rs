//! scribed: streaming speech transcription with Whisper.
//!
//! The data path, one direction, few hops:
//!
//! ```text
//! audio (file, websocket frames, microphone)
//!   ─▶ audio::decode ─▶ audio::resample (16 kHz mono) ─▶ audio::mel (log-mel, 80 bins)
//!   ─▶ model::Whisper (encoder, decoder steps; written once against backend::Backend)
//!   ─▶ decode (greedy / beam search, timestamp rules, fallback, long-form windows)
//!   ─▶ transcribe (offline text / JSON / SRT / VTT)
//! ```
//!
//! The model weights (`model::Whisper`) are loaded once and shared read-only;
//! everything that changes while decoding lives in a per-stream
//! `model::State`, sized once when it is created.

pub mod audio;
pub mod backend;
pub mod decode;
pub mod model;
pub mod transcribe;
