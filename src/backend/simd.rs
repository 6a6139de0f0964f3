//! Hand-vectorised inner loops for the CPU backend, chosen at run time:
//! AVX2 + FMA + F16C where the processor has them (the binary itself is
//! built for baseline x86-64, so it runs anywhere), portable code elsewhere.
//!
//! These are the loops of a decoding step, where every weight is read once
//! per token: reading float16 weights and widening them in registers halves
//! the memory traffic that bounds that step.

use std::sync::OnceLock;

use half::f16;

fn has_avx2() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// `out[r] = Σ x[r][i] · w[i]` for up to 8 rows `x` (row stride `stride`)
/// against one weight row `w` (f32).
pub fn dot_rows_f32(x: &[f32], stride: usize, rows: usize, w: &[f32], out: &mut [f32; 8]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the features were detected above.
        unsafe { avx2::dot_rows_f32(x, stride, rows, w, out) };
        return;
    }
    for r in 0..rows {
        out[r] = dot(&x[r * stride..r * stride + w.len()], w);
    }
}

/// As [`dot_rows_f32`] with a float16 weight row.
pub fn dot_rows_f16(x: &[f32], stride: usize, rows: usize, w: &[f16], out: &mut [f32; 8]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the features were detected above.
        unsafe { avx2::dot_rows_f16(x, stride, rows, w, out) };
        return;
    }
    for r in 0..rows {
        let xr = &x[r * stride..r * stride + w.len()];
        out[r] = xr.iter().zip(w).map(|(a, b)| a * b.to_f32()).sum();
    }
}

/// Dot product of two f32 slices of equal length.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        let mut out = [0.0; 8];
        // SAFETY: the features were detected above.
        unsafe { avx2::dot_rows_f32(a, a.len(), 1, b, &mut out) };
        return out[0];
    }
    let n = a.len().min(b.len());
    let mut acc = [0.0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..n {
        s += a[i] * b[i];
    }
    s
}

/// `Σ exp(x[i] − shift)`; −∞ entries contribute nothing.
pub fn exp_sum(x: &[f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the features were detected above.
        return unsafe { avx2::exp_sum(x, shift) };
    }
    x.iter().map(|&v| (v - shift).exp()).sum()
}

/// In-place softmax of one row.
pub fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the features were detected above.
        unsafe { avx2::exp_in_place(row, max) };
        let inv = 1.0 / row.iter().sum::<f32>();
        row.iter_mut().for_each(|v| *v *= inv);
        return;
    }
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// `log Σ exp(x[i])` of a row (−∞ when every entry is −∞).
pub fn log_sum_exp(x: &[f32]) -> f32 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    max + exp_sum(x, max).ln()
}

/// `erf(x)` to within 1.5e-7 (Abramowitz & Stegun 7.1.26): the exact GELU
/// without the cost of a libm `erf` per activation.
#[inline]
pub fn erf(x: f32) -> f32 {
    let s = x.signum();
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let y = 1.0
        - (((((1.061_405_4 * t - 1.453_152_1) * t) + 1.421_413_8) * t - 0.284_496_74) * t + 0.254_829_6)
            * t
            * (-a * a).exp();
    s * y
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::f16;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// exp of 8 lanes (Cephes' single-precision polynomial, ~1 ulp on
    /// [−87, 88]; inputs below are flushed to 0).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let lo = _mm256_set1_ps(-87.3);
        let below = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
        let x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.3));
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_199_9e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_452e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.666_666_5e-1));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
        let r2 = _mm256_mul_ps(r, r);
        p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        let pow2 =
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
        _mm256_andnot_ps(below, _mm256_mul_ps(p, pow2))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_sum(x: &[f32], shift: f32) -> f32 {
        let body = x.len() / 8 * 8;
        let sh = _mm256_set1_ps(shift);
        let mut acc = _mm256_setzero_ps();
        let p = x.as_ptr();
        let mut i = 0;
        while i < body {
            acc = _mm256_add_ps(acc, exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), sh)));
            i += 8;
        }
        let mut s = hsum(acc);
        for &v in &x[body..] {
            s += (v - shift).exp();
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_in_place(x: &mut [f32], shift: f32) {
        let body = x.len() / 8 * 8;
        let sh = _mm256_set1_ps(shift);
        let p = x.as_mut_ptr();
        let mut i = 0;
        while i < body {
            _mm256_storeu_ps(p.add(i), exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), sh)));
            i += 8;
        }
        for v in &mut x[body..] {
            *v = (*v - shift).exp();
        }
    }

    macro_rules! dot_rows {
        ($name:ident, $wty:ty, $load:expr, $scalar:expr) => {
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $name(x: &[f32], stride: usize, rows: usize, w: &[$wty], out: &mut [f32; 8]) {
                let k = w.len();
                let body = k / 8 * 8;
                let mut acc = [_mm256_setzero_ps(); 8];
                let wp = w.as_ptr();
                let xp = x.as_ptr();
                let mut i = 0;
                while i < body {
                    let wv: __m256 = $load(wp.add(i));
                    for r in 0..rows {
                        let xv = _mm256_loadu_ps(xp.add(r * stride + i));
                        acc[r] = _mm256_fmadd_ps(xv, wv, acc[r]);
                    }
                    i += 8;
                }
                for r in 0..rows {
                    let mut s = hsum(acc[r]);
                    for j in body..k {
                        s += *xp.add(r * stride + j) * $scalar(*wp.add(j));
                    }
                    out[r] = s;
                }
            }
        };
    }

    dot_rows!(dot_rows_f32, f32, |p: *const f32| _mm256_loadu_ps(p), |v: f32| v);
    dot_rows!(dot_rows_f16, f16, |p: *const f16| _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)), |v: f16| v
        .to_f32());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_dots_match_scalar() {
        let k = 389; // not a multiple of 8
        let x: Vec<f32> = (0..3 * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let w: Vec<f32> = (0..k).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
        let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let mut o32 = [0.0; 8];
        let mut o16 = [0.0; 8];
        dot_rows_f32(&x, k, 3, &w, &mut o32);
        dot_rows_f16(&x, k, 3, &wh, &mut o16);
        for r in 0..3 {
            let exact: f64 = (0..k).map(|i| x[r * k + i] as f64 * w[i] as f64).sum();
            let exact16: f64 = (0..k).map(|i| x[r * k + i] as f64 * wh[i].to_f32() as f64).sum();
            assert!((o32[r] as f64 - exact).abs() < 1e-4, "{} vs {exact}", o32[r]);
            assert!((o16[r] as f64 - exact16).abs() < 1e-4);
        }
        assert!((dot(&x[..k], &w) - o32[0]).abs() < 1e-5);
    }

    #[test]
    fn vector_exp_matches_libm() {
        let x: Vec<f32> = (0..2000).map(|i| -90.0 + i as f32 * 0.05).chain([f32::NEG_INFINITY]).collect();
        let mut y = x.clone();
        let max = 9.95;
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            unsafe { avx2::exp_in_place(&mut y, max) };
            for (a, b) in x.iter().zip(&y) {
                let e = (a - max).exp();
                assert!((b - e).abs() <= 2e-7 * e + 1e-37, "exp({}) = {b}, want {e}", a - max);
            }
        }
        let direct: f32 = x.iter().map(|&v| (v - max).exp()).sum();
        assert!((exp_sum(&x, max) - direct).abs() < 1e-5 * direct);
        let mut row = vec![1.0, 2.0, f32::NEG_INFINITY, 3.0];
        softmax(&mut row);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6 && row[2] == 0.0);
    }

    #[test]
    fn erf_is_accurate() {
        for i in -400..=400 {
            let x = i as f32 / 100.0;
            assert!((erf(x) - libm::erff(x)).abs() < 3e-7, "erf({x})");
        }
    }
}

/// An output's base address, handed to rayon tasks that each write their
/// own disjoint part of it.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);
// SAFETY: used only to hand disjoint output regions to rayon tasks.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    /// Through a method, so closures capture the whole (Sync) wrapper.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
