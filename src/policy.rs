//! The streaming policy: what is interim, what is final, when to transcribe.
//!
//! Pure state, no model and no audio: the session worker feeds it one voice
//! decision per 10 ms frame and the words of each hypothesis, and it answers
//! with what to send. Tested here without a model.
//!
//! The policy is VAD-segmented LocalAgreement-2:
//! - audio is grouped into utterances: one starts at the first speech frame
//!   (plus a short pre-roll) and ends after `endpointing` ms of silence;
//!   silence before it is dropped, so noise and pauses never reach Whisper;
//! - every `step` of new audio the worker re-transcribes the utterance so far
//!   (≤ 30 s); words that a hypothesis and one of the two before it agree
//!   on, as a prefix of what is not yet final, become final; the rest is
//!   the interim tail;
//! - with `alignment_commit` (`commit = "alignment"`, AlignAtt-style), leading
//!   new words that end well before the audio does, as the alignment heads
//!   place them, become final at once, one step sooner;
//! - final words are sent as lines (`line_hold`): held until a sentence end
//!   or a pause follows them, so a final result reads as a sentence or a
//!   phrase rather than whatever one step agreed on ("so my" / "fellow");
//!   a word is held at most `line_hold` seconds after it became final (a
//!   flush or a cut sends it at once), and then goes with the words before
//!   it up to the last clause end;
//! - at the endpoint (or `Finalize`, or the end of the stream) one more
//!   hypothesis finalises everything but a trailing run of unlikely words
//!   (p < 0.15: made up from a breath or the silence after speech) and the
//!   utterance is closed;
//! - on continuous speech, once the utterance is longer than `trim_frames`
//!   its audio is trimmed after the last final word that ends a sentence
//!   (or, a third longer, after the last final word): those words move to
//!   the prompt, so a step's cost stops growing with the utterance
//!   (whisper_streaming's buffer trimming);
//! - an utterance that nears Whisper's 30 s window is cut after its last final
//!   word, and the rest carries over into the next one.
//!
//! Times are seconds from the start of the stream. Final words are clamped to
//! be monotonic, and interim words never start before the last final word
//! ends, so interims and finals agree on one clock.

use crate::audio::round3;
use crate::protocol::{normal_chars, normalize};

/// Seconds per VAD frame.
pub const FRAME_SECONDS: f64 = 0.01;

/// A first word this close after a trim or cut that repeats the last word
/// moved out is that word heard again, seconds.
const SEAM_S: f64 = 0.5;

/// Words Whisper writes with a final period inside a sentence ("Mr.
/// Quilter"), lower case, without the period; compared ignoring case,
/// without a copy (the trim checks every final word at every step).
const ABBREVIATIONS: &[&str] = &["mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "mt", "vs", "e.g", "i.e"];

/// Silence frames (as the VAD decides them, after its 200 ms hangover) that
/// make a pause between two words a line end: 0.1 s here is a gap of about
/// 0.3 s in the audio.
const PAUSE_FRAMES: u64 = 10;

/// A gap between two words' times this long is a pause too, seconds
/// (Whisper's word times usually stretch over pauses, so the VAD's are the
/// main signal).
const PAUSE_S: f64 = 0.3;

/// Below this probability a word is anomalous: faster-whisper's hallucination
/// test uses the same bound.
const UNLIKELY_WORD: f32 = 0.15;

/// Below this duration a word is anomalous, in proportion to how much
/// shorter it is (faster-whisper's `word_anomaly_score`: a word of no
/// length weighs as much as two unlikely ones), seconds.
const SHORT_WORD_S: f64 = 0.133;

/// A pause this long after the carried words (see [`PolicyConfig::carry`])
/// drops them from the window: the next speech starts a window of its own,
/// with their text only in the prompt, seconds.
const CARRY_GAP_S: f64 = 2.0;

/// What Whisper writes, having learned it from subtitles, over applause or
/// noise at the end of a shortened window ("Thank you." after jfk's last
/// sentence): a short bag of hallucinations, as Barański et al. (2025)
/// call such a list. Lower case, as [`Word::norm`] gives them.
const STOCK_ENDINGS: &[&[&str]] = &[
    &["thank", "you"],
    &["thank", "you", "very", "much"],
    &["thank", "you", "for", "watching"],
    &["thanks", "for", "watching"],
];

/// How many of a hypothesis's last words are a stock ending standing as a
/// sentence of its own (alone, after a sentence end, or capitalised: a
/// window that starts after an unpunctuated word, "your country Thank
/// you."); 0: none. Steps leave such words interim; a flush keeps them only
/// if the full window hears them too (`session::worker`).
pub fn stock_ending(words: &[Word]) -> usize {
    let is_ending = |phrase: &&&[&str]| {
        let n = phrase.len();
        n <= words.len()
            && words[words.len() - n..].iter().zip(phrase.iter()).all(|(w, p)| w.is(p))
            && (n == words.len()
                || ends_sentence(&words[words.len() - n - 1].text)
                || words[words.len() - n].text.starts_with(char::is_uppercase))
    };
    STOCK_ENDINGS.iter().filter(is_ending).map(|p| p.len()).max().unwrap_or(0)
}

/// Whether Whisper's text for a word ends a sentence. A trim after "Mr." cut
/// "Quilter" in two ("Mr. Filter"), so titles and initials do not; one
/// missed sentence end only delays a trim.
pub fn ends_sentence(text: &str) -> bool {
    let text = text.trim_end_matches(['"', '\'', ')', '\u{201d}', '\u{2019}']);
    if text.ends_with(['?', '!']) {
        return true;
    }
    let Some(body) = text.strip_suffix('.') else { return false };
    let body = body.trim_start_matches(|c: char| !c.is_alphanumeric());
    let mut chars = body.chars();
    let initial = matches!((chars.next(), chars.next()), (Some(c), None) if c.is_uppercase() && c != 'I');
    !initial && !ABBREVIATIONS.iter().any(|a| a.eq_ignore_ascii_case(body))
}

/// Whisper's text for a word without a trailing ellipsis. It marks audio
/// that stops mid-phrase ("And..." at the end of a step's window), which no
/// caption line or Deepgram client expects, and it would read as a
/// sentence end.
pub fn without_ellipsis(text: &str) -> &str {
    match text.strip_suffix("...").or_else(|| text.strip_suffix('\u{2026}')) {
        Some(word) if word.chars().any(char::is_alphanumeric) => word,
        _ => text,
    }
}

/// Whether a word ends a clause: where a line that cannot wait for its
/// sentence to end is broken.
fn ends_clause(text: &str) -> bool {
    text.ends_with([',', ';', ':']) || ends_sentence(text)
}

/// A hypothesis without its trailing run of made-up words. A flush makes its
/// words final with no second hypothesis to agree, and Whisper sometimes
/// ends one with words made up from a breath or the silence after speech:
/// unlikely ones ("his gospel. So, so.", p = 0.08 and 0.07, on a trimmed
/// utterance), or a phrase squeezed into no time at the end of the audio
/// ("gospel. So, we're going to go ahead and do that", every word after
/// "So," 0 s long at 17.09 s, p 0.13-0.93, on an endpoint under load).
/// A word goes when it scores as one unlikely word on faster-whisper's
/// anomaly score, without its term for long words (the last word of a
/// flush often stretches over the silence after it).
fn without_made_up_tail(mut words: Vec<Word>) -> Vec<Word> {
    let anomaly = |w: &Word| {
        let unlikely = if w.probability < UNLIKELY_WORD { 1.0 } else { 0.0 };
        unlikely + (SHORT_WORD_S - (w.end - w.start)).max(0.0) * 15.0
    };
    while words.last().is_some_and(|w| anomaly(w) >= 1.0) {
        words.pop();
    }
    words
}

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// New audio between two hypotheses of the same utterance, frames.
    pub step_frames: u64,
    /// Trailing silence that ends an utterance, frames; `None`: never.
    pub endpoint_frames: Option<u64>,
    /// Silence after the last word before `UtteranceEnd`, seconds.
    pub utterance_end: Option<f64>,
    pub vad_events: bool,
    pub interim_results: bool,
    /// Audio kept before the first speech frame, frames.
    pub preroll_frames: u64,
    /// Utterance length that forces a cut, frames (below Whisper's 30 s).
    pub max_utterance_frames: u64,
    /// Interim words this close to the end of the audio are held back from
    /// a forced cut, seconds.
    pub cut_margin: f64,
    /// A cut comes early when a step's hypothesis has words that are not
    /// final and the last final word (or the utterance's speech, if none)
    /// ended this long before the audio the step before had: two hypotheses
    /// heard that much after it and still do not agree, so this step cuts,
    /// with its own hypothesis (measured against the steps, not now, as
    /// under load a step may come late, and the first hypothesis of an
    /// utterance never cuts). Hypotheses that keep disagreeing (noise, a
    /// chant) would otherwise hold every word back until the utterance fills
    /// Whisper's window. Seconds; `None`: only that cut. The daemon's
    /// default is `config::DEFAULT_STALL_CUT_MS`.
    pub stall_cut: Option<f64>,
    /// Utterance length past which its audio is trimmed after a final
    /// sentence end, frames; `None`: never (only the cut at the window).
    pub trim_frames: Option<u64>,
    /// The AlignAtt-style rule (SimulStreaming): a step's leading new words
    /// that end at least this long before the audio does, as the alignment
    /// heads place them, are final at once, without waiting for the next
    /// hypothesis to agree. Seconds; `None`: LocalAgreement-2 alone.
    pub alignment_commit: Option<f64>,
    /// Final words wait for a sentence end or a pause after them, so that
    /// finals break where a caption line should, at most this long after
    /// the word became final, seconds; `None`: each step's agreed words go
    /// at once.
    pub line_hold: Option<f64>,
    /// The last final words of an ended utterance, up to this long, stay
    /// at the start of the next utterance's window (already sent, fed to
    /// the decoder as its forced prefix) while the pause after them is
    /// under [`CARRY_GAP_S`], seconds; `None`: each utterance is decoded
    /// alone. Endpoints end utterances at every pause the VAD finds;
    /// decoded alone, their short windows lose the sentence around them.
    pub carry: Option<f64>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            step_frames: 60,
            endpoint_frames: Some(50),
            utterance_end: None,
            vad_events: false,
            interim_results: true,
            preroll_frames: 30,
            max_utterance_frames: 2500,
            cut_margin: 1.0,
            stall_cut: None,
            // Bounds the window (and so a step's cost) on continuous speech;
            // the encoder reads at least 10 s anyway (`decode::AudioCtx`). At
            // 10 s, jfk.wav (11 s, one utterance) was trimmed after
            // "Americans," and came out "asked not … Thank you." (3 word
            // errors, in each of 3 runs); no reference file reaches 15 s.
            trim_frames: Some(1500),
            alignment_commit: None,
            line_hold: None,
            carry: None,
        }
    }
}

/// A word of a hypothesis, times in seconds from the stream start.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    /// As Whisper wrote it, punctuation included, no surrounding space.
    pub text: String,
    pub start: f64,
    pub end: f64,
    pub probability: f32,
}

impl Word {
    /// Lower case, letters, digits and apostrophes only: what agreement and
    /// de-duplication compare.
    pub fn norm(&self) -> String {
        normalize(&self.text)
    }

    /// Whether the word's [`Word::norm`] is `norm`, without building it.
    fn is(&self, norm: &str) -> bool {
        normal_chars(&self.text).eq(norm.chars())
    }
}

/// Why the worker should transcribe now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Enough new audio for a fresh hypothesis.
    Step,
    /// The utterance nears 30 s: commit what is agreed and cut.
    Cut,
    /// Silence ended the utterance.
    Endpoint,
    /// The client asked to flush (`Finalize`).
    Finalize,
    /// The stream ends (`CloseStream`, shutdown).
    Close,
}

/// What to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Emit {
    SpeechStarted { timestamp: f64 },
    UtteranceEnd { last_word_end: f64 },
    Results(Update),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub words: Vec<Word>,
    /// The audio span the result covers (finals tile the stream).
    pub start: f64,
    pub end: f64,
    pub is_final: bool,
    pub speech_final: bool,
    pub from_finalize: bool,
}

/// Per-stream policy state.
#[derive(Debug)]
pub struct Policy {
    cfg: PolicyConfig,
    /// VAD frames seen (the stream clock).
    frames: u64,
    /// First frame of the current utterance buffer.
    utt_start: u64,
    has_speech: bool,
    /// Frame at which the VAD last started hearing speech.
    speech_from: u64,
    silence_run: u64,
    /// Frame count when the last hypothesis was asked for.
    last_hyp: u64,
    /// Final words of the current utterance.
    committed: Vec<Word>,
    /// Final words not sent yet: held for the end of their line (the last
    /// of `committed`, or words already moved out by a trim or cut).
    unsent: Vec<Word>,
    /// When each unsent word became final (audio received, seconds): how
    /// long it has been held.
    held_since: Vec<f64>,
    /// Where the VAD's pauses in the unsent words' audio start, seconds.
    pauses: Vec<f64>,
    /// The previous hypothesis of the current utterance.
    prev: Vec<Word>,
    /// The one before it (empty after a trim or a cut).
    prev2: Vec<Word>,
    /// Where the last final result ended, seconds (finals tile from here).
    final_cursor: f64,
    /// End of the last final word of the stream, seconds.
    last_word_end: f64,
    /// Words were sent since the last `UtteranceEnd`.
    words_since_utterance_end: bool,
    last_interim: Vec<String>,
    /// Final text of the stream so far, for the prompt.
    context: String,
    /// The last word moved out of the utterance by a trim or a cut (as
    /// compared) and where its audio was cut, seconds.
    seam: Option<(String, f64)>,
    /// The end of the audio the last hypothesis of this utterance had,
    /// seconds (0 before the first).
    last_hyp_end: f64,
    words_final: u64,
}

impl Policy {
    pub fn new(cfg: PolicyConfig) -> Self {
        Policy {
            cfg,
            frames: 0,
            utt_start: 0,
            has_speech: false,
            speech_from: 0,
            silence_run: 0,
            last_hyp: 0,
            committed: Vec::new(),
            unsent: Vec::new(),
            held_since: Vec::new(),
            pauses: Vec::new(),
            prev: Vec::new(),
            prev2: Vec::new(),
            final_cursor: 0.0,
            last_word_end: 0.0,
            words_since_utterance_end: false,
            last_interim: Vec::new(),
            context: String::new(),
            seam: None,
            last_hyp_end: 0.0,
            words_final: 0,
        }
    }

    /// First frame of the audio the next hypothesis must cover: the worker
    /// drops what lies before.
    pub fn utterance_start(&self) -> u64 {
        self.utt_start
    }

    /// The words of the current utterance that are already final (the next
    /// hypothesis need not decode them again).
    pub fn committed(&self) -> &[Word] {
        &self.committed
    }

    /// Where the speech of the current utterance started, seconds: final
    /// words carried over from the last utterance end before it.
    pub fn speech_start(&self) -> f64 {
        self.speech_from as f64 * FRAME_SECONDS
    }

    /// Final words sent so far.
    pub fn words_final(&self) -> u64 {
        self.words_final
    }

    /// The tail of the final text, to condition the next hypothesis.
    pub fn context(&self, max_chars: usize) -> &str {
        let c = self.context.as_str();
        if c.len() <= max_chars {
            return c;
        }
        let mut at = c.len() - max_chars;
        while !c.is_char_boundary(at) {
            at += 1;
        }
        // Start on a word boundary.
        match c[at..].find(' ') {
            Some(sp) => &c[at + sp + 1..],
            None => &c[at..],
        }
    }

    /// One 10 ms voice decision. Returns what to send now and, when due,
    /// why to transcribe. `Step` may be deferred by the caller (to coalesce
    /// under load); `Endpoint` and `Cut` must be served before the next frame.
    pub fn on_frame(&mut self, speech: bool, out: &mut Vec<Emit>) -> Option<Reason> {
        self.frames += 1;
        let now = self.frames as f64 * FRAME_SECONDS;
        if speech {
            if self.has_speech && self.silence_run >= PAUSE_FRAMES {
                self.pauses.push(now - (self.silence_run + 1) as f64 * FRAME_SECONDS);
            }
            self.silence_run = 0;
            if !self.has_speech {
                self.has_speech = true;
                self.speech_from = self.frames - 1;
                self.last_hyp = self.frames;
                if self.cfg.vad_events {
                    out.push(Emit::SpeechStarted { timestamp: round3(self.speech_start()) });
                }
            }
        } else {
            self.silence_run += 1;
        }
        if !self.has_speech {
            if self.committed.last().is_some_and(|w| now - w.end > CARRY_GAP_S) {
                let carried = std::mem::take(&mut self.committed);
                self.push_context(&carried);
                self.seam = None;
            }
            if self.committed.is_empty() {
                // Keep only the pre-roll of the silence before speech.
                self.utt_start = self.utt_start.max(self.frames.saturating_sub(self.cfg.preroll_frames));
            }
        }
        if let Some(gap) = self.cfg.utterance_end {
            if self.words_since_utterance_end && !speech && !self.has_speech && now - self.last_word_end >= gap {
                self.words_since_utterance_end = false;
                out.push(Emit::UtteranceEnd { last_word_end: round3(self.last_word_end) });
            }
        }
        if !self.has_speech {
            return None;
        }
        if self.cfg.endpoint_frames.is_some_and(|n| self.silence_run >= n.max(1)) {
            return Some(Reason::Endpoint);
        }
        if self.frames - self.utt_start >= self.cfg.max_utterance_frames {
            return Some(Reason::Cut);
        }
        if self.frames - self.last_hyp >= self.cfg.step_frames {
            return Some(Reason::Step);
        }
        None
    }

    /// A step is due (the caller deferred it).
    pub fn step_due(&self) -> bool {
        self.has_speech && self.frames - self.last_hyp >= self.cfg.step_frames
    }

    /// Whether a flush (`Finalize`, close) has anything to finalise.
    pub fn pending(&self) -> bool {
        self.has_speech || !self.prev.is_empty() || !self.unsent.is_empty()
    }

    /// The words of a hypothesis of the utterance (all audio from
    /// [`Policy::utterance_start`] to now), made for `reason`.
    pub fn on_hypothesis(&mut self, reason: Reason, words: Vec<Word>, out: &mut Vec<Emit>) {
        self.last_hyp = self.frames;
        let now = self.frames as f64 * FRAME_SECONDS;
        let tail = self.after_committed(&words);
        match reason {
            Reason::Step | Reason::Cut => {
                // Agreement with either of the two hypotheses before: over
                // noise the steps often flip between two readings by turns
                // ("toys as the lame EBA." / "toys to see a lamb EBA." on
                // apollo11), which the previous one alone never confirms.
                let agreement = |prev: &[Word]| {
                    let prev_tail = self.after_committed(prev);
                    tail.iter().zip(&prev_tail).take_while(|(a, b)| a.norm() == b.norm()).count()
                };
                let mut agreed = agreement(&self.prev).max(agreement(&self.prev2));
                if let Some(margin) = self.cfg.alignment_commit {
                    agreed = agreed.max(tail.iter().take_while(|w| w.end <= now - margin).count());
                }
                // A stock ending at the end of the audio waits for the words
                // after it, or for the flush that checks it.
                let stock = stock_ending(&words);
                agreed = agreed.min(tail.len().saturating_sub(stock));
                let mut rest: Vec<Word> = tail[agreed..].to_vec();
                self.hold(tail[..agreed].to_vec(), now);
                let cut = reason == Reason::Cut || (!rest.is_empty() && self.stalled());
                if cut {
                    // Whisper's window is full, or the steps stall: commit
                    // all but the words still being spoken (and a stock
                    // ending), and start the next utterance after them. A
                    // stall cuts with this step's hypothesis: a decode of its
                    // own only made the words wait for it (0.5 s on average
                    // under four sessions).
                    let spoken = rest.iter().position(|w| w.end > now - self.cfg.cut_margin).unwrap_or(rest.len());
                    let keep = spoken.min(rest.len().saturating_sub(stock));
                    let fin: Vec<Word> = rest.drain(..keep).collect();
                    self.hold(fin, now);
                }
                self.release(now, rest.first(), out);
                if cut {
                    // The cut's words waited the limit or the window
                    // already: they go now, not a line hold later.
                    self.send_line(self.unsent.len(), out);
                    let cut_at = self.committed.last().map_or(now - self.cfg.cut_margin, |w| w.end);
                    self.prev = rest.clone();
                    self.prev2.clear();
                    self.move_out(self.committed.len(), cut_at);
                } else {
                    self.prev2 = std::mem::replace(&mut self.prev, words);
                    self.trim();
                }
                self.last_hyp_end = now;
                self.interim(rest, now, out);
            }
            Reason::Endpoint | Reason::Finalize | Reason::Close => {
                let from_finalize = reason == Reason::Finalize;
                self.hold(without_made_up_tail(tail), now);
                // An endpoint always says so (`speech_final`), even when
                // the steps already sent every word: LiveKit and Pipecat
                // end the user's speech on it.
                if !self.unsent.is_empty() || from_finalize || reason == Reason::Endpoint {
                    let end =
                        if reason == Reason::Endpoint { now - self.silence_run as f64 * FRAME_SECONDS } else { now };
                    self.send(self.unsent.len(), end, true, from_finalize, out);
                }
                if self.cfg.carry.is_some() {
                    // What is carried into the next window is this one
                    // decode's text of the whole window, which reads as one
                    // sentence ("Americans asked not"); the final words of
                    // several steps and a flush need not ("Americans. asked
                    // not"), and as a forced prefix they misled the next
                    // steps ("what you are country").
                    self.committed = without_made_up_tail(words);
                }
                self.end_utterance();
            }
        }
    }

    /// A flush with nothing to transcribe (no speech in the utterance).
    pub fn flush_empty(&mut self, reason: Reason, out: &mut Vec<Emit>) {
        let now = self.frames as f64 * FRAME_SECONDS;
        if reason == Reason::Finalize || !self.unsent.is_empty() {
            self.send(self.unsent.len(), now, false, reason == Reason::Finalize, out);
        }
        self.end_utterance();
    }

    fn end_utterance(&mut self) {
        self.carry_over();
        self.unsent.clear();
        self.held_since.clear();
        self.pauses.clear();
        self.prev.clear();
        self.prev2.clear();
        self.last_interim.clear();
        self.has_speech = false;
        self.last_hyp_end = 0.0;
        self.last_hyp = self.frames;
    }

    /// Ends the utterance's window: its final words up to `carry` before
    /// the last one stay final words of the window (the next utterance's
    /// forced prefix), the others go to the prompt.
    fn carry_over(&mut self) {
        let committed = std::mem::take(&mut self.committed);
        let from = match (self.cfg.carry, committed.last()) {
            (Some(carry), Some(last)) => last.end - carry,
            _ => f64::INFINITY,
        };
        let k = committed.iter().position(|w| w.start >= from).unwrap_or(committed.len());
        self.push_context(&committed[..k]);
        if k == committed.len() {
            self.seam = None;
            self.utt_start = self.frames;
            return;
        }
        if k > 0 {
            // As a trim cuts: halfway between the last word that goes and
            // the first that stays.
            let cut_at = (committed[k - 1].end + committed[k].start) / 2.0;
            let cut_frame = ((cut_at / FRAME_SECONDS).floor() as u64).clamp(self.utt_start, self.frames);
            self.seam = Some((committed[k - 1].norm(), cut_at));
            self.utt_start = cut_frame;
        }
        self.committed = committed[k..].to_vec();
    }

    /// On a long utterance, moves the final words up to the last sentence end
    /// (a third past the limit: all of them) out of the utterance and into the
    /// prompt, and starts its audio after them.
    fn trim(&mut self) {
        let Some(limit) = self.cfg.trim_frames else { return };
        let len = self.frames - self.utt_start;
        if len < limit {
            return;
        }
        let k = match self.committed.iter().rposition(|w| ends_sentence(&w.text)) {
            Some(i) => i + 1,
            None if len >= limit + limit / 3 => self.committed.len(),
            None => return,
        };
        let Some(last) = k.checked_sub(1).map(|i| &self.committed[i]) else { return };
        // Cut halfway to the next word heard, so that neither word loses
        // sound to the other when the word times are a little off.
        let next = self.prev.iter().map(|w| w.start).find(|&s| s >= last.end);
        let cut_at = next.map_or(last.end, |s| (last.end + s) / 2.0);
        self.prev.retain(|w| (w.start + w.end) / 2.0 >= cut_at);
        self.prev2.clear();
        self.move_out(k, cut_at);
    }

    /// Ends the utterance's audio at `cut_at` seconds: its first `k` final
    /// words go to the prompt, the rest stay final words of the utterance.
    fn move_out(&mut self, k: usize, cut_at: f64) {
        let cut_frame = ((cut_at / FRAME_SECONDS).floor() as u64).clamp(self.utt_start, self.frames);
        let moved: Vec<Word> = self.committed.drain(..k).collect();
        self.push_context(&moved);
        if let Some(w) = moved.last() {
            self.seam = Some((w.norm(), cut_at));
        }
        self.utt_start = cut_frame;
    }

    fn push_context(&mut self, words: &[Word]) {
        for w in words {
            if !self.context.is_empty() {
                self.context.push(' ');
            }
            self.context.push_str(&w.text);
        }
        // Bounded: only the tail is ever used.
        if self.context.len() > 4096 {
            let cut = self.context.len() - 2048;
            let cut = (cut..self.context.len()).find(|&i| self.context.is_char_boundary(i)).unwrap_or(0);
            self.context.drain(..cut);
        }
    }

    /// The words of `hyp` that come after the final words of this utterance.
    pub fn after_committed(&self, hyp: &[Word]) -> Vec<Word> {
        let n = self.committed.len();
        if n == 0 {
            // After a trim or a cut, Whisper may hear the end of the last
            // word moved out again at the start of the audio.
            let repeated =
                |w: &Word| self.seam.as_ref().is_some_and(|(text, at)| w.start < at + SEAM_S && w.norm() == *text);
            let skip = hyp.first().is_some_and(repeated);
            return hyp[usize::from(skip)..].to_vec();
        }
        // Usually the hypothesis repeats the final words verbatim.
        if hyp.len() >= n && hyp.iter().zip(&self.committed).all(|(a, b)| a.norm() == b.norm()) {
            return hyp[n..].to_vec();
        }
        // Otherwise align by time, then drop a repeated seam of 1–3 words.
        let cut = self.committed.last().map_or(0.0, |w| w.end);
        let mut tail: Vec<Word> = hyp.iter().filter(|w| (w.start + w.end) / 2.0 >= cut).cloned().collect();
        for k in (1..=3.min(n).min(tail.len())).rev() {
            let seam = tail[..k].iter().map(Word::norm).eq(self.committed[n - k..].iter().map(Word::norm));
            if seam {
                tail.drain(..k);
                break;
            }
        }
        tail
    }

    /// Whether the steps stall ([`PolicyConfig::stall_cut`]): the previous
    /// hypothesis heard the limit's worth of audio after the last final word
    /// (or the utterance's speech start) and this one still leaves words
    /// after it. Timed from the last final word, not from the words after
    /// it: over noise the disputed word often stretches to the end of the
    /// audio ("weren't" at 60.1-64.4 s, then 60.1-65.6 s), and a hypothesis
    /// that skips speech puts one of no length there ("I don't know" at
    /// 36.2, 36.8, 37.4 s), which restarted the clock.
    fn stalled(&self) -> bool {
        let since = self.last_word_end.max(self.speech_start());
        self.cfg.stall_cut.is_some_and(|limit| self.last_hyp_end - since >= limit)
    }

    /// Makes `words` final in the utterance (what later hypotheses must
    /// repeat); they are sent by [`Policy::release`] or the flush.
    fn hold(&mut self, words: Vec<Word>, now: f64) {
        let words = self.monotonic(words);
        if let Some(w) = words.last() {
            self.last_word_end = w.end;
        }
        self.committed.extend(words.iter().cloned());
        self.held_since.resize(self.held_since.len() + words.len(), now);
        self.unsent.extend(words);
    }

    /// Sends the unsent words as lines, one final result each, up to the
    /// last line end among them; held words that would have waited longer
    /// than `line_hold` by the next step go now, up to the last clause end
    /// (or all of them). `next` is the first word heard after them, if any.
    fn release(&mut self, now: f64, next: Option<&Word>, out: &mut Vec<Emit>) {
        let Some(hold) = self.cfg.line_hold else {
            return self.send_line(self.unsent.len(), out);
        };
        let next_start = next.map(|w| w.start);
        while let Some(i) = (0..self.unsent.len()).find(|&i| self.ends_line(i, next_start, now)) {
            self.send_line(i + 1, out);
        }
        let step = self.cfg.step_frames as f64 * FRAME_SECONDS;
        if self.held_since.first().is_some_and(|&since| now + step - since > hold) {
            let n = self.unsent.len();
            let upto = (0..n).rev().find(|&i| ends_clause(&self.unsent[i].text)).map_or(n, |i| i + 1);
            self.send_line(upto, out);
        }
        let cursor = self.final_cursor;
        self.pauses.retain(|&p| p >= cursor - 1.0);
    }

    /// Whether unsent word `i` ends a line: it ends a sentence, or a pause
    /// follows it (in the VAD's decisions, or between the word times).
    fn ends_line(&self, i: usize, next_start: Option<f64>, now: f64) -> bool {
        let w = &self.unsent[i];
        let next = self.unsent.get(i + 1).map(|w| w.start).or(next_start);
        if ends_sentence(&w.text) || next.is_some_and(|s| s - w.end >= PAUSE_S) {
            return true;
        }
        let (from, to) = ((w.start + w.end) / 2.0, next.unwrap_or(now));
        let ongoing = (self.silence_run >= PAUSE_FRAMES).then_some(now - self.silence_run as f64 * FRAME_SECONDS);
        self.pauses.iter().copied().chain(ongoing).any(|p| p >= from && p < to)
    }

    /// Sends the first `n` unsent words as a final result ending where the
    /// last of them does.
    fn send_line(&mut self, n: usize, out: &mut Vec<Emit>) {
        if n > 0 {
            let end = self.unsent[n - 1].end;
            self.send(n, end, false, false, out);
        }
    }

    /// Sends the first `n` unsent words as one final result covering the
    /// audio from the last final's end to `end` (at least the last word's).
    fn send(&mut self, n: usize, end: f64, speech_final: bool, from_finalize: bool, out: &mut Vec<Emit>) {
        let words: Vec<Word> = self.unsent.drain(..n).collect();
        self.held_since.drain(..n);
        let start = self.final_cursor;
        let end = end.max(words.last().map_or(start, |w| w.end)).max(start);
        if !words.is_empty() {
            self.words_since_utterance_end = true;
        }
        self.final_cursor = end;
        self.words_final += words.len() as u64;
        self.last_interim.clear();
        out.push(Emit::Results(Update {
            words,
            start: round3(start),
            end: round3(end),
            is_final: true,
            speech_final,
            from_finalize,
        }));
    }

    /// Sends the held final words and the hypothesis's tail `rest` as the
    /// interim result: all the text after the last final.
    fn interim(&mut self, rest: Vec<Word>, now: f64, out: &mut Vec<Emit>) {
        if !self.cfg.interim_results || (rest.is_empty() && self.unsent.is_empty()) {
            return;
        }
        let mut words = self.unsent.clone();
        words.extend(self.monotonic(rest));
        let key: Vec<String> = words.iter().map(|w| w.text.clone()).collect();
        if key == self.last_interim {
            return;
        }
        self.last_interim = key;
        out.push(Emit::Results(Update {
            words,
            start: round3(self.final_cursor),
            end: round3(now.max(self.final_cursor)),
            is_final: false,
            speech_final: false,
            from_finalize: false,
        }));
    }

    /// Clamps word times so they never go back past the last final word.
    fn monotonic(&self, words: Vec<Word>) -> Vec<Word> {
        let mut floor = self.last_word_end;
        words
            .into_iter()
            .map(|mut w| {
                w.start = round3(w.start.max(floor));
                w.end = round3(w.end.max(w.start));
                floor = w.end;
                w
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(text: &str, start: f64, end: f64) -> Word {
        Word { text: text.into(), start, end, probability: 0.9 }
    }

    fn frames(p: &mut Policy, speech: bool, n: usize, out: &mut Vec<Emit>) -> Option<Reason> {
        let mut due = None;
        for _ in 0..n {
            if let Some(r) = p.on_frame(speech, out) {
                due = Some(due.map_or(r, |d: Reason| d.max(r)));
                if r >= Reason::Cut {
                    return due;
                }
            }
        }
        due
    }

    fn results(out: &[Emit]) -> Vec<&Update> {
        out.iter().filter_map(|e| if let Emit::Results(u) = e { Some(u) } else { None }).collect()
    }

    #[test]
    fn titles_and_initials_do_not_end_sentences() {
        for end in ["country.", "you?", "gospel!", "so did I.", "\"Stop.\"", "etc."] {
            let last = end.rsplit(' ').next().unwrap();
            assert!(ends_sentence(last), "{end}");
        }
        for not in ["Mr.", "Mrs.", "Dr.", "St.", "e.g.", "J.", "(Mr.", "country", "well,"] {
            assert!(!ends_sentence(not), "{not}");
        }
    }

    #[test]
    fn a_flush_drops_its_unlikely_last_words() {
        let mut p = Policy::new(PolicyConfig::default());
        let mut out = Vec::new();
        frames(&mut p, true, 300, &mut out);
        let unlikely = |text: &str, start, end| Word { probability: 0.08, ..w(text, start, end) };
        let words =
            vec![w("his", 1.0, 1.3), unlikely("gospel.", 1.3, 1.7), w("So,", 1.7, 1.9), unlikely("so.", 2.0, 2.1)];
        p.on_hypothesis(Reason::Close, words.clone(), &mut out);
        let finals: Vec<&str> = results(&out).iter().flat_map(|u| &u.words).map(|w| w.text.as_str()).collect();
        assert_eq!(finals, ["his", "gospel.", "So,"], "only the trailing run goes");
        // A step keeps them: the next hypothesis decides.
        let mut p = Policy::new(PolicyConfig::default());
        let mut out = Vec::new();
        frames(&mut p, true, 300, &mut out);
        p.on_hypothesis(Reason::Step, words, &mut out);
        let interim = results(&out).last().map(|u| u.words.len());
        assert_eq!(interim, Some(4));
    }

    #[test]
    fn a_flush_drops_a_phrase_squeezed_into_no_time() {
        let with = |text: &str, start, end, probability| Word { probability, ..w(text, start, end) };
        let flushed = |words: &[Word]| {
            let mut p = Policy::new(PolicyConfig::default());
            let mut out = Vec::new();
            frames(&mut p, true, 1720, &mut out);
            p.on_hypothesis(Reason::Endpoint, words.to_vec(), &mut out);
            results(&out).iter().flat_map(|u| &u.words).map(|w| w.text.clone()).collect::<Vec<_>>()
        };
        // An endpoint under load (tests/reliability.rs, one 31 s frame).
        let mut words = vec![with("his", 15.65, 15.95, 0.96), with("gospel.", 15.95, 16.37, 0.74)];
        words.push(with("So,", 16.37, 16.39, 0.11));
        for (text, p) in [("we're", 0.18), ("going", 0.39), ("to", 0.93), ("go", 0.13), ("ahead", 0.21), ("and", 0.81)]
        {
            words.push(with(text, 17.09, 17.09, p));
        }
        assert_eq!(flushed(&words), ["his", "gospel."]);
        // A short last word that is likely stays.
        let short = [with("his", 15.65, 15.95, 0.96), with("gospel.", 15.95, 16.04, 0.74)];
        assert_eq!(flushed(&short), ["his", "gospel."]);
    }

    /// Speech up to the end of `words` (a hypothesis: `carried`, then
    /// `texts` 0.5 s apart, 0.4 s each, from `from` s), then an endpoint.
    fn ended_utterance(p: &mut Policy, carried: &[Word], texts: &[&str], from: f64, out: &mut Vec<Emit>) {
        let mut words = carried.to_vec();
        words.extend(texts.iter().enumerate().map(|(i, t)| w(t, from + i as f64 * 0.5, from + i as f64 * 0.5 + 0.4)));
        let end = words.last().unwrap().end;
        let now = p.frames as f64 * FRAME_SECONDS;
        frames(p, true, ((end - now) / FRAME_SECONDS).round() as usize, out);
        assert_eq!(frames(p, false, 50, out), Some(Reason::Endpoint));
        p.on_hypothesis(Reason::Endpoint, words, out);
    }

    fn texts(words: &[Word]) -> Vec<&str> {
        words.iter().map(|w| w.text.as_str()).collect()
    }

    fn final_words(out: &[Emit]) -> Vec<&str> {
        results(out).iter().filter(|u| u.is_final).flat_map(|u| texts(&u.words)).collect()
    }

    #[test]
    fn an_ended_utterance_carries_its_last_seconds_into_the_next_window() {
        let mut p = Policy::new(PolicyConfig { carry: Some(1.5), ..Default::default() });
        let mut out = Vec::new();
        frames(&mut p, false, 100, &mut out);
        ended_utterance(&mut p, &[], &["ask", "not", "what", "your", "country"], 1.0, &mut out);
        // "what" (from 2.0 s) starts within 1.5 s of the end of "country" (3.4 s).
        assert_eq!(texts(p.committed()), ["what", "your", "country"]);
        assert_eq!(p.context(100), "ask not");
        assert!((194..=195).contains(&p.utterance_start()), "halfway between \"not\" and \"what\"");
        assert!(!p.pending(), "carried words are already sent");
        // A short pause, then speech: the window still starts there, and a
        // hypothesis repeating the carried words sends only what is new.
        let start = p.utterance_start();
        frames(&mut p, false, 100, &mut out);
        assert_eq!(p.utterance_start(), start);
        out.clear();
        let carried = p.committed().to_vec();
        ended_utterance(&mut p, &carried, &["can", "do"], 5.0, &mut out);
        assert!((p.speech_start() - 4.9).abs() < 1e-9, "{}", p.speech_start());
        assert_eq!(final_words(&out), ["can", "do"]);
        assert_eq!(texts(p.committed()), ["can", "do"]);
        assert_eq!(p.context(100), "ask not what your country");
    }

    #[test]
    fn a_long_pause_drops_the_carried_words_into_the_prompt() {
        let mut p = Policy::new(PolicyConfig { carry: Some(6.0), ..Default::default() });
        let mut out = Vec::new();
        ended_utterance(&mut p, &[], &["for", "your", "country."], 0.5, &mut out);
        assert_eq!(texts(p.committed()), ["for", "your", "country."]);
        assert_eq!(p.utterance_start(), 0, "the whole utterance is carried");
        // The endpoint is 2.4 s in; the carry goes 2 s after "country." ends (1.9 s).
        frames(&mut p, false, 140, &mut out);
        assert_eq!(p.committed().len(), 3);
        assert_eq!(p.utterance_start(), 0);
        frames(&mut p, false, 20, &mut out);
        assert!(p.committed().is_empty());
        assert_eq!(p.context(100), "for your country.");
        assert_eq!(p.utterance_start(), p.frames - 30, "back to the pre-roll");
    }

    #[test]
    fn without_carry_each_utterance_is_decoded_alone() {
        let mut p = Policy::new(PolicyConfig::default());
        let mut out = Vec::new();
        ended_utterance(&mut p, &[], &["for", "your", "country."], 0.5, &mut out);
        assert!(p.committed().is_empty());
        assert_eq!(p.utterance_start(), p.frames);
        assert_eq!(p.context(100), "for your country.");
    }

    #[test]
    fn a_trailing_ellipsis_is_no_part_of_a_word() {
        assert_eq!(without_ellipsis("And..."), "And");
        assert_eq!(without_ellipsis("can\u{2026}"), "can");
        assert_eq!(without_ellipsis("country."), "country.");
        assert_eq!(without_ellipsis("..."), "...");
        assert!(!ends_sentence(without_ellipsis("And...")));
    }

    #[test]
    fn a_stock_ending_is_a_sentence_of_its_own_at_the_end() {
        let hyp = |text: &str| -> Vec<Word> { text.split(' ').map(|t| w(t, 0.0, 0.1)).collect() };
        assert_eq!(stock_ending(&hyp("for your country. Thank you.")), 2);
        assert_eq!(stock_ending(&hyp("Thank you very much.")), 4);
        assert_eq!(stock_ending(&hyp("Thank you.")), 2);
        assert_eq!(stock_ending(&hyp("I want to thank you.")), 0, "inside a sentence");
        assert_eq!(stock_ending(&hyp("for your country Thank you.")), 2, "a new window's sentence");
        assert_eq!(stock_ending(&hyp("Thank you. And then")), 0, "not at the end");
        assert_eq!(stock_ending(&hyp("")), 0);
    }

    #[test]
    fn steps_leave_a_stock_ending_interim() {
        let mut p = Policy::new(PolicyConfig::default());
        let mut out = Vec::new();
        frames(&mut p, true, 300, &mut out);
        let words = vec![w("country.", 1.0, 1.4), w("Thank", 1.5, 1.7), w("you.", 1.7, 1.9)];
        p.on_hypothesis(Reason::Step, words.clone(), &mut out);
        frames(&mut p, true, 60, &mut out);
        p.on_hypothesis(Reason::Step, words, &mut out);
        assert_eq!(texts(p.committed()), ["country."]);
        assert_eq!(final_words(&out), ["country."]);
        let last = results(&out).last().map(|u| (u.is_final, texts(&u.words)));
        assert_eq!(last, Some((false, vec!["Thank", "you."])), "interim");
    }

    #[test]
    fn silence_emits_nothing() {
        let mut p = Policy::new(PolicyConfig { utterance_end: Some(1.0), vad_events: true, ..Default::default() });
        let mut out = Vec::new();
        assert_eq!(frames(&mut p, false, 6000, &mut out), None);
        assert!(out.is_empty());
        assert!(!p.pending());
        assert_eq!(p.utterance_start(), 6000 - 30);
    }

    #[test]
    fn local_agreement_commits_the_agreed_prefix() {
        let mut p = Policy::new(PolicyConfig::default());
        let mut out = Vec::new();
        frames(&mut p, false, 100, &mut out);
        // The first speech frame starts the step clock.
        assert_eq!(frames(&mut p, true, 61, &mut out), Some(Reason::Step));
        p.on_hypothesis(Reason::Step, vec![w("Hello", 1.0, 1.3), w("wor", 1.3, 1.6)], &mut out);
        let r = results(&out);
        assert_eq!(r.len(), 1);
        assert!(!r[0].is_final);
        out.clear();
        frames(&mut p, true, 60, &mut out);
        p.on_hypothesis(Reason::Step, vec![w("Hello", 1.0, 1.3), w("world,", 1.3, 1.7), w("how", 1.8, 2.0)], &mut out);
        let r = results(&out);
        assert_eq!(r.len(), 2);
        assert!(r[0].is_final && !r[0].speech_final);
        assert_eq!(r[0].words.iter().map(|w| w.text.as_str()).collect::<Vec<_>>(), vec!["Hello"]);
        assert!(!r[1].is_final);
        assert_eq!(r[1].words.len(), 2);
        out.clear();
        // Endpoint: everything after the committed words becomes final.
        assert_eq!(frames(&mut p, false, 50, &mut out), Some(Reason::Endpoint));
        p.on_hypothesis(
            Reason::Endpoint,
            vec![w("Hello", 1.0, 1.3), w("world,", 1.3, 1.7), w("how", 1.8, 2.0), w("are", 2.0, 2.2)],
            &mut out,
        );
        let r = results(&out);
        assert_eq!(r.len(), 1);
        assert!(r[0].is_final && r[0].speech_final);
        assert_eq!(r[0].words.iter().map(|w| w.text.as_str()).collect::<Vec<_>>(), vec!["world,", "how", "are"]);
        assert_eq!(p.words_final(), 4);
        assert_eq!(p.context(100), "Hello world, how are");
        assert!(!p.pending());
    }

    /// Steps every 0.6 s from 1.6 s that hear the first word three ways by
    /// turns (two ways would agree every other step), until `until` seconds;
    /// returns the first step that sent final words or cut the utterance,
    /// with those words, if any. `words(first, now)` is a step's hypothesis.
    fn flip_flop(p: &mut Policy, until: f64, words: impl Fn(&str, f64) -> Vec<Word>) -> Option<(Vec<String>, f64)> {
        let mut out = Vec::new();
        frames(p, false, 100, &mut out);
        frames(p, true, 61, &mut out);
        let start = p.utterance_start();
        for first in ["we", "he", "she"].iter().cycle() {
            let now = p.frames as f64 * FRAME_SECONDS;
            if now >= until {
                return None;
            }
            p.on_hypothesis(Reason::Step, words(first, now), &mut out);
            let finals = final_words(&out);
            if !finals.is_empty() || p.utterance_start() != start {
                return Some((finals.into_iter().map(String::from).collect(), now));
            }
            assert_eq!(frames(p, true, 60, &mut out), Some(Reason::Step));
        }
        unreachable!()
    }

    #[test]
    fn hypotheses_that_keep_disagreeing_are_cut_early() {
        let plain = |first: &str, _| vec![w(first, 1.0, 1.3), w("won", 1.4, 1.6)];
        let mut p = Policy::new(PolicyConfig { stall_cut: Some(4.0), ..Default::default() });
        // The steps at 5.21 s and 5.81 s still disagree on a word that
        // started at 1.0 s: the second cuts with its own hypothesis.
        let (finals, at) = flip_flop(&mut p, 20.0, plain).unwrap();
        assert!((5.81..5.9).contains(&at), "{at}");
        assert_eq!(finals, ["he", "won"]);
        // Without the rule, such steps go on until the window is full.
        // Those words waited the limit already: they go at once, not held
        // for the end of their line.
        let mut p = Policy::new(PolicyConfig { stall_cut: Some(4.0), line_hold: Some(2.5), ..Default::default() });
        assert_eq!(flip_flop(&mut p, 20.0, plain).unwrap().0, ["he", "won"]);
        let mut p = Policy::new(PolicyConfig { stall_cut: None, ..Default::default() });
        assert_eq!(flip_flop(&mut p, 20.0, plain), None);
        // Over noise the disputed word may stretch to the audio's end
        // ("weren't" at 60.1-64.4 s, then 60.1-65.6 s), or hypotheses that
        // skip the speech may put a word of no length there ("I don't know"
        // at 36.2, 36.8, 37.4 s): the clock runs from the last final word.
        // Words that end in the audio's last second are still being spoken:
        // the cut sends none of them and starts the next utterance a second
        // before the audio's end.
        let stretched = |first: &str, now: f64| vec![w(first, 1.0, now - 0.05)];
        let at_the_end = |first: &str, now: f64| vec![w(first, now - 0.05, now - 0.05)];
        for words in [&stretched as &dyn Fn(&str, f64) -> Vec<Word>, &at_the_end] {
            let mut p = Policy::new(PolicyConfig { stall_cut: Some(4.0), ..Default::default() });
            let (finals, at) = flip_flop(&mut p, 20.0, words).unwrap();
            assert!((5.81..5.9).contains(&at), "{at}");
            assert!(finals.is_empty(), "{finals:?}");
            assert_eq!(p.utterance_start(), 481);
        }
    }

    #[test]
    fn two_readings_by_turns_agree_at_the_third_hypothesis() {
        let mut p = Policy::new(PolicyConfig::default());
        let mut out = Vec::new();
        frames(&mut p, true, 160, &mut out);
        let reading = |a: &str, b: &str| vec![w(a, 1.0, 1.3), w(b, 1.3, 1.5)];
        p.on_hypothesis(Reason::Step, reading("to", "see"), &mut out);
        frames(&mut p, true, 60, &mut out);
        p.on_hypothesis(Reason::Step, reading("as", "the"), &mut out);
        assert!(results(&out).iter().all(|u| !u.is_final));
        frames(&mut p, true, 60, &mut out);
        p.on_hypothesis(Reason::Step, reading("to", "see"), &mut out);
        assert_eq!(final_words(&out), ["to", "see"]);
    }

    #[test]
    fn the_alignment_rule_commits_words_well_before_the_audio_end_at_once() {
        let mut p = Policy::new(PolicyConfig { alignment_commit: Some(0.5), ..Default::default() });
        let mut out = Vec::new();
        frames(&mut p, true, 200, &mut out);
        // The audio ends at 2.0 s: "one" and "two" end before 1.5 s, "three" does not.
        p.on_hypothesis(Reason::Step, vec![w("one", 0.2, 0.6), w("two", 0.7, 1.4), w("three", 1.6, 1.9)], &mut out);
        let r = results(&out);
        assert!(r[0].is_final);
        assert_eq!(r[0].words.iter().map(|w| w.text.as_str()).collect::<Vec<_>>(), ["one", "two"]);
        assert!(!r[1].is_final);
        assert_eq!(r[1].words.iter().map(|w| w.text.as_str()).collect::<Vec<_>>(), ["three"]);
    }

    #[test]
    fn changed_committed_words_are_not_repeated() {
        let mut p = Policy::new(PolicyConfig::default());
        let mut out = Vec::new();
        frames(&mut p, true, 60, &mut out);
        p.on_hypothesis(Reason::Step, vec![w("one", 0.0, 0.3), w("two", 0.3, 0.6)], &mut out);
        frames(&mut p, true, 60, &mut out);
        p.on_hypothesis(Reason::Step, vec![w("one", 0.0, 0.3), w("two", 0.3, 0.6), w("three", 0.7, 1.0)], &mut out);
        out.clear();
        // Whisper re-spells a committed word: alignment falls back to time.
        frames(&mut p, true, 60, &mut out);
        p.on_hypothesis(
            Reason::Step,
            vec![w("One", 0.0, 0.3), w("2", 0.3, 0.6), w("three", 0.7, 1.0), w("four", 1.1, 1.3)],
            &mut out,
        );
        let r = results(&out);
        assert_eq!(r[0].words.iter().map(|w| w.text.as_str()).collect::<Vec<_>>(), vec!["three"]);
    }

    #[test]
    fn finalize_flushes_with_from_finalize_and_times_stay_monotonic() {
        let mut p = Policy::new(PolicyConfig { interim_results: false, ..Default::default() });
        let mut out = Vec::new();
        frames(&mut p, true, 60, &mut out);
        p.on_hypothesis(Reason::Step, vec![w("a", 0.5, 0.4)], &mut out);
        assert!(out.is_empty(), "no interims when not asked for");
        p.on_hypothesis(Reason::Finalize, vec![w("a", 0.5, 0.4), w("b", 0.3, 0.9)], &mut out);
        let r = results(&out);
        assert!(r[0].from_finalize && r[0].is_final);
        let ws = &r[0].words;
        assert!(ws[0].end >= ws[0].start && ws[1].start >= ws[0].end);
    }

    #[test]
    fn long_utterances_are_cut_before_30_s() {
        let mut p = Policy::new(PolicyConfig { endpoint_frames: None, ..Default::default() });
        let mut out = Vec::new();
        let mut reason = None;
        for _ in 0..3000 {
            if let Some(r) = p.on_frame(true, &mut out) {
                if r == Reason::Cut {
                    reason = Some(r);
                    break;
                }
                p.on_hypothesis(r, Vec::new(), &mut out);
            }
        }
        assert_eq!(reason, Some(Reason::Cut));
        let hyp: Vec<Word> = (0..50).map(|i| w("x", i as f64 * 0.5, i as f64 * 0.5 + 0.4)).collect();
        p.on_hypothesis(Reason::Cut, hyp, &mut out);
        let r = results(&out);
        assert!(r[0].is_final);
        assert!(p.utterance_start() > 2000, "{}", p.utterance_start());
    }

    /// Two steps with the same words: they agree.
    fn agree(p: &mut Policy, words: &[Word], out: &mut Vec<Emit>) {
        for _ in 0..2 {
            frames(p, true, 60, out);
            p.on_hypothesis(Reason::Step, words.to_vec(), out);
        }
    }

    #[test]
    fn long_utterances_are_trimmed_after_a_final_sentence_end() {
        let cfg = PolicyConfig { endpoint_frames: None, trim_frames: Some(1000), ..Default::default() };
        let mut p = Policy::new(cfg);
        let mut out = Vec::new();
        frames(&mut p, true, 900, &mut out);
        let words = [w("One", 1.0, 1.5), w("two.", 1.5, 2.0), w("Three", 2.4, 2.8), w("four", 2.8, 9.0)];
        agree(&mut p, &words, &mut out);
        // Past 10 s: the sentence "One two." moves to the prompt, its audio
        // is cut halfway to "Three", and "Three four" stay final words.
        assert_eq!(p.utterance_start(), 220);
        assert_eq!(p.context(100), "One two.");
        assert_eq!(p.committed().iter().map(|w| w.text.as_str()).collect::<Vec<_>>(), ["Three", "four"]);
        // The next hypothesis covers the audio from the cut.
        let next = [w("Three", 2.4, 2.8), w("four", 2.8, 9.0), w("five", 11.0, 11.2)];
        agree(&mut p, &next, &mut out);
        let finals: Vec<&str> =
            results(&out).iter().filter(|u| u.is_final).flat_map(|u| u.words.iter().map(|w| w.text.as_str())).collect();
        assert_eq!(finals, ["One", "two.", "Three", "four", "five"]);
    }

    #[test]
    fn without_a_sentence_end_the_trim_waits_a_third_longer() {
        let cfg = PolicyConfig { endpoint_frames: None, trim_frames: Some(1000), ..Default::default() };
        let mut p = Policy::new(cfg);
        let mut out = Vec::new();
        frames(&mut p, true, 1000, &mut out);
        let words = [w("one", 1.0, 1.5), w("two", 1.5, 2.0)];
        agree(&mut p, &words, &mut out);
        assert_eq!(p.utterance_start(), 0, "trimmed without a sentence end");
        frames(&mut p, true, 900, &mut out);
        agree(&mut p, &words, &mut out);
        assert_eq!(p.utterance_start(), 200);
        assert!(p.committed().is_empty());
        // Whisper hears the end of "two" again at the start of the audio:
        // not a new word.
        let again = [w("two", 2.0, 2.2), w("three", 2.5, 3.0)];
        assert_eq!(p.after_committed(&again), [w("three", 2.5, 3.0)]);
        let later = [w("two", 3.0, 3.2)];
        assert_eq!(p.after_committed(&later), later, "a word said again later is a new word");
    }

    fn final_texts(out: &[Emit]) -> Vec<String> {
        let texts = |u: &&Update| u.words.iter().map(|w| w.text.as_str()).collect::<Vec<_>>().join(" ");
        results(out).iter().filter(|u| u.is_final).map(texts).collect()
    }

    fn holding(seconds: f64) -> Policy {
        Policy::new(PolicyConfig { endpoint_frames: None, line_hold: Some(seconds), ..Default::default() })
    }

    #[test]
    fn final_words_wait_for_the_end_of_their_sentence() {
        let mut p = holding(2.0);
        let mut out = Vec::new();
        frames(&mut p, true, 60, &mut out);
        p.on_hypothesis(Reason::Step, vec![w("And", 0.0, 0.2), w("so", 0.2, 0.4), w("my", 0.4, 0.55)], &mut out);
        let line = [w("And", 0.0, 0.2), w("so", 0.2, 0.4), w("my", 0.4, 0.55), w("fellow", 0.6, 0.9)];
        let line = [&line[..], &[w("Americans.", 0.9, 1.1)]].concat();
        frames(&mut p, true, 60, &mut out);
        p.on_hypothesis(Reason::Step, line.clone(), &mut out);
        assert!(final_texts(&out).is_empty(), "\"And so my\" is agreed but not a line");
        let interim = results(&out).last().unwrap().words.len();
        assert_eq!(interim, 5, "the interim shows the held words and the tail");
        frames(&mut p, true, 60, &mut out);
        p.on_hypothesis(Reason::Step, [&line[..], &[w("ask", 1.3, 1.5)]].concat(), &mut out);
        assert_eq!(final_texts(&out), ["And so my fellow Americans."]);
    }

    #[test]
    fn two_sentences_agreed_at_once_are_two_lines() {
        let mut p = holding(2.0);
        let mut out = Vec::new();
        let hyp = vec![w("Yes.", 0.0, 0.2), w("No.", 0.3, 0.5), w("Maybe", 0.5, 0.7)];
        for _ in 0..2 {
            frames(&mut p, true, 60, &mut out);
            p.on_hypothesis(Reason::Step, hyp.clone(), &mut out);
        }
        assert_eq!(final_texts(&out), ["Yes.", "No."]);
    }

    #[test]
    fn a_pause_the_vad_heard_ends_a_line() {
        let mut p = holding(2.0);
        let mut out = Vec::new();
        frames(&mut p, true, 60, &mut out);
        // Whisper stretches "two" over the pause: only the VAD hears it.
        let hyp = vec![w("one", 0.1, 0.3), w("two", 0.3, 0.75)];
        p.on_hypothesis(Reason::Step, hyp.clone(), &mut out);
        frames(&mut p, false, 15, &mut out);
        frames(&mut p, true, 45, &mut out);
        p.on_hypothesis(Reason::Step, [&hyp[..], &[w("three", 0.78, 1.0)]].concat(), &mut out);
        assert_eq!(final_texts(&out), ["one two"]);
    }

    #[test]
    fn a_held_word_goes_by_its_deadline_up_to_the_last_clause_end() {
        let mut p = holding(1.0);
        let mut out = Vec::new();
        frames(&mut p, true, 60, &mut out);
        let hyp = vec![w("a", 0.0, 0.1), w("b,", 0.1, 0.2), w("c", 0.2, 0.3)];
        p.on_hypothesis(Reason::Step, hyp.clone(), &mut out);
        let more = [&hyp[..], &[w("d", 0.35, 0.5)]].concat();
        frames(&mut p, true, 60, &mut out);
        p.on_hypothesis(Reason::Step, more.clone(), &mut out);
        assert!(final_texts(&out).is_empty(), "held: no line end yet");
        frames(&mut p, true, 60, &mut out);
        // "a" (final since 1.2 s) would have waited 1.2 s by the next step.
        p.on_hypothesis(Reason::Step, more.clone(), &mut out);
        assert_eq!(final_texts(&out), ["a b,"]);
        out.clear();
        // The flush sends the held "c" with the rest.
        p.on_hypothesis(Reason::Close, more, &mut out);
        assert_eq!(final_texts(&out), ["c d"]);
        assert!(results(&out)[0].speech_final);
        assert_eq!(p.words_final(), 4);
        assert!(!p.pending());
    }

    #[test]
    fn utterance_end_and_speech_started() {
        let mut p = Policy::new(PolicyConfig { utterance_end: Some(1.0), vad_events: true, ..Default::default() });
        let mut out = Vec::new();
        frames(&mut p, true, 10, &mut out);
        assert!(matches!(out[0], Emit::SpeechStarted { .. }));
        assert_eq!(frames(&mut p, false, 50, &mut out), Some(Reason::Endpoint));
        p.on_hypothesis(Reason::Endpoint, vec![w("hi", 0.0, 0.1)], &mut out);
        out.clear();
        frames(&mut p, false, 200, &mut out);
        assert_eq!(out, vec![Emit::UtteranceEnd { last_word_end: 0.1 }]);
    }
}
