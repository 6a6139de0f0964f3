//! scribed: streaming speech transcription with Whisper.
//!
//! The data path, one direction, few hops:
//!
//! ```text
//! audio (file, websocket frames, microphone)
//!   ─▶ audio::file ─▶ audio::resample (16 kHz mono) ─▶ audio::mel (log-mel, 80 bins)
//!   ─▶ model::Whisper (encoder, decoder steps; written once against backend::Backend)
//!   ─▶ decode (greedy / beam search, timestamp rules, fallback, long-form windows)
//!   ─▶ render (offline text / JSON / SRT / VTT)
//! ```
//!
//! The daemon (`scribed serve`) puts a network side in front of it:
//!
//! ```text
//! websocket frames ─▶ server::connection (pcm decode ─▶ downmix ─▶ resample ─▶ ring)
//!   ─▶ session::worker thread (VAD ─▶ policy ─▶ engine::EngineStream) ─▶ bounded channel
//!   ─▶ server::connection ─▶ JSON results (protocol) ─▶ websocket
//! ```
//!
//! The model weights (`model::Whisper`) are loaded once and shared read-only;
//! everything that changes while decoding lives in a per-stream
//! `model::State`, sized once when it is created. The daemon reaches the
//! model only through `engine::Engine`, so that `main` picks the device once
//! and tests can put a fake engine behind the network side.

// The library's interface: what the binary, the integration tests and the
// benchmarks use. The daemon's internals (metrics, the streaming policy, the
// session workers) are private; `server` is their only way in.
pub mod audio;
pub mod backend;
pub mod client;
pub mod config;
pub mod decode;
pub mod engine;
pub mod model;
pub mod protocol;
pub mod render;
pub mod server;

mod metrics;
mod policy;
mod session;
