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

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use super::Shared;
use crate::audio::pcm::{PcmDecoder, PcmError, PcmFormat, SampleFormat};
use crate::audio::resample::Resampler;
use crate::policy::PolicyConfig;
use crate::protocol::{close, ClientMessage, Encoding, ListenParams, ServerMessage, SessionError};
use crate::session::{ChannelSummary, Output, Pipe, WorkerSettings};

type Sink = futures_util::stream::SplitSink<WebSocketStream<TcpStream>, Message>;

/// How the session ended, for the log line.
#[derive(Debug)]
enum End {
    Closed(u16),
    Error(SessionError),
    Vanished,
}

impl End {
    fn describe(&self) -> String {
        match self {
            End::Closed(code) => format!("closed {code}"),
            End::Error(e) => format!("error {}: {e}", e.close_code()),
            End::Vanished => "client gone".into(),
        }
    }
}

/// Serves one upgraded `/v1/listen` connection to its end.
pub async fn serve(
    ws: WebSocketStream<TcpStream>,
    params: ListenParams,
    shared: Arc<Shared>,
    request_id: String,
    id: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let m = shared.metrics.clone();
    m.sessions_started_total.fetch_add(1, Ordering::Relaxed);
    m.sessions_active.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    tracing::info!(
        request_id,
        encoding = params.encoding.map(Encoding::name),
        rate = params.sample_rate,
        channels = params.channels,
        "session start"
    );
    let (sink, stream) = ws.split();
    let mut s = Session::new(sink, params, shared.clone(), request_id.clone(), id);
    let end = s.run(stream, &mut shutdown).await;
    if matches!(end, End::Error(_)) {
        m.session_errors_total.fetch_add(1, Ordering::Relaxed);
    }
    m.sessions_active.fetch_sub(1, Ordering::Relaxed);
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

struct Session {
    sink: Sink,
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
    /// Close code to use once the workers have flushed.
    closing: Option<u16>,
    close_sent: bool,
    done: usize,
    summary: ChannelSummary,
    scratch: Vec<f32>,
}

impl Session {
    fn new(sink: Sink, params: ListenParams, shared: Arc<Shared>, request_id: String, id: u64) -> Self {
        let decoder = match (params.encoding, params.sample_rate) {
            (Some(e), Some(rate)) => PcmDecoder::raw(PcmFormat {
                sample: match e {
                    Encoding::Linear16 => SampleFormat::Linear16,
                    Encoding::Linear32 => SampleFormat::Linear32,
                    Encoding::Mulaw => SampleFormat::Mulaw,
                    Encoding::Alaw => SampleFormat::Alaw,
                },
                sample_rate: rate,
                channels: params.channels,
            }),
            _ => PcmDecoder::wav(),
        };
        let (out_tx, out_rx) = mpsc::channel(64);
        Session {
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
            closing: None,
            close_sent: false,
            done: 0,
            summary: ChannelSummary::default(),
            scratch: Vec::new(),
        }
    }

    async fn run(
        &mut self,
        mut stream: futures_util::stream::SplitStream<WebSocketStream<TcpStream>>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> End {
        let timeout = self.shared.config.no_audio_timeout;
        let mut deadline = tokio::time::Instant::now() + timeout;
        if *shutdown.borrow() {
            self.begin_close(close::GOING_AWAY);
        }
        loop {
            if let Err(e) = self.maybe_send_close() {
                return self.fail(e).await;
            }
            if self.closing.is_some() && self.close_sent && self.done == self.pipes.len() {
                return self.finish().await;
            }
            let backlog = self.pipes.iter().any(|p| !p.pending.is_empty());
            let reading = self.closing.is_none() && !backlog;
            tokio::select! {
                biased;
                out = self.out_rx.recv() => match out {
                    Some(Output::Message { json, .. }) => {
                        if !self.send(Message::text(json)).await {
                            return End::Vanished;
                        }
                    }
                    Some(Output::Done(sum)) => {
                        self.done += 1;
                        self.summary.words += sum.words;
                        self.summary.audio_seconds = self.summary.audio_seconds.max(sum.audio_seconds);
                        self.summary.max_lag_seconds = self.summary.max_lag_seconds.max(sum.max_lag_seconds);
                        self.summary.transcriptions += sum.transcriptions;
                    }
                    Some(Output::Failed(why)) => return self.fail(SessionError::Internal(why)).await,
                    // Only when no worker was started and we hold no sender.
                    None => return self.finish().await,
                },
                changed = shutdown.changed(), if self.closing.is_none() => {
                    if changed.is_ok() && *shutdown.borrow() {
                        self.begin_close(close::GOING_AWAY);
                    }
                }
                _ = self.space.notified(), if backlog => {
                    for p in &mut self.pipes {
                        p.push_pending();
                    }
                }
                msg = stream.next(), if reading => {
                    match msg {
                        Some(Ok(Message::Binary(b))) => {
                            deadline = tokio::time::Instant::now() + timeout;
                            if let Err(e) = self.audio(&b) {
                                return self.fail(e).await;
                            }
                        }
                        Some(Ok(Message::Text(t))) => {
                            deadline = tokio::time::Instant::now() + timeout;
                            match ClientMessage::parse(t.as_str()) {
                                Err(why) => return self.fail(SessionError::BadMessage(why)).await,
                                Ok(ClientMessage::KeepAlive) => {}
                                Ok(ClientMessage::Finalize) => {
                                    for p in &self.pipes {
                                        p.finalize();
                                    }
                                }
                                Ok(ClientMessage::CloseStream) => self.begin_close(close::NORMAL),
                                Ok(ClientMessage::Unknown(kind)) => {
                                    let msg = ServerMessage::error("UNKNOWN_MESSAGE", format!("unknown message type `{kind}` ignored"));
                                    if !self.send(Message::text(msg.to_json())).await {
                                        return End::Vanished;
                                    }
                                }
                            }
                        }
                        Some(Ok(Message::Close(_))) | None => return End::Vanished,
                        Some(Ok(_)) => {} // ping/pong: tungstenite answers pings itself
                        Some(Err(tungstenite::Error::Capacity(e))) => {
                            let got = match e {
                                tungstenite::error::CapacityError::MessageTooLong { size, .. } => size,
                                _ => 0,
                            };
                            return self.fail(SessionError::FrameTooBig { got, max: self.shared.config.max_frame_bytes }).await;
                        }
                        Some(Err(_)) => return End::Vanished,
                    }
                }
                _ = tokio::time::sleep_until(deadline), if self.closing.is_none() => {
                    return self.fail(SessionError::NoAudioTimeout(timeout.as_secs())).await;
                }
            }
        }
    }

    /// Decodes one binary frame and hands its samples to the pipes.
    fn audio(&mut self, frame: &[u8]) -> Result<(), SessionError> {
        if frame.is_empty() || self.closing.is_some() {
            return Ok(()); // documented: empty frames and audio after CloseStream are ignored
        }
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
        let cfg = &self.shared.config;
        let step_frames = cfg.step_ms / 10;
        let policy = PolicyConfig {
            step_frames,
            endpoint_frames: self.params.endpointing_ms.map(|ms| (ms as u64 / 10).max(1)),
            utterance_end: self.params.utterance_end_ms.map(|ms| ms as f64 / 1000.0),
            vad_events: self.params.vad_events,
            interim_results: self.params.interim_results,
            ..PolicyConfig::default()
        };
        let Some(out) = self.out_tx.take() else { return Ok(()) };
        for ch in 0..n {
            let settings = WorkerSettings {
                policy: policy.clone(),
                keyterms: self.params.keyterms.clone(),
                language: self.params.language.clone(),
                punctuate: self.params.punctuate || self.params.smart_format,
                request_id: self.request_id.clone(),
                model_name: self.shared.model_name.clone(),
                channel_index: ch as u32,
                channel_count: n as u32,
                metrics_key: self.id * 64 + ch as u64,
                panic_on_hypothesis: self.shared.fault_injection
                    && self.params.keyterms.iter().any(|k| k == super::PANIC_KEYTERM),
            };
            let resampler =
                Resampler::new(format.sample_rate).map_err(|e| SessionError::UnsupportedAudio(e.to_string()))?;
            let ring = (cfg.ring_seconds * 16_000.0) as usize;
            let pipe = Pipe::spawn(
                self.shared.model.clone(),
                settings,
                ring,
                self.space.clone(),
                out.clone(),
                self.shared.metrics.clone(),
            )
            .map_err(|e| SessionError::Internal(format!("starting the session worker: {e}")))?;
            self.resamplers.push(resampler);
            self.pipes.push(pipe);
        }
        Ok(())
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

    fn maybe_send_close(&mut self) -> Result<(), SessionError> {
        if self.closing.is_none() || self.close_sent {
            return Ok(());
        }
        if self.pipes.iter_mut().all(|p| p.push_pending()) {
            for p in &self.pipes {
                p.close();
            }
            self.close_sent = true;
        }
        Ok(())
    }

    /// Every worker flushed: `Metadata`, then the close frame.
    async fn finish(&mut self) -> End {
        let code = self.closing.unwrap_or(close::NORMAL);
        let audio = self.pipes.iter().map(|p| p.pushed()).max().unwrap_or(0) as f64 / 16_000.0;
        self.summary.audio_seconds = self.summary.audio_seconds.max(audio);
        let meta = ServerMessage::Metadata {
            transaction_key: "deprecated".into(),
            request_id: self.request_id.clone(),
            sha256: String::new(),
            created: created_now(),
            duration: (self.summary.audio_seconds * 1000.0).round() / 1000.0,
            channels: self.params.channels as u32,
            models: vec![self.shared.model_name.clone()],
            lag_seconds: (self.summary.max_lag_seconds * 1000.0).round() / 1000.0,
            words: self.summary.words,
        };
        if !self.send(Message::text(meta.to_json())).await {
            return End::Vanished;
        }
        let reason = if code == close::GOING_AWAY { "server shutting down" } else { "stream closed" };
        self.close(code, reason).await;
        End::Closed(code)
    }

    /// Sends the error message and closes with its code.
    async fn fail(&mut self, e: SessionError) -> End {
        if self.send(Message::text(e.message().to_json())).await {
            let reason: String = e.to_string().chars().take(100).collect();
            self.close(e.close_code(), &reason).await;
        }
        End::Error(e)
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.to_string().into() };
        let _ = self.send(Message::Close(Some(frame))).await;
    }

    /// Sends one message; false when the client is gone or stopped reading
    /// for longer than the write timeout.
    async fn send(&mut self, msg: Message) -> bool {
        let limit: Duration = self.shared.config.write_timeout;
        matches!(tokio::time::timeout(limit, self.sink.send(msg)).await, Ok(Ok(())))
    }
}

/// RFC 3339 UTC time, as Deepgram's `created`.
fn created_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}
