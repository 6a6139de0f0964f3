//! The Whisper model: the files on disk (CT2 `model.bin`, `config.json`,
//! `vocabulary.txt`, `tokenizer.json`) and the network itself, whose
//! structure mirrors the paper's: an [`AudioEncoder`] and a [`TextDecoder`]
//! built from the blocks in `layers`.
//!
//! [`Whisper`] is immutable once loaded and shared by every stream; a
//! [`State`] holds one stream's activations and caches.

pub mod config;
pub mod ct2;
pub mod decoder;
pub mod encoder;
pub mod error;
pub mod layers;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use crate::backend::{Backend, BackendError};
pub use config::ModelConfig;
pub use ct2::{Ct2Error, Ct2File};
pub use decoder::{DecoderState, TextDecoder};
pub use encoder::{AudioEncoder, EncoderState};
pub use error::{ModelError, ModelFileError};
pub use tokenizer::Tokenizer;

/// Mel frames per 30 s window (the encoder's input length).
pub const WINDOW_FRAMES: usize = 3000;
/// Audio samples per mel frame at 16 kHz.
pub const HOP: usize = 160;

/// The hyper-parameters, read off the tensors' shapes rather than trusted
/// from metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dims {
    pub n_mels: usize,
    pub audio_ctx: usize,
    pub d_model: usize,
    pub encoder_heads: usize,
    pub encoder_layers: usize,
    pub vocab: usize,
    pub text_ctx: usize,
    pub decoder_heads: usize,
    pub decoder_layers: usize,
}

impl Dims {
    fn read(f: &Ct2File) -> Result<Self, ModelError> {
        let conv1 = &f.get("encoder/conv1/weight")?.shape;
        let emb = &f.get("decoder/embeddings/weight")?.shape;
        let mismatch = |reason: String| ModelError::Mismatch { path: f.path.clone(), reason };
        if conv1.len() != 3 || conv1[2] != 3 || emb.len() != 2 {
            return Err(mismatch(format!(
                "unexpected shapes: encoder/conv1/weight {conv1:?}, decoder/embeddings/weight {emb:?}"
            )));
        }
        let count =
            |prefix: &str| (0..).take_while(|i| f.contains(&format!("{prefix}/layer_{i}/ffn/linear_0/weight"))).count();
        let dims = Dims {
            n_mels: conv1[1],
            audio_ctx: f.get("encoder/position_encodings/encodings")?.shape[0],
            d_model: conv1[0],
            encoder_heads: f.scalar("encoder/num_heads")? as usize,
            encoder_layers: count("encoder"),
            vocab: emb[0],
            text_ctx: f.get("decoder/position_encodings/encodings")?.shape[0],
            decoder_heads: f.scalar("decoder/num_heads")? as usize,
            decoder_layers: count("decoder"),
        };
        if dims.encoder_layers == 0 || dims.decoder_layers == 0 {
            return Err(mismatch("no encoder or decoder layers found".into()));
        }
        for heads in [dims.encoder_heads, dims.decoder_heads] {
            if heads == 0 || !dims.d_model.is_multiple_of(heads) {
                return Err(mismatch(format!("{heads} heads do not divide d_model {}", dims.d_model)));
            }
        }
        if dims.audio_ctx * 2 != WINDOW_FRAMES {
            return Err(mismatch(format!("{} encoder positions (Whisper has 1500)", dims.audio_ctx)));
        }
        Ok(dims)
    }
}

/// A loaded Whisper model: weights on the backend, vocabulary and metadata.
///
/// Decoding goes through its methods, never through the encoder and decoder
/// themselves: the backend and a stream's [`State`] are paired here once.
pub struct Whisper<B: Backend> {
    backend: B,
    pub(crate) dims: Dims,
    encoder: AudioEncoder<B>,
    decoder: TextDecoder<B>,
    pub(crate) tokenizer: Tokenizer,
    config: ModelConfig,
    pub(crate) dir: PathBuf,
}

/// One stream's working memory: sized once, reused for every window.
pub struct State<B: Backend> {
    encoder: EncoderState<B>,
    decoder: DecoderState<B>,
    /// The mel input the encoder output (and the decoder's cross-attention
    /// K/V) currently hold: decoding the same window again, as a streaming
    /// step that retries without its prefix does, or a multilingual window
    /// after language detection, skips the encoder. Empty when unknown.
    encoded_mel: Vec<f32>,
    /// Where the buffers above live; declared last so that it is given back
    /// after them.
    _lane: B::Lane,
}

impl<B: Backend> State<B> {
    /// Sequences decoded at once (the beam, or best-of when sampling).
    pub fn max_seqs(&self) -> usize {
        self.decoder.max_seqs()
    }

    /// Encoder positions of the current window (1500 unless shortened).
    pub fn cross_len(&self) -> usize {
        self.decoder.cross_len()
    }
}

/// How a model's weights are held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// The encoder's linear layers in int8, their input quantized per row
    /// at run time (CTranslate2's `int8`): on a CPU with AVX-512 VNNI about
    /// 3.4 times as fast as f32 for those products, about half the
    /// encoder's time. Transcripts change a little (on the 32 shared files,
    /// greedy: 81 word errors against 84 in f32); the faster-whisper match
    /// is made in f32. Backends without int8 kernels (CUDA, a CPU without
    /// VNNI, where int8 would be slower than f32) keep their own type.
    pub int8_encoder: bool,
}

impl<B: Backend> Whisper<B> {
    /// Loads a CTranslate2 Whisper directory. Every inconsistency between its
    /// files is reported here, naming the file, never later as garbage text.
    pub fn load(dir: impl AsRef<Path>, backend: B) -> Result<Self, ModelError> {
        Self::load_with(dir, backend, LoadOptions::default())
    }

    /// [`Whisper::load`] with the weights' precision chosen.
    pub fn load_with(dir: impl AsRef<Path>, backend: B, options: LoadOptions) -> Result<Self, ModelError> {
        Self::load_inner(dir, options, |_, _| Ok(backend))
    }

    /// [`Whisper::load`] onto a backend that must know its memory needs
    /// before it exists (a GPU's one arena): the weights, and one `State`
    /// for `max_seqs` sequences, are first made against `sizer`, a backend
    /// that only counts; `make` then turns the model's shape and the sizer
    /// into the real backend. The model file is read once.
    pub fn load_measured<S: Backend>(
        dir: impl AsRef<Path>,
        sizer: S,
        max_seqs: usize,
        make: impl FnOnce(&Dims, S) -> Result<B, BackendError>,
    ) -> Result<Self, ModelError> {
        Self::load_inner(dir, LoadOptions::default(), |dims, file| {
            {
                let encoder = AudioEncoder::load(&sizer, file, dims, false)?;
                let decoder = TextDecoder::load(&sizer, file, dims)?;
                let lane = sizer.lane()?;
                encoder.state(&sizer, &lane, dims)?;
                decoder.state(&sizer, &lane, max_seqs.max(1))?;
            }
            Ok(make(dims, sizer)?)
        })
    }

    fn load_inner(
        dir: impl AsRef<Path>,
        options: LoadOptions,
        make_backend: impl FnOnce(&Dims, &Ct2File) -> Result<B, ModelError>,
    ) -> Result<Self, ModelError> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(ModelError::NotADirectory(dir));
        }
        let tokenizer = Tokenizer::load(&dir)?;
        let mut config = ModelConfig::load(&dir)?;
        config.resolve(&tokenizer)?;
        let file = Ct2File::open(dir.join("model.bin"))?;
        let dims = Dims::read(&file)?;
        if tokenizer.vocab_size() != dims.vocab {
            return Err(ModelError::Mismatch {
                path: dir.join("vocabulary.txt"),
                reason: format!(
                    "{} tokens, but model.bin's embedding has {} rows (vocabulary from another model?)",
                    tokenizer.vocab_size(),
                    dims.vocab
                ),
            });
        }
        if config.alignment_heads.is_empty() {
            config.alignment_heads = ModelConfig::default_alignment_heads(dims.decoder_layers, dims.decoder_heads);
        }
        if let Some(&(l, h)) =
            config.alignment_heads.iter().find(|&&(l, h)| l >= dims.decoder_layers || h >= dims.decoder_heads)
        {
            return Err(ModelError::Mismatch {
                path: dir.join("config.json"),
                reason: format!(
                    "alignment head ({l}, {h}) does not exist in a {}-layer, {}-head decoder",
                    dims.decoder_layers, dims.decoder_heads
                ),
            });
        }
        let backend = make_backend(&dims, &file)?;
        let encoder = AudioEncoder::load(&backend, &file, &dims, options.int8_encoder)?;
        let decoder = TextDecoder::load(&backend, &file, &dims)?;
        backend.loaded()?;
        Ok(Whisper { backend, dims, encoder, decoder, tokenizer, config, dir })
    }

    /// Working memory for one stream decoding up to `max_seqs` sequences at
    /// once (the beam size, or best-of for sampling), in a lane of its own:
    /// `ModelError::Backend(Busy)` when the backend has none free.
    pub fn state(&self, max_seqs: usize) -> Result<State<B>, ModelError> {
        let lane = self.backend.lane()?;
        Ok(State {
            encoder: self.encoder.state(&self.backend, &lane, &self.dims)?,
            decoder: self.decoder.state(&self.backend, &lane, max_seqs.max(1))?,
            encoded_mel: Vec::with_capacity(WINDOW_FRAMES * self.dims.n_mels),
            _lane: lane,
        })
    }

    /// The backend's [`Backend::fatal_error`], if any.
    pub fn fatal_error(&self) -> Option<String> {
        self.backend.fatal_error()
    }

    /// The backend's [`Backend::memory`].
    pub fn device_memory(&self) -> Option<crate::backend::DeviceMemory> {
        self.backend.memory()
    }

    pub fn is_multilingual(&self) -> bool {
        self.tokenizer.is_multilingual()
    }

    /// The directory the model was loaded from (its name names the model).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn dims(&self) -> &Dims {
        &self.dims
    }

    /// `config.json`, completed: suppressed tokens and alignment heads.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Positions the decoder holds: the prompt and the output share them.
    pub fn text_ctx(&self) -> usize {
        self.decoder.text_ctx()
    }

    pub fn vocab(&self) -> usize {
        self.decoder.vocab()
    }

    /// Forgets the tokens decoded in `st`, keeping its encoded window.
    pub fn reset(&self, st: &mut State<B>) {
        self.decoder.reset(&mut st.decoder);
    }

    /// Feeds `tokens` (`seqs` sequences of equal length, one after the other)
    /// to the decoder and writes the logits of rows `select` to `logits`
    /// (see [`TextDecoder::forward`]).
    pub fn decode(
        &self,
        st: &mut State<B>,
        tokens: &[u32],
        seqs: usize,
        select: &[usize],
        logits: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        self.decoder.forward(&self.backend, &mut st.decoder, tokens, seqs, select, logits)
    }

    /// Keeps sequence `order[j]` of `st` as its new sequence `j` (beam search).
    pub fn reorder(&self, st: &mut State<B>, order: &[usize]) -> Result<(), BackendError> {
        self.decoder.reorder(&self.backend, &mut st.decoder, order)
    }

    /// The cross-attention weights of the alignment heads over `tokens`, run
    /// from position 0: `heads × tokens` rows of `st`'s encoded frames (see
    /// [`TextDecoder::cross_attention_weights`]).
    pub fn alignment_weights(&self, st: &mut State<B>, tokens: &[u32]) -> Result<Vec<f32>, BackendError> {
        self.decoder.cross_attention_weights(&self.backend, &mut st.decoder, tokens, &self.config.alignment_heads)
    }

    /// Encodes one window of time-major mel frames and makes it the
    /// decoder's cross-attention context: `WINDOW_FRAMES` frames, or fewer
    /// (an even number) to encode only the audio that is there, with the
    /// positional embedding and cross-attention shortened to match.
    pub fn encode(&self, mel: &[f32], st: &mut State<B>) -> Result<(), BackendError> {
        let n_mels = self.dims.n_mels;
        let frames = mel.len() / n_mels;
        assert!(
            mel.len().is_multiple_of(n_mels) && frames.is_multiple_of(2) && (2..=WINDOW_FRAMES).contains(&frames),
            "encoder input of {} values is not an even number of {n_mels}-bin frames up to {WINDOW_FRAMES}",
            mel.len()
        );
        // Comparing is three orders of magnitude cheaper than encoding.
        if st.encoded_mel.as_slice() == mel {
            return Ok(());
        }
        st.encoded_mel.clear();
        self.encoder.forward(&self.backend, mel, &mut st.encoder)?;
        self.decoder.set_audio(&self.backend, &mut st.decoder, &st.encoder.output)?;
        st.encoded_mel.extend_from_slice(mel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    /// The logits after `<|startoftranscript|>` over an encoded window.
    fn first_logits(model: &Whisper<Cpu>, st: &mut State<Cpu>) -> Vec<f32> {
        model.reset(st);
        let mut logits = Vec::new();
        model.decode(st, &[model.tokenizer().specials().sot], 1, &[0], &mut logits).unwrap();
        logits
    }

    /// Encoding the window the state already holds is skipped; any other
    /// input, even one of the same length, is encoded.
    #[test]
    fn an_encoded_window_is_reused_only_for_the_same_input() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny.en");
        if !dir.join("model.bin").is_file() {
            println!("skipping: models/tiny.en not present (run scripts/setup.sh)");
            return;
        }
        let model = Whisper::load(&dir, Cpu).unwrap();
        let n = 200 * model.dims().n_mels;
        let a: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let b: Vec<f32> = a.iter().rev().copied().collect();
        let mut st = model.state(1).unwrap();
        model.encode(&a, &mut st).unwrap();
        let la = first_logits(&model, &mut st);
        model.encode(&a, &mut st).unwrap();
        assert_eq!(first_logits(&model, &mut st), la);
        model.encode(&b, &mut st).unwrap();
        let lb = first_logits(&model, &mut st);
        assert_ne!(lb, la);
        model.encode(&a, &mut st).unwrap();
        assert_eq!(first_logits(&model, &mut st), la);
        model.encode(&a[..n / 2], &mut st).unwrap();
        assert_eq!(st.cross_len(), 50);
    }
}
