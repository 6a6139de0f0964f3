//! Word-level timestamps: the cross-attention of the alignment heads, run
//! over the window's text, is a soft map from tokens to audio frames; dynamic
//! time warping turns it into a monotonic path, and word boundaries on that
//! path give each word its start and end (OpenAI's `timing.py`, which
//! faster-whisper and CTranslate2 follow).

use crate::backend::{Backend, BackendError};
use crate::model::{State, Whisper};

/// One word of a window, times relative to the window start (seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct TimedWord {
    pub word: String,
    pub tokens: Vec<u32>,
    pub start: f64,
    pub end: f64,
    pub probability: f32,
}

/// Audio frames per second on the encoder side (two mel frames each).
const FRAMES_PER_SECOND: f64 = 50.0;
const MEDIAN_FILTER_WIDTH: usize = 7;
const PREPEND_PUNCTUATION: &str = "\"'“¿([{-";
const APPEND_PUNCTUATION: &str = "\"'.。,，!！?？:：”)]}、";

/// Aligns `text_tokens` (no timestamps) to the window encoded in `st`, whose
/// content is `num_frames` mel frames long. `token_probs` are the decoding
/// probabilities of those tokens (word confidence).
pub fn align<B: Backend>(
    model: &Whisper<B>,
    st: &mut State<B>,
    sot_sequence: &[u32],
    text_tokens: &[u32],
    token_probs: &[f32],
    num_frames: usize,
    language: &str,
) -> Result<Vec<TimedWord>, BackendError> {
    if text_tokens.is_empty() {
        return Ok(Vec::new());
    }
    let sp = *model.tokenizer().specials();
    let mut tokens = sot_sequence.to_vec();
    tokens.push(sp.no_timestamps);
    tokens.extend_from_slice(text_tokens);
    tokens.push(sp.eot);
    let max = model.text_ctx();
    if tokens.len() > max {
        return Ok(Vec::new());
    }
    let n_heads = model.config().alignment_heads.len();
    let weights = model.alignment_weights(st, &tokens)?;
    // Encoder positions of the window as encoded (shorter than 1500 when
    // only the audio that is there was encoded).
    let audio = st.cross_len();
    let frames = (num_frames / 2).clamp(1, audio);
    // Rows from the no-timestamps position (predicting the first text token)
    // to the last text token (predicting end-of-text).
    let first = sot_sequence.len();
    let n_text = text_tokens.len() + 1;
    let matrix = head_average(&weights, n_heads, tokens.len(), audio, frames, first, n_text);
    let neg: Vec<f64> = matrix.iter().map(|x| -x).collect();
    let (text_idx, time_idx) = dtw(&neg, n_text, frames);
    let jump_times = jump_times(&text_idx, &time_idx, n_text);
    let words = split_words(model, text_tokens, language);
    let mut out = timed_words(words, &jump_times, token_probs);
    clamp_long_words(&mut out);
    merge_punctuation(&mut out);
    Ok(out)
}

/// The alignment heads as one `n_text × frames` map (rows `first..` of each
/// head): no single head is reliable, their average is (`timing.py`).
fn head_average(
    weights: &[f32],
    n_heads: usize,
    rows: usize,
    audio: usize,
    frames: usize,
    first: usize,
    n_text: usize,
) -> Vec<f64> {
    let mut matrix = vec![0.0f64; n_text * frames];
    let mut head = vec![0.0f64; rows * frames];
    for h in 0..n_heads {
        let w = &weights[h * rows * audio..(h + 1) * rows * audio];
        standardise_head(w, rows, audio, frames, &mut head);
        // Then smooth along time, and average.
        for r in 0..n_text {
            let filtered = median_filter(&head[(first + r) * frames..(first + r + 1) * frames], MEDIAN_FILTER_WIDTH);
            for (t, v) in filtered.into_iter().enumerate() {
                matrix[r * frames + t] += v / n_heads as f64;
            }
        }
    }
    matrix
}

/// One head's `rows × audio` weights as `rows × frames` in `head`: only the
/// content frames count (the rest of the window is padding), and each frame
/// is standardised over tokens so that heads of different sharpness weigh
/// alike.
fn standardise_head(w: &[f32], rows: usize, audio: usize, frames: usize, head: &mut [f64]) {
    // Softmax restricted to the content frames = renormalised weights.
    for r in 0..rows {
        let src = &w[r * audio..r * audio + frames];
        let sum: f64 = src.iter().map(|&x| x as f64).sum::<f64>().max(1e-20);
        for (t, &x) in src.iter().enumerate() {
            head[r * frames + t] = x as f64 / sum;
        }
    }
    // Standardise each frame over tokens.
    for t in 0..frames {
        let mean = (0..rows).map(|r| head[r * frames + t]).sum::<f64>() / rows as f64;
        let var = (0..rows).map(|r| (head[r * frames + t] - mean).powi(2)).sum::<f64>() / rows as f64;
        let std = var.sqrt().max(1e-12);
        for r in 0..rows {
            head[r * frames + t] = (head[r * frames + t] - mean) / std;
        }
    }
}

/// Time at which the path first enters each token row: where each token
/// starts (and the previous one ends).
fn jump_times(text_idx: &[usize], time_idx: &[usize], n_text: usize) -> Vec<f64> {
    let mut jump_times = Vec::with_capacity(n_text);
    for i in 0..text_idx.len() {
        if i == 0 || text_idx[i] != text_idx[i - 1] {
            jump_times.push(time_idx[i] as f64 / FRAMES_PER_SECOND);
        }
    }
    jump_times
}

/// Each word from its first token's start to the next word's start, with
/// the mean decoding probability of its tokens as its confidence.
fn timed_words(words: Vec<(String, Vec<u32>)>, jump_times: &[f64], token_probs: &[f32]) -> Vec<TimedWord> {
    let mut out = Vec::with_capacity(words.len());
    let mut at = 0;
    for (word, toks) in words {
        let (s, e) = (at, at + toks.len());
        at = e;
        let start = jump_times.get(s).copied().unwrap_or(0.0);
        let end = jump_times.get(e).copied().unwrap_or(start);
        let probs = &token_probs[s.min(token_probs.len())..e.min(token_probs.len())];
        let probability = if probs.is_empty() { 0.0 } else { probs.iter().sum::<f32>() / probs.len() as f32 };
        out.push(TimedWord { word, tokens: toks, start, end, probability });
    }
    out
}

/// Splits tokens into words: at spaces and punctuation for most languages,
/// at every complete character for those written without spaces.
fn split_words<B: Backend>(model: &Whisper<B>, tokens: &[u32], language: &str) -> Vec<(String, Vec<u32>)> {
    let tok = model.tokenizer();
    // Sub-words: the shortest token runs that decode to whole UTF-8 characters.
    let mut subwords: Vec<(String, Vec<u32>)> = Vec::new();
    let mut current: Vec<u32> = Vec::new();
    let mut bytes: Vec<u8> = Vec::new();
    for &t in tokens {
        current.push(t);
        bytes.extend_from_slice(tok.token_bytes(t));
        if let Ok(s) = std::str::from_utf8(&bytes) {
            subwords.push((s.to_string(), std::mem::take(&mut current)));
            bytes.clear();
        }
    }
    if !current.is_empty() {
        subwords.push((String::from_utf8_lossy(&bytes).into_owned(), current));
    }
    if matches!(language, "zh" | "ja" | "th" | "lo" | "my" | "yue") {
        return subwords;
    }
    let mut words: Vec<(String, Vec<u32>)> = Vec::new();
    for (text, toks) in subwords {
        let starts_word = text.starts_with(' ');
        let is_punct = text.trim().chars().all(|c| c.is_ascii_punctuation()) && !text.trim().is_empty();
        match words.last_mut() {
            Some(last) if !starts_word && !is_punct => {
                last.0.push_str(&text);
                last.1.extend(toks);
            }
            _ => words.push((text, toks)),
        }
    }
    words
}

/// Whisper's guard against words stretched over a pause after a sentence end.
fn clamp_long_words(words: &mut [TimedWord]) {
    let mut durations: Vec<f64> = words.iter().map(|w| w.end - w.start).filter(|&d| d > 0.0).collect();
    if durations.is_empty() {
        return;
    }
    durations.sort_by(f64::total_cmp);
    let median = durations[durations.len() / 2].min(0.7);
    let max_duration = median * 2.0;
    let is_end = |w: &str| matches!(w.trim(), "." | "。" | "!" | "！" | "?" | "？");
    for i in 1..words.len() {
        if words[i].end - words[i].start > max_duration {
            if is_end(&words[i].word) {
                words[i].end = words[i].start + max_duration;
            } else if is_end(&words[i - 1].word) {
                words[i].start = words[i].end - max_duration;
            }
        }
    }
}

/// Attaches opening punctuation to the next word and closing punctuation to
/// the previous one, as Whisper reports words.
fn merge_punctuation(words: &mut Vec<TimedWord>) {
    let mut i = 0;
    while i + 1 < words.len() {
        let w = words[i].word.trim_start();
        if !w.is_empty() && w.chars().all(|c| PREPEND_PUNCTUATION.contains(c)) && words[i].word.starts_with(' ') {
            let p = words.remove(i);
            let next = &mut words[i];
            next.word = format!("{}{}", p.word, next.word.trim_start());
            let mut toks = p.tokens;
            toks.append(&mut next.tokens);
            next.tokens = toks;
            continue;
        }
        i += 1;
    }
    let mut i = 1;
    while i < words.len() {
        let w = &words[i].word;
        if !w.starts_with(' ') && !w.is_empty() && w.chars().all(|c| APPEND_PUNCTUATION.contains(c)) {
            let p = words.remove(i);
            let prev = &mut words[i - 1];
            prev.word.push_str(&p.word);
            prev.tokens.extend(p.tokens);
            continue;
        }
        i += 1;
    }
}

/// Median filter along one row, reflect-padded like `numpy.pad(mode="reflect")`.
fn median_filter(x: &[f64], width: usize) -> Vec<f64> {
    let pad = width / 2;
    let n = x.len();
    if n <= pad {
        return x.to_vec();
    }
    let at = |i: isize| -> f64 {
        let mut j = i;
        if j < 0 {
            j = -j;
        }
        if j >= n as isize {
            j = 2 * (n as isize - 1) - j;
        }
        x[j.clamp(0, n as isize - 1) as usize]
    };
    let mut win = vec![0.0; width];
    (0..n)
        .map(|i| {
            for (k, w) in win.iter_mut().enumerate() {
                *w = at(i as isize + k as isize - pad as isize);
            }
            win.sort_by(f64::total_cmp);
            win[pad]
        })
        .collect()
}

/// Dynamic time warping over a `n × m` cost matrix; returns the path as
/// (row indices, column indices), ties broken as in Whisper.
fn dtw(cost_in: &[f64], n: usize, m: usize) -> (Vec<usize>, Vec<usize>) {
    let w = m + 1;
    let mut cost = vec![f64::INFINITY; (n + 1) * w];
    let mut trace = vec![-1i8; (n + 1) * w];
    cost[0] = 0.0;
    for j in 1..=m {
        for i in 1..=n {
            let c0 = cost[(i - 1) * w + j - 1];
            let c1 = cost[(i - 1) * w + j];
            let c2 = cost[i * w + j - 1];
            let (c, t) = if c0 < c1 && c0 < c2 {
                (c0, 0)
            } else if c1 < c0 && c1 < c2 {
                (c1, 1)
            } else {
                (c2, 2)
            };
            cost[i * w + j] = cost_in[(i - 1) * m + j - 1] + c;
            trace[i * w + j] = t;
        }
    }
    trace[..w].fill(2);
    for i in 0..=n {
        trace[i * w] = 1;
    }
    let (mut i, mut j) = (n, m);
    let (mut rows, mut cols) = (Vec::new(), Vec::new());
    while i > 0 || j > 0 {
        rows.push(i.saturating_sub(1));
        cols.push(j.saturating_sub(1));
        match trace[i * w + j] {
            0 => {
                i -= 1;
                j -= 1;
            }
            1 => i -= 1,
            _ => j -= 1,
        }
    }
    rows.reverse();
    cols.reverse();
    (rows, cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtw_follows_the_cheap_diagonal() {
        // 3 tokens × 6 frames, cheap band along the diagonal.
        let mut c = vec![1.0; 18];
        for (i, j) in [(0, 0), (0, 1), (1, 2), (1, 3), (2, 4), (2, 5)] {
            c[i * 6 + j] = 0.0;
        }
        let (rows, cols) = dtw(&c, 3, 6);
        assert_eq!(rows, vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(cols, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn median_filter_removes_spikes() {
        let x = [0.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 0.0];
        assert!(median_filter(&x, 7).iter().all(|&v| v == 0.0));
        assert_eq!(median_filter(&[1.0, 2.0], 7), vec![1.0, 2.0]);
    }

    fn word(w: &str, s: f64, e: f64) -> TimedWord {
        TimedWord { word: w.into(), tokens: vec![0], start: s, end: e, probability: 1.0 }
    }

    #[test]
    fn punctuation_joins_its_word() {
        let mut ws = vec![
            word(" \"", 0.0, 0.1),
            word("Hello", 0.1, 0.5),
            word(",", 0.5, 0.5),
            word(" world", 0.6, 1.0),
            word(".", 1.0, 1.0),
        ];
        merge_punctuation(&mut ws);
        let names: Vec<&str> = ws.iter().map(|w| w.word.as_str()).collect();
        assert_eq!(names, vec![" \"Hello,", " world."]);
    }
}
