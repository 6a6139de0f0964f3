//! `config.json` of a CTranslate2 Whisper model directory: the decoding
//! metadata that is not in `model.bin` (alignment heads for word timestamps,
//! language-token candidates, suppression lists).
//!
//! Layout and meaning: `shared/docs/ct2-whisper-format.md` §7.

use std::path::Path;

use serde::Deserialize;

use super::error::ModelFileError;
use super::tokenizer::Tokenizer;

/// Decoding metadata from `config.json`.
///
/// Every field is optional in the file: older CTranslate2 converters wrote
/// fewer of them. An absent field loads as an empty list, and
/// [`resolve`](Self::resolve) replaces empty lists by Whisper's defaults
/// derived from the vocabulary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ModelConfig {
    /// (decoder layer, head) pairs whose cross-attention is used for word
    /// timestamps. Empty: unknown; see [`default_alignment_heads`](Self::default_alignment_heads).
    #[serde(default)]
    pub alignment_heads: Vec<(usize, usize)>,
    /// Candidate language tokens for language detection. Wrong in English-only
    /// models (tiny.en lists the multilingual ids), so detection should use
    /// [`Tokenizer::language_tokens`] instead.
    #[serde(default)]
    pub lang_ids: Vec<u32>,
    /// Tokens suppressed at every decoding step.
    #[serde(default)]
    pub suppress_ids: Vec<u32>,
    /// Tokens suppressed at the first generated step only (blank and eot).
    #[serde(default)]
    pub suppress_ids_begin: Vec<u32>,
}

const CONFIG_JSON: &str = "config.json";

impl ModelConfig {
    /// Reads `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self, ModelFileError> {
        let path = dir.join(CONFIG_JSON);
        let raw = ModelFileError::read(&path, "config.json for the decoding settings")?;
        Self::parse(&path, &raw)
    }

    /// Parses the contents of a `config.json`; `path` is only for messages.
    pub fn parse(path: &Path, raw: &[u8]) -> Result<Self, ModelFileError> {
        // A top-level array or string would otherwise deserialize into a
        // confusing "invalid type" message; say plainly what is expected.
        let value: serde_json::Value =
            serde_json::from_slice(raw).map_err(|source| ModelFileError::Json { path: path.to_path_buf(), source })?;
        if !value.is_object() {
            return Err(ModelFileError::invalid(path, "expected a JSON object at the top level"));
        }
        serde_json::from_value(value).map_err(|source| ModelFileError::Json { path: path.to_path_buf(), source })
    }

    /// Fills fields the file left out with Whisper's defaults and checks that
    /// every token id exists in `tokenizer`'s vocabulary, so that a decoder can
    /// index logits by these ids without bounds surprises.
    ///
    /// Defaults: `lang_ids` = the language tokens of the vocabulary (none for
    /// an English-only model); `suppress_ids_begin` = [" ", eot];
    /// `suppress_ids` = the control tokens faster-whisper always suppresses
    /// (its symbol list needs `tokenizer.json` and every converter writes the
    /// full list, so it is not rebuilt here). `alignment_heads` stays empty
    /// because the default depends on the layer count.
    pub fn resolve(&mut self, tokenizer: &Tokenizer) -> Result<(), ModelFileError> {
        let s = tokenizer.specials();
        if self.lang_ids.is_empty() && s.multilingual {
            self.lang_ids = tokenizer.language_tokens().into_iter().map(|(id, _)| id).collect();
        }
        if self.suppress_ids_begin.is_empty() {
            // "Ġ" is the byte-level spelling of a lone space (id 220 in Whisper).
            if let Some(space) = tokenizer.token_id("\u{120}") {
                self.suppress_ids_begin.push(space);
            }
            self.suppress_ids_begin.push(s.eot);
        }
        if self.suppress_ids.is_empty() {
            self.suppress_ids = vec![s.translate, s.transcribe, s.sot, s.sot_prev, s.sot_lm, s.no_speech];
        }

        let path = tokenizer.dir().join(CONFIG_JSON);
        let n = tokenizer.vocab_size();
        for (field, ids) in [
            ("lang_ids", &self.lang_ids),
            ("suppress_ids", &self.suppress_ids),
            ("suppress_ids_begin", &self.suppress_ids_begin),
        ] {
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= n) {
                return Err(ModelFileError::invalid(
                    &path,
                    format!("{field} contains token {bad}, beyond the vocabulary of {n} tokens"),
                ));
            }
        }
        Ok(())
    }

    /// Whisper's fallback when a checkpoint has no alignment heads: every head
    /// of the second half of the decoder layers.
    pub fn default_alignment_heads(decoder_layers: usize, heads: usize) -> Vec<(usize, usize)> {
        (decoder_layers / 2..decoder_layers).flat_map(|l| (0..heads).map(move |h| (l, h))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ModelConfig, ModelFileError> {
        ModelConfig::parse(Path::new("m/config.json"), s.as_bytes())
    }

    #[test]
    fn parses_all_fields() {
        let c = parse(
            r#"{"alignment_heads": [[1, 0], [3, 4]], "lang_ids": [50259, 50260],
                "suppress_ids": [1, 2], "suppress_ids_begin": [220, 50256], "extra": true}"#,
        )
        .unwrap();
        assert_eq!(c.alignment_heads, vec![(1, 0), (3, 4)]);
        assert_eq!(c.lang_ids, vec![50259, 50260]);
        assert_eq!(c.suppress_ids, vec![1, 2]);
        assert_eq!(c.suppress_ids_begin, vec![220, 50256]);
    }

    #[test]
    fn missing_fields_are_empty() {
        assert_eq!(parse("{}").unwrap(), ModelConfig::default());
    }

    #[test]
    fn malformed_files_name_the_file_and_the_problem() {
        for (text, needle) in [
            ("not json", "expected"),
            ("[1, 2]", "JSON object"),
            (r#"{"alignment_heads": [[1]]}"#, "invalid length"),
            (r#"{"lang_ids": [-5]}"#, "invalid value"),
            (r#"{"suppress_ids": "x"}"#, "invalid type"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with("m/config.json: "), "{e}");
            assert!(e.contains(needle), "{text} -> {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn default_alignment_heads_take_the_second_half() {
        assert_eq!(ModelConfig::default_alignment_heads(4, 2), vec![(2, 0), (2, 1), (3, 0), (3, 1)]);
        assert!(ModelConfig::default_alignment_heads(0, 6).is_empty());
    }
}
