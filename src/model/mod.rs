//! The Whisper model: files on disk (CT2 `model.bin`, `config.json`,
//! vocabulary) and the network itself, mirroring the paper's structure.

pub mod config;
pub mod ct2;
pub mod tokenizer;
