//! Search over one 30 s window: greedy, sampling (best of N) and beam search,
//! wrapped in faster-whisper's temperature fallback.

use std::io::Write as _;

use crate::backend::simd::log_sum_exp;
use crate::backend::{Backend, BackendError};
use crate::decode::rules::Rules;
use crate::decode::DecodeOptions;
use crate::model::{State, Whisper};

/// The chosen hypothesis for one window.
#[derive(Debug, Clone)]
pub struct WindowResult {
    /// Generated tokens, end-of-text excluded.
    pub tokens: Vec<u32>,
    /// Log-probability of each token in `tokens`.
    pub token_logprobs: Vec<f32>,
    pub avg_logprob: f32,
    pub no_speech_prob: f32,
    pub temperature: f32,
    pub compression_ratio: f32,
}

#[derive(Debug, Clone)]
struct Hypothesis {
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    sum_logprob: f64,
    finished: bool,
    /// Leading tokens that were forced (a prefix), not chosen: they count in
    /// neither the score nor the average log-probability.
    forced: usize,
}

impl Hypothesis {
    /// A hypothesis that starts with the forced `prefix` (log-probability 0).
    fn new(prefix: &[u32]) -> Self {
        Hypothesis {
            tokens: prefix.to_vec(),
            logprobs: vec![0.0; prefix.len()],
            sum_logprob: 0.0,
            finished: false,
            forced: prefix.len(),
        }
    }

    /// Takes one chosen token with its log-probability: end-of-text, or any
    /// token on the last step, finishes the hypothesis; end-of-text counts in
    /// the score but is not kept.
    fn take(&mut self, tok: u32, lp: f32, eot: u32, last_step: bool) {
        self.sum_logprob += lp as f64;
        if tok == eot || last_step {
            self.finished = true;
        }
        if tok != eot {
            self.tokens.push(tok);
            self.logprobs.push(lp);
        }
    }

    /// Tokens chosen by the search.
    fn generated(&self) -> usize {
        self.tokens.len() - self.forced
    }

    /// CTranslate2's ranking score: log-probability over length^penalty
    /// (length without end-of-text).
    fn score(&self, length_penalty: f32) -> f64 {
        let len = self.generated().max(1) as f64;
        self.sum_logprob / len.powf(length_penalty as f64)
    }
}

/// A small deterministic PRNG for sampling (xorshift64*): reproducible runs
/// without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// zlib compression ratio of the text: high for repetition loops.
pub fn compression_ratio(text: &str) -> f32 {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return 0.0;
    }
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(bytes);
    let packed = enc.finish().map(|v| v.len()).unwrap_or(bytes.len());
    bytes.len() as f32 / packed.max(1) as f32
}

fn log_softmax_at(row: &[f32], idx: usize, scale: f32) -> f32 {
    if scale == 1.0 {
        return row[idx] - log_sum_exp(row);
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&x| (((x - max) * scale) as f64).exp()).sum();
    (row[idx] - max) * scale - sum.ln() as f32
}

fn log_softmax_into(row: &[f32], out: &mut Vec<f32>) {
    let lse = log_sum_exp(row);
    out.clear();
    out.extend(row.iter().map(|&x| x - lse));
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

/// Decodes the window already encoded into `st`, retrying at higher
/// temperatures while the result looks like a failure (repetitive or
/// improbable), as faster-whisper does.
///
/// The last `forced` tokens of `prompt` are a prefix of the output
/// (faster-whisper's `prefix`: text already known): they are fed with the
/// prompt in one forward pass and begin every hypothesis, so only what
/// follows them is decoded token by token.
#[allow(clippy::too_many_arguments)]
pub fn decode_with_fallback<B: Backend>(
    model: &Whisper<B>,
    st: &mut State<B>,
    prompt: &[u32],
    sot_index: usize,
    forced: usize,
    rules: &Rules,
    opts: &DecodeOptions,
    rng: &mut Rng,
) -> Result<WindowResult, BackendError> {
    let mut tried: Vec<WindowResult> = Vec::new();
    for &temperature in &opts.temperatures {
        if opts.cancel.is_cancelled() && !tried.is_empty() {
            break;
        }
        let r = decode_once(model, st, prompt, sot_index, forced, rules, opts, temperature, rng)?;
        let mut fallback = false;
        if opts.compression_ratio_threshold.is_some_and(|t| r.compression_ratio > t) {
            fallback = true;
        }
        if opts.log_prob_threshold.is_some_and(|t| r.avg_logprob < t) {
            fallback = true;
        }
        // Silence: an improbable result is expected, not a failure.
        if opts.no_speech_threshold.is_some_and(|t| r.no_speech_prob > t)
            && opts.log_prob_threshold.is_some_and(|t| r.avg_logprob < t)
        {
            fallback = false;
        }
        tried.push(r);
        if !fallback {
            return Ok(tried.pop().expect("just pushed"));
        }
    }
    // Every temperature failed: the most probable result that is not a
    // repetition loop, if any.
    let cr = opts.compression_ratio_threshold.unwrap_or(f32::INFINITY);
    let pick = |rs: Vec<&WindowResult>| rs.into_iter().max_by(|a, b| a.avg_logprob.total_cmp(&b.avg_logprob)).cloned();
    Ok(pick(tried.iter().filter(|r| r.compression_ratio <= cr).collect())
        .or_else(|| pick(tried.iter().collect()))
        .expect("at least one temperature is tried"))
}

/// One decoding of the window at one temperature; the last `forced` tokens
/// of `prompt` begin the output (see [`decode_with_fallback`]).
#[allow(clippy::too_many_arguments)]
pub fn decode_once<B: Backend>(
    model: &Whisper<B>,
    st: &mut State<B>,
    prompt: &[u32],
    sot_index: usize,
    forced: usize,
    rules: &Rules,
    opts: &DecodeOptions,
    temperature: f32,
    rng: &mut Rng,
) -> Result<WindowResult, BackendError> {
    let vocab = model.vocab();
    let max_length = model.text_ctx();
    // CTranslate2's cap on generated tokens (end-of-text included).
    let max_new = (max_length / 2).min(max_length.saturating_sub(prompt.len().saturating_sub(1))).max(1);

    model.reset(st);
    let mut logits = Vec::with_capacity(2 * vocab);
    model.decode(st, prompt, 1, &[sot_index, prompt.len() - 1], &mut logits)?;
    let no_speech_prob = {
        let row = &logits[..vocab];
        let id = model.tokenizer().specials().no_speech as usize;
        log_softmax_at(row, id, 1.0).exp()
    };
    logits.drain(..vocab);

    let n = if temperature > 0.0 { opts.best_of.max(1) } else { opts.beam_size.max(1) };
    let n = n.min(st.max_seqs());
    assert!(forced < prompt.len() - sot_index, "the forced prefix overlaps the start-of-transcript sequence");
    let prefix = &prompt[prompt.len() - forced..];
    let best = if temperature > 0.0 {
        sample(model, st, &mut logits, rules, prefix, n, temperature, max_new, opts, rng)?
    } else if n > 1 {
        beam_search(model, st, &mut logits, rules, prefix, n, max_new, opts)?
    } else {
        sample(model, st, &mut logits, rules, prefix, 1, 0.0, max_new, opts, rng)?
    };

    let text = model.tokenizer().decode(&best.tokens);
    let avg_logprob = (best.sum_logprob / (best.generated() + 1) as f64) as f32;
    Ok(WindowResult {
        compression_ratio: compression_ratio(text.trim()),
        tokens: best.tokens,
        token_logprobs: best.logprobs,
        avg_logprob,
        no_speech_prob,
        temperature,
    })
}

/// Greedy (temperature 0) or sampled decoding of `n` independent sequences;
/// returns the best by score.
#[allow(clippy::too_many_arguments)]
fn sample<B: Backend>(
    model: &Whisper<B>,
    st: &mut State<B>,
    logits: &mut Vec<f32>,
    rules: &Rules,
    prefix: &[u32],
    n: usize,
    temperature: f32,
    max_new: usize,
    opts: &DecodeOptions,
    rng: &mut Rng,
) -> Result<Hypothesis, BackendError> {
    let length_penalty = opts.length_penalty;
    let vocab = model.vocab();
    let eot = rules.eot();
    if n > 1 {
        replicate_prompt(model, st, logits, n)?;
    }
    let mut hyps = vec![Hypothesis::new(prefix); n];
    let mut feed = vec![0u32; n];
    let select: Vec<usize> = (0..n).collect();
    let mut probs = Vec::with_capacity(vocab);
    for step in 0..max_new {
        for (i, h) in hyps.iter_mut().enumerate() {
            if h.finished {
                feed[i] = eot;
                continue;
            }
            let row = &mut logits[i * vocab..(i + 1) * vocab];
            rules.apply(&h.tokens, row);
            let tok = if temperature > 0.0 { draw(row, temperature, rng, &mut probs) } else { argmax(row) };
            let lp = log_softmax_at(row, tok, if temperature > 0.0 { 1.0 / temperature } else { 1.0 });
            h.take(tok as u32, lp, eot, step + 1 == max_new);
            feed[i] = tok as u32;
        }
        if hyps.iter().all(|h| h.finished) || opts.cancel.is_cancelled() {
            break;
        }
        model.decode(st, &feed, n, &select, logits)?;
    }
    Ok(hyps.into_iter().max_by(|a, b| a.score(length_penalty).total_cmp(&b.score(length_penalty))).expect("n ≥ 1"))
}

/// Every sequence starts from the one prompt: its cache and first logits
/// are copied to all `n`, so the prompt is run once.
fn replicate_prompt<B: Backend>(
    model: &Whisper<B>,
    st: &mut State<B>,
    logits: &mut Vec<f32>,
    n: usize,
) -> Result<(), BackendError> {
    let vocab = model.vocab();
    let order = vec![0; n];
    model.reorder(st, &order)?;
    let first = logits[..vocab].to_vec();
    logits.clear();
    for _ in 0..n {
        logits.extend_from_slice(&first);
    }
    Ok(())
}

/// Draws a token from softmax(`row` / `temperature`) by inverting the
/// cumulative sum (in f64: some 51k terms are summed);
/// falls back to the argmax if rounding leaves `u` past the end.
fn draw(row: &[f32], temperature: f32, rng: &mut Rng, probs: &mut Vec<f64>) -> usize {
    let inv = 1.0 / temperature;
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    probs.clear();
    probs.extend(row.iter().map(|&x| (((x - max) * inv) as f64).exp()));
    let total: f64 = probs.iter().sum();
    let mut u = rng.next_f64() * total;
    let mut pick = argmax(row);
    for (j, &p) in probs.iter().enumerate() {
        if u < p {
            pick = j;
            break;
        }
        u -= p;
    }
    pick
}

/// Beam search as CTranslate2 runs it for Whisper: the `2·beam` best
/// continuations are ranked; of the first `beam`, an end-of-text finishes
/// its hypothesis and hands its slot to the next unfinished runner-up; the
/// search stops once `beam × patience` hypotheses have finished, and the
/// best by length-normalised score wins.
#[allow(clippy::too_many_arguments)]
fn beam_search<B: Backend>(
    model: &Whisper<B>,
    st: &mut State<B>,
    logits: &mut Vec<f32>,
    rules: &Rules,
    prefix: &[u32],
    beam: usize,
    max_new: usize,
    opts: &DecodeOptions,
) -> Result<Hypothesis, BackendError> {
    let (patience, length_penalty) = (opts.patience, opts.length_penalty);
    let vocab = model.vocab();
    let eot = rules.eot();
    let max_finished = ((beam as f32 * patience).round() as usize).max(1);
    let n_cand = 2 * beam;
    let mut alive = vec![Hypothesis::new(prefix)];
    let mut finished: Vec<Hypothesis> = Vec::new();
    let mut logp = Vec::with_capacity(vocab);
    let mut cands: Vec<Candidate> = Vec::with_capacity(beam * n_cand);
    let mut order: Vec<usize> = Vec::with_capacity(beam);
    let mut feed: Vec<u32> = Vec::with_capacity(beam);
    for step in 0..max_new {
        let last_step = step + 1 == max_new;
        rank_candidates(&alive, logits, vocab, rules, n_cand, &mut logp, &mut cands);
        let next = next_beams(&alive, &cands, beam, eot, last_step, &mut finished, &mut order);
        if last_step || finished.len() >= max_finished || next.is_empty() || opts.cancel.is_cancelled() {
            break;
        }
        model.reorder(st, &order)?;
        feed.clear();
        feed.extend(next.iter().map(|h| *h.tokens.last().expect("alive hypotheses end in a token")));
        let select: Vec<usize> = (0..next.len()).collect();
        model.decode(st, &feed, next.len(), &select, logits)?;
        alive = next;
    }
    let pool = if finished.is_empty() { alive } else { finished };
    Ok(pool.into_iter().max_by(|a, b| a.score(length_penalty).total_cmp(&b.score(length_penalty))).expect("beam ≥ 1"))
}

/// A continuation of a beam: (cumulative log-prob, parent, token, token log-prob).
type Candidate = (f64, usize, u32, f32);

/// The `n_cand` best continuations over all live hypotheses, best first:
/// each hypothesis offers its own `n_cand` best tokens.
fn rank_candidates(
    alive: &[Hypothesis],
    logits: &mut [f32],
    vocab: usize,
    rules: &Rules,
    n_cand: usize,
    logp: &mut Vec<f32>,
    cands: &mut Vec<Candidate>,
) {
    cands.clear();
    for (i, h) in alive.iter().enumerate() {
        let row = &mut logits[i * vocab..(i + 1) * vocab];
        rules.apply(&h.tokens, row);
        log_softmax_into(row, logp);
        for (tok, lp) in top_k(logp, n_cand) {
            cands.push((h.sum_logprob + lp as f64, i, tok, lp));
        }
    }
    cands.sort_by(|a, b| b.0.total_cmp(&a.0));
    cands.truncate(n_cand);
}

/// Fills the `beam` slots from the ranked candidates: an end-of-text (or
/// any candidate on the last step) finishes its hypothesis into `finished`
/// and hands its slot to the next runner-up that does not end. Returns the
/// new live hypotheses; `order` gets the parent of each, for the cache.
fn next_beams(
    alive: &[Hypothesis],
    cands: &[Candidate],
    beam: usize,
    eot: u32,
    last_step: bool,
    finished: &mut Vec<Hypothesis>,
    order: &mut Vec<usize>,
) -> Vec<Hypothesis> {
    let extend = |c: &Candidate| {
        let mut h = alive[c.1].clone();
        if c.2 != eot {
            h.tokens.push(c.2);
            h.logprobs.push(c.3);
        }
        h.sum_logprob = c.0;
        h
    };
    let mut next: Vec<Hypothesis> = Vec::with_capacity(beam);
    order.clear();
    let mut runner_up = beam.min(cands.len());
    for k in 0..beam.min(cands.len()) {
        let mut pick = k;
        if cands[k].2 == eot || last_step {
            let mut h = extend(&cands[k]);
            h.finished = true;
            finished.push(h);
            // The slot goes to the next candidate that does not end.
            match (runner_up..cands.len()).find(|&j| cands[j].2 != eot) {
                Some(j) => {
                    pick = j;
                    runner_up = j + 1;
                }
                None => continue,
            }
        }
        next.push(extend(&cands[pick]));
        order.push(cands[pick].1);
    }
    next
}

/// The `k` largest entries of `row`, best first.
fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &x) in row.iter().enumerate() {
        if best.len() == k && x <= best[k - 1].1 {
            continue;
        }
        let pos = best.iter().position(|&(_, y)| x > y).unwrap_or(best.len());
        best.insert(pos, (i as u32, x));
        best.truncate(k);
    }
    best.retain(|&(_, x)| x.is_finite());
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_compresses_well() {
        let loop_text = "I'm sorry. ".repeat(20);
        assert!(compression_ratio(&loop_text) > 2.4);
        assert!(compression_ratio("And so my fellow Americans, ask not what your country can do for you.") < 2.0);
    }

    #[test]
    fn top_k_is_sorted_and_skips_disabled() {
        let row = [0.1, f32::NEG_INFINITY, 0.7, 0.3, 0.5];
        assert_eq!(top_k(&row, 3), vec![(2, 0.7), (4, 0.5), (3, 0.3)]);
        assert_eq!(top_k(&[f32::NEG_INFINITY, 1.0], 2), vec![(1, 1.0)]);
    }

    #[test]
    fn rng_is_uniform_enough() {
        let mut r = Rng::new(7);
        let mean = (0..10_000).map(|_| r.next_f64()).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02);
    }
}
