//! Every metric the daemon exports, in one place, rendered in the Prometheus
//! text format at `GET /metrics`.
//!
//! Plain atomics: the hot paths (audio frames, results) only add to a
//! counter or a histogram bucket; rendering happens at scrape time. Labelled
//! counters (errors by kind, closes by code) change only when a session ends
//! and sit behind a mutex.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use crate::engine::DeviceMemory;

/// Latency buckets, seconds: the streaming targets (final p50 1.2 s, p95
/// 2 s; `Finalize` reply 0.4 / 0.8 s) fall between bounds.
const LATENCY_BUCKETS: &[f64] = &[0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0];
/// Time of one hypothesis, seconds.
const COMPUTE_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0];
/// Compute time over audio time, per session channel.
const RTF_BUCKETS: &[f64] = &[0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0];

const COUNTER: &str = "counter";
const GAUGE: &str = "gauge";

/// One unlabelled sample with its HELP and TYPE lines.
fn write_sample(s: &mut String, name: &str, help: &str, kind: &str, v: f64) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
}

fn load(a: &AtomicU64) -> f64 {
    a.load(Relaxed) as f64
}

/// A Prometheus histogram with fixed bounds: observing is two atomic adds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); the last is `+Inf`.
    counts: Box<[AtomicU64]>,
    /// Sum of the observations, in millionths.
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one value (negative values count as 0).
    pub fn observe(&self, v: f64) {
        let v = v.max(0.0);
        let i = self.bounds.iter().position(|&b| v <= b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((v * 1e6).round() as u64, Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    fn render(&self, s: &mut String, name: &str, help: &str) {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Relaxed);
            match self.bounds.get(i) {
                Some(b) => _ = writeln!(s, "{name}_bucket{{le=\"{b}\"}} {cumulative}"),
                None => _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {cumulative}"),
            }
        }
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(s, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// The capacity gauges read at scrape time from the structures that hold
/// them (the session semaphore, the compute scheduler).
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub slots_free: usize,
    pub max_sessions: usize,
    pub compute_waiting: usize,
    /// The GPU's arena and slots, when the model runs on one.
    pub device: Option<DeviceMemory>,
}

#[derive(Debug)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub sessions_started_total: AtomicU64,
    pub sessions_active: AtomicU64,
    pub rejected_busy_total: AtomicU64,
    pub rejected_auth_total: AtomicU64,
    pub rejected_params_total: AtomicU64,
    pub worker_panics_total: AtomicU64,
    /// Panics caught in a session's network task.
    pub connection_panics_total: AtomicU64,
    /// Audio received, in microseconds of 16 kHz audio.
    pub audio_received_us: AtomicU64,
    pub transcriptions_total: AtomicU64,
    /// Time spent in `Transcriber::transcribe`, microseconds.
    pub inference_us: AtomicU64,
    pub results_interim_total: AtomicU64,
    pub results_final_total: AtomicU64,
    pub words_final_total: AtomicU64,
    /// Audio seconds received after a final word's end by the time its
    /// result was sent: its latency, for a client sending in real time.
    pub final_latency: Histogram,
    /// The same for the newest word of each interim result.
    pub interim_latency: Histogram,
    /// From a `Finalize` message's arrival to its `from_finalize` result.
    pub finalize_reply: Histogram,
    /// Wall time of one hypothesis.
    pub hypothesis_time: Histogram,
    /// Compute time over audio time, per session channel, at its end.
    pub real_time_factor: Histogram,
    /// How long a hypothesis waited for its turn.
    pub compute_wait: Histogram,
    /// Current lag of each live session channel, ms (received − processed).
    lags: Mutex<HashMap<u64, u64>>,
    /// Sessions ended by an error, by its kind (the `Error` message's
    /// `variant`).
    errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Sessions ended, by the close code they got (0: no close frame).
    closes: Mutex<BTreeMap<u16, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let zero = AtomicU64::default;
        Metrics {
            connections_total: zero(),
            sessions_started_total: zero(),
            sessions_active: zero(),
            rejected_busy_total: zero(),
            rejected_auth_total: zero(),
            rejected_params_total: zero(),
            worker_panics_total: zero(),
            connection_panics_total: zero(),
            audio_received_us: zero(),
            transcriptions_total: zero(),
            inference_us: zero(),
            results_interim_total: zero(),
            results_final_total: zero(),
            words_final_total: zero(),
            final_latency: Histogram::new(LATENCY_BUCKETS),
            interim_latency: Histogram::new(LATENCY_BUCKETS),
            finalize_reply: Histogram::new(LATENCY_BUCKETS),
            hypothesis_time: Histogram::new(COMPUTE_BUCKETS),
            real_time_factor: Histogram::new(RTF_BUCKETS),
            compute_wait: Histogram::new(LATENCY_BUCKETS),
            lags: Mutex::default(),
            errors: Mutex::default(),
            closes: Mutex::default(),
        }
    }
}

impl Metrics {
    pub fn set_lag(&self, key: u64, lag_ms: u64) {
        if let Ok(mut l) = self.lags.lock() {
            l.insert(key, lag_ms);
        }
    }

    /// The worst current lag of any live session channel, ms.
    pub fn max_lag_ms(&self) -> u64 {
        self.lags.lock().map(|l| l.values().copied().max().unwrap_or(0)).unwrap_or(0)
    }

    pub fn clear_lag(&self, key: u64) {
        if let Ok(mut l) = self.lags.lock() {
            l.remove(&key);
        }
    }

    /// Counts a session's end: its close code (`None`: the client vanished)
    /// and, if it ended in error, the error's kind.
    pub fn session_ended(&self, close: Option<u16>, error: Option<&'static str>) {
        if let Ok(mut c) = self.closes.lock() {
            *c.entry(close.unwrap_or(0)).or_default() += 1;
        }
        if let Some(kind) = error {
            if let Ok(mut e) = self.errors.lock() {
                *e.entry(kind).or_default() += 1;
            }
        }
    }

    /// The Prometheus text of every metric, rendered at scrape time so that
    /// the hot paths only ever add to atomics. The gauges the daemon's own
    /// structures already count are read from them, not counted twice.
    pub fn render(&self, now: Capacity) -> String {
        let mut s = String::new();
        self.render_sessions(&mut s, now);
        self.render_refusals(&mut s);
        self.render_work(&mut s);
        self.render_lag(&mut s);
        self.render_labelled(&mut s);
        self.render_histograms(&mut s);
        s
    }

    /// Connections, sessions and the slots they hold: the capacity an
    /// operator sizes `max_sessions` by.
    fn render_sessions(&self, s: &mut String, now: Capacity) {
        for (name, help, kind, v) in [
            ("scribed_connections_total", "HTTP connections accepted.", COUNTER, load(&self.connections_total)),
            (
                "scribed_sessions_started_total",
                "Websocket sessions started.",
                COUNTER,
                load(&self.sessions_started_total),
            ),
            ("scribed_sessions_active", "Websocket sessions in progress.", GAUGE, load(&self.sessions_active)),
            ("scribed_sessions_max", "Configured session slots.", GAUGE, now.max_sessions as f64),
            (
                "scribed_slots_free",
                "Session slots free now (a multichannel session takes one per channel).",
                GAUGE,
                now.slots_free as f64,
            ),
            ("scribed_compute_waiting", "Hypotheses waiting for a compute turn.", GAUGE, now.compute_waiting as f64),
        ] {
            write_sample(s, name, help, kind, v);
        }
        let Some(d) = now.device else { return };
        for (name, help, v) in [
            ("scribed_gpu_arena_bytes", "Bytes of the GPU arena, allocated once at start-up.", d.arena_bytes as f64),
            (
                "scribed_gpu_arena_used_bytes",
                "Bytes of the arena in use: the weights and the session slots taken.",
                d.arena_used_bytes as f64,
            ),
            ("scribed_gpu_slots", "Session slots in the arena.", d.lanes as f64),
            ("scribed_gpu_slots_free", "Arena session slots free now.", d.lanes_free as f64),
        ] {
            write_sample(s, name, help, GAUGE, v);
        }
    }

    /// Requests turned away and tasks that panicked: what an alert watches.
    fn render_refusals(&self, s: &mut String) {
        for (name, help, kind, v) in [
            (
                "scribed_rejected_busy_total",
                "Upgrades refused with 503 (no free slot).",
                COUNTER,
                load(&self.rejected_busy_total),
            ),
            ("scribed_rejected_auth_total", "Requests refused with 401.", COUNTER, load(&self.rejected_auth_total)),
            ("scribed_rejected_params_total", "Upgrades refused with 400.", COUNTER, load(&self.rejected_params_total)),
            ("scribed_worker_panics_total", "Session workers that panicked.", COUNTER, load(&self.worker_panics_total)),
            (
                "scribed_connection_panics_total",
                "Session network tasks that panicked (the session ended with an error).",
                COUNTER,
                load(&self.connection_panics_total),
            ),
        ] {
            write_sample(s, name, help, kind, v);
        }
    }

    /// Audio in, transcription work done and results out.
    fn render_work(&self, s: &mut String) {
        for (name, help, kind, v) in [
            (
                "scribed_audio_received_seconds_total",
                "Audio received (after resampling).",
                COUNTER,
                load(&self.audio_received_us) / 1e6,
            ),
            ("scribed_transcriptions_total", "Hypotheses computed.", COUNTER, load(&self.transcriptions_total)),
            ("scribed_inference_seconds_total", "Time spent transcribing.", COUNTER, load(&self.inference_us) / 1e6),
            ("scribed_results_interim_total", "Interim results sent.", COUNTER, load(&self.results_interim_total)),
            ("scribed_results_final_total", "Final results sent.", COUNTER, load(&self.results_final_total)),
            ("scribed_words_final_total", "Final words sent.", COUNTER, load(&self.words_final_total)),
        ] {
            write_sample(s, name, help, kind, v);
        }
    }

    /// How far the live sessions are behind their audio, read under the
    /// lock once so that the maximum and the sum agree.
    fn render_lag(&self, s: &mut String) {
        let (max, sum) = self
            .lags
            .lock()
            .map(|l| (l.values().copied().max().unwrap_or(0), l.values().sum::<u64>()))
            .unwrap_or((0, 0));
        write_sample(
            s,
            "scribed_lag_seconds_max",
            "Worst lag of a live session (audio received minus transcribed).",
            GAUGE,
            max as f64 / 1e3,
        );
        write_sample(s, "scribed_lag_seconds_sum", "Sum of the live sessions' lag.", GAUGE, sum as f64 / 1e3);
    }

    fn render_labelled(&self, s: &mut String) {
        let name = "scribed_session_errors_total";
        let _ = writeln!(s, "# HELP {name} Sessions ended by an error, by kind.\n# TYPE {name} counter");
        for (kind, n) in self.errors.lock().map(|e| e.clone()).unwrap_or_default() {
            let _ = writeln!(s, "{name}{{kind=\"{kind}\"}} {n}");
        }
        let name = "scribed_sessions_ended_total";
        let help = "Sessions ended, by the close code sent or received (0: the connection was lost).";
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
        for (code, n) in self.closes.lock().map(|c| c.clone()).unwrap_or_default() {
            let _ = writeln!(s, "{name}{{code=\"{code}\"}} {n}");
        }
    }

    fn render_histograms(&self, s: &mut String) {
        self.final_latency.render(
            s,
            "scribed_final_latency_seconds",
            "Audio received after a final word's end by the time its result was sent (the wall-clock latency \
             of a client sending in real time).",
        );
        self.interim_latency.render(
            s,
            "scribed_interim_latency_seconds",
            "The same for the newest word of each interim result.",
        );
        self.finalize_reply.render(
            s,
            "scribed_finalize_reply_seconds",
            "From a Finalize message's arrival to its from_finalize result.",
        );
        self.hypothesis_time.render(s, "scribed_hypothesis_seconds", "Wall time of one hypothesis.");
        self.compute_wait.render(
            s,
            "scribed_compute_wait_seconds",
            "How long a hypothesis waited for a compute turn (flushes go before steps).",
        );
        self.real_time_factor.render(
            s,
            "scribed_real_time_factor",
            "Compute time over audio time of one session channel, observed when it ends.",
        );
    }
}
