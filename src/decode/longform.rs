//! Audio of any length, one 30 s window after another, the way
//! faster-whisper's `generate_segments` walks it: the log-mel of the whole
//! input is computed once (its clamp floor is file-wide), each window is cut
//! at its timestamp tokens, the next window starts where the last complete
//! segment ended, and the text so far conditions the next window.

use crate::audio::mel::MelFrontend;
use crate::audio::vad::{self, VadConfig};
use crate::backend::{Backend, BackendError};
use crate::decode::alignment;
use crate::decode::rules::{loop_repeats_from, Rules};
use crate::decode::search::{decode_with_fallback, Rng, WindowResult};
use crate::decode::{DecodeError, DecodeOptions, OnLoop, Segment, Task, Transcript, Word};
use crate::model::tokenizer::SpecialTokens;
use crate::model::{State, Tokenizer, Whisper, HOP, WINDOW_FRAMES};

const SAMPLE_RATE: f64 = crate::audio::SAMPLE_RATE as f64;
/// Mel frames per second.
const FRAMES_PER_SECOND: f64 = SAMPLE_RATE / HOP as f64;
/// A window with less voiced audio than this (10 ms frames) is not decoded.
const MIN_SPEECH_FRAMES: usize = 20;
/// Seconds per timestamp token.
const TIME_PRECISION: f64 = 0.02;

/// A segment cut from a window before it is kept: start, end (seconds),
/// tokens, and the words once aligned.
type SegmentDraft = (f64, f64, Vec<u32>, Option<Vec<Word>>);

/// Runs a shared model over whole recordings; one per thread, each with its
/// own [`State`].
pub struct Transcriber<'m, B: Backend> {
    model: &'m Whisper<B>,
    mel: MelFrontend,
    state: State<B>,
    window: Vec<f32>,
}

impl<'m, B: Backend> Transcriber<'m, B> {
    pub fn new(model: &'m Whisper<B>, max_seqs: usize) -> Result<Self, crate::model::ModelError> {
        let mel = MelFrontend::new(model.dims().n_mels).map_err(|e| crate::model::ModelError::Mismatch {
            path: model.dir().join("model.bin"),
            reason: e.to_string(),
        })?;
        Ok(Transcriber {
            model,
            mel,
            state: model.state(max_seqs)?,
            window: vec![0.0; WINDOW_FRAMES * model.dims().n_mels],
        })
    }

    pub fn model(&self) -> &'m Whisper<B> {
        self.model
    }

    /// Transcribes 16 kHz mono samples. `progress` is called with the seconds
    /// done after each window.
    pub fn transcribe(
        &mut self,
        audio: &[f32],
        opts: &DecodeOptions,
        progress: &mut dyn FnMut(f64),
    ) -> Result<Transcript, DecodeError> {
        let mel = self.mel.log_mel(audio);
        // faster-whisper treats the extractor's last frame as padding.
        let content_frames = mel.frames.saturating_sub(1);
        let duration = audio.len() as f64 / SAMPLE_RATE;
        // One decision per mel frame: windows without speech never reach the
        // decoder, which would otherwise make text up for them.
        let speech = opts.vad.then(|| vad::speech_frames(audio, VadConfig::default()));

        let (language, language_probability) = self.language(&mel.data, content_frames, opts)?;
        let mut rec = self.recording(language, opts)?;
        let mut seek = 0usize;
        while seek < content_frames {
            if opts.cancel.is_cancelled() {
                return Err(DecodeError::Cancelled);
            }
            let segment_size = WINDOW_FRAMES.min(content_frames - seek);
            seek = if speech.as_deref().is_some_and(|s| !has_speech(s, seek, segment_size)) {
                seek + segment_size
            } else {
                self.window(&mel.data, seek, segment_size, &mut rec)?
            };
            progress((seek as f64 / FRAMES_PER_SECOND).min(duration));
        }
        Ok(Transcript { language: rec.language, language_probability, duration, segments: rec.segments })
    }

    /// What every window of one recording shares, fixed once its language is
    /// known; the errors of the options (a language or prompt the model cannot
    /// take) surface here, before any window is decoded.
    fn recording<'o>(&self, language: String, opts: &'o DecodeOptions) -> Result<Recording<'o>, DecodeError> {
        let model = self.model;
        let tok = model.tokenizer();
        let specials = *tok.specials();
        let sot_sequence = sot_sequence(tok, &language, opts.task)?;
        let mut rules = Rules::new(
            &specials,
            &model.config().suppress_ids,
            if opts.suppress_blank { &model.config().suppress_ids_begin } else { &[] },
            !opts.without_timestamps,
            opts.max_initial_timestamp,
        );
        rules.stop_loops(opts.audio_ctx.is_some());

        let mut all_tokens: Vec<u32> = Vec::new();
        if let Some(p) = non_blank(&opts.initial_prompt) {
            all_tokens.extend(encode_text(tok, p)?);
        }
        let mut prefix = Vec::new();
        if let Some(p) = non_blank(&opts.prefix) {
            prefix = encode_text(tok, p)?;
            // faster-whisper's cap: under half the text context.
            prefix.truncate(model.text_ctx() / 2 - 1);
        }
        Ok(Recording {
            opts,
            specials,
            text_ctx: model.text_ctx(),
            language,
            sot_sequence,
            rules,
            prefix,
            rng: Rng::new(opts.seed),
            all_tokens,
            prompt_reset_since: 0,
            prompt: Prompt { tokens: Vec::with_capacity(model.text_ctx()), sot_index: 0, forced: 0 },
            segments: Vec::new(),
        })
    }

    /// Decodes the window of `segment_size` frames at `seek` and keeps its
    /// segments; returns where the next window starts.
    fn window(
        &mut self,
        mel: &[f32],
        seek: usize,
        segment_size: usize,
        rec: &mut Recording<'_>,
    ) -> Result<usize, DecodeError> {
        let opts = rec.opts;
        rec.prepare_prompt(seek);
        let result = self.encode_and_decode(mel, seek, segment_size, rec)?;
        if is_silence(&result, opts) {
            return Ok(seek + segment_size);
        }
        let time_offset = seek as f64 / FRAMES_PER_SECOND;
        let (mut window_segments, mut next_seek, single_ending) =
            self.split(&result, seek, segment_size, opts.without_timestamps);
        if opts.word_timestamps {
            let last_word_end = self.add_words(
                &mut window_segments,
                &result,
                &rec.sot_sequence,
                segment_size,
                time_offset,
                &rec.language,
            )?;
            if !single_ending {
                if let Some(end) = last_word_end.filter(|&e| e > time_offset) {
                    next_seek = (end * FRAMES_PER_SECOND).round() as usize;
                }
            }
        }
        rec.keep(window_segments, &result, time_offset, self.model.tokenizer());
        // Never stand still: a window that produced nothing usable moves on.
        Ok(if next_seek > seek { next_seek } else { seek + segment_size })
    }

    /// Encodes the window and decodes it with the temperature fallback. A
    /// shortened window is encoded only as far as `opts.audio_ctx` asks,
    /// which saves most of the encoder's time on short audio.
    fn encode_and_decode(
        &mut self,
        mel: &[f32],
        seek: usize,
        segment_size: usize,
        rec: &mut Recording<'_>,
    ) -> Result<WindowResult, DecodeError> {
        let (model, opts) = (self.model, rec.opts);
        let t0 = std::time::Instant::now();
        let encoded_frames = self.encode_window(mel, seek, segment_size, opts)?;
        let encoded = t0.elapsed();
        rec.rules.limit_timestamps(opts.audio_ctx.map(|_| encoded_frames as f64 / FRAMES_PER_SECOND));

        let mut result = self.decode(rec)?;
        let looped = loop_repeats_from(&result.tokens).filter(|_| encoded_frames < WINDOW_FRAMES);
        if let (Some(from), Some(ctx)) = (looped, opts.audio_ctx) {
            // Whisper loops on a short context now and then.
            tracing::debug!(seek, encoded_frames, on_loop = ?ctx.on_loop, "loop on the shortened window");
            match ctx.on_loop {
                OnLoop::FullWindow if !opts.cancel.is_cancelled() => {
                    rec.rules.limit_timestamps(None);
                    model.encode(&self.window, &mut self.state)?;
                    result = self.decode(rec)?;
                }
                OnLoop::FullWindow => {}
                OnLoop::Cut => {
                    let tb = model.tokenizer().specials().timestamp_begin;
                    cut_loop(&mut result, from.max(rec.prompt.forced), tb, segment_size);
                }
            }
        }
        if opts.cancel.is_cancelled() {
            return Err(DecodeError::Cancelled);
        }
        tracing::debug!(
            seek,
            encoded_frames,
            encode_ms = encoded.as_millis() as u64,
            decode_ms = (t0.elapsed() - encoded).as_millis() as u64,
            tokens = result.tokens.len(),
            forced = rec.prompt.forced,
            prompt = rec.prompt.tokens.len(),
            temperature = result.temperature,
            "window"
        );
        Ok(result)
    }

    /// The encoded window through the decoder, with the recording's prompt.
    fn decode(&mut self, rec: &mut Recording<'_>) -> Result<WindowResult, BackendError> {
        let p = &rec.prompt;
        decode_with_fallback(
            self.model,
            &mut self.state,
            &p.tokens,
            p.sot_index,
            p.forced,
            &rec.rules,
            rec.opts,
            &mut rec.rng,
        )
    }

    /// Fills and encodes a window in one place, so language detection encodes exactly the window the step reuses.
    fn encode_window(
        &mut self,
        mel: &[f32],
        seek: usize,
        len: usize,
        opts: &DecodeOptions,
    ) -> Result<usize, BackendError> {
        let n_mels = self.model.dims().n_mels;
        self.fill_window(mel, n_mels, seek, len);
        let frames = opts.audio_ctx.map_or(WINDOW_FRAMES, |c| c.frames(len));
        self.model.encode(&self.window[..frames * n_mels], &mut self.state)?;
        Ok(frames)
    }

    /// Copies `len` frames from `seek` into the window and pads the rest
    /// with 0.0 in the normalised domain, as faster-whisper does.
    fn fill_window(&mut self, mel: &[f32], n_mels: usize, seek: usize, len: usize) {
        let n = len * n_mels;
        self.window[..n].copy_from_slice(&mel[seek * n_mels..seek * n_mels + n]);
        self.window[n..].iter_mut().for_each(|x| *x = 0.0);
    }

    /// The language to decode in: the requested one, English for English-only
    /// models, or the most likely language token after `<|startoftranscript|>`
    /// on the first window.
    fn language(
        &mut self,
        mel: &[f32],
        content_frames: usize,
        opts: &DecodeOptions,
    ) -> Result<(String, f32), DecodeError> {
        let tok = self.model.tokenizer();
        if let Some(requested) = opts.language.as_deref() {
            return Ok((super::resolve_language(tok, requested)?.into(), 1.0));
        }
        if !tok.is_multilingual() {
            return Ok(("en".into(), 1.0));
        }
        let model = self.model;
        // The first window as the step will encode it, so that it reuses this
        // encoding (a shortened one when streaming).
        self.encode_window(mel, 0, WINDOW_FRAMES.min(content_frames), opts)?;
        let sp = tok.specials();
        model.reset(&mut self.state);
        let mut logits = Vec::new();
        model.decode(&mut self.state, &[sp.sot], 1, &[0], &mut logits)?;
        let langs = tok.language_tokens();
        let max = langs.iter().map(|&(id, _)| logits[id as usize]).fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = langs.iter().map(|&(id, _)| (logits[id as usize] - max).exp()).sum();
        let (best, code) = langs
            .iter()
            .max_by(|a, b| logits[a.0 as usize].total_cmp(&logits[b.0 as usize]))
            .copied()
            .unwrap_or((0, "en"));
        let p = if best == 0 { 1.0 } else { (logits[best as usize] - max).exp() / sum };
        Ok((code.into(), p))
    }

    /// Cuts a window's tokens into segments at timestamp pairs. Returns the
    /// segments (start, end, tokens, words), the next seek, and whether the
    /// window ended on a single timestamp (all its content was consumed).
    fn split(
        &self,
        r: &WindowResult,
        seek: usize,
        segment_size: usize,
        without_timestamps: bool,
    ) -> (Vec<SegmentDraft>, usize, bool) {
        let tb = self.model.tokenizer().specials().timestamp_begin;
        let time_offset = seek as f64 / FRAMES_PER_SECOND;
        let tokens = &r.tokens;
        let mut out = Vec::new();
        let n = tokens.len();
        let single_ending = n >= 2 && tokens[n - 2] < tb && tokens[n - 1] >= tb;
        let ts = |t: u32| (t - tb) as f64 * TIME_PRECISION;
        if without_timestamps {
            out.push((time_offset, time_offset + segment_size as f64 / FRAMES_PER_SECOND, tokens.clone(), None));
            return (out, seek + segment_size, false);
        }
        let mut cuts: Vec<usize> = (1..n).filter(|&i| tokens[i] >= tb && tokens[i - 1] >= tb).collect();
        if !cuts.is_empty() {
            if single_ending {
                cuts.push(n);
            }
            let mut last = 0;
            for &c in &cuts {
                let slice = &tokens[last..c];
                out.push((time_offset + ts(slice[0]), time_offset + ts(slice[slice.len() - 1]), slice.to_vec(), None));
                last = c;
            }
            let next = if single_ending { seek + segment_size } else { seek + (tokens[last - 1] - tb) as usize * 2 };
            (out, next, single_ending)
        } else {
            let mut dur = segment_size as f64 / FRAMES_PER_SECOND;
            if let Some(&t) = tokens.iter().rev().find(|&&t| t >= tb) {
                if t != tb {
                    dur = ts(t);
                }
            }
            out.push((time_offset, time_offset + dur, tokens.clone(), None));
            (out, seek + segment_size, single_ending)
        }
    }

    /// Word timestamps for every segment of the window; segments take their
    /// first word's start and last word's end. Returns the last word's end.
    fn add_words(
        &mut self,
        segs: &mut [SegmentDraft],
        r: &WindowResult,
        sot_sequence: &[u32],
        num_frames: usize,
        time_offset: f64,
        language: &str,
    ) -> Result<Option<f64>, BackendError> {
        let eot = self.model.tokenizer().specials().eot;
        let mut text = Vec::new();
        let mut probs = Vec::new();
        let mut per_segment = Vec::with_capacity(segs.len());
        for (_, _, toks, _) in segs.iter() {
            let mut count = 0;
            for &t in toks {
                if t < eot {
                    text.push(t);
                    count += 1;
                }
            }
            per_segment.push(count);
        }
        for (&t, &lp) in r.tokens.iter().zip(&r.token_logprobs) {
            if t < eot {
                probs.push(lp.exp());
            }
        }
        let words = alignment::align(self.model, &mut self.state, sot_sequence, &text, &probs, num_frames, language)?;
        let mut it = words.into_iter().peekable();
        let mut last_end = None;
        for (seg, &count) in segs.iter_mut().zip(&per_segment) {
            let mut taken = 0;
            let mut ws = Vec::new();
            while taken < count {
                let Some(w) = it.next() else { break };
                taken += w.tokens.len();
                ws.push(Word {
                    word: w.word,
                    start: time_offset + w.start,
                    end: time_offset + w.end,
                    probability: w.probability,
                });
            }
            if let (Some(first), Some(last)) = (ws.first(), ws.last()) {
                seg.0 = first.start;
                seg.1 = last.end;
                last_end = Some(last.end);
            }
            seg.3 = Some(ws);
        }
        Ok(last_end)
    }
}

/// One recording in progress: what its windows share (the start-of-transcript
/// sequence, the token rules, the forced prefix) and the text so far, which
/// conditions the next window as it does in faster-whisper.
struct Recording<'o> {
    opts: &'o DecodeOptions,
    specials: SpecialTokens,
    text_ctx: usize,
    language: String,
    sot_sequence: Vec<u32>,
    rules: Rules,
    /// faster-whisper's `prefix`: opens the first window's output.
    prefix: Vec<u32>,
    rng: Rng,
    /// The initial prompt, then the tokens of every segment kept.
    all_tokens: Vec<u32>,
    /// Where in `all_tokens` the text that conditions the next window starts.
    prompt_reset_since: usize,
    prompt: Prompt,
    segments: Vec<Segment>,
}

/// The decoder's input for one window; its buffer is reused.
struct Prompt {
    tokens: Vec<u32>,
    /// Where the start-of-transcript sequence begins (after the previous text).
    sot_index: usize,
    /// Trailing tokens that are a forced prefix of the output.
    forced: usize,
}

impl Recording<'_> {
    /// Lays out the prompt of the window at `seek`: the previous text (at
    /// most half the context), the start-of-transcript sequence and, on the
    /// first window, the prefix.
    fn prepare_prompt(&mut self, seek: usize) {
        let (sp, p) = (self.specials, &mut self.prompt);
        p.tokens.clear();
        let previous = &self.all_tokens[self.prompt_reset_since..];
        if !previous.is_empty() {
            p.tokens.push(sp.sot_prev);
            let keep = self.text_ctx / 2 - 1;
            p.tokens.extend_from_slice(&previous[previous.len().saturating_sub(keep)..]);
        }
        p.sot_index = p.tokens.len();
        p.tokens.extend_from_slice(&self.sot_sequence);
        if self.opts.without_timestamps {
            p.tokens.push(sp.no_timestamps);
        }
        // The prefix opens the first window's output (after its first
        // timestamp, as faster-whisper writes it).
        p.forced = 0;
        if seek == 0 && !self.prefix.is_empty() {
            let before = p.tokens.len();
            if !self.opts.without_timestamps {
                p.tokens.push(sp.timestamp_begin);
            }
            // Leave room to decode: the prompt and prefix share 448 positions.
            let room = self.text_ctx.saturating_sub(p.tokens.len() + 64);
            p.tokens.extend_from_slice(&self.prefix[..self.prefix.len().min(room)]);
            p.forced = p.tokens.len() - before;
        }
    }

    /// Keeps the window's segments that have text, and their tokens as the
    /// next window's context — unless the window needed a high temperature,
    /// whose text is too unsure to condition on.
    fn keep(&mut self, window_segments: Vec<SegmentDraft>, r: &WindowResult, time_offset: f64, tok: &Tokenizer) {
        for (start, end, tokens, words) in window_segments {
            let text = tok.decode(&tokens);
            if start == end || text.trim().is_empty() {
                continue;
            }
            self.all_tokens.extend_from_slice(&tokens);
            self.segments.push(Segment {
                id: self.segments.len(),
                seek: (time_offset * FRAMES_PER_SECOND).round() as usize,
                start,
                end,
                text,
                tokens,
                temperature: r.temperature,
                avg_logprob: r.avg_logprob,
                compression_ratio: r.compression_ratio,
                no_speech_prob: r.no_speech_prob,
                words,
            });
        }
        if !self.opts.condition_on_previous_text || r.temperature > self.opts.prompt_reset_on_temperature {
            self.prompt_reset_since = self.all_tokens.len();
        }
    }
}

/// `<|startoftranscript|>`, then on multilingual models the language and the
/// task, which English-only models do not know.
fn sot_sequence(tok: &Tokenizer, language: &str, task: Task) -> Result<Vec<u32>, DecodeError> {
    let sp = tok.specials();
    let mut sot_sequence = vec![sp.sot];
    if tok.is_multilingual() {
        let lang_token = tok.language_token(language).ok_or_else(|| DecodeError::UnknownLanguage(language.into()))?;
        sot_sequence.push(lang_token);
        sot_sequence.push(if task == Task::Translate { sp.translate } else { sp.transcribe });
    }
    Ok(sot_sequence)
}

/// An optional text that is there only when it has more than spaces.
fn non_blank(text: &Option<String>) -> Option<&str> {
    text.as_deref().filter(|p| !p.trim().is_empty())
}

/// Tokens of a prompt or prefix, with the leading space Whisper's text has.
fn encode_text(tok: &Tokenizer, text: &str) -> Result<Vec<u32>, DecodeError> {
    tok.encode(&format!(" {}", text.trim())).map_err(|e| DecodeError::Prompt(e.to_string()))
}

/// Whether the window of `len` frames at `seek` has enough voiced frames to
/// be worth decoding.
fn has_speech(speech: &[bool], seek: usize, len: usize) -> bool {
    let end = (seek + len).min(speech.len());
    let voiced = speech.get(seek..end).map_or(0, |w| w.iter().filter(|&&s| s).count());
    if voiced < MIN_SPEECH_FRAMES {
        tracing::debug!(seek, voiced, "window without speech skipped");
        return false;
    }
    true
}

/// faster-whisper's silence test: the no-speech token is likely, and the
/// text is not confident enough to overrule it.
fn is_silence(r: &WindowResult, opts: &DecodeOptions) -> bool {
    opts.no_speech_threshold.is_some_and(|threshold| {
        r.no_speech_prob > threshold && !opts.log_prob_threshold.is_some_and(|t| r.avg_logprob > t)
    })
}

/// Drops a looped result's tokens from `from` on and closes its last segment
/// at the end of the window's `segment_size` frames of audio, as Whisper does
/// once it has read all of it: the window counts as consumed, so no later
/// window decodes the rest again.
fn cut_loop(result: &mut WindowResult, from: usize, timestamp_begin: u32, segment_size: usize) {
    let tb = timestamp_begin;
    result.tokens.truncate(from);
    while result.tokens.last().is_some_and(|&t| t >= tb) {
        result.tokens.pop();
    }
    if result.tokens.iter().all(|&t| t >= tb) {
        result.tokens.clear();
    } else {
        result.tokens.push(tb + (segment_size / 2) as u32);
    }
    result.token_logprobs.resize(result.tokens.len(), 0.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(tokens: &[u32]) -> WindowResult {
        WindowResult {
            tokens: tokens.to_vec(),
            token_logprobs: vec![-0.5; tokens.len()],
            avg_logprob: -0.5,
            no_speech_prob: 0.0,
            temperature: 0.0,
            compression_ratio: 3.0,
        }
    }

    #[test]
    fn a_cut_loop_keeps_the_text_once_and_ends_at_the_audio() {
        const TB: u32 = 100;
        // <|0.00|> a b <|1.00|><|1.20|> c d c d c d
        let mut r = result(&[TB, 1, 2, TB + 50, TB + 60, 3, 4, 3, 4, 3, 4]);
        cut_loop(&mut r, 7, TB, 700);
        assert_eq!(r.tokens, [TB, 1, 2, TB + 50, TB + 60, 3, 4, TB + 350]);
        assert_eq!(r.token_logprobs.len(), r.tokens.len());
        // A loop right after a segment's opening timestamp: that timestamp
        // goes too, and the segment before closes at the audio's end.
        let mut r = result(&[TB, 1, 2, TB + 50, TB + 60, 3, 4, 3, 4]);
        cut_loop(&mut r, 5, TB, 700);
        assert_eq!(r.tokens, [TB, 1, 2, TB + 350]);
        // Nothing but the loop: no text at all.
        let mut r = result(&[TB, 3, 3, 3]);
        cut_loop(&mut r, 1, TB, 700);
        assert!(r.tokens.is_empty() && r.token_logprobs.is_empty());
    }
}
