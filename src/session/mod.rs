//! A session: one stream's audio turned into text.
//!
//! Each channel of a session is a [`Pipe`]: the network side owns the
//! producer half of a lock-free SPSC ring (`ringbuf`) of 16 kHz samples and
//! the sending half of a control channel; a worker on its own OS thread owns
//! the consumer half, the VAD, the streaming policy and a `Transcriber` (the
//! per-stream decoder state), and sends JSON back over a bounded tokio
//! channel. The two sides meet only there: the worker never touches the
//! socket and the network task never waits on inference.
//!
//! A session's admission slot is shared by its connection and its workers
//! ([`SlotLease`]): it is free again only when the last of them has ended,
//! so work abandoned by a vanished client still counts against
//! `max_sessions` until its [`Cancel`] has stopped it.

mod reaper;
pub mod scheduler;
pub mod turns;
pub mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ringbuf::traits::{Producer, Split};
use ringbuf::{HeapProd, HeapRb};
use tokio::sync::{mpsc, Notify};

use crate::audio::vad::VadConfig;
use crate::decode::Cancel;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::policy::PolicyConfig;

/// The keyterm that makes a session's worker panic under fault injection
/// (tests only: see `WorkerSettings::panic_on_hypothesis`).
pub const PANIC_KEYTERM: &str = "__scribed_fault_panic__";

/// Holds one or more admission permits; the slots are free once every clone
/// (the connection's and each worker thread's) is dropped.
pub type SlotLease = Arc<tokio::sync::OwnedSemaphorePermit>;

/// The text of a caught panic's payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Key terms shared by a session's connection (which may replace them) and
/// its workers (which read them at each hypothesis).
#[derive(Debug, Clone, Default)]
pub struct Keyterms(Arc<std::sync::RwLock<Arc<Vec<String>>>>);

impl Keyterms {
    pub fn new(terms: Vec<String>) -> Self {
        Keyterms(Arc::new(std::sync::RwLock::new(Arc::new(terms))))
    }

    pub fn get(&self) -> Arc<Vec<String>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, terms: Vec<String>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(terms);
    }
}

/// Network → worker. Every message carries the count of samples pushed into
/// the ring before it, so the worker acts on exactly the audio that came
/// before it on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Audio up to `upto` is in the ring.
    Audio { upto: u64 },
    /// Flush everything up to `upto` (`Finalize`, which arrived `at`).
    Finalize { upto: u64, at: std::time::Instant },
    /// Flush everything up to `upto`, report and stop.
    Close { upto: u64 },
}

/// Worker → network.
#[derive(Debug)]
pub enum Output {
    /// A server message, already serialised.
    Message(String),
    /// The worker flushed and stopped.
    Done(ChannelSummary),
    /// The worker failed (an error or a panic); the session ends.
    Failed(String),
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ChannelSummary {
    pub words: u64,
    pub audio_seconds: f64,
    /// Worst lag seen: audio received but not yet transcribed, seconds.
    pub max_lag_seconds: f64,
    pub transcriptions: u64,
}

/// Per-session settings the worker needs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub policy: PolicyConfig,
    pub vad: VadConfig,
    /// The prompt's key terms; `Configure` replaces them mid-stream.
    pub keyterms: Keyterms,
    pub language: Option<String>,
    pub punctuate: bool,
    pub request_id: String,
    pub channel_index: u32,
    pub channel_count: u32,
    /// Metrics key of this channel (unique in the process).
    pub metrics_key: u64,
    /// Panic at the first hypothesis (fault injection, tests only).
    pub panic_on_hypothesis: bool,
    /// Set by the connection when it ends: the worker stops what it is doing.
    pub cancel: Cancel,
    /// `/v2/listen`: turn events under these thresholds (which `Configure`
    /// may change) instead of results.
    pub turns: Option<turns::SharedThresholds>,
    /// The daemon's one queue of hypotheses.
    pub scheduler: Arc<scheduler::Scheduler>,
}

/// The network side of one channel.
pub struct Pipe {
    prod: HeapProd<f32>,
    ctl: std::sync::mpsc::Sender<Control>,
    /// Samples pushed into the ring so far (shared with the worker: lag).
    received: Arc<AtomicU64>,
    pushed: u64,
    /// Samples waiting for room in the ring (backpressure).
    pub pending: Vec<f32>,
}

impl Pipe {
    /// Starts the worker thread of one channel; the thread holds `slot`
    /// until it ends.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        engine: Arc<dyn Engine>,
        settings: WorkerSettings,
        ring_samples: usize,
        space: Arc<Notify>,
        out: mpsc::Sender<Output>,
        metrics: Arc<Metrics>,
        slot: SlotLease,
    ) -> std::io::Result<Pipe> {
        let (prod, cons) = HeapRb::<f32>::new(ring_samples.max(16_000)).split();
        let (ctl, ctl_rx) = std::sync::mpsc::channel();
        let received = Arc::new(AtomicU64::new(0));
        let ctx =
            worker::Context { engine, settings, cons, ctl: ctl_rx, space, received: received.clone(), out, metrics };
        // The thread learns its own handle so that the reaper can join it
        // before the slot is free (see `reaper`).
        let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel::<std::thread::JoinHandle<()>>(1);
        let thread = std::thread::Builder::new().name("scribed-session".into()).spawn(move || {
            worker::run(ctx);
            match handle_rx.recv() {
                Ok(me) => reaper::release_after_exit(me, slot),
                Err(_) => drop(slot),
            }
        })?;
        let _ = handle_tx.send(thread);
        Ok(Pipe { prod, ctl, received, pushed: 0, pending: Vec::new() })
    }

    /// Moves as much pending audio into the ring as fits. Returns whether
    /// everything went in.
    pub fn push_pending(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let n = self.prod.push_slice(&self.pending);
        if n > 0 {
            self.pending.drain(..n);
            self.pushed += n as u64;
            self.received.store(self.pushed, Ordering::Release);
            // A worker that is gone shows up as a closed output channel.
            let _ = self.ctl.send(Control::Audio { upto: self.pushed });
        }
        self.pending.is_empty()
    }

    pub fn finalize(&self) {
        let _ = self.ctl.send(Control::Finalize { upto: self.pushed, at: std::time::Instant::now() });
    }

    pub fn close(&self) {
        let _ = self.ctl.send(Control::Close { upto: self.pushed });
    }

    pub fn pushed(&self) -> u64 {
        self.pushed
    }
}
