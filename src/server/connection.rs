//! One websocket session on the network side: frames → decode → downmix
//! (or split channels) → resample to 16 kHz → ring; worker results → socket.
//!
//! The loop never waits on inference. When a ring is full it stops reading
//! the socket (TCP then slows the client down) and waits for the worker to
//! make room, while still forwarding results, so a client sending faster
//! than real time is throttled and no audio is dropped.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::panic::AssertUnwindSafe;

use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use super::Shared;
use crate::audio::pcm::{PcmDecoder, PcmError, PcmFormat};
use crate::audio::resample::Resampler;
use crate::audio::vad::VadConfig;
use crate::config::CommitRule;
use crate::decode::Cancel;
use crate::metrics::Metrics;
use crate::policy::PolicyConfig;
use crate::protocol::{
    close, ClientMessage, Configure, Encoding, ListenParams, ModelInfo, ServerMessage, SessionError, Thresholds,
};
use crate::session::turns::SharedThresholds;
use crate::session::{panic_message, ChannelSummary, Keyterms, Output, Pipe, SlotLease, WorkerSettings, PANIC_KEYTERM};

/// `commit = "alignment"`: a step's new words that end this long before the
/// audio does are final at once (`PolicyConfig::alignment_commit`), seconds.
/// Word ends come from the alignment heads (DTW over their cross-attention),
/// a coarser place than SimulStreaming's per-token attention, hence half a
/// second rather than a few encoder frames.
const ALIGNMENT_COMMIT_S: f64 = 0.5;

/// The sending half of a websocket (or, in tests, of a channel).
pub trait WsSink: Sink<Message, Error = tungstenite::Error> + Unpin + Send {}
impl<T: Sink<Message, Error = tungstenite::Error> + Unpin + Send> WsSink for T {}

/// The receiving half of a websocket (or, in tests, of a channel).
pub trait WsStream: Stream<Item = Result<Message, tungstenite::Error>> + Unpin + Send {}
impl<T: Stream<Item = Result<Message, tungstenite::Error>> + Unpin + Send> WsStream for T {}

/// Protocol "errors" that only say the TCP connection went away.
fn is_connection_loss(p: &tungstenite::error::ProtocolError) -> bool {
    use tungstenite::error::ProtocolError as P;
    matches!(p, P::ResetWithoutClosingHandshake | P::ReceivedAfterClosing | P::SendAfterClosing)
}

/// How the session ended, for the log line.
#[derive(Debug)]
enum End {
    /// We closed it: `CloseStream` flushed, or shutdown.
    Closed(u16),
    /// The client sent a Close frame; ours went back at once.
    ClientClosed(u16),
    Error(SessionError),
    Vanished,
}

impl End {
    /// The close code the session ended with; `None` when the connection
    /// was lost.
    fn close_code(&self) -> Option<u16> {
        match self {
            End::Closed(code) | End::ClientClosed(code) => Some(*code),
            End::Error(e) => Some(e.close_code()),
            End::Vanished => None,
        }
    }

    fn error_kind(&self) -> Option<&'static str> {
        match self {
            End::Error(e) => Some(e.variant()),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            End::Closed(code) => format!("closed {code}"),
            End::ClientClosed(code) => format!("client closed {code}"),
            End::Error(e) => format!("error {}: {e}", e.close_code()),
            End::Vanished => "client gone".into(),
        }
    }
}

/// Serves one upgraded `/v1/listen` connection to its end. `slot` is the
/// admission permit: it goes to the workers, which hold it until they stop.
/// Written against any sink and stream of websocket messages, so that tests
/// drive a session through channels.
pub async fn serve(
    sink: impl WsSink,
    stream: impl WsStream,
    params: ListenParams,
    shared: Arc<Shared>,
    request_id: String,
    id: u64,
    slot: OwnedSemaphorePermit,
) {
    let mut shutdown = shared.shutdown.clone();
    let m = shared.metrics.clone();
    let started = Instant::now();
    tracing::info!(
        request_id,
        encoding = params.encoding.map(Encoding::name),
        rate = params.sample_rate,
        channels = params.channels,
        "session start"
    );
    let mut s = Session::new(sink, params, shared.clone(), request_id.clone(), id, slot);
    // A bug on this side must end this session alone, with an error and a
    // close frame, and leave the gauges right (the guards above).
    let end = match AssertUnwindSafe(s.run(stream, &mut shutdown)).catch_unwind().await {
        Ok(end) => end,
        Err(panic) => {
            m.connection_panics_total.fetch_add(1, Ordering::Relaxed);
            let what = panic_message(panic.as_ref());
            tracing::error!(request_id, panic = %what, "session connection panicked");
            s.fail(SessionError::Internal(format!("the connection task panicked: {what}"))).await
        }
    };
    s.tally.end(&end);
    let sum = s.summary;
    tracing::info!(
        request_id,
        end = %end.describe(),
        wall_s = started.elapsed().as_secs_f64(),
        audio_s = sum.audio_seconds,
        words = sum.words,
        lag_s = sum.max_lag_seconds,
        hypotheses = sum.transcriptions,
        "session end"
    );
}

/// The session's place in `scribed_sessions_active` and its end in the
/// counters. Given up just before the close frame goes out (and at the
/// latest when the session is dropped, however it ends), so that a client
/// which has seen its close never scrapes its session as still running.
struct Tally {
    metrics: Arc<Metrics>,
    open: bool,
}

impl Tally {
    fn open(metrics: Arc<Metrics>) -> Tally {
        metrics.sessions_started_total.fetch_add(1, Ordering::Relaxed);
        metrics.sessions_active.fetch_add(1, Ordering::Relaxed);
        Tally { metrics, open: true }
    }

    /// Counts the session's end, once.
    fn end(&mut self, end: &End) {
        if std::mem::replace(&mut self.open, false) {
            self.metrics.session_ended(end.close_code(), end.error_kind());
            self.metrics.sessions_active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        if self.open {
            self.metrics.sessions_active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// What one turn of the session loop decided.
type Turn = Option<End>;

struct Session<S: WsSink> {
    tally: Tally,
    sink: S,
    params: ListenParams,
    shared: Arc<Shared>,
    request_id: String,
    id: u64,
    decoder: PcmDecoder,
    /// Interleaved samples of a partial multi-channel frame.
    interleaved: Vec<f32>,
    resamplers: Vec<Resampler>,
    pipes: Vec<Pipe>,
    space: Arc<Notify>,
    out_tx: Option<mpsc::Sender<Output>>,
    out_rx: mpsc::Receiver<Output>,
    /// The admission permit until the workers start; then it is the lease
    /// every worker holds.
    slot: Option<OwnedSemaphorePermit>,
    /// Stops the workers' transcriptions once this connection is gone.
    cancel: Cancel,
    /// The key terms in force (query, then `Configure`).
    keyterms: Keyterms,
    /// `/v2/listen`: the end-of-turn thresholds in force (query, then
    /// `Configure`); `None` on `/v1/listen`.
    turns: Option<SharedThresholds>,
    /// `/v2/listen`: the `sequence_id` of the next message.
    sequence: u64,
    /// Of every audio byte received, for `Metadata.sha256`.
    audio_sha: Sha256,
    /// Close code to use once the workers have flushed.
    closing: Option<u16>,
    close_sent: bool,
    done: usize,
    summary: ChannelSummary,
    scratch: Vec<f32>,
}

impl<S: WsSink> Drop for Session<S> {
    /// Whatever ended the connection, the workers stop: a vanished client's
    /// audio is not transcribed for nobody.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl<S: WsSink> Session<S> {
    fn new(
        sink: S,
        params: ListenParams,
        shared: Arc<Shared>,
        request_id: String,
        id: u64,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        let decoder = super::raw_format(&params).map_or_else(PcmDecoder::wav, PcmDecoder::raw);
        let (out_tx, out_rx) = mpsc::channel(64);
        let keyterms = Keyterms::new(params.keyterms.clone());
        let turns = params.turns.then(|| SharedThresholds::new(params.thresholds));
        Session {
            tally: Tally::open(shared.metrics.clone()),
            keyterms,
            turns,
            sequence: 0,
            sink,
            params,
            shared,
            request_id,
            id,
            decoder,
            interleaved: Vec::new(),
            resamplers: Vec::new(),
            pipes: Vec::new(),
            space: Arc::new(Notify::new()),
            out_tx: Some(out_tx),
            out_rx,
            slot: Some(slot),
            cancel: Cancel::default(),
            audio_sha: Sha256::new(),
            closing: None,
            close_sent: false,
            done: 0,
            summary: ChannelSummary::default(),
            scratch: Vec::new(),
        }
    }

    /// The session loop. It reads the socket whenever the rings have room,
    /// during the final flush too, so pings and a client's Close are always
    /// answered; it stops reading only while audio waits for ring space.
    async fn run(&mut self, mut stream: impl WsStream, shutdown: &mut watch::Receiver<bool>) -> End {
        let timeout = self.shared.config.no_audio_timeout;
        let mut deadline = tokio::time::Instant::now() + timeout;
        let mut was_reading = true;
        if *shutdown.borrow() {
            self.begin_close(close::GOING_AWAY);
        }
        if self.turns.is_some() {
            let connected = serde_json::json!({ "type": "Connected", "request_id": self.request_id });
            if !self.send_json(connected.to_string()).await {
                return End::Vanished;
            }
        }
        loop {
            self.maybe_send_close();
            if self.closing.is_some() && self.close_sent && self.done == self.pipes.len() {
                return self.finish().await;
            }
            let backlog = self.pipes.iter().any(|p| !p.pending.is_empty());
            let reading = !backlog;
            // The no-audio timer is about the client: it runs only while we
            // read, and restarts when we read again after backpressure.
            if reading && !was_reading {
                deadline = tokio::time::Instant::now() + timeout;
            }
            was_reading = reading;
            let turn = tokio::select! {
                biased;
                out = self.out_rx.recv() => self.on_output(out).await,
                changed = shutdown.changed(), if self.closing.is_none() => {
                    if changed.is_ok() && *shutdown.borrow() {
                        self.begin_close(close::GOING_AWAY);
                    }
                    None
                }
                _ = self.space.notified(), if backlog => {
                    for p in &mut self.pipes {
                        p.push_pending();
                    }
                    None
                }
                msg = stream.next(), if reading => {
                    if matches!(msg, Some(Ok(Message::Binary(_) | Message::Text(_)))) {
                        deadline = tokio::time::Instant::now() + timeout;
                    }
                    self.on_frame(msg).await
                }
                _ = tokio::time::sleep_until(deadline), if self.closing.is_none() && reading => {
                    Some(self.fail(SessionError::NoAudioTimeout(timeout.as_secs())).await)
                }
            };
            if let Some(end) = turn {
                return end;
            }
        }
    }

    /// A worker's result, completion or failure.
    async fn on_output(&mut self, out: Option<Output>) -> Turn {
        match out {
            Some(Output::Message(json)) => (!self.send_json(json).await).then_some(End::Vanished),
            Some(Output::Done(sum)) => {
                self.done += 1;
                self.summary.words += sum.words;
                self.summary.audio_seconds = self.summary.audio_seconds.max(sum.audio_seconds);
                self.summary.max_lag_seconds = self.summary.max_lag_seconds.max(sum.max_lag_seconds);
                self.summary.transcriptions += sum.transcriptions;
                None
            }
            Some(Output::Failed(why)) => Some(self.fail(SessionError::Internal(why)).await),
            // Only when no worker was started and we hold no sender.
            None => Some(self.finish().await),
        }
    }

    /// One frame (or the end, or an error) from the client.
    async fn on_frame(&mut self, msg: Option<Result<Message, tungstenite::Error>>) -> Turn {
        let e = match msg {
            Some(Ok(Message::Binary(b))) => match self.audio(&b) {
                Ok(()) => return None,
                Err(e) => e,
            },
            Some(Ok(Message::Text(t))) => return self.on_text(t.as_str()).await,
            Some(Ok(Message::Close(frame))) => {
                // tungstenite has queued the echo of the client's Close; send it now.
                let code = frame.map_or(close::NO_STATUS, |f| u16::from(f.code));
                let end = End::ClientClosed(code);
                self.tally.end(&end);
                let limit = self.shared.config.write_timeout;
                let _ = tokio::time::timeout(limit, self.sink.flush()).await;
                return Some(end);
            }
            Some(Ok(_)) => {
                // A ping: tungstenite queued the pong; flush it now, not at our next write.
                let _ = tokio::time::timeout(self.shared.config.write_timeout, self.sink.flush()).await;
                return None;
            }
            Some(Err(tungstenite::Error::Capacity(e))) => {
                let got = match e {
                    tungstenite::error::CapacityError::MessageTooLong { size, .. } => size,
                    _ => 0,
                };
                SessionError::FrameTooBig { got, max: self.shared.config.max_frame_bytes }
            }
            Some(Err(tungstenite::Error::Utf8)) => SessionError::BadMessage("invalid UTF-8 in a text frame".into()),
            Some(Err(tungstenite::Error::Protocol(p))) if !is_connection_loss(&p) => {
                SessionError::Protocol(p.to_string())
            }
            Some(Err(_)) | None => return Some(End::Vanished),
        };
        Some(self.fail(e).await)
    }

    /// A client text message.
    async fn on_text(&mut self, text: &str) -> Turn {
        let msg = match ClientMessage::parse(text) {
            Ok(m) => m,
            Err(why) => return Some(self.fail(SessionError::BadMessage(why)).await),
        };
        match msg {
            ClientMessage::KeepAlive => {}
            // After CloseStream the flush is under way: later requests have nothing to act on.
            ClientMessage::Finalize | ClientMessage::CloseStream if self.closing.is_some() => {}
            ClientMessage::Finalize => self.finalize(),
            ClientMessage::CloseStream => self.begin_close(close::NORMAL),
            ClientMessage::Configure(c) => {
                let reply = self.configure(c);
                if !self.send_json(reply.to_json()).await {
                    return Some(End::Vanished);
                }
            }
            // Flux's way to end a turn now: the worker's `Finalize`.
            ClientMessage::Unknown(kind) if self.turns.is_some() && kind == "ForceEndTurn" => self.finalize(),
            ClientMessage::Unknown(kind) if self.turns.is_some() => {
                // Flux's errors are fatal to its clients: an unknown message is only logged.
                tracing::debug!(request_id = self.request_id, kind, "unknown /v2/listen message ignored");
            }
            ClientMessage::Unknown(kind) => {
                let shown: String = kind.chars().take(64).collect();
                let more = if shown.len() < kind.len() { "…" } else { "" };
                let msg =
                    ServerMessage::error("UNKNOWN_MESSAGE", format!("unknown message type `{shown}{more}` ignored"));
                if !self.send_json(msg.to_json()).await {
                    return Some(End::Vanished);
                }
            }
        }
        None
    }

    fn finalize(&self) {
        for p in &self.pipes {
            p.finalize();
        }
    }

    /// Applies a `Configure` message whole or not at all: the reply says
    /// what is now in force.
    fn configure(&mut self, c: Configure) -> ServerMessage {
        let request_id = self.request_id.clone();
        match self.requested_thresholds(&c) {
            Err(description) => ServerMessage::ConfigureFailure { request_id, description },
            Ok(thresholds) => {
                if let (Some(shared), Some(t)) = (&self.turns, thresholds) {
                    shared.set(t);
                }
                if let Some(terms) = c.keyterms {
                    self.keyterms.set(terms);
                }
                let keyterms = self.keyterms.get().to_vec();
                let thresholds = self.turns.as_ref().map(SharedThresholds::get);
                ServerMessage::ConfigureSuccess { request_id, keyterms, thresholds }
            }
        }
    }

    /// The thresholds a `Configure` asks for (`None`: unchanged), or why it
    /// cannot be applied.
    fn requested_thresholds(&self, c: &Configure) -> Result<Option<Thresholds>, String> {
        if let Some(problem) = &c.problem {
            return Err(problem.clone());
        }
        if c.thresholds.is_empty() {
            return Ok(None);
        }
        let Some(current) = &self.turns else { return Err("thresholds apply to /v2/listen only".into()) };
        current.get().apply(&c.thresholds).map(Some).map_err(|e| e.to_string())
    }

    fn model_info(&self) -> ModelInfo {
        ModelInfo {
            name: self.shared.engine.name().into(),
            version: env!("CARGO_PKG_VERSION").into(),
            arch: "whisper".into(),
        }
    }

    /// Decodes one binary frame and hands its samples to the pipes.
    fn audio(&mut self, frame: &[u8]) -> Result<(), SessionError> {
        if frame.is_empty() || self.closing.is_some() {
            return Ok(()); // documented: empty frames and audio after CloseStream are ignored
        }
        self.audio_sha.update(frame);
        let had_format = self.decoder.format().is_some();
        self.decoder.decode(frame, &mut self.interleaved).map_err(|e| match e {
            PcmError::NotWav(_) | PcmError::UnsupportedWav(_) => SessionError::UnsupportedAudio(e.to_string()),
            _ => SessionError::BadAudio(e.to_string()),
        })?;
        let Some(format) = self.decoder.format() else { return Ok(()) };
        if !had_format || self.pipes.is_empty() {
            self.start_pipes(format)?;
        }
        let c = format.channels as usize;
        let whole = self.interleaved.len() / c * c;
        if whole == 0 {
            return Ok(());
        }
        let m = &self.shared.metrics;
        m.audio_received_us.fetch_add((whole / c) as u64 * 1_000_000 / format.sample_rate as u64, Ordering::Relaxed);
        let split = self.pipes.len() > 1;
        for (ch, pipe) in self.pipes.iter_mut().enumerate() {
            self.scratch.clear();
            let frames = self.interleaved[..whole].chunks_exact(c);
            if split {
                self.scratch.extend(frames.map(|f| f[ch]));
            } else if c == 1 {
                self.scratch.extend_from_slice(&self.interleaved[..whole]);
            } else {
                self.scratch.extend(frames.map(|f| f.iter().sum::<f32>() / c as f32));
            }
            self.resamplers[ch]
                .process(&self.scratch, &mut pipe.pending)
                .map_err(|e| SessionError::Internal(format!("resampling: {e}")))?;
            pipe.push_pending();
        }
        self.interleaved.drain(..whole);
        Ok(())
    }

    fn start_pipes(&mut self, format: PcmFormat) -> Result<(), SessionError> {
        let n = if self.params.multichannel { format.channels as usize } else { 1 };
        let Some(out) = self.out_tx.take() else { return Ok(()) };
        let lease = self.lease(n)?;
        let cfg = &self.shared.config;
        let step_frames = cfg.step_ms / 10;
        let alignment_commit = (cfg.commit == CommitRule::Alignment).then_some(ALIGNMENT_COMMIT_S);
        let policy = if self.params.turns {
            // The turn state ends utterances (`session::turns`); it needs
            // every hypothesis, and no endpoint of the policy's own.
            PolicyConfig {
                step_frames,
                endpoint_frames: None,
                interim_results: true,
                alignment_commit,
                // Turns carry their own text; `EndOfTurn` flushes it.
                line_hold: None,
                carry: cfg.carry,
                stall_cut: cfg.stall_cut,
                ..PolicyConfig::default()
            }
        } else {
            PolicyConfig {
                step_frames,
                endpoint_frames: self.params.endpointing_ms.map(|ms| (ms as u64 / 10).max(1)),
                utterance_end: self.params.utterance_end_ms.map(|ms| ms as f64 / 1000.0),
                vad_events: self.params.vad_events,
                interim_results: self.params.interim_results,
                alignment_commit,
                line_hold: cfg.line_hold,
                carry: cfg.carry,
                stall_cut: cfg.stall_cut,
                ..PolicyConfig::default()
            }
        };
        for ch in 0..n {
            let settings = WorkerSettings {
                policy: policy.clone(),
                vad: VadConfig::of_kind(cfg.vad),
                keyterms: self.keyterms.clone(),
                language: self.params.language.clone(),
                punctuate: self.params.punctuate || self.params.smart_format,
                request_id: self.request_id.clone(),
                channel_index: ch as u32,
                channel_count: n as u32,
                metrics_key: self.id * 64 + ch as u64,
                panic_on_hypothesis: cfg.fault_injection && self.params.keyterms.iter().any(|k| k == PANIC_KEYTERM),
                cancel: self.cancel.clone(),
                turns: self.turns.clone(),
                scheduler: self.shared.scheduler.clone(),
            };
            let resampler =
                Resampler::new(format.sample_rate).map_err(|e| SessionError::UnsupportedAudio(e.to_string()))?;
            let ring = (cfg.ring_seconds * f64::from(crate::audio::SAMPLE_RATE)) as usize;
            let pipe = Pipe::spawn(
                self.shared.engine.clone(),
                settings,
                ring,
                self.space.clone(),
                out.clone(),
                self.shared.metrics.clone(),
                lease.clone(),
            )
            .map_err(|e| SessionError::Internal(format!("starting the session worker: {e}")))?;
            self.resamplers.push(resampler);
            self.pipes.push(pipe);
        }
        Ok(())
    }

    /// The admission permit, grown to one slot per worker: a multichannel
    /// session costs what its channels cost. Raw audio was admitted with all
    /// its channels; a WAV header may announce more.
    fn lease(&mut self, workers: usize) -> Result<SlotLease, SessionError> {
        let mut permit =
            self.slot.take().ok_or_else(|| SessionError::Internal("admission slot already used".into()))?;
        let missing = workers.saturating_sub(permit.num_permits());
        if missing > 0 {
            let more = self.shared.slots.clone().try_acquire_many_owned(missing as u32).map_err(|_| {
                self.shared.metrics.rejected_busy_total.fetch_add(1, Ordering::Relaxed);
                SessionError::Busy(format!("{workers} channels need {workers} session slots; not enough are free"))
            })?;
            permit.merge(more);
        }
        Ok(Arc::new(permit))
    }

    /// Stops reading; the pipes are told to flush once their backlog is in.
    fn begin_close(&mut self, code: u16) {
        if self.closing.is_some() {
            return;
        }
        self.closing = Some(code);
        // The resampler's delayed tail is audio too.
        for (r, p) in self.resamplers.iter_mut().zip(&mut self.pipes) {
            let _ = r.flush(&mut p.pending);
        }
        self.out_tx = None;
    }

    fn maybe_send_close(&mut self) {
        if self.closing.is_none() || self.close_sent {
            return;
        }
        if self.pipes.iter_mut().all(|p| p.push_pending()) {
            for p in &self.pipes {
                p.close();
            }
            self.close_sent = true;
        }
    }

    /// Every worker flushed: `Metadata` (on `/v1/listen`), then the close frame.
    async fn finish(&mut self) -> End {
        let code = self.closing.unwrap_or(close::NORMAL);
        if self.turns.is_some() {
            return self.close_with(code).await;
        }
        let audio = crate::audio::seconds(self.pipes.iter().map(|p| p.pushed()).max().unwrap_or(0));
        self.summary.audio_seconds = self.summary.audio_seconds.max(audio);
        let meta = ServerMessage::Metadata {
            transaction_key: "deprecated".into(),
            request_id: self.request_id.clone(),
            created: super::created_now(),
            duration: (self.summary.audio_seconds * 1000.0).round() / 1000.0,
            channels: self.params.channels as u32,
            sha256: self.audio_sha.clone().finalize().iter().map(|b| format!("{b:02x}")).collect(),
            models: vec![self.shared.engine.uuid().into()],
            model_info: [(self.shared.engine.uuid().into(), self.model_info())].into(),
            lag_seconds: (self.summary.max_lag_seconds * 1000.0).round() / 1000.0,
            words: self.summary.words,
        };
        if !self.send_json(meta.to_json()).await {
            return End::Vanished;
        }
        self.close_with(code).await
    }

    async fn close_with(&mut self, code: u16) -> End {
        let reason = if code == close::GOING_AWAY { "server shutting down" } else { "stream closed" };
        let end = End::Closed(code);
        self.tally.end(&end);
        self.close(code, reason).await;
        end
    }

    /// Sends the error message and closes with its code.
    async fn fail(&mut self, e: SessionError) -> End {
        let json = if self.turns.is_some() {
            // Flux's shape: `code` and `description`.
            serde_json::json!({ "type": "Error", "code": e.variant(), "description": e.to_string() }).to_string()
        } else {
            e.message().to_json()
        };
        let sent = self.send_json(json).await;
        let (code, reason): (u16, String) = (e.close_code(), e.to_string().chars().take(100).collect());
        let end = End::Error(e);
        self.tally.end(&end);
        if sent {
            self.close(code, &reason).await;
        }
        end
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.to_string().into() };
        let _ = self.send(Message::Close(Some(frame))).await;
    }

    /// Sends one JSON message; on `/v2/listen` with its `sequence_id`
    /// (every message the server sends is numbered, from 0).
    async fn send_json(&mut self, mut json: String) -> bool {
        if self.turns.is_some() && json.starts_with('{') {
            json.insert_str(1, &format!("\"sequence_id\":{},", self.sequence));
            self.sequence += 1;
        }
        self.send(Message::text(json)).await
    }

    /// Sends one message; false when the client is gone or stopped reading
    /// for longer than the write timeout.
    async fn send(&mut self, msg: Message) -> bool {
        let limit: Duration = self.shared.config.write_timeout;
        matches!(tokio::time::timeout(limit, self.sink.send(msg)).await, Ok(Ok(())))
    }
}
