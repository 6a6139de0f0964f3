//! The seam between the daemon and the speech model: what sessions need from
//! an engine, whatever device runs it.
//!
//! The server and the session workers hold an `Arc<dyn Engine>`; `main`
//! chooses the device once and wraps the loaded model in a [`WhisperEngine`].
//! Nothing above this module names a backend type, and tests put a fake
//! engine behind the same trait to exercise the network side without a model.

pub mod tones;

use std::path::Path;

use crate::backend::Backend;
pub use crate::backend::DeviceMemory;
use crate::decode::{DecodeError, DecodeOptions, Transcriber, Transcript};
use crate::model::{ModelError, Whisper};

/// A loaded speech model, shared read-only by every session.
pub trait Engine: Send + Sync + 'static {
    /// The model's name, as results and `Metadata` report it.
    fn name(&self) -> &str;
    /// A UUID derived from the model's weights: the same file has the same
    /// id on every machine (Deepgram's `model_uuid`).
    fn uuid(&self) -> &str;
    /// Whether the model knows languages other than English.
    fn is_multilingual(&self) -> bool;
    /// The language code of a code or English name (`de`, `german`), if
    /// the model can transcribe it.
    fn resolve_language(&self, code_or_name: &str) -> Result<&'static str, DecodeError>;
    /// Per-stream decoder state for up to `max_seqs` sequences at once (1
    /// for greedy streaming; the beam for offline decoding), sized once: one
    /// per session worker or upload.
    fn stream(&self, max_seqs: usize) -> Result<Box<dyn EngineStream + '_>, ModelError>;
    /// Why the engine can serve nothing more (its device failed for good);
    /// `/readyz` reports it and the daemon stops.
    fn fatal_error(&self) -> Option<String> {
        None
    }
    /// The device's arena and session slots, where it has them (a GPU).
    fn device_memory(&self) -> Option<DeviceMemory> {
        None
    }
}

/// One stream's decoder over the shared model.
pub trait EngineStream {
    /// Transcribes 16 kHz mono samples (one utterance, or a whole file).
    fn transcribe(&mut self, audio: &[f32], opts: &DecodeOptions) -> Result<Transcript, DecodeError>;
}

/// Whisper on one backend, as an [`Engine`].
pub struct WhisperEngine<B: Backend> {
    model: Whisper<B>,
    name: String,
    uuid: String,
}

impl<B: Backend + Send + Sync + 'static> WhisperEngine<B> {
    pub fn new(model: Whisper<B>) -> Self {
        let name =
            model.dir().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "whisper".into());
        let uuid = file_uuid(&model.dir().join("model.bin"));
        WhisperEngine { model, name, uuid }
    }
}

impl<B: Backend + Send + Sync + 'static> Engine for WhisperEngine<B> {
    fn name(&self) -> &str {
        &self.name
    }

    fn uuid(&self) -> &str {
        &self.uuid
    }

    fn is_multilingual(&self) -> bool {
        self.model.is_multilingual()
    }

    fn resolve_language(&self, code_or_name: &str) -> Result<&'static str, DecodeError> {
        crate::decode::resolve_language(self.model.tokenizer(), code_or_name)
    }

    fn stream(&self, max_seqs: usize) -> Result<Box<dyn EngineStream + '_>, ModelError> {
        Ok(Box::new(Transcriber::new(&self.model, max_seqs)?))
    }

    fn fatal_error(&self) -> Option<String> {
        self.model.fatal_error()
    }

    fn device_memory(&self) -> Option<DeviceMemory> {
        self.model.device_memory()
    }
}

impl<B: Backend> EngineStream for Transcriber<'_, B> {
    fn transcribe(&mut self, audio: &[f32], opts: &DecodeOptions) -> Result<Transcript, DecodeError> {
        Transcriber::transcribe(self, audio, opts, &mut |_| {})
    }
}

/// SHA-256 of the file, shaped as a version-8 (custom) UUID; all zeros when
/// the file cannot be read (the model was loaded from it, so it can).
fn file_uuid(path: &Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let ok = std::fs::File::open(path).and_then(|mut f| std::io::copy(&mut f, &mut h)).is_ok();
    let mut b: [u8; 32] = if ok { h.finalize().into() } else { [0; 32] };
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b[..16].iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}
