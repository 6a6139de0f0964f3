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
//! The daemon (`scribed serve`) puts a network side in front of it:
//!
//! ```text
//! websocket frames ─▶ server::connection (pcm decode ─▶ downmix ─▶ resample ─▶ ring)
//!   ─▶ session::worker thread (VAD ─▶ policy ─▶ Transcriber) ─▶ bounded channel
//!   ─▶ server::connection ─▶ JSON results (protocol) ─▶ websocket
//! ```
//!
//! The model weights (`model::Whisper`) are loaded once and shared read-only;
//! everything that changes while decoding lives in a per-stream
//! `model::State`, sized once when it is created.

pub mod audio;
pub mod backend;
pub mod client;
pub mod config;
pub mod decode;
pub mod engine;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod protocol;
pub mod server;
pub mod session;
pub mod transcribe;
