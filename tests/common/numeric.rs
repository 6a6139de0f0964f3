//! Reproducible random inputs and element-wise comparison with a stated
//! tolerance, for the tests that hold one backend's numbers to another's
//! (`kernels_cpu.rs`, `cuda_fake.rs`).

use half::f16;

/// xorshift64*: reproducible inputs without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-a, a).
    pub fn uniform(&mut self, a: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
    }

    pub fn vec(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(a)).collect()
    }

    /// Values exactly representable in f16, so f16 and f32 weights agree.
    pub fn vec16(&mut self, n: usize, a: f32) -> Vec<f16> {
        (0..n).map(|_| f16::from_f32(self.uniform(a))).collect()
    }
}

/// Every element of `got` within `tol(i)` of `want`; prints the worst.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: impl Fn(usize) -> f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0.0f32);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(err <= tol(i), "{what}: element {i}: got {g}, want {w} (|err| {err} > tol {})", tol(i));
        if err > worst.1 {
            worst = (i, err);
        }
    }
    eprintln!("{what}: {} values, max |err| {:.3e} at {}", got.len(), worst.1, worst.0);
}
