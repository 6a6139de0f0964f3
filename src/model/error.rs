//! The model's errors, in one place: [`ModelFileError`] for the small text
//! files of a model directory (`config.json`, `vocabulary.txt`,
//! `tokenizer.json`), [`ModelError`] for loading the whole model.

use std::io;
use std::path::{Path, PathBuf};

use super::ct2::Ct2Error;
use crate::backend::BackendError;

/// Everything that can be wrong with the text files of a model directory.
/// Each message is one line that starts with the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error("{path}: not found (a CTranslate2 Whisper model directory needs {needed})")]
    Missing { path: PathBuf, needed: &'static str },
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: malformed: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: cannot load the tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("{path}: not found, and encoding a text prompt needs tokenizer.json")]
    NoEncoder { path: PathBuf },
    #[error("{path}: cannot encode {text:?}: {message}")]
    Encode { path: PathBuf, text: String, message: String },
}

impl ModelFileError {
    /// Reads a whole file, telling "absent" apart from other I/O failures
    /// because the fix differs (fetch the model vs. check permissions/disk).
    pub(crate) fn read(path: &Path, needed: &'static str) -> Result<Vec<u8>, Self> {
        std::fs::read(path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                Self::Missing { path: path.to_path_buf(), needed }
            } else {
                Self::Io { path: path.to_path_buf(), source }
            }
        })
    }

    pub(crate) fn invalid(path: &Path, reason: impl Into<String>) -> Self {
        Self::Invalid { path: path.to_path_buf(), reason: reason.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    File(#[from] Ct2Error),
    #[error(transparent)]
    Metadata(#[from] ModelFileError),
    #[error("{path}: {reason}")]
    Mismatch { path: PathBuf, reason: String },
    #[error("{0}: not a directory (expected a CTranslate2 Whisper model directory with model.bin, config.json and vocabulary.txt)")]
    NotADirectory(PathBuf),
    #[error("backend: {0}")]
    Backend(#[from] BackendError),
}
