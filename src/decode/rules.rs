//! Which tokens may come next: CTranslate2's logits processors for Whisper
//! (`shared/docs/ct2-whisper-format.md` §7), applied in place to one row of
//! logits before every choice.

use crate::backend::simd::log_sum_exp;
use crate::model::tokenizer::SpecialTokens;

/// The fixed part of the rules for one decoding run.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Suppressed at every step (`config.json` `suppress_ids`).
    suppress: Vec<u32>,
    /// Suppressed at the first step only (a lone space and end-of-text).
    suppress_begin: Vec<u32>,
    eot: u32,
    no_timestamps: u32,
    ts_begin: u32,
    ts_end: u32,
    timestamps: bool,
    max_initial_ts_index: u32,
    /// Latest timestamp allowed (index from `ts_begin`): the end of the
    /// encoded audio when the window is shortened, else the last token.
    max_ts_index: u32,
    /// End a sequence that has started to repeat itself ([`repeats_at_end`]).
    stop_loops: bool,
}

/// Whether `seq` ends in a loop: its last `p` tokens (for some period `p` up
/// to 32) occur at least three times in a row, over at least 12 tokens
/// ("s s s …", "he done, he done, he done, …", a whole sentence again and
/// again) — what Whisper does when it has run out of audio it can read.
pub fn repeats_at_end(seq: &[u32]) -> bool {
    loop_repeats_from(seq).is_some()
}

/// Where the repetitions of a loop at the end of `seq` ([`repeats_at_end`])
/// begin: everything from there on is the looped text again, after its first
/// occurrence.
pub fn loop_repeats_from(seq: &[u32]) -> Option<usize> {
    let n = seq.len();
    (1..=32.min(n / 3)).find_map(|p| {
        let mut reps = 1;
        while (reps + 1) * p <= n && seq[n - (reps + 1) * p..n - reps * p] == seq[n - p..] {
            reps += 1;
        }
        (reps >= 3 && reps * p >= 12).then(|| n - (reps - 1) * p)
    })
}

impl Rules {
    pub fn new(
        sp: &SpecialTokens,
        suppress: &[u32],
        suppress_begin: &[u32],
        timestamps: bool,
        max_initial_timestamp: f32,
    ) -> Self {
        Rules {
            suppress: suppress.to_vec(),
            suppress_begin: suppress_begin.to_vec(),
            eot: sp.eot,
            no_timestamps: sp.no_timestamps,
            ts_begin: sp.timestamp_begin,
            ts_end: sp.timestamp_end,
            timestamps,
            max_initial_ts_index: (max_initial_timestamp / 0.02).round() as u32,
            max_ts_index: sp.timestamp_end - sp.timestamp_begin,
            stop_loops: false,
        }
    }

    /// Ends a sequence with end-of-text once it repeats itself
    /// ([`repeats_at_end`]); off by default (faster-whisper has no such rule).
    pub fn stop_loops(&mut self, on: bool) {
        self.stop_loops = on;
    }

    /// Allows timestamps up to `seconds` only (the encoded audio's length);
    /// `None` allows every timestamp token.
    pub fn limit_timestamps(&mut self, seconds: Option<f64>) {
        let all = self.ts_end - self.ts_begin;
        self.max_ts_index = seconds.map_or(all, |s| ((s / 0.02).round() as u32).min(all));
    }

    pub fn eot(&self) -> u32 {
        self.eot
    }

    pub fn timestamp_begin(&self) -> u32 {
        self.ts_begin
    }

    /// Disables (sets to −∞) every token not allowed after `seq`, the tokens
    /// generated so far in this window (prompt excluded).
    pub fn apply(&self, seq: &[u32], logits: &mut [f32]) {
        let step = seq.len();
        let off = |l: &mut [f32], ids: &[u32]| {
            for &i in ids {
                if let Some(x) = l.get_mut(i as usize) {
                    *x = f32::NEG_INFINITY;
                }
            }
        };
        let range = |l: &mut [f32], lo: u32, hi: u32| {
            let hi = (hi as usize).min(l.len());
            let lo = (lo as usize).min(hi);
            l[lo..hi].iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
        };
        if self.stop_loops && repeats_at_end(seq) {
            let eot = self.eot as usize;
            logits.iter_mut().enumerate().filter(|(i, _)| *i != eot).for_each(|(_, x)| *x = f32::NEG_INFINITY);
            return;
        }
        off(logits, &self.suppress);
        if step == 0 {
            off(logits, &self.suppress_begin);
        }
        if !self.timestamps {
            return;
        }
        let (tb, te) = (self.ts_begin, self.ts_end);
        off(logits, &[self.no_timestamps]);
        if self.max_ts_index < te - tb {
            range(logits, tb + self.max_ts_index + 1, te + 1);
        }
        let mut check_mass = false;
        if step == 0 {
            // The first token is a timestamp no later than max_initial_timestamp.
            range(logits, 0, tb);
            range(logits, tb + self.max_initial_ts_index + 1, te + 1);
        } else {
            let last = seq[step - 1];
            if last >= tb {
                // A missing penultimate token counts as a timestamp: after the
                // first timestamp, text (or end) must follow.
                let penult = if step >= 2 { seq[step - 2] } else { last };
                if penult >= tb {
                    range(logits, tb, te + 1);
                } else {
                    range(logits, 0, self.eot);
                    range(logits, tb, last);
                    check_mass = true;
                }
            } else {
                check_mass = true;
                if let Some(&prev) = seq.iter().rev().find(|&&t| t >= tb) {
                    // Timestamps only move forward.
                    range(logits, tb, prev + 1);
                }
            }
        }
        if check_mass && self.timestamp_mass_wins(logits) {
            range(logits, 0, tb);
        }
    }

    /// True when the probability mass of all timestamps beats the single
    /// most likely text token (computed after the other suppressions).
    fn timestamp_mass_wins(&self, logits: &[f32]) -> bool {
        let tb = self.ts_begin as usize;
        // Both sides are log-probabilities under the same normaliser, which
        // cancels: compare the timestamps' log-sum-exp with the best text logit.
        let ts_lse = log_sum_exp(&logits[tb..]);
        let text_max = logits[..tb].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        ts_lse.is_finite() && ts_lse > text_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specials() -> SpecialTokens {
        // tiny.en's layout, shrunk: text 0..10, eot 10, no_timestamps 11, timestamps 12..=20.
        SpecialTokens {
            eot: 10,
            sot: 99,
            translate: 99,
            transcribe: 99,
            sot_lm: 99,
            sot_prev: 99,
            no_speech: 99,
            no_timestamps: 11,
            timestamp_begin: 12,
            timestamp_end: 20,
            multilingual: false,
        }
    }

    fn allowed(rules: &Rules, seq: &[u32]) -> Vec<usize> {
        let mut l = vec![0.0f32; 21];
        rules.apply(seq, &mut l);
        (0..21).filter(|&i| l[i].is_finite()).collect()
    }

    #[test]
    fn first_token_is_an_early_timestamp() {
        let r = Rules::new(&specials(), &[], &[10], true, 0.06);
        assert_eq!(allowed(&r, &[]), vec![12, 13, 14, 15]);
    }

    #[test]
    fn first_timestamp_is_followed_by_text_or_end() {
        let r = Rules::new(&specials(), &[], &[], true, 1.0);
        assert_eq!(allowed(&r, &[13]), (0..=10).collect::<Vec<_>>());
    }

    #[test]
    fn timestamps_after_text_move_forward() {
        let r = Rules::new(&specials(), &[3], &[], true, 1.0);
        let a = allowed(&r, &[12, 1, 2, 15, 16, 4]);
        assert!(!a.contains(&3), "suppressed at every step");
        assert!(!a.contains(&16) && a.contains(&17), "strictly after the last timestamp: {a:?}");
    }

    #[test]
    fn single_timestamp_after_text_closes_or_ends() {
        let r = Rules::new(&specials(), &[], &[], true, 1.0);
        // Text is out; eot and timestamps ≥ 15 remain…
        let mut l = vec![0.0f32; 21];
        l[10] = 5.0;
        r.apply(&[12, 1, 15], &mut l);
        let a: Vec<usize> = (0..21).filter(|&i| l[i].is_finite()).collect();
        assert_eq!(a, vec![10, 15, 16, 17, 18, 19, 20]);
        // …and when the six timestamps together outweigh eot, one is forced.
        assert_eq!(allowed(&r, &[12, 1, 15]), vec![15, 16, 17, 18, 19, 20]);
    }

    #[test]
    fn timestamp_mass_forces_a_timestamp() {
        let r = Rules::new(&specials(), &[], &[], true, 1.0);
        let mut l = vec![0.0f32; 21];
        l[1] = 1.0; // best text token
        for x in &mut l[12..] {
            *x = 0.9; // nine timestamps, each a bit less likely, but more in sum
        }
        r.apply(&[12, 1], &mut l);
        assert!(l[..12].iter().all(|x| !x.is_finite()));
    }

    #[test]
    fn loops_are_found_at_the_end_only() {
        assert!(repeats_at_end(&[1; 12]));
        assert!(!repeats_at_end(&[1; 11]));
        let phrase = [3, 4, 5, 6, 7];
        let looped: Vec<u32> = [&[9, 9][..], &phrase, &phrase, &phrase].concat();
        assert!(repeats_at_end(&looped));
        assert!(!repeats_at_end(&[&phrase[..], &phrase, &[8]].concat()));
        // "no, no, no": a short repetition that speech has.
        assert!(!repeats_at_end(&[1, 2, 1, 2, 1, 2]));
        // The first occurrence stays; the repetitions after it go.
        assert_eq!(loop_repeats_from(&looped), Some(2 + phrase.len()));
        assert_eq!(loop_repeats_from(&[1; 12]), Some(1));
        let mut rules = Rules::new(&specials(), &[], &[], true, 1.0);
        rules.stop_loops(true);
        let a = allowed(&rules, &looped);
        assert_eq!(a, vec![10], "only end-of-text after a loop");
    }

    #[test]
    fn without_timestamps_only_suppression_applies() {
        let r = Rules::new(&specials(), &[5], &[10], false, 1.0);
        assert_eq!(allowed(&r, &[]).len(), 21 - 2);
        assert_eq!(allowed(&r, &[1]).len(), 20);
    }
}
