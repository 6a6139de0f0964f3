//! Whisper's log-mel spectrogram, computed exactly as faster-whisper 1.2.1
//! computes it (doc §6, `ct2_reference.py::log_mel`).
//!
//! The pipeline: append 160 zero samples, centred STFT (reflect padding,
//! `n_fft` 400, hop 160, periodic Hann window), drop the last frame, power
//! spectrum, Slaney mel filters, `log10(max(x, 1e-10))`, clamp below at
//! (global max − 8), then `(x + 4) / 4`. A signal of `n` samples yields
//! `n / 160 + 1` frames; faster-whisper treats only the first `n / 160` as
//! content, and that choice is left to the caller.
//!
//! Output is time-major (`data[t * n_mels + m]`) because the encoder's conv
//! stem reads one frame's bins contiguously.

use std::sync::Arc;

use rayon::prelude::*;
use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

use super::SAMPLE_RATE;

/// STFT size (25 ms at 16 kHz).
pub const N_FFT: usize = 400;
/// STFT hop (10 ms at 16 kHz): one mel frame per 160 samples.
pub const HOP_LENGTH: usize = 160;
/// Number of one-sided spectrum bins.
pub const N_FREQS: usize = N_FFT / 2 + 1;

/// Power below this is treated as this (log10 = −10), as in Whisper.
const POWER_FLOOR: f64 = 1e-10;
/// Dynamic range kept by [`MelFrontend::log_mel`], in log10 units (80 dB).
pub const DYNAMIC_RANGE: f32 = 8.0;

/// Below this many frames, rayon's fork/join costs more than it saves.
const MIN_FRAMES_PER_TASK: usize = 64;

/// Errors from building a [`MelFrontend`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MelError {
    /// The model asked for a filterbank size we cannot build.
    #[error("unsupported number of mel bins {0} (expected 1..={max})", max = MAX_MELS)]
    UnsupportedMelCount(usize),
}

/// More mel bands than spectrum bins would leave most filters empty: no
/// Whisper model comes close (80 or 128), so anything above is a config bug.
const MAX_MELS: usize = N_FREQS;

/// A log-mel spectrogram, time-major: `data[t * n_mels + m]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mel {
    /// Mel bins per frame.
    pub n_mels: usize,
    /// Number of frames (`samples / 160 + 1`).
    pub frames: usize,
    /// `frames * n_mels` values, frame after frame.
    pub data: Vec<f32>,
}

impl Mel {
    /// The `n_mels` values of frame `t`.
    ///
    /// # Panics
    /// If `t >= self.frames`, like slice indexing.
    pub fn frame(&self, t: usize) -> &[f32] {
        &self.data[t * self.n_mels..(t + 1) * self.n_mels]
    }

    /// Value at frame `t`, mel bin `m`, or `None` when out of range.
    pub fn get(&self, t: usize, m: usize) -> Option<f32> {
        if t < self.frames && m < self.n_mels {
            self.data.get(t * self.n_mels + m).copied()
        } else {
            None
        }
    }

    /// Largest value (`-inf` for an empty spectrogram).
    pub fn max(&self) -> f32 {
        self.data.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }

    /// Turns raw log10 mel power (from [`MelFrontend::log10_mel`]) into
    /// Whisper features: clamp below at `floor`, then `(x + 4) / 4`.
    pub fn normalize(&mut self, floor: f32) {
        normalize_log10(&mut self.data, floor);
    }
}

/// Whisper's normalisation of log10 mel power, in place: clamp below at
/// `floor`, then `(x + 4) / 4`.
pub fn normalize_log10(values: &mut [f32], floor: f32) {
    for v in values {
        *v = (v.max(floor) + 4.0) / 4.0;
    }
}

/// One mel filter, stored sparsely: Slaney triangles cover a handful of
/// the 201 bins, so a dense 80×201 product would be ~95 % multiplications
/// by zero.
#[derive(Debug, Clone)]
struct Filter {
    first_bin: usize,
    weights: Vec<f64>,
}

/// Everything that does not depend on the audio: the window, the mel
/// filterbank and the FFT plan. Build once per model and share (`Sync`).
#[derive(Clone)]
pub struct MelFrontend {
    n_mels: usize,
    window: Vec<f64>,
    filters: Vec<Filter>,
    fft: Arc<dyn RealToComplex<f64>>,
}

impl std::fmt::Debug for MelFrontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MelFrontend").field("n_mels", &self.n_mels).finish_non_exhaustive()
    }
}

impl MelFrontend {
    /// Builds the front end for `n_mels` bins (80 for most Whisper models,
    /// 128 for large-v3).
    pub fn new(n_mels: usize) -> Result<Self, MelError> {
        if n_mels == 0 || n_mels > MAX_MELS {
            return Err(MelError::UnsupportedMelCount(n_mels));
        }
        let window =
            (0..N_FFT).map(|n| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos()).collect();
        let filters = slaney_filters(n_mels, SAMPLE_RATE as f64, N_FFT)
            .into_iter()
            .map(|row| {
                let first = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w != 0.0).map_or(first, |l| l + 1);
                Filter { first_bin: first, weights: row[first..last].to_vec() }
            })
            .collect();
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT);
        Ok(Self { n_mels, window, filters, fft })
    }

    /// Mel bins per frame.
    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// The filterbank as a dense `[n_mels][201]` matrix (row-major), for
    /// inspection and tests.
    pub fn filterbank(&self) -> Vec<f64> {
        let mut dense = vec![0.0; self.n_mels * N_FREQS];
        for (m, f) in self.filters.iter().enumerate() {
            let row = &mut dense[m * N_FREQS..(m + 1) * N_FREQS];
            row[f.first_bin..f.first_bin + f.weights.len()].copy_from_slice(&f.weights);
        }
        dense
    }

    /// Whisper's input features for a whole signal (16 kHz mono), matching
    /// faster-whisper: the clamp floor is the maximum over *all* frames
    /// minus 8, so call this on the whole file, not per 30 s window.
    pub fn log_mel(&self, samples: &[f32]) -> Mel {
        let mut mel = self.log10_mel(samples);
        let floor = mel.max() - DYNAMIC_RANGE;
        mel.normalize(floor);
        mel
    }

    /// Like [`log_mel`](Self::log_mel) but with a caller-chosen clamp floor
    /// (log10 units), for streaming where the file-wide maximum is not
    /// known yet and a running maximum (or a fixed floor) stands in for it.
    pub fn log_mel_with_floor(&self, samples: &[f32], floor: f32) -> Mel {
        let mut mel = self.log10_mel(samples);
        mel.normalize(floor);
        mel
    }

    /// Un-normalised `log10(max(mel_power, 1e-10))`, same framing as
    /// [`log_mel`](Self::log_mel) (160 zeros appended, `n / 160 + 1`
    /// frames). Finish with [`Mel::normalize`].
    pub fn log10_mel(&self, samples: &[f32]) -> Mel {
        let frames = samples.len() / HOP_LENGTH + 1;
        let mut data = vec![0.0f32; frames * self.n_mels];
        let fft = &self.fft;
        data.par_chunks_mut(self.n_mels).with_min_len(MIN_FRAMES_PER_TASK).enumerate().for_each_init(
            || (fft.make_input_vec(), fft.make_output_vec(), fft.make_scratch_vec()),
            |(input, spectrum, scratch), (t, out)| {
                self.frame_log10(samples, t, input, spectrum, scratch, out);
            },
        );
        Mel { n_mels: self.n_mels, frames, data }
    }

    /// One STFT frame → log10 mel power, all in f64: near the −8 floor
    /// the bins are 1e-8 of the peak, where f32 FFT rounding would show up
    /// in the 4th decimal of the features.
    fn frame_log10(
        &self,
        samples: &[f32],
        t: usize,
        input: &mut [f64],
        spectrum: &mut [Complex<f64>],
        scratch: &mut [Complex<f64>],
        out: &mut [f32],
    ) {
        fill_frame(samples, t, &self.window, input);
        // Buffers come from this plan's make_*_vec, so lengths always match.
        self.fft.process_with_scratch(input, spectrum, scratch).expect("FFT buffers are sized by the plan");
        for (o, f) in out.iter_mut().zip(&self.filters) {
            let bins = &spectrum[f.first_bin..f.first_bin + f.weights.len()];
            let power: f64 = bins.iter().zip(&f.weights).map(|(c, w)| w * c.norm_sqr()).sum();
            *o = power.max(POWER_FLOOR).log10() as f32;
        }
    }
}

/// Writes frame `t` of the centred, reflect-padded, zero-extended signal,
/// windowed, into `buf`.
///
/// The signal seen by the STFT is `samples ++ [0; 160]` (length `L`),
/// reflect-padded by 200 on both sides; frame `t` covers positions
/// `t*160 - 200 .. t*160 + 200` of the unpadded signal.
fn fill_frame(samples: &[f32], t: usize, window: &[f64], buf: &mut [f64]) {
    let n = samples.len();
    let len = n + HOP_LENGTH;
    let start = (t * HOP_LENGTH) as isize - (N_FFT / 2) as isize;
    if start >= 0 && start as usize + N_FFT <= n {
        // Interior frame: no padding involved, skip the index arithmetic.
        let src = &samples[start as usize..start as usize + N_FFT];
        for ((b, &s), &w) in buf.iter_mut().zip(src).zip(window) {
            *b = s as f64 * w;
        }
        return;
    }
    // numpy's "reflect" pads repeatedly when the pad exceeds the signal
    // (inputs shorter than 200 samples), which is a periodic reflection
    // with period 2(L−1). L ≥ 160 here, so the period is never zero.
    let period = 2 * (len as isize - 1);
    for (k, (b, &w)) in buf.iter_mut().zip(window).enumerate() {
        let mut i = (start + k as isize).rem_euclid(period);
        if i >= len as isize {
            i = period - i;
        }
        let s = samples.get(i as usize).copied().unwrap_or(0.0);
        *b = s as f64 * w;
    }
}

/// Slaney-style mel filterbank (librosa `htk=False, norm="slaney"`),
/// `[n_mels][n_fft/2 + 1]`, following `ct2_reference.py::mel_filterbank`
/// operation for operation.
fn slaney_filters(n_mels: usize, sr: f64, n_fft: usize) -> Vec<Vec<f64>> {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    let hz_to_mel = |f: f64| {
        if f < MIN_LOG_HZ {
            f / F_SP
        } else {
            min_log_mel + (f / MIN_LOG_HZ).ln() / logstep
        }
    };
    let mel_to_hz = |m: f64| {
        if m < min_log_mel {
            F_SP * m
        } else {
            MIN_LOG_HZ * (logstep * (m - min_log_mel)).exp()
        }
    };

    let n_freqs = n_fft / 2 + 1;
    let fft_freqs: Vec<f64> = linspace(0.0, sr / 2.0, n_freqs);
    let freqs: Vec<f64> = linspace(0.0, hz_to_mel(sr / 2.0), n_mels + 2).into_iter().map(mel_to_hz).collect();

    (0..n_mels)
        .map(|i| {
            let (lo, mid, hi) = (freqs[i], freqs[i + 1], freqs[i + 2]);
            let enorm = 2.0 / (hi - lo);
            fft_freqs
                .iter()
                .map(|&f| {
                    let lower = (f - lo) / (mid - lo);
                    let upper = (hi - f) / (hi - mid);
                    0.0f64.max(lower.min(upper)) * enorm
                })
                .collect()
        })
        .collect()
}

/// `numpy.linspace(start, stop, num)` (endpoint included, last point exact).
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| start + i as f64 * step).collect();
    if let Some(last) = v.last_mut() {
        *last = stop;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, n: usize, amp: f64) -> Vec<f32> {
        (0..n)
            .map(|i| (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / SAMPLE_RATE as f64).sin()) as f32)
            .collect()
    }

    #[test]
    fn filterbank_shape_and_slaney_normalisation() {
        for n_mels in [80, 128] {
            let fe = MelFrontend::new(n_mels).unwrap();
            let fb = fe.filterbank();
            assert_eq!(fb.len(), n_mels * N_FREQS);
            for m in 0..n_mels {
                let row = &fb[m * N_FREQS..(m + 1) * N_FREQS];
                assert!(row.iter().all(|&w| w >= 0.0));
                assert!(row.iter().any(|&w| w > 0.0), "filter {m} of {n_mels} is empty");
                // Triangles are unimodal: weights rise then fall.
                let peak = row.iter().enumerate().fold((0, 0.0), |a, (i, &w)| if w > a.1 { (i, w) } else { a }).0;
                assert!(row[..=peak].windows(2).all(|w| w[0] <= w[1]));
                assert!(row[peak..].windows(2).all(|w| w[0] >= w[1]));
            }
            // Slaney norm: area of each triangle (in Hz) is 1, so the sum of
            // weights × 40 Hz bin spacing is ≈ 1 for filters wider than a bin.
            let last = &fb[(n_mels - 1) * N_FREQS..];
            let area: f64 = last.iter().sum::<f64>() * 40.0;
            assert!((area - 1.0).abs() < 0.05, "area {area}");
            // Peaks move up in frequency.
            let peak_bins: Vec<usize> = (0..n_mels)
                .map(|m| {
                    let row = &fb[m * N_FREQS..(m + 1) * N_FREQS];
                    (0..N_FREQS).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap()
                })
                .collect();
            assert!(peak_bins.windows(2).all(|w| w[0] <= w[1]));
        }
    }

    #[test]
    fn filterbank_matches_reference_values() {
        // Values of ct2_reference.py::mel_filterbank (float64, librosa's
        // formula), not of our own output.
        let check = |n_mels: usize, spots: &[(usize, usize, f64)]| {
            let fb = MelFrontend::new(n_mels).unwrap().filterbank();
            for &(m, k, want) in spots {
                let got = fb[m * N_FREQS + k];
                assert!((got - want).abs() < 1e-15, "{n_mels} mels [{m},{k}]: {got} vs {want}");
            }
        };
        check(
            80,
            &[
                (0, 1, 0.024862593984176087),
                (10, 10, 0.019908218880980696),
                (26, 25, 0.022114217267094387),
                (40, 60, 0.0),
                (79, 195, 0.0022437951379453607),
            ],
        );
        check(128, &[(0, 1, 0.012373986332636965), (127, 199, 0.001114280198753211)]);
    }

    #[test]
    fn rejects_bad_mel_counts() {
        assert_eq!(MelFrontend::new(0).unwrap_err(), MelError::UnsupportedMelCount(0));
        assert!(MelFrontend::new(1000).is_err());
    }

    #[test]
    fn frame_count_is_len_over_hop_plus_one() {
        let fe = MelFrontend::new(80).unwrap();
        for n in [0, 1, 159, 160, 199, 200, 201, 399, 400, 401, 16_000, 176_000] {
            let mel = fe.log_mel(&vec![0.1; n]);
            assert_eq!(mel.frames, n / 160 + 1, "n = {n}");
            assert_eq!(mel.data.len(), mel.frames * 80);
            assert!(mel.data.iter().all(|v| v.is_finite()), "n = {n}");
        }
    }

    #[test]
    fn empty_and_silent_input_give_floor_value() {
        let fe = MelFrontend::new(80).unwrap();
        // All-zero power → log10(1e-10) = −10 everywhere → (−10 + 4) / 4.
        for n in [0, 1, 50, 3_200] {
            let mel = fe.log_mel(&vec![0.0; n]);
            assert!(mel.data.iter().all(|&v| v == -1.5), "n = {n}");
        }
    }

    #[test]
    fn short_input_uses_repeated_reflection() {
        // len 3 → L = 163 after the 160 zeros; the 200-sample pad is longer
        // than the signal, so numpy reflects more than once (period 324).
        let x = [0.5, -0.25, 0.75];
        let mut frame = vec![0.0; N_FFT];
        fill_frame(&x, 0, &[1.0; N_FFT], &mut frame);
        // Frame position k is signal index k − 200.
        assert_eq!(&frame[200..203], &[0.5, -0.25, 0.75]);
        // Reflection excludes the edge sample: index −1 ↦ 1, −2 ↦ 2.
        assert_eq!(frame[199], -0.25);
        assert_eq!(frame[198], 0.75);
        // Index −200 ↦ 124 (beyond the 3 samples: appended zero).
        assert_eq!(frame[0], 0.0);
        // Index 199 lies past L − 1 = 162: reflects back to 2·162 − 199 = 125.
        assert_eq!(frame[399], 0.0);

        let fe = MelFrontend::new(80).unwrap();
        let mel = fe.log10_mel(&x);
        assert_eq!(mel.frames, 1);
        assert!(mel.max() > -10.0);
    }

    #[test]
    fn sine_peaks_in_the_right_mel_bin() {
        let fe = MelFrontend::new(80).unwrap();
        let fb = fe.filterbank();
        let mel = fe.log_mel(&sine(1000.0, 16_000, 0.5));
        // 1 kHz is FFT bin 25 (40 Hz spacing); the expected bin is the filter
        // with the largest weight there.
        let expected = (0..80).max_by(|&a, &b| fb[a * N_FREQS + 25].total_cmp(&fb[b * N_FREQS + 25])).unwrap();
        let frame = mel.frame(50);
        let got = (0..80).max_by(|&a, &b| frame[a].total_cmp(&frame[b])).unwrap();
        assert_eq!(got, expected);
        // Slaney: 1 kHz = mel 15; bins are 45.2456/81 mel apart → centre of
        // filter 26 (mel 15.08) is the nearest.
        assert_eq!(got, 26);
        // Whole-file max is exactly the normalised peak, far-off bins clamp.
        assert!((mel.max() - frame[got]).abs() < 1e-3);
        assert!((frame[79] - (mel.max() - 2.0)).abs() < 1e-6);
    }

    #[test]
    fn floor_variant_matches_log_mel_with_global_floor() {
        let fe = MelFrontend::new(80).unwrap();
        let x = sine(440.0, 8_000, 0.3);
        let raw = fe.log10_mel(&x);
        let a = fe.log_mel(&x);
        let b = fe.log_mel_with_floor(&x, raw.max() - 8.0);
        assert_eq!(a, b);
    }
}
