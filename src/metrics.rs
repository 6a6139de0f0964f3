//! Every metric the daemon exports, in one place, rendered in the Prometheus
//! text format at `GET /metrics`.
//!
//! Plain atomics: the hot paths (audio frames, results) only add to a
//! counter; rendering happens at scrape time.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub sessions_started_total: AtomicU64,
    pub sessions_active: AtomicU64,
    pub rejected_busy_total: AtomicU64,
    pub rejected_auth_total: AtomicU64,
    pub rejected_params_total: AtomicU64,
    pub session_errors_total: AtomicU64,
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
    /// Current lag of each live session channel, ms (received − processed).
    lags: Mutex<HashMap<u64, u64>>,
}

/// Adds one to a gauge for as long as it lives: the gauge is right whether
/// its owner returns, errs or panics.
pub struct GaugeGuard<'a>(&'a AtomicU64);

impl<'a> GaugeGuard<'a> {
    pub fn inc(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Relaxed);
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
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

    pub fn render(&self, max_sessions: usize) -> String {
        let mut s = String::new();
        let mut counter = |name: &str, help: &str, kind: &str, v: f64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        let c = |a: &AtomicU64| a.load(Relaxed) as f64;
        counter("scribed_connections_total", "HTTP connections accepted.", "counter", c(&self.connections_total));
        counter(
            "scribed_sessions_started_total",
            "Websocket sessions started.",
            "counter",
            c(&self.sessions_started_total),
        );
        counter("scribed_sessions_active", "Websocket sessions in progress.", "gauge", c(&self.sessions_active));
        counter("scribed_sessions_max", "Configured session slots.", "gauge", max_sessions as f64);
        counter(
            "scribed_rejected_busy_total",
            "Upgrades refused with 503 (no free slot).",
            "counter",
            c(&self.rejected_busy_total),
        );
        counter("scribed_rejected_auth_total", "Requests refused with 401.", "counter", c(&self.rejected_auth_total));
        counter(
            "scribed_rejected_params_total",
            "Upgrades refused with 400.",
            "counter",
            c(&self.rejected_params_total),
        );
        counter(
            "scribed_session_errors_total",
            "Sessions ended by an error.",
            "counter",
            c(&self.session_errors_total),
        );
        counter(
            "scribed_worker_panics_total",
            "Session workers that panicked.",
            "counter",
            c(&self.worker_panics_total),
        );
        counter(
            "scribed_connection_panics_total",
            "Session network tasks that panicked (the session ended with an error).",
            "counter",
            c(&self.connection_panics_total),
        );
        counter(
            "scribed_audio_received_seconds_total",
            "Audio received (after resampling).",
            "counter",
            c(&self.audio_received_us) / 1e6,
        );
        counter("scribed_transcriptions_total", "Hypotheses computed.", "counter", c(&self.transcriptions_total));
        counter("scribed_inference_seconds_total", "Time spent transcribing.", "counter", c(&self.inference_us) / 1e6);
        counter("scribed_results_interim_total", "Interim results sent.", "counter", c(&self.results_interim_total));
        counter("scribed_results_final_total", "Final results sent.", "counter", c(&self.results_final_total));
        counter("scribed_words_final_total", "Final words sent.", "counter", c(&self.words_final_total));
        let (max, sum) = self
            .lags
            .lock()
            .map(|l| (l.values().copied().max().unwrap_or(0), l.values().sum::<u64>()))
            .unwrap_or((0, 0));
        counter(
            "scribed_lag_seconds_max",
            "Worst lag of a live session (audio received minus transcribed).",
            "gauge",
            max as f64 / 1e3,
        );
        counter("scribed_lag_seconds_sum", "Sum of the live sessions' lag.", "gauge", sum as f64 / 1e3);
        s
    }
}
