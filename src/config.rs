//! The daemon's configuration: a TOML file and command-line flags, merged
//! (flags win) and validated once into [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::audio::vad::VadKind;

/// The TOML file, every key optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub model: Option<PathBuf>,
    pub max_sessions: Option<usize>,
    pub api_keys: Option<Vec<String>>,
    /// A file of API keys, one per line (`#` comments), read at start-up and
    /// on SIGHUP: keeps keys out of the process list.
    pub api_key_file: Option<PathBuf>,
    /// Browser origins (`https://app.example`, or `*`) allowed to open
    /// sessions besides the daemon's own captions page.
    pub allowed_origins: Option<Vec<String>>,
    pub threads: Option<usize>,
    /// Seconds without audio or KeepAlive before a session is closed.
    pub no_audio_timeout_s: Option<f64>,
    /// Largest websocket frame/message accepted, bytes.
    pub max_frame_bytes: Option<usize>,
    /// Largest `POST /v1/listen` body, bytes (413 above).
    pub max_upload_bytes: Option<usize>,
    /// Audio buffered per session channel before backpressure, seconds.
    pub ring_seconds: Option<f64>,
    /// New audio between two hypotheses, milliseconds.
    pub step_ms: Option<u64>,
    /// Hypotheses computed at once across all sessions (each uses every
    /// compute thread); the others queue, flushes first.
    pub compute_slots: Option<usize>,
    /// When a streaming step's words become final: `"agreement"` (the
    /// default: when two hypotheses in a row agree, LocalAgreement-2) or
    /// `"alignment"` (also words the alignment heads place 0.5 s or more
    /// before the end of the audio, AlignAtt-style, one step sooner). See
    /// `CommitRule` and `policy`.
    pub commit: Option<CommitRule>,
    /// Longest a final word waits for the end of its line (a sentence end
    /// or a pause after it), milliseconds; 0: finals go as soon as a step
    /// agrees on them, wherever that is. See `policy`.
    pub line_hold_ms: Option<u64>,
    /// How much of an ended utterance's audio, with its final words, stays
    /// in the window that decodes the next one (while the pause between
    /// them is under 2 s), milliseconds; 0: each utterance is decoded
    /// alone. See `PolicyConfig::carry`.
    pub context_carry_ms: Option<u64>,
    /// How much speech after the last final word streaming hypotheses may
    /// hear without agreeing on more before the utterance is cut there
    /// (everything final but its last second), milliseconds; 0: only the
    /// cut when the utterance fills Whisper's window. See
    /// `PolicyConfig::stall_cut`.
    pub stall_cut_ms: Option<u64>,
    /// Which voice activity detector segments the audio: `"neural"` (the
    /// default, earshot's network: tells speech from noise, ends
    /// utterances at real pauses) or `"energy"` (an adaptive energy gate:
    /// any sound well above the background). See `audio::vad`.
    pub vad: Option<VadKind>,
    /// On the CPU: the encoder's linear layers in int8 (`model::LoadOptions`;
    /// see `DEFAULT_INT8_ENCODER`, on by default). `false`: f32.
    pub int8_encoder: Option<bool>,
    /// Seconds a stalled socket write may take before the session ends.
    pub write_timeout_s: Option<f64>,
    /// Seconds given to sessions to flush on shutdown.
    pub shutdown_grace_s: Option<f64>,
    /// On a GPU: seconds with no session after which the arena's device
    /// memory is given back (the next session takes it again, waiting for
    /// the weights to be copied back). Unset: held while the daemon runs.
    pub idle_release_s: Option<f64>,
}

/// When a streaming step's words become final (see `policy`).
///
/// Measured side by side (`benches/results/streaming.md`, issue 9's files,
/// one session): the alignment rule gave final p95 1.31–1.33 s against
/// 1.66 s for agreement alone, at a streaming WER of 5.31–6.76 % (agreement:
/// 7.25 %, offline greedy 7.25 %). It is not the default: under overload
/// (`tests/reliability.rs`, 8 real-time sessions on 2 cores) one step that
/// jumped over six words ("mr quilter is the i'd like to welcome his
/// gospel") was final at once, where agreement waits for a second
/// hypothesis that does not repeat the jump.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitRule {
    /// LocalAgreement-2 alone: two hypotheses in a row agree.
    #[default]
    Agreement,
    /// Also words that end 0.5 s or more before the audio, at once.
    Alignment,
}

/// What the flags set (`None`: not given).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub model: Option<PathBuf>,
    pub max_sessions: Option<usize>,
    pub api_keys: Vec<String>,
    pub api_key_file: Option<PathBuf>,
    pub threads: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub model: PathBuf,
    pub max_sessions: usize,
    pub api_keys: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub threads: Option<usize>,
    pub no_audio_timeout: Duration,
    pub max_frame_bytes: usize,
    pub max_upload_bytes: usize,
    pub ring_seconds: f64,
    pub step_ms: u64,
    pub compute_slots: usize,
    pub commit: CommitRule,
    /// `line_hold_ms` in seconds; `None`: no hold.
    pub line_hold: Option<f64>,
    /// `context_carry_ms` in seconds; `None`: no carry.
    pub carry: Option<f64>,
    /// `stall_cut_ms` in seconds; `None`: no early cut.
    pub stall_cut: Option<f64>,
    pub vad: VadKind,
    pub int8_encoder: bool,
    pub write_timeout: Duration,
    pub shutdown_grace: Duration,
    /// `idle_release_s` (GPU only).
    pub idle_release: Option<Duration>,
    /// A session whose keyterms include `session::PANIC_KEYTERM` panics in
    /// its worker. Never from the config file: `main` sets it from
    /// `SCRIBED_FAULT_INJECTION`, which only tests set, to prove that one
    /// session's panic ends that session alone.
    pub fault_injection: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("API key file {path}: {source}")]
    KeyFile { path: PathBuf, source: std::io::Error },
    #[error("invalid `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// How long a final word may wait for its line's end, by default. Measured
/// in `benches/results/streaming.md` (line holds).
pub const DEFAULT_LINE_HOLD_MS: u64 = 600;

/// The detector that segments live streams, by default (offline decoding
/// keeps the energy gate of `VadConfig::default`, as faster-whisper's
/// results were matched with it). Measured in `benches/results/streaming.md`
/// (the neural VAD and the context carry).
pub const DEFAULT_VAD: VadKind = VadKind::Neural;

/// How much of an ended utterance stays in the next one's window, by
/// default: with the 2 s of padding, the next utterance's first 2 s still
/// fit the 10 s the encoder reads anyway (`decode::AudioCtx`); past that
/// the window grows a second at a time.
pub const DEFAULT_CONTEXT_CARRY_MS: u64 = 6000;

/// How much speech after the last final word hypotheses may hear without
/// agreeing before the utterance is cut there, by default. Measured in
/// `benches/results/streaming.md` ("The stall cut timed from the last final
/// word", and "The stall cut with the step's own hypothesis"): apollo11's
/// p95 3.03-3.25 s at 2.5 s, 3.71-5.57 s at 4 s (one session). At 2 s four
/// sessions' apollo11 p95 was 0.4-0.7 s lower, but jfk.wav streamed fast
/// through the multilingual base model then cut at its "ask not" pause on
/// one misreading ("asked a lot", `tests/daemon.rs`) in 2 runs of 3; a
/// 2 s cut that waits for three hypotheses disputing the words passed that
/// test but did no better on apollo11 ("A cut's words go at once").
pub const DEFAULT_STALL_CUT_MS: u64 = 2500;

/// Whether the daemon's CPU encoder is int8 by default (where the CPU has
/// AVX-512 VNNI; elsewhere it stays f32). Measured side by side in
/// `benches/results/streaming.md` ("The int8 encoder", "int8 by default"):
/// four sessions on two cores, final p50 / p95 1.58 / 2.85 s in f32 against
/// 1.17 / 2.08 s, worst lag 3.7 against 2.5 s; one session, CPU per audio
/// second 12–23 % lower. Streaming WER is about a point higher
/// (7.25–8.21 % against 5.80–6.76 %, the same two files), within a point of
/// offline greedy (7.25 %); offline on the 32 shared files int8 made 81
/// word errors, f32 84. Word times move by 4 ms on average (p95 20 ms).
/// `scribed transcribe` stays f32 unless asked (`--int8-encoder`): offline,
/// it matches faster-whisper's float32 word for word.
pub const DEFAULT_INT8_ENCODER: bool = true;

/// One hypothesis at a time: on the CPU each already uses every core.
pub const DEFAULT_COMPUTE_SLOTS: usize = 1;

impl Config {
    /// Reads `file` (when given) and applies the flags over it.
    pub fn load(file: Option<&Path>, flags: Overrides, default_model: PathBuf) -> Result<Config, ConfigError> {
        let f = match file {
            None => FileConfig::default(),
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), source: Box::new(e) })?
            }
        };
        let key_file = flags.api_key_file.clone().or_else(|| f.api_key_file.clone());
        let mut config = Self::merge(f, flags, default_model)?;
        if let Some(path) = key_file {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::KeyFile { path, source })?;
            config.api_keys.extend(parse_key_file(&text));
        }
        Ok(config)
    }

    pub fn merge(f: FileConfig, flags: Overrides, default_model: PathBuf) -> Result<Config, ConfigError> {
        let invalid = |key, reason: String| ConfigError::Invalid { key, reason };
        let listen_s = flags.listen.or(f.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen = listen_s.parse().map_err(|_| invalid("listen", format!("`{listen_s}` is not ADDRESS:PORT")))?;
        let max_sessions = flags.max_sessions.or(f.max_sessions).unwrap_or(4);
        if !(1..=4096).contains(&max_sessions) {
            return Err(invalid("max_sessions", format!("{max_sessions} is outside 1–4096")));
        }
        let api_keys = if flags.api_keys.is_empty() { f.api_keys.unwrap_or_default() } else { flags.api_keys };
        if api_keys.iter().any(|k| k.is_empty()) {
            return Err(invalid("api_keys", "an API key is empty".into()));
        }
        let allowed_origins = f.allowed_origins.unwrap_or_default();
        if let Some(bad) = allowed_origins.iter().find(|o| o.as_str() != "*" && !o.contains("://")) {
            return Err(invalid("allowed_origins", format!("`{bad}` is not an origin such as https://app.example")));
        }
        let secs = |key, v: Option<f64>, default: f64| -> Result<Duration, ConfigError> {
            let v = v.unwrap_or(default);
            if !(v.is_finite() && v > 0.0 && v < 86_400.0) {
                return Err(invalid(key, format!("{v} s is not a positive duration")));
            }
            Ok(Duration::from_secs_f64(v))
        };
        let ring_seconds = f.ring_seconds.unwrap_or(20.0);
        if !(ring_seconds.is_finite() && (1.0..=600.0).contains(&ring_seconds)) {
            return Err(invalid("ring_seconds", format!("{ring_seconds} is outside 1–600")));
        }
        let step_ms = f.step_ms.unwrap_or(600);
        if !(100..=5000).contains(&step_ms) {
            return Err(invalid("step_ms", format!("{step_ms} is outside 100–5000")));
        }
        // A duration in milliseconds that 0 turns off, in seconds.
        let optional_ms = |key, v: Option<u64>, default: u64, max: u64| -> Result<Option<f64>, ConfigError> {
            let ms = v.unwrap_or(default);
            if ms > max {
                return Err(invalid(key, format!("{ms} is outside 0–{max}")));
            }
            Ok((ms > 0).then(|| ms as f64 / 1000.0))
        };
        let line_hold = optional_ms("line_hold_ms", f.line_hold_ms, DEFAULT_LINE_HOLD_MS, 10_000)?;
        let carry = optional_ms("context_carry_ms", f.context_carry_ms, DEFAULT_CONTEXT_CARRY_MS, 10_000)?;
        let stall_cut = optional_ms("stall_cut_ms", f.stall_cut_ms, DEFAULT_STALL_CUT_MS, 20_000)?;
        let compute_slots = f.compute_slots.unwrap_or(DEFAULT_COMPUTE_SLOTS);
        if !(1..=256).contains(&compute_slots) {
            return Err(invalid("compute_slots", format!("{compute_slots} is outside 1–256")));
        }
        // 256 MiB: 2.3 hours of 16 kHz 16-bit mono WAV, days of MP3.
        let max_upload_bytes = f.max_upload_bytes.unwrap_or(256 << 20);
        if !(1024..=4 << 30).contains(&max_upload_bytes) {
            return Err(invalid("max_upload_bytes", format!("{max_upload_bytes} is outside 1 KiB–4 GiB")));
        }
        let max_frame_bytes = f.max_frame_bytes.unwrap_or(4 << 20);
        if !(1024..=256 << 20).contains(&max_frame_bytes) {
            return Err(invalid("max_frame_bytes", format!("{max_frame_bytes} is outside 1 KiB–256 MiB")));
        }
        Ok(Config {
            listen,
            model: flags.model.or(f.model).unwrap_or(default_model),
            max_sessions,
            api_keys,
            allowed_origins,
            threads: flags.threads.or(f.threads),
            no_audio_timeout: secs("no_audio_timeout_s", f.no_audio_timeout_s, 10.0)?,
            max_frame_bytes,
            max_upload_bytes,
            ring_seconds,
            step_ms,
            compute_slots,
            commit: f.commit.unwrap_or_default(),
            line_hold,
            carry,
            stall_cut,
            vad: f.vad.unwrap_or(DEFAULT_VAD),
            int8_encoder: f.int8_encoder.unwrap_or(DEFAULT_INT8_ENCODER),
            write_timeout: secs("write_timeout_s", f.write_timeout_s, 30.0)?,
            shutdown_grace: secs("shutdown_grace_s", f.shutdown_grace_s, 30.0)?,
            idle_release: f.idle_release_s.map(|v| secs("idle_release_s", Some(v), 0.0)).transpose()?,
            fault_injection: false,
        })
    }
}

/// One key per line; blank lines and `#` comments are skipped.
fn parse_key_file(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file() {
        let f: FileConfig =
            toml::from_str("listen = \"0.0.0.0:9000\"\nmax_sessions = 8\napi_keys = [\"a\"]\nstep_ms = 800\n").unwrap();
        let c =
            Config::merge(f.clone(), Overrides { max_sessions: Some(2), ..Default::default() }, "m".into()).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.max_sessions, 2);
        assert_eq!(c.api_keys, vec!["a"]);
        assert_eq!(c.step_ms, 800);
        let c = Config::merge(f, Overrides { api_keys: vec!["b".into()], ..Default::default() }, "m".into()).unwrap();
        assert_eq!(c.api_keys, vec!["b"]);
        assert!(toml::from_str::<FileConfig>("nope = 1").is_err());
        assert!(Config::merge(
            FileConfig::default(),
            Overrides { max_sessions: Some(0), ..Default::default() },
            "m".into()
        )
        .is_err());
    }

    /// A config file's text merged with no flags.
    fn merge(text: &str) -> Result<Config, ConfigError> {
        Config::merge(toml::from_str(text).unwrap(), Overrides::default(), "m".into())
    }

    #[test]
    fn key_file_and_origins() {
        let keys: Vec<String> = parse_key_file("# keys\n\n  alpha \nbeta\n").collect();
        assert_eq!(keys, vec!["alpha", "beta"]);
        assert_eq!(merge("allowed_origins = [\"https://app.example\", \"*\"]").unwrap().allowed_origins.len(), 2);
        assert!(merge("allowed_origins = [\"app.example\"]").is_err());
    }

    #[test]
    fn the_encoder_is_int8_unless_turned_off() {
        assert!(merge("").unwrap().int8_encoder);
        assert!(!merge("int8_encoder = false").unwrap().int8_encoder);
        assert!(toml::from_str::<FileConfig>("int8_encoder = \"yes\"").is_err());
    }

    #[test]
    fn live_streams_use_the_neural_vad_unless_told_otherwise() {
        assert_eq!(merge("").unwrap().vad, VadKind::Neural);
        assert_eq!(merge("vad = \"energy\"").unwrap().vad, VadKind::Energy);
        assert!(toml::from_str::<FileConfig>("vad = \"silero\"").is_err());
    }

    #[test]
    fn context_carry_is_on_by_default_off_at_zero_and_bounded() {
        assert_eq!(merge("").unwrap().carry, Some(DEFAULT_CONTEXT_CARRY_MS as f64 / 1000.0));
        assert_eq!(merge("context_carry_ms = 0").unwrap().carry, None);
        let e = merge("context_carry_ms = 10001").unwrap_err().to_string();
        assert!(e.contains("context_carry_ms"), "{e}");
    }

    #[test]
    fn stall_cut_is_on_by_default_off_at_zero_and_bounded() {
        assert_eq!(merge("").unwrap().stall_cut, Some(DEFAULT_STALL_CUT_MS as f64 / 1000.0));
        assert_eq!(merge("stall_cut_ms = 0").unwrap().stall_cut, None);
        assert_eq!(merge("stall_cut_ms = 2500").unwrap().stall_cut, Some(2.5));
        let e = merge("stall_cut_ms = 20001").unwrap_err().to_string();
        assert!(e.contains("stall_cut_ms"), "{e}");
    }

    #[test]
    fn line_hold_is_on_by_default_off_at_zero_and_bounded() {
        assert_eq!(merge("").unwrap().line_hold, Some(DEFAULT_LINE_HOLD_MS as f64 / 1000.0));
        assert_eq!(merge("line_hold_ms = 0").unwrap().line_hold, None);
        assert_eq!(merge("line_hold_ms = 3000").unwrap().line_hold, Some(3.0));
        let e = merge("line_hold_ms = 10001").unwrap_err().to_string();
        assert!(e.contains("line_hold_ms"), "{e}");
        assert!(toml::from_str::<FileConfig>("line_hold_ms = -1").is_err());
    }

    #[test]
    fn idle_release_is_off_unless_set_and_then_a_positive_duration() {
        assert_eq!(merge("").unwrap().idle_release, None);
        assert_eq!(merge("idle_release_s = 300").unwrap().idle_release, Some(Duration::from_secs(300)));
        for bad in ["idle_release_s = 0", "idle_release_s = -1", "idle_release_s = nan"] {
            let e = merge(bad).unwrap_err().to_string();
            assert!(e.contains("idle_release_s"), "{bad}: {e}");
        }
    }
}
