//! Whisper's tokenizer: token ids ↔ text, special tokens and languages.
//!
//! Decoding uses only `vocabulary.txt` (what CTranslate2 reads; it also holds
//! the timestamp tokens), encoding of text prompts uses `tokenizer.json`
//! through the Hugging Face `tokenizers` crate, as faster-whisper does.
//! Format: `shared/docs/ct2-whisper-format.md` §4–§5.

use std::fmt;
use std::path::{Path, PathBuf};

use super::error::ModelFileError;

/// Ids of Whisper's control tokens, looked up by their text in the vocabulary
/// (they shift by one between English-only and multilingual models).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    /// `<|endoftext|>`; every id from here on is not text.
    pub eot: u32,
    /// `<|startoftranscript|>`.
    pub sot: u32,
    pub translate: u32,
    pub transcribe: u32,
    /// `<|startoflm|>`.
    pub sot_lm: u32,
    /// `<|startofprev|>`: precedes the previous-text context.
    pub sot_prev: u32,
    /// `<|nospeech|>`, or `<|nocaptions|>` in older vocabularies (ours).
    pub no_speech: u32,
    /// `<|notimestamps|>`.
    pub no_timestamps: u32,
    /// `<|0.00|>` = `no_timestamps + 1`.
    pub timestamp_begin: u32,
    /// `<|30.00|>`, the last id of the vocabulary.
    pub timestamp_end: u32,
    /// The vocabulary holds the empty token, CTranslate2's multilingual test.
    pub multilingual: bool,
}

/// Whisper's language codes in Whisper's order (the order of the language
/// tokens in the vocabulary) with their English names.
pub const LANGUAGES: [(&str, &str); 100] = [
    ("en", "english"),
    ("zh", "chinese"),
    ("de", "german"),
    ("es", "spanish"),
    ("ru", "russian"),
    ("ko", "korean"),
    ("fr", "french"),
    ("ja", "japanese"),
    ("pt", "portuguese"),
    ("tr", "turkish"),
    ("pl", "polish"),
    ("ca", "catalan"),
    ("nl", "dutch"),
    ("ar", "arabic"),
    ("sv", "swedish"),
    ("it", "italian"),
    ("id", "indonesian"),
    ("hi", "hindi"),
    ("fi", "finnish"),
    ("vi", "vietnamese"),
    ("he", "hebrew"),
    ("uk", "ukrainian"),
    ("el", "greek"),
    ("ms", "malay"),
    ("cs", "czech"),
    ("ro", "romanian"),
    ("da", "danish"),
    ("hu", "hungarian"),
    ("ta", "tamil"),
    ("no", "norwegian"),
    ("th", "thai"),
    ("ur", "urdu"),
    ("hr", "croatian"),
    ("bg", "bulgarian"),
    ("lt", "lithuanian"),
    ("la", "latin"),
    ("mi", "maori"),
    ("ml", "malayalam"),
    ("cy", "welsh"),
    ("sk", "slovak"),
    ("te", "telugu"),
    ("fa", "persian"),
    ("lv", "latvian"),
    ("bn", "bengali"),
    ("sr", "serbian"),
    ("az", "azerbaijani"),
    ("sl", "slovenian"),
    ("kn", "kannada"),
    ("et", "estonian"),
    ("mk", "macedonian"),
    ("br", "breton"),
    ("eu", "basque"),
    ("is", "icelandic"),
    ("hy", "armenian"),
    ("ne", "nepali"),
    ("mn", "mongolian"),
    ("bs", "bosnian"),
    ("kk", "kazakh"),
    ("sq", "albanian"),
    ("sw", "swahili"),
    ("gl", "galician"),
    ("mr", "marathi"),
    ("pa", "punjabi"),
    ("si", "sinhala"),
    ("km", "khmer"),
    ("sn", "shona"),
    ("yo", "yoruba"),
    ("so", "somali"),
    ("af", "afrikaans"),
    ("oc", "occitan"),
    ("ka", "georgian"),
    ("be", "belarusian"),
    ("tg", "tajik"),
    ("sd", "sindhi"),
    ("gu", "gujarati"),
    ("am", "amharic"),
    ("yi", "yiddish"),
    ("lo", "lao"),
    ("uz", "uzbek"),
    ("fo", "faroese"),
    ("ht", "haitian creole"),
    ("ps", "pashto"),
    ("tk", "turkmen"),
    ("nn", "nynorsk"),
    ("mt", "maltese"),
    ("sa", "sanskrit"),
    ("lb", "luxembourgish"),
    ("my", "myanmar"),
    ("bo", "tibetan"),
    ("tl", "tagalog"),
    ("mg", "malagasy"),
    ("as", "assamese"),
    ("tt", "tatar"),
    ("haw", "hawaiian"),
    ("ln", "lingala"),
    ("ha", "hausa"),
    ("ba", "bashkir"),
    ("jw", "javanese"),
    ("su", "sundanese"),
    ("yue", "cantonese"),
];

/// Other names Whisper accepts (its `TO_LANGUAGE_CODE` extras), plus the
/// retired ISO code "iw" for Hebrew, which some vocabularies still use.
const LANGUAGE_ALIASES: [(&str, &str); 13] = [
    ("iw", "he"),
    ("burmese", "my"),
    ("valencian", "ca"),
    ("flemish", "nl"),
    ("haitian", "ht"),
    ("letzeburgesch", "lb"),
    ("pushto", "ps"),
    ("panjabi", "pa"),
    ("moldavian", "ro"),
    ("moldovan", "ro"),
    ("sinhalese", "si"),
    ("castilian", "es"),
    ("mandarin", "zh"),
];

/// The language code for a code or English name, any case.
fn canonical_language(code_or_name: &str) -> Option<&'static str> {
    let wanted = code_or_name.trim().to_ascii_lowercase();
    LANGUAGES
        .iter()
        .find(|(code, name)| *code == wanted || *name == wanted)
        .map(|(code, _)| *code)
        .or_else(|| LANGUAGE_ALIASES.iter().find(|(name, _)| *name == wanted).map(|(_, code)| *code))
}

/// Bounds on a plausible Whisper vocabulary: GPT-2's 50257 text tokens plus
/// specials and 1501 timestamps at least (51864 for `.en`, 51865/51866 for
/// multilingual); the upper bound only rejects nonsense such as a wrong file.
const MIN_VOCAB: usize = 51_000;
const MAX_VOCAB: usize = 1 << 20;

/// Timestamps `<|0.00|>` … `<|30.00|>`, 0.02 s apart.
const TIMESTAMP_COUNT: usize = 1501;

const VOCABULARY_TXT: &str = "vocabulary.txt";
const TOKENIZER_JSON: &str = "tokenizer.json";

/// Token ids ↔ text for one model directory. Immutable once loaded, so it can
/// be shared between streams.
#[derive(Clone)]
pub struct Tokenizer {
    dir: PathBuf,
    /// All tokens' text back to back; token `i` is `text[text_at[i]..text_at[i+1]]`.
    text: String,
    text_at: Vec<u32>,
    /// All tokens' decoded bytes back to back, indexed like `text`, so that
    /// decoding is a copy per token rather than a table walk per character.
    bytes: Vec<u8>,
    bytes_at: Vec<u32>,
    /// Token ids sorted by text (ties by id), for lookups by text.
    by_text: Vec<u32>,
    specials: SpecialTokens,
    /// Language tokens present in this vocabulary, in id order.
    languages: Vec<(u32, &'static str)>,
    /// `tokenizer.json`, needed only to encode text prompts.
    encoder: Option<tokenizers::Tokenizer>,
}

impl fmt::Debug for Tokenizer {
    // The derived form would print 51k tokens.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("dir", &self.dir)
            .field("vocab_size", &self.vocab_size())
            .field("specials", &self.specials)
            .field("languages", &self.languages.len())
            .field("encoder", &self.encoder.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// Loads `dir/vocabulary.txt` and, if present, `dir/tokenizer.json`.
    pub fn load(dir: &Path) -> Result<Self, ModelFileError> {
        let vocab_path = dir.join(VOCABULARY_TXT);
        let raw = ModelFileError::read(&vocab_path, "vocabulary.txt (one token per line)")?;
        let mut tok = Self::from_vocabulary(dir, &raw)?;

        let json_path = dir.join(TOKENIZER_JSON);
        match std::fs::read(&json_path) {
            Ok(json) => tok.encoder = Some(tok.parse_encoder(&json_path, &json)?),
            // Decoding works without it; `encode` reports the absence.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ModelFileError::Io { path: json_path, source }),
        }
        Ok(tok)
    }

    /// Builds a decode-only tokenizer from the contents of `vocabulary.txt`;
    /// `dir` is used for messages.
    fn from_vocabulary(dir: &Path, raw: &[u8]) -> Result<Self, ModelFileError> {
        let path = dir.join(VOCABULARY_TXT);
        let (body, count) = vocabulary_lines(&path, raw)?;
        let TokenIndex { text_at, bytes, bytes_at } = index_tokens(&path, body, count)?;
        // Keep a separator after the last token so every token is followed by
        // one byte, which `token_str` skips.
        let mut text = body.to_string();
        text.push('\n');

        let mut by_text: Vec<u32> = (0..count as u32).collect();
        let tok_text = |i: u32| &text[text_at[i as usize] as usize..text_at[i as usize + 1] as usize - 1];
        by_text.sort_by(|&a, &b| tok_text(a).cmp(tok_text(b)).then(a.cmp(&b)));

        let mut tok = Tokenizer {
            dir: dir.to_path_buf(),
            text,
            text_at,
            bytes,
            bytes_at,
            by_text,
            // Found below, by text, once the lookup table exists.
            specials: SpecialTokens {
                eot: 0,
                sot: 0,
                translate: 0,
                transcribe: 0,
                sot_lm: 0,
                sot_prev: 0,
                no_speech: 0,
                no_timestamps: 0,
                timestamp_begin: 0,
                timestamp_end: 0,
                multilingual: false,
            },
            languages: Vec::new(),
            encoder: None,
        };
        tok.specials = tok.find_specials(&path)?;
        tok.languages = tok.find_languages();
        Ok(tok)
    }

    /// The language tokens this vocabulary has, in id order.
    fn find_languages(&self) -> Vec<(u32, &'static str)> {
        let mut languages: Vec<(u32, &'static str)> = LANGUAGES
            .iter()
            .filter_map(|(code, _)| {
                // English-only vocabularies (tiny.en) spell Hebrew `<|iw|>`.
                let alt = if *code == "he" { Some("<|iw|>") } else { None };
                self.token_id(&format!("<|{code}|>"))
                    .or_else(|| alt.and_then(|t| self.token_id(t)))
                    .map(|id| (id, *code))
            })
            .collect();
        languages.sort_unstable();
        languages
    }

    fn find_specials(&self, path: &Path) -> Result<SpecialTokens, ModelFileError> {
        let need = |text: &str| {
            self.token_id(text).ok_or_else(|| ModelFileError::invalid(path, format!("no special token {text}")))
        };
        let no_speech = self
            .token_id("<|nospeech|>")
            .or_else(|| self.token_id("<|nocaptions|>"))
            .ok_or_else(|| ModelFileError::invalid(path, "no special token <|nospeech|> (or <|nocaptions|>)"))?;
        let no_timestamps = need("<|notimestamps|>")?;
        let timestamp_begin = no_timestamps + 1;
        let timestamp_end = self.vocab_size() as u32 - 1;
        // Timestamp ids are computed, not looked up, by every decoder; check
        // the arithmetic holds for this file rather than mis-time segments.
        if self.token_str(timestamp_begin) != Some("<|0.00|>")
            || self.token_str(timestamp_end) != Some("<|30.00|>")
            || (timestamp_end - timestamp_begin) as usize + 1 != TIMESTAMP_COUNT
        {
            return Err(ModelFileError::invalid(
                path,
                format!(
                    "expected the {TIMESTAMP_COUNT} timestamp tokens <|0.00|>…<|30.00|> right after \
                     <|notimestamps|> (id {no_timestamps}) up to the last line"
                ),
            ));
        }
        Ok(SpecialTokens {
            eot: need("<|endoftext|>")?,
            sot: need("<|startoftranscript|>")?,
            translate: need("<|translate|>")?,
            transcribe: need("<|transcribe|>")?,
            sot_lm: need("<|startoflm|>")?,
            sot_prev: need("<|startofprev|>")?,
            no_speech,
            no_timestamps,
            timestamp_begin,
            timestamp_end,
            multilingual: self.token_id("").is_some(),
        })
    }

    fn parse_encoder(&self, path: &Path, json: &[u8]) -> Result<tokenizers::Tokenizer, ModelFileError> {
        let mut enc = tokenizers::Tokenizer::from_bytes(json)
            .map_err(|e| ModelFileError::Tokenizer { path: path.to_path_buf(), message: one_line(&e.to_string()) })?;
        // A tokenizer.json from another model (English-only vs multilingual
        // ids differ by one) would encode prompts into wrong ids silently.
        let s = &self.specials;
        for (text, id) in [("<|endoftext|>", s.eot), ("<|notimestamps|>", s.no_timestamps)] {
            let found = enc.token_to_id(text);
            if found != Some(id) {
                return Err(ModelFileError::Tokenizer {
                    path: path.to_path_buf(),
                    message: format!(
                        "{text} is {found:?} here but {id} in vocabulary.txt: the files belong to different models"
                    ),
                });
            }
        }
        // Prompt text is client input: "<|endoftext|>" typed in a prompt must
        // stay text rather than inject a control token into the decoder.
        enc.set_encode_special_tokens(true);
        Ok(enc)
    }

    pub fn specials(&self) -> &SpecialTokens {
        &self.specials
    }

    /// Number of tokens, timestamps included (= embedding rows).
    pub fn vocab_size(&self) -> usize {
        self.text_at.len() - 1
    }

    /// The directory the files were loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A token's text as written in `vocabulary.txt` (GPT-2 byte-level form).
    pub fn token_str(&self, id: u32) -> Option<&str> {
        let i = id as usize;
        let end = *self.text_at.get(i + 1)? as usize;
        // Each stored token is followed by its '\n' separator.
        self.text.get(self.text_at[i] as usize..end - 1)
    }

    /// The first id whose text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        let first = self.by_text.partition_point(|&id| self.token_str(id).unwrap_or_default() < text);
        let id = *self.by_text.get(first)?;
        (self.token_str(id) == Some(text)).then_some(id)
    }

    /// A token's raw bytes (byte-level form undone); empty for unknown ids.
    /// Bytes of one character may be split across tokens.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        match (self.bytes_at.get(i), self.bytes_at.get(i + 1)) {
            (Some(&a), Some(&b)) => &self.bytes[a as usize..b as usize],
            _ => &[],
        }
    }

    /// Concatenated bytes of the text tokens in `ids`; ids ≥ eot (control
    /// and timestamp tokens) are skipped.
    pub fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        let eot = self.specials.eot;
        let text_ids = || ids.iter().copied().filter(move |&id| id < eot);
        let mut out = Vec::with_capacity(text_ids().map(|id| self.token_bytes(id).len()).sum());
        for id in text_ids() {
            out.extend_from_slice(self.token_bytes(id));
        }
        out
    }

    /// Text of `ids`, decoded as a whole so characters split across tokens
    /// survive; invalid UTF-8 becomes U+FFFD. Keeps Whisper's leading space.
    pub fn decode(&self, ids: &[u32]) -> String {
        match String::from_utf8(self.decode_bytes(ids)) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// Token ids of `text`, without any special token added. Text that looks
    /// like a special token (`<|endoftext|>`) is encoded as plain text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelFileError> {
        let path = self.dir.join(TOKENIZER_JSON);
        let enc = self.encoder.as_ref().ok_or_else(|| ModelFileError::NoEncoder { path: path.clone() })?;
        let encoding = enc.encode(text, false).map_err(|e| ModelFileError::Encode {
            path: path.clone(),
            text: text.to_string(),
            message: one_line(&e.to_string()),
        })?;
        let ids = encoding.get_ids().to_vec();
        // Guards the decoder's logits indexing against a tokenizer.json that
        // somehow maps text to control tokens or past the vocabulary.
        if let Some(bad) = ids.iter().find(|&&id| id >= self.specials.eot) {
            return Err(ModelFileError::Encode {
                path,
                text: text.to_string(),
                message: format!("produced non-text token {bad}"),
            });
        }
        Ok(ids)
    }

    /// The vocabulary was built for many languages (has the empty token).
    pub fn is_multilingual(&self) -> bool {
        self.specials.multilingual
    }

    /// The `<|xx|>` token for a language code or English name (any case).
    pub fn language_token(&self, code_or_name: &str) -> Option<u32> {
        let code = canonical_language(code_or_name)?;
        self.languages.iter().find(|(_, c)| *c == code).map(|(id, _)| *id)
    }

    /// The language code of a language token (Whisper's current code: "he"
    /// even where the token reads `<|iw|>`).
    pub fn language_code(&self, token: u32) -> Option<&'static str> {
        self.languages.iter().find(|(id, _)| *id == token).map(|(_, code)| *code)
    }

    /// Language tokens present in this vocabulary, in id order: the candidates
    /// for language detection (config.json `lang_ids` is wrong for `.en`).
    pub fn language_tokens(&self) -> Vec<(u32, &'static str)> {
        self.languages.clone()
    }
}

/// Error messages must stay one line even if a library's spans several.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The byte GPT-2's `bytes_to_unicode` maps to `c`, if any: bytes 33–126,
/// 161–172 and 174–255 stand for themselves; the other 68 bytes, in
/// increasing order, were moved to U+0100… so every byte is a visible char.
fn byte_of_char(c: char) -> Option<u8> {
    let cp = c as u32;
    match cp {
        33..=126 | 161..=172 | 174..=255 => Some(cp as u8),
        256..=323 => {
            let n = (cp - 256) as u8;
            // The moved bytes: 0–32 (33), 127–160 (34), 173 (1).
            Some(match n {
                0..=32 => n,
                33..=66 => n - 33 + 127,
                _ => 173,
            })
        }
        _ => None,
    }
}

/// `vocabulary.txt` as text: its body (the final newline cut) and its
/// token count, one per line. The file is checked here because a wrong one
/// (CRLF, not UTF-8, another kind of vocabulary) would otherwise shift or
/// garble every token without an error.
fn vocabulary_lines<'a>(path: &Path, raw: &'a [u8]) -> Result<(&'a str, usize), ModelFileError> {
    let text = std::str::from_utf8(raw)
        .map_err(|e| ModelFileError::invalid(path, format!("not UTF-8 (at byte {})", e.valid_up_to())))?;
    if let Some(at) = text.find('\r') {
        // A CR would silently become part of every token and break all
        // lookups; such files come from Windows checkouts/editors.
        let line = text[..at].matches('\n').count() + 1;
        return Err(ModelFileError::invalid(
            path,
            format!("carriage return on line {line}: CRLF line endings? (expected \\n only)"),
        ));
    }
    // Only the final newline terminates; empty lines in between are real
    // tokens (base has "" at 50256).
    let body = text.strip_suffix('\n').unwrap_or(text);
    let count = if body.is_empty() && !text.ends_with('\n') { 0 } else { body.matches('\n').count() + 1 };
    if !(MIN_VOCAB..=MAX_VOCAB).contains(&count) {
        return Err(ModelFileError::invalid(
            path,
            format!(
                "{count} tokens, not a Whisper vocabulary (expected {MIN_VOCAB} to {MAX_VOCAB} lines, \
                 e.g. 51864 for .en models)"
            ),
        ));
    }
    Ok((body, count))
}

/// Where each token's text starts in `body` (and one past the last), and
/// every token's decoded bytes back to back with their starts: decoding is
/// then a copy per token.
fn index_tokens(path: &Path, body: &str, count: usize) -> Result<TokenIndex, ModelFileError> {
    let mut text_at = Vec::with_capacity(count + 1);
    let mut bytes_at = Vec::with_capacity(count + 1);
    let mut bytes = Vec::with_capacity(body.len());
    // Offsets fit in u32: the body is at most a few MB for MAX_VOCAB
    // tokens of sane length; a larger file is rejected here.
    let offset = |n: usize| u32::try_from(n).map_err(|_| ModelFileError::invalid(path, "larger than 4 GiB"));
    let mut at = 0;
    for token in body.split('\n') {
        text_at.push(offset(at)?);
        bytes_at.push(offset(bytes.len())?);
        byte_level_decode(token, &mut bytes);
        at += token.len() + 1;
    }
    text_at.push(offset(body.len() + 1)?);
    bytes_at.push(offset(bytes.len())?);
    Ok(TokenIndex { text_at, bytes, bytes_at })
}

/// What [`index_tokens`] builds: the [`Tokenizer`] fields of the same names.
struct TokenIndex {
    text_at: Vec<u32>,
    bytes: Vec<u8>,
    bytes_at: Vec<u32>,
}

/// Appends the raw bytes of one byte-level token. A token with a character
/// outside the table is not byte-level text; like Hugging Face's ByteLevel
/// decoder, keep its UTF-8 as is.
fn byte_level_decode(token: &str, out: &mut Vec<u8>) {
    let start = out.len();
    for c in token.chars() {
        match byte_of_char(c) {
            Some(b) => out.push(b),
            None => {
                out.truncate(start);
                out.extend_from_slice(token.as_bytes());
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GPT-2's `bytes_to_unicode`, written the way the original builds it.
    fn bytes_to_unicode() -> Vec<(u8, char)> {
        let mut keep: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
        let mut chars = keep.clone();
        let mut n = 0;
        for b in 0..256 {
            if !keep.contains(&b) {
                keep.push(b);
                chars.push(256 + n);
                n += 1;
            }
        }
        keep.iter().zip(&chars).map(|(&b, &c)| (b as u8, char::from_u32(c).unwrap())).collect()
    }

    #[test]
    fn byte_table_inverts_gpt2_bytes_to_unicode() {
        let table = bytes_to_unicode();
        assert_eq!(table.len(), 256);
        for (b, c) in table {
            assert_eq!(byte_of_char(c), Some(b), "{c:?}");
        }
        assert_eq!(byte_of_char('Ġ'), Some(b' '));
        assert_eq!(byte_of_char('Ċ'), Some(b'\n'));
        assert_eq!(byte_of_char('\u{144}'), None);
        assert_eq!(byte_of_char(' '), None);
    }

    /// A Whisper-shaped vocabulary: `text` text tokens, then the specials of
    /// a multilingual (with "" before eot) or English-only model, timestamps.
    fn synthetic(text: usize, multilingual: bool) -> String {
        let mut lines: Vec<String> = (0..text).map(|i| format!("t{i}")).collect();
        lines[0] = "Ġhello".into();
        lines[1] = "Ã¼".into(); // "ü" as two byte-level chars
        if multilingual {
            lines.push(String::new());
        }
        lines.push("<|endoftext|>".into());
        lines.push("<|startoftranscript|>".into());
        lines.extend(LANGUAGES[..99].iter().map(|(c, _)| format!("<|{c}|>")));
        for s in ["translate", "transcribe", "startoflm", "startofprev", "nocaptions", "notimestamps"] {
            lines.push(format!("<|{s}|>"));
        }
        lines.extend((0..TIMESTAMP_COUNT).map(|i| format!("<|{}.{:02}|>", i / 50, i % 50 * 2)));
        lines.join("\n") + "\n"
    }

    fn load(vocab: &str) -> Result<Tokenizer, ModelFileError> {
        Tokenizer::from_vocabulary(Path::new("m"), vocab.as_bytes())
    }

    #[test]
    fn specials_follow_the_vocabulary() {
        let t = load(&synthetic(50257, true)).unwrap();
        let s = *t.specials();
        assert!(s.multilingual && t.is_multilingual());
        assert_eq!((s.eot, s.sot, s.translate), (50258, 50259, 50359));
        assert_eq!((s.no_speech, s.no_timestamps, s.timestamp_begin), (50363, 50364, 50365));
        assert_eq!(s.timestamp_end as usize, t.vocab_size() - 1);
        assert_eq!(t.token_str(50257), Some(""));
        assert_eq!(t.language_token("en"), Some(50260));
        assert_eq!(t.language_token("Dutch"), Some(t.language_token("nl").unwrap()));
        assert_eq!(t.language_token("flemish"), t.language_token("nl"));
        assert_eq!(t.language_token("yue"), None, "not in a 99-language vocabulary");
        assert_eq!(t.language_token("transcribe"), None);
        assert_eq!(t.language_code(50260), Some("en"));
        assert_eq!(t.language_code(s.transcribe), None);
        assert_eq!(t.language_tokens().len(), 99);

        let en = load(&synthetic(50256, false).replace("<|he|>", "<|iw|>")).unwrap();
        assert_eq!(en.language_tokens().len(), 99);
        let iw = en.token_id("<|iw|>");
        assert!(iw.is_some());
        assert_eq!(en.language_token("he"), iw);
        assert_eq!(en.language_token("iw"), iw);
        assert_eq!(en.language_token("Hebrew"), iw);
        assert_eq!(en.language_code(iw.unwrap()), Some("he"));
        assert!(!en.is_multilingual());
        assert_eq!(en.specials().eot, 50256);
        assert_eq!(en.specials().timestamp_begin, 50363);
    }

    #[test]
    fn decodes_bytes_and_skips_control_tokens() {
        let t = load(&synthetic(50257, true)).unwrap();
        let s = *t.specials();
        assert_eq!(t.token_bytes(0), b" hello");
        assert_eq!(t.token_bytes(s.eot), b"<|endoftext|>");
        assert_eq!(t.token_bytes(u32::MAX), b"");
        assert_eq!(t.decode(&[s.sot, 0, 1, s.timestamp_begin, s.eot, u32::MAX]), " helloü");
        assert_eq!(t.decode_bytes(&[1]), "ü".as_bytes());
        assert_eq!(t.token_str(u32::MAX), None);
        assert_eq!(t.token_id("Ġhello"), Some(0));
        assert_eq!(t.token_id("absent"), None);
    }

    #[test]
    fn split_characters_decode_lossily_as_a_whole() {
        let mut v = synthetic(50257, true);
        v = v.replacen("t2\n", "Ã\n", 1).replacen("t3\n", "¼\n", 1);
        let t = load(&v).unwrap();
        assert_eq!(t.decode(&[2, 3]), "ü");
        assert_eq!(t.decode(&[2]), "\u{fffd}");
    }

    #[test]
    fn encode_without_tokenizer_json_says_so() {
        let t = load(&synthetic(50257, true)).unwrap();
        let e = t.encode("hi").unwrap_err().to_string();
        assert!(e.contains("tokenizer.json") && e.contains("prompt"), "{e}");
    }

    #[test]
    fn rejects_broken_vocabularies() {
        let good = synthetic(50257, true);
        for (vocab, needle) in [
            (String::new(), "0 tokens"),
            ("a\nb\n".to_string(), "2 tokens"),
            (good.replace('\n', "\r\n"), "CRLF"),
            (good.replace("<|startoflm|>", "x"), "<|startoflm|>"),
            (good.replace("<|nocaptions|>", "x"), "nocaptions"),
            (good.replace("<|30.00|>\n", "<|30.00|>\nextra\n"), "timestamp"),
        ] {
            let e = load(&vocab).unwrap_err().to_string();
            assert!(e.starts_with("m/vocabulary.txt: "), "{e}");
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let e = Tokenizer::from_vocabulary(Path::new("m"), b"\xff\n").unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
    }
}
