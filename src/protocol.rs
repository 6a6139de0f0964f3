//! The wire protocol of `/v1/listen`: Deepgram's live-streaming subset.
//! Every parameter and message, and where scribed differs from Deepgram:
//! `protocol.md` beside this file.
//!
//! Shared by the server and the clients (clients depend on this module, never
//! on the server). It holds the query parameters (parsed once, before the
//! websocket upgrade, into [`ListenParams`]), the client's text messages, the
//! server's messages, and the mapping from every session error to a wire
//! error and a close code.
//!
//! Documented choices where Deepgram leaves room:
//! - an unknown `type` in a client text message gets an `Error` message and
//!   the session goes on (newer clients may send messages we do not know);
//! - a text message that is not JSON, or JSON without a string `type`, gets
//!   an `Error` message and close 1007 (invalid payload);
//! - empty binary frames are ignored; binary or text after `CloseStream` is
//!   ignored (the stream is already being flushed);
//! - a frame larger than the configured maximum closes with 1009.

use serde::{Deserialize, Serialize};

/// Close codes the server uses.
pub mod close {
    /// `CloseStream` handled: everything flushed, `Metadata` sent.
    pub const NORMAL: u16 = 1000;
    /// The daemon is shutting down (finals were flushed first).
    pub const GOING_AWAY: u16 = 1001;
    /// A violation of RFC 6455 framing (reserved bits or opcodes, unmasked frames).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A client's Close frame without a status code.
    pub const NO_STATUS: u16 = 1005;
    /// Audio that is not in the announced (or any supported) format.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Malformed JSON, odd-length linear16, NaN/Inf floats.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame above the configured maximum size.
    pub const TOO_BIG: u16 = 1009;
    /// No audio for too long, an internal error, a client that never reads.
    pub const INTERNAL: u16 = 1011;
    /// Not enough session slots for the channels the audio turned out to have.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Audio encodings accepted in binary frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Signed 16-bit little-endian PCM.
    Linear16,
    /// 32-bit little-endian IEEE float PCM.
    Linear32,
    /// G.711 µ-law, 8 bits per sample.
    Mulaw,
    /// G.711 A-law, 8 bits per sample.
    Alaw,
}

impl Encoding {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "linear16" => Some(Self::Linear16),
            "linear32" => Some(Self::Linear32),
            "mulaw" => Some(Self::Mulaw),
            "alaw" => Some(Self::Alaw),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Linear16 => "linear16",
            Self::Linear32 => "linear32",
            Self::Mulaw => "mulaw",
            Self::Alaw => "alaw",
        }
    }

    /// Bytes per sample of one channel.
    pub fn sample_bytes(self) -> usize {
        match self {
            Self::Linear16 => 2,
            Self::Linear32 => 4,
            Self::Mulaw | Self::Alaw => 1,
        }
    }
}

// The wire audio's limits belong to the PCM decoder, which enforces them
// for WAV headers too; the query parameters are checked against the same.
pub use crate::audio::pcm::{MAX_CHANNELS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE};

/// The query parameters of `/v1/listen`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenParams {
    /// `None`: a WAV header is expected at the start of the stream.
    pub encoding: Option<Encoding>,
    pub sample_rate: Option<u32>,
    pub channels: u16,
    pub multichannel: bool,
    pub interim_results: bool,
    /// Silence (ms) that ends an utterance; `None` when `endpointing=false`.
    pub endpointing_ms: Option<u32>,
    pub utterance_end_ms: Option<u32>,
    pub vad_events: bool,
    pub language: Option<String>,
    /// Words to bias the decoder towards (they become the prompt).
    pub keyterms: Vec<String>,
    pub punctuate: bool,
    pub smart_format: bool,
    /// Accepted for compatibility; the daemon serves the model it loaded.
    pub model: Option<String>,
    /// Pre-recorded only: group the words into utterances, split at pauses
    /// of at least `utt_split` seconds.
    pub utterances: bool,
    pub utt_split: f64,
    /// `/v2/listen` (Deepgram Flux): turn events instead of results.
    pub turns: bool,
    /// `/v2/listen`'s end-of-turn settings (ignored on `/v1/listen`).
    pub thresholds: Thresholds,
}

/// When `/v2/listen` ends a turn (Deepgram Flux's parameters and ranges).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// End-of-turn confidence that ends a turn, 0.5–1.0.
    pub eot_threshold: f64,
    /// End-of-turn confidence that announces `EagerEndOfTurn`, 0.3–0.9;
    /// `None`: no eager events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eager_eot_threshold: Option<f64>,
    /// Silence that ends a turn whatever the confidence, 500–60000 ms.
    pub eot_timeout_ms: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { eot_threshold: 0.7, eager_eot_threshold: None, eot_timeout_ms: 5000 }
    }
}

impl Thresholds {
    /// The thresholds after a `Configure`'s changes, or why they cannot be.
    pub fn apply(&self, changes: &[(String, String)]) -> Result<Thresholds, ParamError> {
        let mut t = *self;
        for (k, v) in changes {
            if !t.set(k, v)? {
                return Err(ParamError::new(k, "not a threshold (eot_threshold, eager_eot_threshold, eot_timeout_ms)"));
            }
        }
        Ok(t)
    }

    /// Applies one parameter (query or `Configure`); `false` when `k` is
    /// not a threshold.
    fn set(&mut self, k: &str, value: &str) -> Result<bool, ParamError> {
        match k {
            "eot_threshold" => self.eot_threshold = parse_fraction(k, value, 0.5..=1.0)?,
            "eager_eot_threshold" => self.eager_eot_threshold = Some(parse_fraction(k, value, 0.3..=0.9)?),
            "eot_timeout_ms" => self.eot_timeout_ms = parse_in_range(k, value, 500..=60_000, "ms")?,
            _ => return Ok(false),
        }
        if self.eager_eot_threshold.is_some_and(|e| e > self.eot_threshold) {
            return Err(ParamError::new(k, "eager_eot_threshold must not exceed eot_threshold"));
        }
        Ok(true)
    }
}

/// Default silence that ends an utterance. Deepgram's default is 10 ms of
/// its own VAD; ours has a 200 ms hangover, and splitting a sentence at every
/// breath costs Whisper its context, so the default is longer.
pub const DEFAULT_ENDPOINTING_MS: u32 = 500;

/// Deepgram's default pause between utterances (`utt_split`), seconds.
pub const DEFAULT_UTT_SPLIT: f64 = 0.8;

/// A query parameter that was rejected: HTTP 400 with this as JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid query parameter `{param}`: {reason}")]
pub struct ParamError {
    pub param: String,
    pub reason: String,
}

impl ParamError {
    pub fn new(param: &str, reason: impl Into<String>) -> Self {
        ParamError { param: param.to_string(), reason: reason.into() }
    }

    /// The HTTP 400 body.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "err_code": "INVALID_QUERY_PARAMETER",
            "err_msg": self.to_string(),
            "param": self.param,
            "reason": self.reason,
        })
        .to_string()
    }
}

impl Default for ListenParams {
    fn default() -> Self {
        ListenParams {
            encoding: None,
            sample_rate: None,
            channels: 1,
            multichannel: false,
            interim_results: false,
            endpointing_ms: Some(DEFAULT_ENDPOINTING_MS),
            utterance_end_ms: None,
            vad_events: false,
            language: None,
            keyterms: Vec::new(),
            // Deepgram's default: bare lower-case words in `transcript`
            // (`punctuated_word` always carries Whisper's own form).
            punctuate: false,
            smart_format: false,
            model: None,
            utterances: false,
            utt_split: DEFAULT_UTT_SPLIT,
            turns: false,
            thresholds: Thresholds::default(),
        }
    }
}

/// Parameters that may be given more than once (Deepgram's lists).
const REPEATABLE: [&str; 4] = ["keyterm", "keywords", "tag", "extra"];

impl ListenParams {
    /// Parses a raw query string (without the `?`). Unknown parameters are
    /// ignored, as Deepgram does (frameworks pass through settings such as
    /// `filler_words` or `diarize=false` that do not apply here); every known
    /// one is checked, and a single-valued one given twice is refused rather
    /// than silently taking one of the values.
    pub fn parse(query: &str) -> Result<Self, ParamError> {
        let mut p = ListenParams::default();
        let mut seen: Vec<String> = Vec::new();
        for pair in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(k).map_err(|e| ParamError::new(k, e))?;
            let value = percent_decode(v).map_err(|e| ParamError::new(&key, e))?;
            if !REPEATABLE.contains(&key.as_str()) {
                if seen.contains(&key) {
                    return Err(ParamError::new(&key, "given more than once"));
                }
                seen.push(key.clone());
            }
            p.set(&key, &value)?;
        }
        if p.encoding.is_some() && p.sample_rate.is_none() {
            return Err(ParamError::new("sample_rate", "required when `encoding` is given"));
        }
        Ok(p)
    }

    /// Applies one parameter.
    fn set(&mut self, k: &str, value: &str) -> Result<(), ParamError> {
        match k {
            "encoding" => self.encoding = Some(parse_encoding(k, value)?),
            "sample_rate" => {
                self.sample_rate = Some(parse_in_range(k, value, MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE, "Hz")?)
            }
            "channels" => self.channels = parse_in_range(k, value, 1..=MAX_CHANNELS, "channels")?,
            "multichannel" => self.multichannel = parse_bool(k, value)?,
            "interim_results" => self.interim_results = parse_bool(k, value)?,
            "vad_events" => self.vad_events = parse_bool(k, value)?,
            "punctuate" => self.punctuate = parse_bool(k, value)?,
            "smart_format" => self.smart_format = parse_bool(k, value)?,
            "endpointing" => self.endpointing_ms = parse_endpointing(k, value)?,
            // Deepgram documents 1000 ms as the useful minimum but accepts
            // less, and frameworks send less: so do we.
            "utterance_end_ms" => self.utterance_end_ms = Some(parse_in_range(k, value, 1..=60_000, "ms")?),
            "language" => self.language = Some(parse_language(k, value)?),
            "keyterm" | "keywords" => self.add_keyterm(k, value)?,
            "model" => self.model = Some(value.to_string()),
            "utterances" => self.utterances = parse_bool(k, value)?,
            "utt_split" => self.utt_split = parse_seconds(k, value, 0.01..=60.0)?,
            _ => {
                self.thresholds.set(k, value)?;
            }
        }
        Ok(())
    }

    fn add_keyterm(&mut self, k: &str, value: &str) -> Result<(), ParamError> {
        let term = value.trim();
        if term.len() > 200 {
            return Err(ParamError::new(k, "a key term is at most 200 bytes"));
        }
        if term.is_empty() {
            return Ok(());
        }
        if self.keyterms.len() >= 100 {
            return Err(ParamError::new(k, "at most 100 key terms"));
        }
        // Deepgram's `keywords` carry an optional `:boost`.
        let term = if k == "keywords" { term.split(':').next().unwrap_or(term) } else { term };
        self.keyterms.push(term.to_string());
        Ok(())
    }
}

fn parse_encoding(k: &str, value: &str) -> Result<Encoding, ParamError> {
    Encoding::parse(value)
        .ok_or_else(|| ParamError::new(k, format!("`{value}` is not one of linear16, linear32, mulaw, alaw")))
}

/// An integer within `range`; `unit` names it in the error.
fn parse_in_range<T>(k: &str, value: &str, range: std::ops::RangeInclusive<T>, unit: &str) -> Result<T, ParamError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let n: T = value.parse().map_err(|_| ParamError::new(k, format!("`{value}` is not an integer")))?;
    if !range.contains(&n) {
        return Err(ParamError::new(k, format!("{n} is outside {}–{} {unit}", range.start(), range.end())));
    }
    Ok(n)
}

fn parse_endpointing(k: &str, value: &str) -> Result<Option<u32>, ParamError> {
    match value {
        "false" => Ok(None),
        "true" => Ok(Some(DEFAULT_ENDPOINTING_MS)),
        _ => {
            let ms: u32 = value
                .parse()
                .map_err(|_| ParamError::new(k, format!("`{value}` is neither milliseconds nor false")))?;
            if ms > 60_000 {
                return Err(ParamError::new(k, "at most 60000 ms"));
            }
            Ok(Some(ms))
        }
    }
}

/// A language code; `en-US` becomes `en`: Whisper knows languages, not regions.
fn parse_language(k: &str, value: &str) -> Result<String, ParamError> {
    let ok = !value.is_empty()
        && value.len() <= 16
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(ParamError::new(k, format!("`{value}` is not a language code")));
    }
    Ok(value.split(['-', '_']).next().unwrap_or(value).to_ascii_lowercase())
}

/// A number within `range`.
fn parse_fraction(k: &str, value: &str, range: std::ops::RangeInclusive<f64>) -> Result<f64, ParamError> {
    let x: f64 = value.parse().map_err(|_| ParamError::new(k, format!("`{value}` is not a number")))?;
    if !range.contains(&x) {
        return Err(ParamError::new(k, format!("{x} is outside {}–{}", range.start(), range.end())));
    }
    Ok(x)
}

/// Seconds (a decimal number) within `range`.
fn parse_seconds(k: &str, value: &str, range: std::ops::RangeInclusive<f64>) -> Result<f64, ParamError> {
    let s: f64 = value.parse().map_err(|_| ParamError::new(k, format!("`{value}` is not a number of seconds")))?;
    if !range.contains(&s) {
        return Err(ParamError::new(k, format!("{s} is outside {}–{} s", range.start(), range.end())));
    }
    Ok(s)
}

fn parse_bool(param: &str, v: &str) -> Result<bool, ParamError> {
    match v {
        "true" | "" => Ok(true),
        "false" => Ok(false),
        _ => Err(ParamError::new(param, format!("`{v}` is neither true nor false"))),
    }
}

/// `application/x-www-form-urlencoded` decoding of one key or value.
fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or("bad percent escape")?;
                out.push(byte);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "not UTF-8".to_string())
}

/// A text message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    KeepAlive,
    Finalize,
    CloseStream,
    /// Settings changed mid-stream (answered with `ConfigureSuccess` or
    /// `ConfigureFailure`, never by ending the session).
    Configure(Configure),
    /// A well-formed message of a type we do not handle.
    Unknown(String),
}

/// A `Configure` message of `/v1/listen`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Configure {
    /// `None` keeps the current key terms; `Some([])` clears them.
    pub keyterms: Option<Vec<String>>,
    /// `/v2/listen`'s `thresholds` object, as (name, value) pairs; checked
    /// by [`Thresholds::apply`] against the ones in force.
    pub thresholds: Vec<(String, String)>,
    /// Why it cannot be applied (a bad value, or a setting this server
    /// cannot change mid-stream); the session goes on unchanged.
    pub problem: Option<String>,
}

impl Configure {
    fn parse(v: &serde_json::Value) -> Configure {
        let mut c = Configure::default();
        let unsupported: Vec<&str> = v
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .filter(|k| !["type", "keyterms", "thresholds"].contains(k))
            .collect();
        if !unsupported.is_empty() {
            c.problem =
                Some(format!("cannot change {} during a stream (only keyterms, thresholds)", unsupported.join(", ")));
            return c;
        }
        match v.get("thresholds") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Object(t)) => {
                c.thresholds = t.iter().map(|(k, v)| (k.clone(), v.to_string().trim_matches('"').to_string())).collect()
            }
            Some(_) => {
                c.problem = Some("`thresholds` must be an object".into());
                return c;
            }
        }
        match v.get("keyterms") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Array(items)) => {
                let mut p = ListenParams::default();
                let terms: Option<Vec<&str>> = items.iter().map(|t| t.as_str()).collect();
                match terms.map(|t| t.iter().try_for_each(|t| p.add_keyterm("keyterms", t))) {
                    Some(Ok(())) => c.keyterms = Some(p.keyterms),
                    Some(Err(e)) => c.problem = Some(e.reason),
                    None => c.problem = Some("`keyterms` must be an array of strings".into()),
                }
            }
            Some(_) => c.problem = Some("`keyterms` must be an array of strings".into()),
        }
        c
    }
}

impl ClientMessage {
    /// `Err` when the text is not a JSON object with a string `type`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("malformed JSON message: {e}"))?;
        let Some(kind) = v.get("type").and_then(|t| t.as_str()) else {
            return Err("a message needs a string `type`".into());
        };
        Ok(match kind {
            "KeepAlive" => Self::KeepAlive,
            "Finalize" => Self::Finalize,
            "CloseStream" => Self::CloseStream,
            "Configure" => Self::Configure(Configure::parse(&v)),
            _ => Self::Unknown(kind.to_string()),
        })
    }

    pub fn to_json(&self) -> String {
        let kind = match self {
            Self::KeepAlive => "KeepAlive",
            Self::Finalize => "Finalize",
            Self::CloseStream => "CloseStream",
            Self::Configure(_) => "Configure",
            Self::Unknown(k) => k,
        };
        serde_json::json!({ "type": kind }).to_string()
    }
}

/// One word of a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireWord {
    /// Lower case, without punctuation.
    pub word: String,
    pub start: f64,
    pub end: f64,
    pub confidence: f64,
    pub punctuated_word: String,
}

impl WireWord {
    /// A word as Whisper wrote it (with its punctuation and case).
    pub fn new(punctuated: &str, start: f64, end: f64, probability: f32) -> WireWord {
        WireWord {
            word: normalize(punctuated),
            start,
            end,
            confidence: crate::audio::round3(f64::from(probability)),
            punctuated_word: punctuated.to_string(),
        }
    }
}

/// Lower case, letters, digits and apostrophes only: Deepgram's `word`, and
/// what the streaming policy compares.
pub fn normalize(text: &str) -> String {
    normal_chars(text).collect()
}

/// The characters of [`normalize`]'s result, without collecting them.
pub fn normal_chars(text: &str) -> impl Iterator<Item = char> + '_ {
    text.chars().filter(|c| c.is_alphanumeric() || *c == '\'').flat_map(char::to_lowercase)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alternative {
    pub transcript: String,
    pub confidence: f64,
    pub words: Vec<WireWord>,
}

impl Alternative {
    /// The words and their transcript: punctuated and cased as Whisper
    /// wrote them when `punctuate`, else Deepgram's bare lower-case words.
    pub fn of(words: Vec<WireWord>, punctuate: bool) -> Alternative {
        let text = |w: &WireWord| if punctuate { w.punctuated_word.clone() } else { w.word.clone() };
        let transcript = words.iter().map(text).collect::<Vec<_>>().join(" ");
        let confidence =
            if words.is_empty() { 0.0 } else { words.iter().map(|w| w.confidence).sum::<f64>() / words.len() as f64 };
        Alternative { transcript, confidence: crate::audio::round3(confidence), words }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Channel {
    pub alternatives: Vec<Alternative>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub arch: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMetadata {
    pub request_id: String,
    pub model_info: ModelInfo,
    pub model_uuid: String,
}

/// `POST /v1/listen`'s answer: Deepgram's pre-recorded response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prerecorded {
    pub metadata: PrerecordedMetadata,
    pub results: PrerecordedResults,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrerecordedMetadata {
    pub transaction_key: String,
    pub request_id: String,
    /// Of the request body, as sent.
    pub sha256: String,
    pub created: String,
    /// Seconds of audio.
    pub duration: f64,
    pub channels: u32,
    pub models: Vec<String>,
    pub model_info: std::collections::BTreeMap<String, ModelInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrerecordedResults {
    /// One per channel with `multichannel=true`, else one for the mix.
    pub channels: Vec<Channel>,
    /// With `utterances=true`: the words of every channel, grouped at pauses.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub utterances: Option<Vec<Utterance>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Utterance {
    pub start: f64,
    pub end: f64,
    pub confidence: f64,
    pub channel: u32,
    pub transcript: String,
    pub words: Vec<WireWord>,
    pub id: String,
}

/// Messages the server sends. `type` tags them as Deepgram does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ServerMessage {
    Results {
        /// `[channel, channel count]`.
        channel_index: Vec<u32>,
        duration: f64,
        start: f64,
        is_final: bool,
        speech_final: bool,
        from_finalize: bool,
        channel: Channel,
        metadata: ResultMetadata,
    },
    SpeechStarted {
        channel: Vec<u32>,
        timestamp: f64,
    },
    UtteranceEnd {
        channel: Vec<u32>,
        last_word_end: f64,
    },
    Metadata {
        transaction_key: String,
        request_id: String,
        /// Of the audio bytes received, as sent.
        sha256: String,
        created: String,
        duration: f64,
        channels: u32,
        /// Model UUIDs, each described in `model_info`.
        models: Vec<String>,
        model_info: std::collections::BTreeMap<String, ModelInfo>,
        /// scribed: audio received but not yet transcribed when the stream
        /// ended (the worst over the session), seconds.
        lag_seconds: f64,
        /// scribed: final words sent.
        words: u64,
    },
    ConfigureSuccess {
        request_id: String,
        /// The key terms now in effect.
        keyterms: Vec<String>,
        /// `/v2/listen`: the end-of-turn thresholds now in effect.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        thresholds: Option<Thresholds>,
    },
    ConfigureFailure {
        request_id: String,
        description: String,
    },
    Error {
        /// Machine-readable error kind.
        variant: String,
        description: String,
        message: String,
    },
}

impl ServerMessage {
    pub fn error(variant: &str, description: impl Into<String>) -> Self {
        let d = description.into();
        ServerMessage::Error { variant: variant.to_string(), message: d.clone(), description: d }
    }

    pub fn to_json(&self) -> String {
        // Serialising plain structs of strings and numbers cannot fail
        // (non-finite floats become `null`).
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// The transcript of a `Results` message, if it is one.
    pub fn transcript(&self) -> Option<&str> {
        match self {
            ServerMessage::Results { channel, .. } => channel.alternatives.first().map(|a| a.transcript.as_str()),
            _ => None,
        }
    }
}

/// Why a session ends, with the error message and close code it gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    BadAudio(String),
    #[error("{0}")]
    UnsupportedAudio(String),
    #[error("{0}")]
    BadMessage(String),
    #[error("frame of {got} bytes exceeds the {max}-byte limit")]
    FrameTooBig { got: usize, max: usize },
    #[error("no audio or KeepAlive for {0} s")]
    NoAudioTimeout(u64),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("websocket protocol error: {0}")]
    Protocol(String),
    #[error("{0}")]
    Busy(String),
}

impl SessionError {
    pub fn close_code(&self) -> u16 {
        match self {
            Self::BadAudio(_) | Self::BadMessage(_) => close::INVALID_PAYLOAD,
            Self::UnsupportedAudio(_) => close::UNSUPPORTED_DATA,
            Self::FrameTooBig { .. } => close::TOO_BIG,
            Self::NoAudioTimeout(_) | Self::Internal(_) => close::INTERNAL,
            Self::Protocol(_) => close::PROTOCOL_ERROR,
            Self::Busy(_) => close::TRY_AGAIN_LATER,
        }
    }

    pub fn variant(&self) -> &'static str {
        match self {
            Self::BadAudio(_) => "BAD_AUDIO",
            Self::UnsupportedAudio(_) => "UNSUPPORTED_AUDIO",
            Self::BadMessage(_) => "BAD_MESSAGE",
            Self::FrameTooBig { .. } => "FRAME_TOO_BIG",
            Self::NoAudioTimeout(_) => "NET-0001",
            Self::Internal(_) => "INTERNAL",
            Self::Protocol(_) => "PROTOCOL_ERROR",
            Self::Busy(_) => "TOO_MANY_SESSIONS",
        }
    }

    pub fn message(&self) -> ServerMessage {
        ServerMessage::error(self.variant(), self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_defaults_and_values() {
        // What LiveKit and Pipecat pass through: accepted, the inapplicable ignored.
        let frameworks = "utterance_end_ms=500&no_delay=true&filler_words=false&numerals=true&profanity_filter=false\
            &mip_opt_out=true&diarize=false&dictation=false&detect_entities=false&tag=a&tag=b&keyterm=x&keyterm=y";
        let p = ListenParams::parse(frameworks).unwrap();
        assert_eq!(p.utterance_end_ms, Some(500));
        assert_eq!(p.keyterms, vec!["x", "y"]);
        let p = ListenParams::parse("").unwrap();
        assert_eq!(p.encoding, None);
        assert_eq!(p.endpointing_ms, Some(DEFAULT_ENDPOINTING_MS));
        let p = ListenParams::parse(
            "encoding=mulaw&sample_rate=8000&channels=2&interim_results=true&endpointing=false&keyterm=Kennedy&keyterm=New%20York&foo=bar&language=en-US",
        )
        .unwrap();
        assert_eq!(p.encoding, Some(Encoding::Mulaw));
        assert_eq!(p.sample_rate, Some(8000));
        assert_eq!(p.channels, 2);
        assert!(p.interim_results);
        assert_eq!(p.endpointing_ms, None);
        assert_eq!(p.keyterms, vec!["Kennedy", "New York"]);
        assert_eq!(p.language.as_deref(), Some("en"));
    }

    #[test]
    fn params_rejected_with_the_name() {
        for (q, param) in [
            ("encoding=opus&sample_rate=16000", "encoding"),
            ("encoding=linear16", "sample_rate"),
            ("encoding=linear16&sample_rate=4000", "sample_rate"),
            ("encoding=linear16&sample_rate=abc", "sample_rate"),
            ("channels=0", "channels"),
            ("interim_results=maybe", "interim_results"),
            ("endpointing=-5", "endpointing"),
            ("utterance_end_ms=0", "utterance_end_ms"),
            ("sample_rate=16000&encoding=linear16&sample_rate=8000", "sample_rate"),
            ("interim_results=true&interim_results=false", "interim_results"),
            ("language=e%20n", "language"),
        ] {
            let e = ListenParams::parse(q).unwrap_err();
            assert_eq!(e.param, param, "{q}");
            assert!(e.to_json().contains(param));
        }
    }

    #[test]
    fn client_messages() {
        assert_eq!(ClientMessage::parse(r#"{"type":"KeepAlive"}"#), Ok(ClientMessage::KeepAlive));
        assert_eq!(ClientMessage::parse(r#"{"type":"Foo"}"#), Ok(ClientMessage::Unknown("Foo".into())));
        assert!(ClientMessage::parse("{nope").is_err());
        assert!(ClientMessage::parse(r#"{"kind":1}"#).is_err());
    }

    #[test]
    fn server_message_shape() {
        let m = ServerMessage::error("X", "y");
        let v: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(v["type"], "Error");
        assert_eq!(SessionError::FrameTooBig { got: 2, max: 1 }.close_code(), 1009);
    }
}
