//! Sample-rate conversion of mono audio to Whisper's 16 kHz (or any other
//! rate), offline or streaming, over rubato's synchronous FFT resampler.
//!
//! The output is time-aligned with the input (rubato's filter delay is
//! trimmed) and a stream of `n` input samples yields exactly
//! `round(n * out_rate / in_rate)` output samples once flushed, so
//! timestamps computed on the 16 kHz side map straight back to the source.
//! Equal rates are a bit-exact passthrough.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler as _};

use super::SAMPLE_RATE;

/// Lowest input/output rate accepted, in Hz. Below this the FFT blocks
/// for an exact rational ratio get absurdly lopsided.
pub const MIN_RATE: u32 = 1_000;
/// Highest input/output rate accepted, in Hz (covers 768 kHz studio gear).
pub const MAX_RATE: u32 = 768_000;

/// Target FFT block sizes. The block is the filter length, so this sets
/// both quality and streaming latency (about 1.5 blocks). With ≥ 512
/// output samples (32 ms at 16 kHz) the passband is flat to ~96 % of the
/// lower Nyquist (7.7 kHz of 8) and aliases sit below −140 dB.
const MIN_BLOCK_OUT: usize = 512;
const MIN_BLOCK_IN: usize = 256;

/// Errors from building or running a [`Resampler`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResampleError {
    /// A rate outside [`MIN_RATE`]..=[`MAX_RATE`].
    #[error("unsupported sample rate {0} Hz (supported: {MIN_RATE}..={MAX_RATE} Hz)")]
    UnsupportedRate(u32),
    /// rubato refused the configuration.
    #[error("cannot resample {input} Hz to {output} Hz: {source}")]
    Construction {
        input: u32,
        output: u32,
        #[source]
        source: rubato::ResamplerConstructionError,
    },
    /// rubato failed while processing (a bug on our side: buffers are ours).
    #[error("resampling failed: {0}")]
    Process(#[from] rubato::ResampleError),
}

/// Mono resampler, offline ([`resample`](Resampler::resample)) or streaming ([`process`] +
/// [`flush`]).
///
/// Streaming: push chunks of any size with [`process`]; whatever output is
/// ready is appended to the caller's vector. After the last chunk call
/// [`flush`], which appends the tail and resets the resampler for a new
/// stream. Internal buffers are allocated once in the constructor; with a
/// reused output vector (`clear()` between calls, enough capacity), the
/// steady state allocates nothing.
///
/// Output arrives in blocks of [`block_len`](Resampler::block_len) input
/// samples (32–80 ms for common rates). Rates sharing only a small
/// divisor with the output rate (e.g. 44 101 Hz) need blocks of about a
/// second: still correct, just higher streaming latency.
///
/// [`process`]: Resampler::process
/// [`flush`]: Resampler::flush
pub struct Resampler {
    input_rate: u32,
    output_rate: u32,
    /// `None` when the rates are equal: samples pass through untouched.
    engine: Option<Engine>,
    /// Input samples accepted since the last flush.
    consumed: u64,
    /// Output samples handed out since the last flush.
    emitted: u64,
}

struct Engine {
    fft: Fft<f32>,
    chunk_in: usize,
    /// Partial input chunk waiting for more samples (length `chunk_in`).
    pending: Vec<f32>,
    pending_len: usize,
    /// One chunk of raw rubato output (length `chunk_out`).
    out_buf: Vec<f32>,
    /// Leading output samples still to drop: rubato's filter delay.
    skip: usize,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("input_rate", &self.input_rate)
            .field("output_rate", &self.output_rate)
            .field("chunk_in", &self.engine.as_ref().map(|e| e.chunk_in))
            .field("consumed", &self.consumed)
            .field("emitted", &self.emitted)
            .finish()
    }
}

impl Resampler {
    /// A resampler from `input_rate` to 16 kHz.
    pub fn new(input_rate: u32) -> Result<Self, ResampleError> {
        Self::with_output_rate(input_rate, SAMPLE_RATE)
    }

    /// A resampler between two arbitrary rates.
    pub fn with_output_rate(input_rate: u32, output_rate: u32) -> Result<Self, ResampleError> {
        for rate in [input_rate, output_rate] {
            if !(MIN_RATE..=MAX_RATE).contains(&rate) {
                return Err(ResampleError::UnsupportedRate(rate));
            }
        }
        let engine = if input_rate == output_rate { None } else { Some(Engine::new(input_rate, output_rate)?) };
        Ok(Self { input_rate, output_rate, engine, consumed: 0, emitted: 0 })
    }

    /// Input rate in Hz.
    pub fn input_rate(&self) -> u32 {
        self.input_rate
    }

    /// Output rate in Hz.
    pub fn output_rate(&self) -> u32 {
        self.output_rate
    }

    /// Input samples per internal block: output appears in steps of this
    /// many input samples (1 when passing through).
    pub fn block_len(&self) -> usize {
        self.engine.as_ref().map_or(1, |e| e.chunk_in)
    }

    /// Exact output length, once flushed, of a stream of `input_len`
    /// samples: `round(input_len * out / in)`, halves rounded up.
    pub fn output_len(&self, input_len: usize) -> usize {
        scaled_len(input_len as u64, self.input_rate, self.output_rate) as usize
    }

    /// Feeds `input` and appends every output sample that is ready to
    /// `output`. Output lags input by the filter delay until [`flush`].
    ///
    /// [`flush`]: Resampler::flush
    pub fn process(&mut self, input: &[f32], output: &mut Vec<f32>) -> Result<(), ResampleError> {
        self.consumed += input.len() as u64;
        let Some(engine) = self.engine.as_mut() else {
            output.extend_from_slice(input);
            self.emitted += input.len() as u64;
            return Ok(());
        };
        self.emitted += engine.push(input, output)? as u64;
        Ok(())
    }

    /// Ends the stream: appends the remaining output so that the total
    /// since the last flush is exactly [`output_len`] of the total input,
    /// then resets for a new stream.
    ///
    /// [`output_len`]: Resampler::output_len
    pub fn flush(&mut self, output: &mut Vec<f32>) -> Result<(), ResampleError> {
        let target = scaled_len(self.consumed, self.input_rate, self.output_rate);
        if let Some(engine) = self.engine.as_mut() {
            // Zero-padded blocks push the delayed tail out; the filter's
            // ringing into the padding past `target` is not signal.
            while self.emitted < target {
                let missing = target - self.emitted;
                let before = output.len();
                engine.push_zeros_block(output)?;
                let got = (output.len() - before) as u64;
                if got > missing {
                    output.truncate(before + missing as usize);
                }
                self.emitted += got.min(missing);
            }
        }
        self.reset();
        Ok(())
    }

    /// Drops any buffered audio and starts a new stream.
    pub fn reset(&mut self) {
        if let Some(engine) = self.engine.as_mut() {
            engine.reset();
        }
        self.consumed = 0;
        self.emitted = 0;
    }

    /// Resamples a whole signal in one go (resets any stream in progress).
    pub fn resample(&mut self, input: &[f32]) -> Result<Vec<f32>, ResampleError> {
        self.reset();
        let mut out = Vec::with_capacity(self.output_len(input.len()) + self.block_len());
        self.process(input, &mut out)?;
        self.flush(&mut out)?;
        Ok(out)
    }
}

impl Engine {
    fn new(input_rate: u32, output_rate: u32) -> Result<Self, ResampleError> {
        let g = gcd(input_rate as usize, output_rate as usize);
        let (min_in, min_out) = (input_rate as usize / g, output_rate as usize / g);
        // Blocks are a multiple k of the smallest exact-ratio pair. k is
        // kept even so the filter centre (block_in / 2 input samples) is a
        // whole number of output samples: rubato's reported delay is then
        // exact and trimming it leaves no sub-sample shift.
        let mut k = MIN_BLOCK_IN.div_ceil(min_in).max(MIN_BLOCK_OUT.div_ceil(min_out));
        k += k % 2;
        let chunk_in = k * min_in;
        let fft = Fft::<f32>::new_custom(
            input_rate as usize,
            output_rate as usize,
            chunk_in,
            1,
            1,
            rubato::WindowFunction::BlackmanHarris2,
            FixedSync::Both,
        )
        .map_err(|source| ResampleError::Construction { input: input_rate, output: output_rate, source })?;
        let chunk_in = fft.input_frames_next();
        let chunk_out = fft.output_frames_next();
        let skip = fft.output_delay();
        Ok(Self { fft, chunk_in, pending: vec![0.0; chunk_in], pending_len: 0, out_buf: vec![0.0; chunk_out], skip })
    }

    fn reset(&mut self) {
        self.fft.reset();
        self.pending_len = 0;
        self.skip = self.fft.output_delay();
    }

    /// Buffers/processes `input`; returns the number of samples appended.
    fn push(&mut self, mut input: &[f32], output: &mut Vec<f32>) -> Result<usize, ResampleError> {
        let mut appended = 0;
        while !input.is_empty() {
            if self.pending_len == 0 && input.len() >= self.chunk_in {
                // Whole blocks straight from the caller's slice: no copy.
                let (block, rest) = input.split_at(self.chunk_in);
                appended += run_block(&mut self.fft, block, &mut self.out_buf, &mut self.skip, output)?;
                input = rest;
                continue;
            }
            let take = (self.chunk_in - self.pending_len).min(input.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&input[..take]);
            self.pending_len += take;
            input = &input[take..];
            if self.pending_len == self.chunk_in {
                self.pending_len = 0;
                appended += run_block(&mut self.fft, &self.pending, &mut self.out_buf, &mut self.skip, output)?;
            }
        }
        Ok(appended)
    }

    /// Completes the pending block with zeros and processes it.
    fn push_zeros_block(&mut self, output: &mut Vec<f32>) -> Result<usize, ResampleError> {
        self.pending[self.pending_len..].fill(0.0);
        self.pending_len = 0;
        run_block(&mut self.fft, &self.pending, &mut self.out_buf, &mut self.skip, output)
    }
}

/// Runs one full block through rubato and appends its output minus any
/// delay samples still to be skipped.
fn run_block(
    fft: &mut Fft<f32>,
    block: &[f32],
    out_buf: &mut [f32],
    skip: &mut usize,
    output: &mut Vec<f32>,
) -> Result<usize, ResampleError> {
    let frames_in = block.len();
    let frames_out = out_buf.len();
    // Lengths are ours and fixed at construction: the adapters cannot fail.
    let input = InterleavedSlice::new(block, 1, frames_in).expect("block is one chunk long");
    let mut out = InterleavedSlice::new_mut(out_buf, 1, frames_out).expect("buffer is one chunk long");
    let (_, written) = fft.process_into_buffer(&input, &mut out, None)?;
    let produced = &out_buf[..written];
    let dropped = (*skip).min(produced.len());
    *skip -= dropped;
    output.extend_from_slice(&produced[dropped..]);
    Ok(produced.len() - dropped)
}

/// `round(len * to / from)` with halves rounded up, in integers so long
/// streams do not drift.
fn scaled_len(len: u64, from: u32, to: u32) -> u64 {
    let num = len as u128 * to as u128 * 2 + from as u128;
    (num / (2 * from as u128)) as u64
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Resamples a whole mono signal from `input_rate` to 16 kHz (a copy when
/// already 16 kHz).
pub fn resample_to_16k(samples: &[f32], input_rate: u32) -> Result<Vec<f32>, ResampleError> {
    if input_rate == SAMPLE_RATE {
        return Ok(samples.to_vec());
    }
    Resampler::new(input_rate)?.resample(samples)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn sine(freq: f64, rate: u32, n: usize) -> Vec<f32> {
        (0..n).map(|i| (0.5 * (2.0 * PI * freq * i as f64 / rate as f64).sin()) as f32).collect()
    }

    /// Amplitude and phase of `freq` in `x` (least squares against sin/cos,
    /// which is exact for a pure tone over many periods).
    fn tone_fit(x: &[f32], rate: u32, freq: f64) -> (f64, f64) {
        let (mut s, mut c) = (0.0, 0.0);
        for (i, &v) in x.iter().enumerate() {
            let ph = 2.0 * PI * freq * i as f64 / rate as f64;
            s += v as f64 * ph.sin();
            c += v as f64 * ph.cos();
        }
        let n = x.len() as f64;
        ((s * s + c * c).sqrt() * 2.0 / n, c.atan2(s))
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn output_length_is_rounded_ratio() {
        for rate in [8_000, 11_025, 22_050, 32_000, 44_100, 48_000, 96_000, 192_000, 44_101] {
            let mut r = Resampler::new(rate).unwrap();
            for n in [0, 1, 2, 441, 1_000, 12_345, 100_000] {
                let out = r.resample(&vec![0.1; n]).unwrap();
                let want = (n as f64 * 16_000.0 / rate as f64).round() as usize;
                assert_eq!(out.len(), want, "rate {rate}, n {n}");
                assert_eq!(r.output_len(n), want);
            }
        }
    }

    #[test]
    fn passthrough_is_bit_exact() {
        let x = sine(440.0, 16_000, 1_000);
        let mut r = Resampler::new(16_000).unwrap();
        assert_eq!(r.resample(&x).unwrap(), x);
        assert_eq!(resample_to_16k(&x, 16_000).unwrap(), x);
    }

    #[test]
    fn sine_frequency_amplitude_and_phase_are_preserved() {
        // A tone that starts at t = 0 must come out as the same tone sampled
        // at 16 kHz: same amplitude and the same phase (i.e. no delay).
        for rate in [8_000, 22_050, 44_100, 48_000, 96_000] {
            for freq in [300.0, 1_000.0, 3_000.0] {
                let x = sine(freq, rate, rate as usize);
                let y = resample_to_16k(&x, rate).unwrap();
                // Skip the edges, where the filter sees the implicit silence.
                let mid = &y[1_000..15_000];
                let (amp, phase) = tone_fit(mid, 16_000, freq);
                let phase0 = 2.0 * PI * freq * 1_000.0 / 16_000.0;
                let dphase = (phase - phase0.rem_euclid(2.0 * PI) + 3.0 * PI).rem_euclid(2.0 * PI) - PI;
                assert!((amp - 0.5).abs() < 1e-3, "{rate} Hz, {freq} Hz: amp {amp}");
                assert!(dphase.abs() < 1e-3, "{rate} Hz, {freq} Hz: phase off by {dphase}");
                // Residual after removing the tone: distortion + aliasing.
                let expected = sine(freq, 16_000, 16_000);
                let err: Vec<f32> = mid.iter().zip(&expected[1_000..15_000]).map(|(a, b)| a - b).collect();
                assert!(rms(&err) < 1e-3, "{rate} Hz, {freq} Hz: residual rms {}", rms(&err));
            }
        }
    }

    #[test]
    fn content_above_8khz_is_rejected() {
        // 12 kHz at 44.1 kHz would alias to 4 kHz without a proper filter.
        let x = sine(12_000.0, 44_100, 44_100);
        let y = resample_to_16k(&x, 44_100).unwrap();
        let r = rms(&y[1_000..15_000]);
        assert!(r < 0.5 / 2f64.sqrt() * 1e-3, "alias rms {r} (> −60 dB)");
    }

    #[test]
    fn streaming_in_odd_chunks_equals_offline() {
        let x = sine(700.0, 44_100, 50_000);
        let offline = resample_to_16k(&x, 44_100).unwrap();
        let mut r = Resampler::new(44_100).unwrap();
        let mut out = Vec::new();
        let mut rest = &x[..];
        for size in [1, 7, 1_000, 3, 4_410, 20_000].iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
            r.process(chunk, &mut out).unwrap();
            rest = tail;
        }
        r.flush(&mut out).unwrap();
        assert_eq!(out, offline);
        // The resampler is reusable after a flush.
        assert_eq!(r.resample(&x).unwrap(), offline);
    }

    #[test]
    fn rejects_out_of_range_rates() {
        assert_eq!(Resampler::new(0).unwrap_err(), ResampleError::UnsupportedRate(0));
        assert!(Resampler::new(999).is_err());
        assert!(Resampler::new(1_000_000).is_err());
        assert!(Resampler::with_output_rate(44_100, 0).is_err());
    }
}
