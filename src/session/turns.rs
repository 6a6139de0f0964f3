//! Turns for voice agents (Deepgram Flux's `/v2/listen`), built on the
//! streaming policy's results: a turn starts with its first word, `Update`s
//! follow every 0.25 s of audio, and it ends when the end-of-turn
//! confidence crosses `eot_threshold` (or the silence reaches
//! `eot_timeout_ms`, or the client forces it), optionally announced early by
//! `EagerEndOfTurn` at `eager_eot_threshold`.
//!
//! The end-of-turn confidence is ours (Deepgram's is a model of its own): it
//! grows with the silence since the last speech frame, and much faster when
//! Whisper ended the text so far with a sentence mark. A speaker who stops
//! after "… cancel my subscription." is done sooner than one who stops after
//! "I would like to", which silence alone cannot tell.

use std::sync::{Arc, RwLock};

use crate::audio::round3;
use crate::policy::{ends_sentence, Update, Word, FRAME_SECONDS};
use crate::protocol::Thresholds;

/// How fast the confidence grows with silence, seconds: 1 − e^(−silence/τ).
/// After a sentence mark the default threshold (0.7) is reached after
/// 0.36 s of silence, else after 0.96 s.
const TAU_SENTENCE_END: f64 = 0.3;
const TAU_MID_SENTENCE: f64 = 0.8;
/// Audio between two `Update`s, frames (Flux: about 0.25 s).
const UPDATE_FRAMES: u64 = 25;
/// Speech frames in a row that resume a turn after `EagerEndOfTurn` (a
/// click or a breath is shorter).
const RESUME_FRAMES: u64 = 10;

/// The thresholds in force, shared by the connection (`Configure` changes
/// them) and the worker (which reads them every frame).
#[derive(Debug, Clone, Default)]
pub struct SharedThresholds(Arc<RwLock<Thresholds>>);

impl SharedThresholds {
    pub fn new(t: Thresholds) -> Self {
        SharedThresholds(Arc::new(RwLock::new(t)))
    }

    pub fn get(&self) -> Thresholds {
        *self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set(&self, t: Thresholds) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = t;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between turns.
    Idle,
    /// The user is speaking.
    Ongoing,
    /// `EagerEndOfTurn` was sent; the turn ends or resumes.
    AwaitingEnd,
}

/// Why a turn ended (`trigger` of `EndOfTurn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Model,
    Timeout,
    Manual,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Model => "model",
            Trigger::Timeout => "timeout",
            Trigger::Manual => "manual",
        }
    }
}

/// What the worker must do: finalize the pending audio, then call
/// [`Turns::eager`] or [`Turns::end`], so that the event carries the whole
/// turn's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Eager,
    End(Trigger),
}

/// One `TurnInfo` message, without `request_id` and `sequence_id` (the
/// connection adds them).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TurnInfo {
    pub event: &'static str,
    pub turn_index: u32,
    pub audio_window_start: f64,
    pub audio_window_end: f64,
    pub transcript: String,
    pub words: Vec<TurnWord>,
    pub end_of_turn_confidence: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TurnWord {
    pub word: String,
    pub confidence: f64,
    pub start: f64,
    pub end: f64,
}

/// One channel's turn state.
#[derive(Debug)]
pub struct Turns {
    state: State,
    index: u32,
    /// Final words of this turn, then the latest interim words after them.
    finals: Vec<Word>,
    interim: Vec<Word>,
    /// The transcript `EagerEndOfTurn` carried.
    eager_text: String,
    start: f64,
    frames: u64,
    silence: u64,
    speech_run: u64,
    /// Speech frames since the last turn ended: a worker that is behind
    /// may not have hypothesised them yet, so silence after them is checked
    /// for a turn end all the same.
    heard: bool,
    last_update: u64,
}

impl Default for Turns {
    fn default() -> Self {
        Turns {
            state: State::Idle,
            index: 0,
            finals: Vec::new(),
            interim: Vec::new(),
            eager_text: String::new(),
            start: 0.0,
            frames: 0,
            silence: 0,
            speech_run: 0,
            heard: false,
            last_update: 0,
        }
    }
}

impl Turns {
    /// A result of the streaming policy: its words join the turn.
    pub fn on_results(&mut self, u: &Update, out: &mut Vec<TurnInfo>) {
        if u.is_final {
            self.finals.extend(u.words.iter().cloned());
            self.interim.clear();
        } else {
            self.interim = u.words.clone();
        }
        let words = self.finals.len() + self.interim.len();
        if self.state == State::Idle && words > 0 {
            self.state = State::Ongoing;
            self.start = self.finals.first().or(self.interim.first()).map_or(0.0, |w| w.start);
            self.last_update = self.frames;
            out.push(self.info("StartOfTurn", None));
        } else if self.state == State::AwaitingEnd && self.transcript() != self.eager_text {
            self.resume(out);
        }
    }

    /// One 10 ms frame: `Update`s while a turn is on, and whether it is time
    /// for an eager or a final end of turn.
    pub fn on_frame(&mut self, speech: bool, th: &Thresholds, out: &mut Vec<TurnInfo>) -> Option<Due> {
        self.frames += 1;
        if speech {
            self.silence = 0;
            self.speech_run += 1;
            self.heard = true;
        } else {
            self.silence += 1;
            self.speech_run = 0;
        }
        if self.state == State::Idle && !self.heard {
            return None;
        }
        if self.state == State::AwaitingEnd && self.speech_run >= RESUME_FRAMES {
            self.resume(out);
        }
        let conf = self.confidence();
        if self.silence as f64 * FRAME_SECONDS * 1000.0 >= f64::from(th.eot_timeout_ms) {
            return Some(Due::End(Trigger::Timeout));
        }
        if conf >= th.eot_threshold {
            return Some(Due::End(Trigger::Model));
        }
        let eager = th.eager_eot_threshold.is_some_and(|e| conf >= e);
        if eager && (self.state == State::Idle || self.state == State::Ongoing && self.has_text()) {
            return Some(Due::Eager);
        }
        if self.state != State::Idle && self.frames - self.last_update >= UPDATE_FRAMES {
            self.last_update = self.frames;
            out.push(self.info("Update", None));
        }
        None
    }

    /// After the worker finalized the pending audio: `EagerEndOfTurn`, when
    /// there is text to announce.
    pub fn eager(&mut self, out: &mut Vec<TurnInfo>) {
        if self.state == State::Idle {
            // The speech held no words.
            self.heard = false;
        } else if self.state == State::Ongoing && self.has_text() {
            self.state = State::AwaitingEnd;
            self.eager_text = self.transcript();
            self.last_update = self.frames;
            out.push(self.info("EagerEndOfTurn", None));
        }
    }

    /// After the worker finalized the pending audio: `EndOfTurn` (preceded
    /// by `TurnResumed` when the text changed since `EagerEndOfTurn`), and
    /// the next turn's index.
    pub fn end(&mut self, trigger: Trigger, out: &mut Vec<TurnInfo>) {
        if self.state == State::Idle {
            self.heard = false;
            return;
        }
        if self.state == State::AwaitingEnd && self.transcript() != self.eager_text {
            self.resume(out);
        }
        out.push(self.info("EndOfTurn", Some(trigger)));
        *self = Turns { index: self.index + 1, frames: self.frames, silence: self.silence, ..Turns::default() };
    }

    fn resume(&mut self, out: &mut Vec<TurnInfo>) {
        self.state = State::Ongoing;
        self.eager_text.clear();
        self.last_update = self.frames;
        out.push(self.info("TurnResumed", None));
    }

    fn words(&self) -> impl Iterator<Item = &Word> {
        self.finals.iter().chain(&self.interim)
    }

    fn has_text(&self) -> bool {
        self.words().next().is_some()
    }

    fn transcript(&self) -> String {
        self.words().map(|w| w.text.as_str()).collect::<Vec<_>>().join(" ")
    }

    /// Confidence that the user is done: 0 while speaking, then growing
    /// with the silence, faster after a sentence mark.
    fn confidence(&self) -> f64 {
        if self.silence == 0 {
            return 0.0;
        }
        // A title's period ("Mr.") ends no sentence, as for line breaks.
        let ended = self.words().last().is_some_and(|w| ends_sentence(&w.text));
        let tau = if ended { TAU_SENTENCE_END } else { TAU_MID_SENTENCE };
        1.0 - (-(self.silence as f64 * FRAME_SECONDS) / tau).exp()
    }

    fn info(&self, event: &'static str, trigger: Option<Trigger>) -> TurnInfo {
        let words = self
            .words()
            .map(|w| TurnWord {
                word: w.text.clone(),
                confidence: round3(f64::from(w.probability)),
                start: w.start,
                end: w.end,
            })
            .collect();
        TurnInfo {
            event,
            turn_index: self.index,
            audio_window_start: round3(self.start),
            audio_window_end: round3(self.frames as f64 * FRAME_SECONDS),
            transcript: self.transcript(),
            words,
            end_of_turn_confidence: round3(self.confidence()),
            trigger: trigger.map(Trigger::name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(text: &str, start: f64) -> Word {
        Word { text: text.into(), start, end: start + 0.3, probability: 0.9 }
    }

    fn update(words: &[&str], is_final: bool) -> Update {
        let words = words.iter().enumerate().map(|(i, w)| word(w, i as f64 * 0.4)).collect();
        Update { words, start: 0.0, end: 1.0, is_final, speech_final: false, from_finalize: false }
    }

    const EAGER: Thresholds = Thresholds { eot_threshold: 0.7, eager_eot_threshold: Some(0.4), eot_timeout_ms: 5000 };

    /// Frames until something is due.
    fn run(t: &mut Turns, speech: bool, th: &Thresholds, out: &mut Vec<TurnInfo>) -> (u64, Option<Due>) {
        for n in 1..=10_000 {
            if let Some(d) = t.on_frame(speech, th, out) {
                return (n, Some(d));
            }
        }
        (10_000, None)
    }

    #[test]
    fn a_turn_starts_with_its_first_word_and_updates_every_quarter_second() {
        let (mut t, mut out) = (Turns::default(), Vec::new());
        assert_eq!(run(&mut t, true, &EAGER, &mut out).1, None, "no turn before words");
        t.on_results(&update(&["Hello"], false), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].event, out[0].transcript.as_str()), ("StartOfTurn", "Hello"));
        out.clear();
        for _ in 0..100 {
            assert_eq!(t.on_frame(true, &EAGER, &mut out), None);
        }
        assert_eq!(out.iter().map(|i| i.event).collect::<Vec<_>>(), ["Update"; 4]);
        assert!(out.iter().all(|i| i.end_of_turn_confidence == 0.0), "speaking");
    }

    #[test]
    fn a_sentence_mark_ends_the_turn_sooner() {
        let frames_to_end = |last: &str| {
            let (mut t, mut out) = (Turns::default(), Vec::new());
            t.on_results(&update(&["I", "want", last], true), &mut out);
            let th = Thresholds { eager_eot_threshold: None, ..EAGER };
            run(&mut t, false, &th, &mut out)
        };
        let (ended, due) = frames_to_end("this.");
        assert_eq!(due, Some(Due::End(Trigger::Model)));
        let (open, _) = frames_to_end("to");
        assert!((30..=40).contains(&ended) && (90..=100).contains(&open), "{ended} {open}");
        let (title, _) = frames_to_end("Mr.");
        assert_eq!(title, open, "a title's period ends no sentence");
    }

    #[test]
    fn eager_then_resumed_then_end_repeats_the_text_rules() {
        let (mut t, mut out) = (Turns::default(), Vec::new());
        t.on_results(&update(&["Cancel", "my"], true), &mut out);
        assert_eq!(run(&mut t, false, &EAGER, &mut out).1, Some(Due::Eager));
        t.eager(&mut out);
        // The user goes on: 100 ms of speech resumes the turn, before any
        // new word is transcribed.
        for _ in 0..RESUME_FRAMES {
            assert_eq!(t.on_frame(true, &EAGER, &mut out), None);
        }
        t.on_results(&update(&["subscription."], true), &mut out);
        assert_eq!(run(&mut t, false, &EAGER, &mut out).1, Some(Due::Eager));
        t.eager(&mut out);
        assert_eq!(run(&mut t, false, &EAGER, &mut out).1, Some(Due::End(Trigger::Model)));
        t.end(Trigger::Model, &mut out);
        let events: Vec<_> =
            out.iter().filter(|i| i.event != "Update").map(|i| (i.event, i.transcript.as_str())).collect();
        assert_eq!(
            events,
            [
                ("StartOfTurn", "Cancel my"),
                ("EagerEndOfTurn", "Cancel my"),
                ("TurnResumed", "Cancel my"),
                ("EagerEndOfTurn", "Cancel my subscription."),
                ("EndOfTurn", "Cancel my subscription."),
            ]
        );
        assert_eq!(out.last().map(|i| (i.trigger, i.turn_index)), Some((Some("model"), 0)));
        out.clear();
        t.on_results(&update(&["Next"], false), &mut out);
        assert_eq!((out[0].event, out[0].turn_index), ("StartOfTurn", 1));
    }

    #[test]
    fn changed_text_at_the_end_resumes_before_it_ends() {
        let (mut t, mut out) = (Turns::default(), Vec::new());
        t.on_results(&update(&["Yes"], true), &mut out);
        run(&mut t, false, &EAGER, &mut out);
        t.eager(&mut out);
        t.on_results(&update(&["Yes", "please"], true), &mut out);
        // A final that changes the text resumes at once.
        assert_eq!(out.last().map(|i| i.event), Some("TurnResumed"));
        t.end(Trigger::Manual, &mut out);
        assert_eq!(out.last().map(|i| (i.event, i.trigger)), Some(("EndOfTurn", Some("manual"))));
    }

    #[test]
    fn silence_past_the_timeout_ends_a_turn_the_threshold_never_would() {
        let (mut t, mut out) = (Turns::default(), Vec::new());
        t.on_results(&update(&["Well"], true), &mut out);
        let th = Thresholds { eot_threshold: 1.0, eager_eot_threshold: None, eot_timeout_ms: 800 };
        assert_eq!(run(&mut t, false, &th, &mut out), (80, Some(Due::End(Trigger::Timeout))));
    }
}
