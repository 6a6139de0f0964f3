//! The session worker: one OS thread per session channel that drains the
//! ring, runs the VAD and the streaming policy, and transcribes.
//!
//! Inference blocks for hundreds of milliseconds, so it runs here and not on
//! the async runtime. Under load the worker coalesces: it drains all the
//! audio that arrived while it was busy before the next hypothesis, so a
//! slow machine makes fewer, larger steps (and reports its lag) instead of
//! falling further behind. Endpoints are still served at the exact frame.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringbuf::traits::Consumer;
use ringbuf::HeapCons;
use tokio::sync::{mpsc, Notify};

use super::scheduler::{Grant, Urgency};
use super::turns::{Due, Trigger, TurnInfo, Turns};
use super::{ChannelSummary, Control, Output, WorkerSettings};
use crate::audio::vad::{Vad, FRAME};
use crate::audio::{round3, seconds};
use crate::decode::{AudioCtx, DecodeError, DecodeOptions, OnLoop};
use crate::engine::{Engine, EngineStream};
use crate::metrics::Metrics;
use crate::policy::{stock_ending, without_ellipsis, Emit, Policy, Reason, Update, Word};
use crate::protocol::{Alternative, Channel, ModelInfo, ResultMetadata, ServerMessage, WireWord};

/// Characters of earlier final text put into the prompt.
const CONTEXT_CHARS: usize = 200;

/// Whether streaming hypotheses encode only the audio that is there and
/// decode only the unstable tail (issue 9). Off, a step re-encodes 30 s and
/// re-decodes the whole utterance: on apollo11.wav final p95 41–47 s against
/// 7–9 s, 1.8 CPU s per audio s against 0.8–1.2 (`benches/results/streaming.md`).
/// (It was switched off once for a CI failure on jfk through 8 kHz mulaw,
/// "so am I fellow America": that comes from finalising words at 1.5–3 s into
/// the utterance, and streamed at real-time pace it happens as often with
/// the switch off.)
const STREAMING_AUDIO_CTX: bool = true;

/// A prefixed hypothesis whose first new word starts this long after the
/// utterance's final words is taken to have skipped speech, seconds.
const MAX_GAP_S: f64 = 1.0;

/// Audio after the utterance's final words that a prefixed hypothesis may
/// leave without any new word, seconds. Longer than [`MAX_GAP_S`]: pauses,
/// breaths and radio noise inside an utterance are often a second long, and
/// what a step leaves out is decoded whole at the endpoint anyway.
const MAX_SILENT_TAIL_S: f64 = 3.0;

pub struct Context {
    pub engine: Arc<dyn Engine>,
    pub settings: WorkerSettings,
    pub cons: HeapCons<f32>,
    pub ctl: Receiver<Control>,
    pub space: Arc<Notify>,
    pub received: Arc<AtomicU64>,
    pub out: mpsc::Sender<Output>,
    pub metrics: Arc<Metrics>,
}

/// Why the worker stopped early.
#[derive(Debug, thiserror::Error)]
enum WorkerError {
    #[error("the client went away")]
    Gone,
    #[error("{0}")]
    Engine(String),
}

/// The thread's body: a panic or an error ends this session only.
pub fn run(ctx: Context) {
    let out = ctx.out.clone();
    let metrics = ctx.metrics.clone();
    let key = ctx.settings.metrics_key;
    let result = catch_unwind(AssertUnwindSafe(|| Worker::new(ctx).and_then(|mut w| w.run())));
    metrics.clear_lag(key);
    let failure = match result {
        Ok(Ok(())) | Ok(Err(WorkerError::Gone)) => return,
        Ok(Err(e)) => e.to_string(),
        Err(panic) => {
            metrics.worker_panics_total.fetch_add(1, Ordering::Relaxed);
            let what = super::panic_message(panic.as_ref());
            tracing::error!(panic = %what, "session worker panicked");
            format!("session worker panicked: {what}")
        }
    };
    let _ = out.blocking_send(Output::Failed(failure));
}

struct Worker {
    engine: Arc<dyn Engine>,
    s: WorkerSettings,
    cons: HeapCons<f32>,
    ctl: Receiver<Control>,
    space: Arc<Notify>,
    received: Arc<AtomicU64>,
    out: mpsc::Sender<Output>,
    metrics: Arc<Metrics>,
    policy: Policy,
    vad: Vad,
    /// Audio of the current utterance; `buf[0]` is frame `buf_start`.
    buf: Vec<f32>,
    buf_start: u64,
    /// A partial 10 ms frame.
    frame: Vec<f32>,
    consumed: u64,
    chunk: Vec<f32>,
    emits: Vec<Emit>,
    summary: ChannelSummary,
    /// Time spent in hypotheses.
    busy: Duration,
    /// `/v2/listen`'s turn state, and the events waiting to be sent.
    turns: Option<Turns>,
    turn_out: Vec<TurnInfo>,
    /// The scheduler's grant a step holds from its turn until its
    /// hypothesis runs (an endpoint among the audio it takes in first uses
    /// it instead).
    grant: Option<Grant>,
}

/// Whether the session goes on after a control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Go,
    Done,
}

impl Drop for Worker {
    /// The channel's real-time factor, however it ended.
    fn drop(&mut self) {
        if self.consumed > 0 {
            self.metrics.real_time_factor.observe(self.busy.as_secs_f64() / seconds(self.consumed));
        }
    }
}

impl Worker {
    fn new(ctx: Context) -> Result<Self, WorkerError> {
        let policy = Policy::new(ctx.settings.policy.clone());
        let vad = Vad::new(ctx.settings.vad);
        let turns = ctx.settings.turns.as_ref().map(|_| Turns::default());
        Ok(Worker {
            engine: ctx.engine,
            s: ctx.settings,
            cons: ctx.cons,
            ctl: ctx.ctl,
            space: ctx.space,
            received: ctx.received,
            out: ctx.out,
            metrics: ctx.metrics,
            policy,
            vad,
            buf: Vec::with_capacity(31 * 16_000),
            buf_start: 0,
            frame: Vec::with_capacity(FRAME),
            consumed: 0,
            chunk: vec![0.0; 8_000],
            emits: Vec::new(),
            summary: ChannelSummary::default(),
            busy: Duration::ZERO,
            turns,
            turn_out: Vec::new(),
            grant: None,
        })
    }

    fn run(&mut self) -> Result<(), WorkerError> {
        let engine = self.engine.clone();
        // Streaming decodes greedily: one sequence.
        let mut stream = engine.stream(1).map_err(|e| WorkerError::Engine(e.to_string()))?;
        let tr = stream.as_mut();
        loop {
            // A closed control channel: the connection is gone, stop quietly.
            let first = self.ctl.recv().map_err(|_| WorkerError::Gone)?;
            if self.s.cancel.is_cancelled() {
                return Err(WorkerError::Gone);
            }
            if self.handle(first, tr)? == Flow::Done || self.handle_queued(tr)? == Flow::Done {
                return Ok(());
            }
            if self.policy.step_due() && self.step(tr)? == Flow::Done {
                return Ok(());
            }
        }
    }

    /// The control messages already queued, in order.
    fn handle_queued(&mut self, tr: &mut dyn EngineStream) -> Result<Flow, WorkerError> {
        while let Ok(ctl) = self.ctl.try_recv() {
            if self.handle(ctl, tr)? == Flow::Done {
                return Ok(Flow::Done);
            }
        }
        Ok(Flow::Go)
    }

    fn handle(&mut self, ctl: Control, tr: &mut dyn EngineStream) -> Result<Flow, WorkerError> {
        match ctl {
            Control::Audio { upto } => self.consume(upto, tr)?,
            Control::Finalize { upto, at } => {
                self.consume(upto, tr)?;
                // On /v2/listen this is `ForceEndTurn`.
                self.end_turn(Due::End(Trigger::Manual), tr)?;
                self.metrics.finalize_reply.observe_duration(at.elapsed());
            }
            Control::Close { upto } => {
                self.consume(upto, tr)?;
                // The partial last frame belongs to the stream too.
                if !self.frame.is_empty() {
                    let f = std::mem::take(&mut self.frame);
                    self.buf.extend_from_slice(&f);
                }
                self.flush(Reason::Close, tr)?;
                self.close_turn()?;
                self.summary.words = self.policy.words_final();
                self.summary.audio_seconds = seconds(self.consumed);
                let _ = self.send(Output::Done(self.summary));
                return Ok(Flow::Done);
            }
        }
        Ok(Flow::Go)
    }

    /// A step, once the scheduler gives this session a turn. The audio that
    /// arrived while it waited is taken in first (serving any endpoint in
    /// it within the same turn), so the step covers all of it.
    fn step(&mut self, tr: &mut dyn EngineStream) -> Result<Flow, WorkerError> {
        self.grant = Some(self.acquire(Urgency::Step)?);
        let flow = self.handle_queued(tr)?;
        if flow == Flow::Go && self.policy.step_due() {
            self.transcribe(Reason::Step, tr)?;
        }
        self.grant = None;
        Ok(flow)
    }

    /// Waits for the scheduler's grant to run a hypothesis.
    fn acquire(&self, urgency: Urgency) -> Result<Grant, WorkerError> {
        let t0 = Instant::now();
        let turn = self.s.scheduler.acquire(urgency, &self.s.cancel);
        self.metrics.compute_wait.observe_duration(t0.elapsed());
        turn.ok_or(WorkerError::Gone)
    }

    /// Feeds the audio up to sample `upto` through the VAD and the policy,
    /// serving endpoints and cuts at their exact frame.
    fn consume(&mut self, upto: u64, tr: &mut dyn EngineStream) -> Result<(), WorkerError> {
        while self.consumed < upto {
            let want = ((upto - self.consumed) as usize).min(self.chunk.len());
            let n = self.cons.pop_slice(&mut self.chunk[..want]);
            if n == 0 {
                // The network side pushes before it sends `upto`; this is
                // unreachable unless the ring lies.
                break;
            }
            self.space.notify_one();
            self.consumed += n as u64;
            for i in 0..n {
                self.frame.push(self.chunk[i]);
                if self.frame.len() < FRAME {
                    continue;
                }
                let speech = self.vad.push(&self.frame);
                self.buf.extend_from_slice(&self.frame);
                self.frame.clear();
                let due = self.policy.on_frame(speech, &mut self.emits);
                self.send_emits()?;
                self.trim();
                if let Some(r @ (Reason::Endpoint | Reason::Cut)) = due {
                    self.transcribe(r, tr)?;
                }
                if let Some(due) = self.turn_frame(speech)? {
                    self.end_turn(due, tr)?;
                }
            }
        }
        Ok(())
    }

    /// Drops the audio before the policy's utterance start.
    fn trim(&mut self) {
        let start = self.policy.utterance_start();
        if start > self.buf_start {
            let n = (((start - self.buf_start) as usize) * FRAME).min(self.buf.len());
            self.buf.drain(..n);
            self.buf_start = start;
        }
    }

    /// `/v2/listen`: one frame of the turn state; whether a turn end is due.
    fn turn_frame(&mut self, speech: bool) -> Result<Option<Due>, WorkerError> {
        let (Some(turns), Some(th)) = (&mut self.turns, &self.s.turns) else { return Ok(None) };
        let due = turns.on_frame(speech, &th.get(), &mut self.turn_out);
        self.send_turns()?;
        Ok(due)
    }

    /// Finalizes the pending audio, then (on `/v2/listen`) announces the
    /// eager or final end of the turn with the whole turn's text. On
    /// `/v1/listen` this is `Finalize`.
    fn end_turn(&mut self, due: Due, tr: &mut dyn EngineStream) -> Result<(), WorkerError> {
        self.flush(Reason::Finalize, tr)?;
        if let Some(turns) = &mut self.turns {
            match due {
                Due::Eager => turns.eager(&mut self.turn_out),
                Due::End(trigger) => turns.end(trigger, &mut self.turn_out),
            }
        }
        self.send_turns()
    }

    /// `CloseStream` on `/v2/listen` ends the turn that is on.
    fn close_turn(&mut self) -> Result<(), WorkerError> {
        if let Some(turns) = &mut self.turns {
            turns.end(Trigger::Manual, &mut self.turn_out);
        }
        self.send_turns()
    }

    fn send_turns(&mut self) -> Result<(), WorkerError> {
        #[derive(serde::Serialize)]
        struct Message<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            request_id: &'a str,
            #[serde(flatten)]
            info: TurnInfo,
        }
        for info in std::mem::take(&mut self.turn_out) {
            let msg = Message { kind: "TurnInfo", request_id: &self.s.request_id, info };
            let json = serde_json::to_string(&msg).map_err(|e| WorkerError::Engine(e.to_string()))?;
            self.send(Output::Message(json))?;
        }
        Ok(())
    }

    fn flush(&mut self, reason: Reason, tr: &mut dyn EngineStream) -> Result<(), WorkerError> {
        if self.policy.pending() {
            self.transcribe(reason, tr)
        } else {
            self.policy.flush_empty(reason, &mut self.emits);
            self.send_emits()?;
            self.trim();
            Ok(())
        }
    }

    fn transcribe(&mut self, reason: Reason, tr: &mut dyn EngineStream) -> Result<(), WorkerError> {
        assert!(!self.s.panic_on_hypothesis, "fault injection: {}", super::PANIC_KEYTERM);
        let mut opts = self.decode_options();
        if reason == Reason::Step {
            // A step's words count only once the next step agrees: a loop on
            // the shortened window is cut instead of decoded again over 30 s
            // (on apollo11.wav, 16 such redos were 18 % of all compute).
            if let Some(ctx) = &mut opts.audio_ctx {
                ctx.on_loop = OnLoop::Cut;
            }
        } else {
            // A step's words become final only when the next step agrees;
            // an endpoint, a cut, Finalize or Close commit one hypothesis
            // whole, so it decodes the whole utterance (under load a prefixed
            // hypothesis sometimes skipped seconds of speech, "Mr. Quilter
            // is the [9 words] to welcome his gospel"). It keeps the
            // shortened window: in the whole 30 s one, a 5 s utterance of
            // apollo11.wav looped ("a little bit of" 55 times), and the
            // loop, as the next utterances' prompt, looped them too.
            opts.prefix = None;
        }
        let urgency = if reason == Reason::Step { Urgency::Step } else { Urgency::Flush };
        let grant = match self.grant.take() {
            Some(g) => g,
            None => self.acquire(urgency)?,
        };
        let t0 = Instant::now();
        let mut words = self.hypothesis(tr, &opts)?;
        if opts.prefix.is_some() && self.skipped_speech(&words) {
            // Continuing a forced prefix, Whisper can jump over speech it has
            // not written yet (seen under load, when one step covers seconds
            // of new audio): that speech would never become text. Decode the
            // whole utterance instead, as without a prefix.
            tracing::debug!(?reason, "the prefixed hypothesis skipped speech; decoding the whole utterance");
            opts.prefix = None;
            words = self.hypothesis(tr, &opts)?;
        }
        if reason != Reason::Step {
            words = self.checked_ending(tr, &opts, words)?;
        }
        let spent = t0.elapsed();
        drop(grant);
        if tracing::enabled!(tracing::Level::TRACE) {
            let text: Vec<String> =
                words.iter().map(|w| format!("{}@{:.2}-{:.2}:{:.2}", w.text, w.start, w.end, w.probability)).collect();
            let (from, to) = (
                seconds(self.buf_start * FRAME as u64),
                seconds(self.buf_start * FRAME as u64 + self.buf.len() as u64),
            );
            tracing::trace!(id = %self.s.request_id, ?reason, from, to, prefixed = opts.prefix.is_some(), words = %text.join(" "), "hypothesis words");
        }
        self.policy.on_hypothesis(reason, words, &mut self.emits);
        self.summary.transcriptions += 1;
        self.metrics.transcriptions_total.fetch_add(1, Ordering::Relaxed);
        self.metrics.inference_us.fetch_add(spent.as_micros() as u64, Ordering::Relaxed);
        self.metrics.hypothesis_time.observe_duration(spent);
        self.busy += spent;
        let received = self.received.load(Ordering::Acquire);
        let lag = seconds(received.saturating_sub(self.consumed)) + spent.as_secs_f64();
        self.summary.max_lag_seconds = self.summary.max_lag_seconds.max(lag);
        self.metrics.set_lag(self.s.metrics_key, (lag * 1e3) as u64);
        tracing::debug!(
            ?reason,
            audio_s = seconds(self.buf.len() as u64),
            ms = spent.as_millis() as u64,
            lag,
            "hypothesis"
        );
        self.send_emits()?;
        self.trim();
        Ok(())
    }

    /// Greedy decoding of the current utterance, prompted with the key terms
    /// and earlier final text; the utterance's final words are a forced
    /// prefix (fed in one pass), so only the unstable tail is decoded.
    fn decode_options(&self) -> DecodeOptions {
        let mut prompt = self.s.keyterms.get().join(", ");
        let context = self.policy.context(CONTEXT_CHARS);
        if !context.is_empty() {
            if !prompt.is_empty() {
                prompt.push_str(". ");
            }
            prompt.push_str(context);
        }
        let committed: Vec<&str> = self.policy.committed().iter().map(|w| w.text.as_str()).collect();
        let prefix = (!committed.is_empty()).then(|| committed.join(" "));
        let multilingual = self.engine.is_multilingual();
        DecodeOptions {
            beam_size: 1,
            best_of: 1,
            temperatures: vec![0.0],
            word_timestamps: true,
            condition_on_previous_text: false,
            initial_prompt: (!prompt.is_empty()).then_some(prompt),
            language: if multilingual { self.s.language.clone() } else { None },
            // The decoder's own VAD pass over the utterance is not the
            // worker's frame VAD run twice: it starts its noise floor at the
            // utterance, as offline decoding does, and keeps a window with
            // too little voiced audio (a click after a pause) from being
            // decoded into made-up words. It costs well under a millisecond.
            vad: true,
            cancel: self.s.cancel.clone(),
            audio_ctx: STREAMING_AUDIO_CTX.then(AudioCtx::default),
            prefix: prefix.filter(|_| STREAMING_AUDIO_CTX),
            ..DecodeOptions::default()
        }
    }

    /// The words of one hypothesis over the utterance, in stream time.
    fn hypothesis(&self, tr: &mut dyn EngineStream, opts: &DecodeOptions) -> Result<Vec<Word>, WorkerError> {
        let transcript = tr.transcribe(&self.buf, opts).map_err(|e| match e {
            DecodeError::Cancelled => WorkerError::Gone,
            e => WorkerError::Engine(e.to_string()),
        })?;
        let offset = self.buf_start as f64 * 0.01;
        let words = transcript.segments.iter().flat_map(|s| s.words.iter().flatten());
        Ok(words
            // A word of punctuation alone ("." over applause, "-" after a
            // cut-off word) is no word a caption or an agent can use.
            .filter(|w| w.word.chars().any(char::is_alphanumeric))
            .map(|w| Word {
                text: without_ellipsis(w.word.trim()).to_string(),
                start: offset + w.start,
                end: offset + w.end,
                probability: w.probability,
            })
            .collect())
    }

    /// A flush's words without a stock ending ("Thank you.") that decoding
    /// the same audio in Whisper's full 30 s window does not hear too: on
    /// the shortened window Whisper wrote one over jfk's applause, on the
    /// full one it did not. Costs a second decode, only when one is there.
    fn checked_ending(
        &self,
        tr: &mut dyn EngineStream,
        opts: &DecodeOptions,
        mut words: Vec<Word>,
    ) -> Result<Vec<Word>, WorkerError> {
        let n = stock_ending(&words);
        // An ending among the words already final was checked by the flush
        // that made them final (or carried): it is sent, and no decode can
        // take it back.
        if n == 0 || opts.audio_ctx.is_none() || n > self.policy.after_committed(&words).len() {
            return Ok(words);
        }
        let full = DecodeOptions { audio_ctx: None, prefix: None, ..opts.clone() };
        let heard = stock_ending(&self.hypothesis(tr, &full)?) > 0;
        tracing::debug!(heard, "a stock ending checked in the full window");
        if !heard {
            words.truncate(words.len() - n);
        }
        Ok(words)
    }

    /// Whether a hypothesis leaves a stretch of the utterance after its final
    /// words without text: its first new word starts more than
    /// [`MAX_GAP_S`] after them, or there is none though the audio goes on
    /// [`MAX_SILENT_TAIL_S`]. Endpointing splits utterances at silence, so
    /// inside one such a gap is speech that was skipped.
    fn skipped_speech(&self, words: &[Word]) -> bool {
        let Some(last) = self.policy.committed().last() else { return false };
        // Final words carried over from the last utterance end before the
        // pause that ended it.
        let said = last.end.max(self.policy.speech_start());
        match self.policy.after_committed(words).first() {
            Some(next) => next.start - said > MAX_GAP_S,
            None => {
                let audio_end = seconds(self.buf_start * FRAME as u64 + self.buf.len() as u64);
                audio_end - said > MAX_SILENT_TAIL_S
            }
        }
    }

    /// Counts a result and observes its words' latency: the audio received
    /// after each word's end so far (for a real-time client, how long ago
    /// the word was spoken).
    fn count_result(&self, u: &Update) {
        let m = &self.metrics;
        let received = seconds(self.received.load(Ordering::Acquire));
        if u.is_final {
            m.results_final_total.fetch_add(1, Ordering::Relaxed);
            m.words_final_total.fetch_add(u.words.len() as u64, Ordering::Relaxed);
            for w in &u.words {
                m.final_latency.observe(received - w.end);
            }
        } else {
            m.results_interim_total.fetch_add(1, Ordering::Relaxed);
            if let Some(w) = u.words.last() {
                m.interim_latency.observe(received - w.end);
            }
        }
    }

    /// Sends one message to the connection. Should the channel be full (a
    /// client slow to read), the grant a step holds is given back before
    /// waiting: one slow client must not stall every session.
    fn send(&mut self, msg: Output) -> Result<(), WorkerError> {
        match self.out.try_send(msg) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(msg)) => {
                self.grant = None;
                self.out.blocking_send(msg).map_err(|_| WorkerError::Gone)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(WorkerError::Gone),
        }
    }

    fn send_emits(&mut self) -> Result<(), WorkerError> {
        for e in std::mem::take(&mut self.emits) {
            let ch = vec![self.s.channel_index, self.s.channel_count];
            if self.turns.is_some() {
                // /v2/listen: results feed the turn; the rest has no message.
                if let Emit::Results(u) = &e {
                    self.count_result(u);
                    if let Some(turns) = &mut self.turns {
                        turns.on_results(u, &mut self.turn_out);
                    }
                }
                continue;
            }
            let msg = match e {
                Emit::SpeechStarted { timestamp } => ServerMessage::SpeechStarted { channel: ch, timestamp },
                Emit::UtteranceEnd { last_word_end } => ServerMessage::UtteranceEnd { channel: ch, last_word_end },
                Emit::Results(u) => {
                    self.count_result(&u);
                    self.results(u, ch)
                }
            };
            self.send(Output::Message(msg.to_json()))?;
        }
        self.send_turns()
    }

    fn results(&self, u: Update, channel_index: Vec<u32>) -> ServerMessage {
        let words = u.words.iter().map(|w| WireWord::new(&w.text, w.start, w.end, w.probability)).collect();
        ServerMessage::Results {
            channel_index,
            duration: round3(u.end - u.start),
            start: u.start,
            is_final: u.is_final,
            speech_final: u.speech_final,
            from_finalize: u.from_finalize,
            channel: Channel { alternatives: vec![Alternative::of(words, self.s.punctuate)] },
            metadata: ResultMetadata {
                request_id: self.s.request_id.clone(),
                model_info: ModelInfo {
                    name: self.engine.name().into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    arch: "whisper".into(),
                },
                model_uuid: self.engine.uuid().into(),
            },
        }
    }
}
