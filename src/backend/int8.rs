//! Int8 matrix products for the CPU encoder: `x · Wᵀ` with W quantized per
//! output row and x per input row (both symmetric, as CTranslate2's `int8`
//! compute type does), on AVX-512 VNNI where the CPU has it.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, so a quantized activation
//! `q` is stored as `q + 128` and the sum corrected by `128 · Σ_k W_q`:
//! `Σ_k q·w = Σ_k (q + 128)·w − 128·Σ_k w`. The result is
//! `acc · scale_x[row] · scale_w[col]`. On this project's CI machine (2 cores,
//! AVX-512) the four encoder products of tiny.en ran 3.3–3.5 times as fast
//! as `gemm`'s f32 kernels, quantization of the activations included.

use std::cell::Cell;

use rayon::prelude::*;

/// Output columns per packed panel (4 zmm registers of 16 i32 lanes).
const PANEL: usize = 64;
/// Rows of x per micro-tile.
const MR: usize = 6;
/// Rows of x per parallel task.
const ROW_CHUNK: usize = 48;

/// W (`n × k`, row-major) quantized per output row and packed for the
/// kernel: panels of up to 64 output columns, each `[kpad/4][width][4]`, so
/// that one 64-byte load gives 16 columns × 4 consecutive k.
pub struct QuantizedMatrix {
    n: usize,
    k: usize,
    npad: usize,
    kpad: usize,
    data: Vec<i8>,
    /// Per output column, `npad` long (0 in the padding).
    scale: Vec<f32>,
    /// Per output column, the sum of its i8 weights (the u8 offset's
    /// correction), `npad` long.
    rowsum: Vec<i32>,
}

impl QuantizedMatrix {
    pub fn new(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "W must be n × k");
        let (kpad, npad) = (k.next_multiple_of(4), n.next_multiple_of(16));
        let mut m = QuantizedMatrix {
            n,
            k,
            npad,
            kpad,
            data: vec![0; npad * kpad],
            scale: vec![0.0; npad],
            rowsum: vec![0; npad],
        };
        for (c, row) in w.chunks_exact(k).enumerate() {
            let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            m.scale[c] = amax / 127.0;
            for (kk, &v) in row.iter().enumerate() {
                let q = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
                let at = m.offset(c, kk);
                m.data[at] = q;
                m.rowsum[c] += i32::from(q);
            }
        }
        m
    }

    /// `(rows, cols)` of W: output features, input features.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Index of weight (output `c`, depth `kk`) in the packed layout.
    fn offset(&self, c: usize, kk: usize) -> usize {
        let c0 = c / PANEL * PANEL;
        let width = (self.npad - c0).min(PANEL);
        c0 * self.kpad + (kk / 4) * width * 4 + (c - c0) * 4 + kk % 4
    }
}

/// Whether the AVX-512 VNNI kernel can run on this CPU (checked once).
/// Without it the scalar path is far slower than f32 GEMM: only tests use it.
pub fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *VNNI.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

thread_local! {
    /// Quantized activations and their scales, reused. Taken rather than
    /// borrowed, so that a nested call on a rayon worker only allocates.
    static ACTIVATIONS: Cell<(Vec<u8>, Vec<f32>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// `out[m × n] (=|+=) x · Wᵀ`, rows of x `x_stride` apart; `accumulate`
/// adds to what `out` holds (residual connections).
pub fn linear(x: &[f32], x_stride: usize, m: usize, w: &QuantizedMatrix, accumulate: bool, out: &mut [f32]) {
    assert!(m == 0 || x.len() >= (m - 1) * x_stride + w.k, "x too short");
    assert!(out.len() >= m * w.n, "out too short");
    let (mut xq, mut sx) = ACTIVATIONS.take();
    xq.resize(m * w.kpad, 0);
    sx.resize(m, 0.0);
    quantize(x, x_stride, m, w.k, w.kpad, &mut xq, &mut sx);
    if has_vnni() {
        x86::linear(&xq, &sx, m, w, accumulate, out);
    } else {
        linear_scalar(&xq, &sx, m, w, accumulate, out);
    }
    ACTIVATIONS.set((xq, sx));
}

/// Quantizes `m` rows of `k` values into `xq` (`m × kpad`, as `q + 128`)
/// and their scales into `sx`.
fn quantize(x: &[f32], x_stride: usize, m: usize, k: usize, kpad: usize, xq: &mut [u8], sx: &mut [f32]) {
    let simd = has_vnni();
    xq[..m * kpad].par_chunks_mut(kpad).zip(&mut sx[..m]).enumerate().with_min_len(16).for_each(|(i, (q, s))| {
        let row = &x[i * x_stride..i * x_stride + k];
        *s = if simd {
            // SAFETY: has_vnni() checked avx512f and avx512bw; q.len() = kpad >= k.
            unsafe { x86::quantize_row(row, q) }
        } else {
            quantize_row_scalar(row, q)
        };
    });
}

/// One row's scale; writes `q + 128` for each value, then 128 (a zero) to
/// the end of `q`.
fn quantize_row_scalar(x: &[f32], q: &mut [u8]) -> f32 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for (d, &v) in q.iter_mut().zip(x) {
        *d = ((v * inv).round_ties_even().clamp(-127.0, 127.0) as i32 + 128) as u8;
    }
    q[x.len()..].fill(128);
    amax / 127.0
}

/// The same arithmetic as the VNNI kernel, one product at a time: where the
/// CPU lacks VNNI, and the reference the kernel is tested against.
fn linear_scalar(xq: &[u8], sx: &[f32], m: usize, w: &QuantizedMatrix, accumulate: bool, out: &mut [f32]) {
    let (n, kpad) = (w.n, w.kpad);
    out[..m * n].par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        let xi = &xq[i * kpad..(i + 1) * kpad];
        for (c, y) in row.iter_mut().enumerate() {
            let acc: i32 = (0..kpad).map(|kk| i32::from(xi[kk]) * i32::from(w.data[w.offset(c, kk)])).sum();
            let v = (acc - 128 * w.rowsum[c]) as f32 * (sx[i] * w.scale[c]);
            *y = if accumulate { *y + v } else { v };
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use rayon::prelude::*;

    use super::{QuantizedMatrix, MR, PANEL, ROW_CHUNK};
    use crate::backend::simd::SyncPtr;

    /// [`super::quantize_row_scalar`] in AVX-512, with identical results
    /// (`cvtps2dq` rounds to nearest even under the default MXCSR).
    ///
    /// # Safety
    /// The CPU must support avx512f and avx512bw; `q.len() >= x.len()`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn quantize_row(x: &[f32], q: &mut [u8]) -> f32 {
        assert!(q.len() >= x.len());
        let k = x.len();
        let tail: __mmask16 = (1u16 << (k % 16)) - 1;
        let full = k / 16 * 16;
        let mut vmax = _mm512_setzero_ps();
        // SAFETY: whole chunks read x[i..i + 16] with i + 16 <= k; the last
        // load is masked to the k % 16 values left.
        unsafe {
            for i in (0..full).step_by(16) {
                vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(x.as_ptr().add(i))));
            }
            vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_maskz_loadu_ps(tail, x.as_ptr().add(full))));
        }
        let amax = _mm512_reduce_max_ps(vmax);
        let inv = _mm512_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
        let (lo, hi, offset) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127), _mm512_set1_epi32(128));
        let quant = |v: __m512| {
            let i = _mm512_cvtps_epi32(_mm512_mul_ps(v, inv));
            _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(i, lo), hi), offset)
        };
        // SAFETY: the same bounds for x; the stores write the same lanes of q
        // (q.len() >= k), the last one masked.
        unsafe {
            for i in (0..full).step_by(16) {
                let v = quant(_mm512_loadu_ps(x.as_ptr().add(i)));
                _mm512_mask_cvtepi32_storeu_epi8(q.as_mut_ptr().add(i).cast(), 0xffff, v);
            }
            let v = quant(_mm512_maskz_loadu_ps(tail, x.as_ptr().add(full)));
            _mm512_mask_cvtepi32_storeu_epi8(q.as_mut_ptr().add(full).cast(), tail, v);
        }
        q[k..].fill(128);
        amax / 127.0
    }

    /// One micro-tile: up to [`MR`] rows × one panel of `16·NR` columns.
    struct Tile {
        /// First row of the tile, rows `kpad` bytes apart.
        xq: *const u8,
        kpad: usize,
        /// The first row's scale.
        sx: *const f32,
        /// The panel's weights.
        w: *const i8,
        /// The panel's first column in the `npad`-long column arrays.
        rowsum: *const i32,
        sw: *const f32,
        /// `out[row0][col0]`, rows `n` apart.
        out: *mut f32,
        n: usize,
        /// Columns of this panel inside `n`: 1 ..= 16·NR.
        ncols: usize,
        accumulate: bool,
    }

    /// `R × NR` zmm accumulators of i32, kept in registers over all of k.
    ///
    /// # Safety
    /// avx512f/bw/vnni present; `t` points at R valid rows of xq, sx and out
    /// and at a panel exactly `16·NR` columns wide (rowsum and sw padded to
    /// it; out valid for `t.ncols` columns).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn micro<const R: usize, const NR: usize>(t: &Tile) {
        let mut acc = [[_mm512_setzero_si512(); NR]; R];
        // SAFETY: the panel holds kpad/4 groups of 64·NR bytes; each x row
        // has kpad bytes. All loads are unaligned.
        unsafe {
            let mut w = t.w;
            for kk in 0..t.kpad / 4 {
                let mut wv = [_mm512_setzero_si512(); NR];
                for (j, wv) in wv.iter_mut().enumerate() {
                    *wv = _mm512_loadu_si512(w.add(64 * j).cast());
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xb = _mm512_set1_epi32(t.xq.add(r * t.kpad + 4 * kk).cast::<i32>().read_unaligned());
                    for j in 0..NR {
                        acc[j] = _mm512_dpbusd_epi32(acc[j], xb, wv[j]);
                    }
                }
                w = w.add(64 * NR);
            }
        }
        // SAFETY: rowsum and sw are padded to the panel's width; out is read
        // and written only in the valid columns (masked).
        unsafe {
            for j in 0..NR {
                let cols = t.ncols.saturating_sub(16 * j).min(16);
                if cols == 0 {
                    break;
                }
                let mask: __mmask16 = if cols == 16 { 0xffff } else { (1 << cols) - 1 };
                let correction = _mm512_slli_epi32::<7>(_mm512_loadu_si512(t.rowsum.add(16 * j).cast()));
                let sw = _mm512_loadu_ps(t.sw.add(16 * j));
                for (r, acc) in acc.iter().enumerate() {
                    let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[j], correction));
                    let mut v = _mm512_mul_ps(v, _mm512_mul_ps(_mm512_set1_ps(*t.sx.add(r)), sw));
                    let o = t.out.add(r * t.n + 16 * j);
                    if t.accumulate {
                        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, o));
                    }
                    _mm512_mask_storeu_ps(o, mask, v);
                }
            }
        }
    }

    type Micro = unsafe fn(&Tile);
    macro_rules! widths {
        ($r:literal) => {
            [micro::<$r, 1>, micro::<$r, 2>, micro::<$r, 3>, micro::<$r, 4>]
        };
    }
    /// `MICRO[rows - 1][panel width / 16 - 1]`.
    const MICRO: [[Micro; 4]; MR] = [widths!(1), widths!(2), widths!(3), widths!(4), widths!(5), widths!(6)];

    /// The VNNI path from quantized activations: tasks of [`ROW_CHUNK`]
    /// rows × a range of panels, columns split only when there are too few
    /// row chunks to keep every thread busy.
    pub fn linear(xq: &[u8], sx: &[f32], m: usize, w: &QuantizedMatrix, accumulate: bool, out: &mut [f32]) {
        assert!(super::has_vnni() && xq.len() >= m * w.kpad && sx.len() >= m && out.len() >= m * w.n);
        let (n, kpad, npad) = (w.n, w.kpad, w.npad);
        let panels = npad.div_ceil(PANEL);
        let row_chunks = m.div_ceil(ROW_CHUNK);
        let want = 4 * rayon::current_num_threads();
        let per_task = panels.div_ceil(want.div_ceil(row_chunks.max(1)).min(panels));
        let col_chunks = panels.div_ceil(per_task);
        let out = SyncPtr(out.as_mut_ptr());
        (0..row_chunks * col_chunks).into_par_iter().for_each(move |task| {
            let (rc, cc) = (task / col_chunks, task % col_chunks);
            let (r0, r1) = (rc * ROW_CHUNK, ((rc + 1) * ROW_CHUNK).min(m));
            for p in cc * per_task..((cc + 1) * per_task).min(panels) {
                let c0 = p * PANEL;
                let width = (npad - c0).min(PANEL);
                for r in (r0..r1).step_by(MR) {
                    let rows = (r1 - r).min(MR);
                    // SAFETY: r + rows <= m and c0 < npad, so every pointer is
                    // inside xq, sx, out and the panel (asserted above); the
                    // CPU's features were checked; only this task writes rows
                    // r0..r1 of its panels.
                    unsafe {
                        let t = Tile {
                            xq: xq.as_ptr().add(r * kpad),
                            kpad,
                            sx: sx.as_ptr().add(r),
                            w: w.data.as_ptr().add(c0 * kpad),
                            rowsum: w.rowsum.as_ptr().add(c0),
                            sw: w.scale.as_ptr().add(c0),
                            out: out.get().add(r * n + c0),
                            n,
                            ncols: (n - c0).min(width),
                            accumulate,
                        };
                        MICRO[rows - 1][width / 16 - 1](&t);
                    }
                }
            }
        });
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    //! Never called: `has_vnni()` is false off x86-64.
    use super::QuantizedMatrix;

    pub unsafe fn quantize_row(x: &[f32], q: &mut [u8]) -> f32 {
        super::quantize_row_scalar(x, q)
    }

    pub fn linear(xq: &[u8], sx: &[f32], m: usize, w: &QuantizedMatrix, accumulate: bool, out: &mut [f32]) {
        super::linear_scalar(xq, sx, m, w, accumulate, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) (xorshift).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn quantized(x: &[f32], stride: usize, m: usize, w: &QuantizedMatrix) -> (Vec<u8>, Vec<f32>) {
        let (mut xq, mut sx) = (vec![0; m * w.kpad], vec![0.0; m]);
        for i in 0..m {
            sx[i] = quantize_row_scalar(&x[i * stride..i * stride + w.k], &mut xq[i * w.kpad..(i + 1) * w.kpad]);
        }
        (xq, sx)
    }

    /// The kernel (VNNI where the CPU has it) computes what the scalar path
    /// does, for odd shapes, a strided x and accumulation; and both are
    /// close to the f32 product.
    #[test]
    fn matches_the_scalar_path_and_the_f32_product() {
        for (m, k, n) in [(1, 384, 384), (7, 243, 40), (50, 384, 1152), (97, 1536, 384), (3, 5, 17)] {
            let stride = k + 3;
            let x = values(m * stride, 1);
            let wf = values(n * k, 2);
            let w = QuantizedMatrix::new(&wf, n, k);
            let start = values(m * n, 3);
            let mut fast = start.clone();
            linear(&x, stride, m, &w, true, &mut fast);
            let (xq, sx) = quantized(&x, stride, m, &w);
            let mut slow = start.clone();
            linear_scalar(&xq, &sx, m, &w, true, &mut slow);
            for (a, b) in fast.iter().zip(&slow) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{m}x{k}x{n}: {a} vs {b}");
            }
            let mut err = 0f64;
            let mut norm = 0f64;
            for i in 0..m {
                for c in 0..n {
                    let exact: f32 = (0..k).map(|kk| x[i * stride + kk] * wf[c * k + kk]).sum();
                    err += f64::from(fast[i * n + c] - start[i * n + c] - exact).powi(2);
                    norm += f64::from(exact).powi(2);
                }
            }
            let rel = (err / norm).sqrt();
            assert!(rel < 0.02, "{m}x{k}x{n}: relative error {rel}");
        }
    }

    #[test]
    fn zero_rows_give_zero_and_overwrite_ignores_the_old_output() {
        let (m, k, n) = (8, 64, 32);
        let w = QuantizedMatrix::new(&values(n * k, 4), n, k);
        let mut out = vec![5.0; m * n];
        linear(&vec![0.0; m * k], k, m, &w, false, &mut out);
        assert!(out.iter().all(|&v| v == 0.0), "{out:?}");
    }
}
