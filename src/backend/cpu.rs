//! The CPU backend: f32 activations, `gemm` for the large matrix products
//! (encoder, prompts), hand-vectorised dot products for the skinny products
//! of a decoding step, `rayon` for threads.
//!
//! A decoding step multiplies a handful of rows (one per beam) by every weight
//! matrix: that is bound by memory bandwidth, not arithmetic, so the skinny
//! path streams each weight row once and keeps float16 weights as float16
//! until they are in registers.

use std::cell::RefCell;
use std::ops::Range;

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::int8::{self, QuantizedMatrix};
use super::simd::{self, SyncPtr};
use super::{Activation, AttentionShape, Backend, BackendError, HostMatrix, Precision, View, Write};

/// Rows of `x` up to which a linear layer takes the streaming (dot-product)
/// path instead of a blocked GEMM.
const SKINNY_ROWS: usize = 8;

#[derive(Debug, Default, Clone, Copy)]
pub struct Cpu;

pub enum CpuMatrix {
    F32 { rows: usize, cols: usize, data: Vec<f32> },
    F16 { rows: usize, cols: usize, data: Vec<f16> },
    I8(QuantizedMatrix),
}

impl CpuMatrix {
    fn dims(&self) -> (usize, usize) {
        match self {
            CpuMatrix::F32 { rows, cols, .. } | CpuMatrix::F16 { rows, cols, .. } => (*rows, *cols),
            CpuMatrix::I8(q) => q.dims(),
        }
    }

    /// Row `r` widened to f32 into `buf` (or borrowed when already f32).
    fn row_f32<'a>(&'a self, r: usize, buf: &'a mut [f32]) -> &'a [f32] {
        match self {
            CpuMatrix::F32 { cols, data, .. } => &data[r * cols..(r + 1) * cols],
            CpuMatrix::F16 { cols, data, .. } => {
                data[r * cols..(r + 1) * cols].convert_to_f32_slice(&mut buf[..*cols]);
                &buf[..*cols]
            }
            CpuMatrix::I8(_) => unreachable!("tables are not loaded as int8"),
        }
    }
}

pub struct CpuBuf {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
    max_rows: usize,
}

impl CpuBuf {
    pub fn as_slice(&self) -> &[f32] {
        &self.data[..self.rows * self.cols]
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    fn set_rows(&mut self, rows: usize) {
        assert!(rows <= self.max_rows, "buffer of {} rows asked for {rows}", self.max_rows);
        self.rows = rows;
    }
}

thread_local! {
    /// Per-thread scratch (attention scores, widened weights), grown to the
    /// worst case on first use and reused after.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

impl Backend for Cpu {
    type Matrix = CpuMatrix;
    type Vector = Vec<f32>;
    type Buf = CpuBuf;
    /// The CPU has no per-stream resources: buffers are plain vectors.
    type Lane = ();

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn matrix(
        &self,
        rows: usize,
        cols: usize,
        data: HostMatrix<'_>,
        precision: Precision,
    ) -> Result<CpuMatrix, BackendError> {
        // Without VNNI int8 would be slower than f32: keep f32.
        let precision = if precision == Precision::I8 && !int8::has_vnni() { Precision::F32 } else { precision };
        Ok(match (data, precision) {
            (HostMatrix::F32(d), Precision::F32) => CpuMatrix::F32 { rows, cols, data: d.to_vec() },
            (HostMatrix::F16(d), Precision::F32) => CpuMatrix::F32 { rows, cols, data: d.to_f32_vec() },
            (HostMatrix::F16(d), Precision::F16) => CpuMatrix::F16 { rows, cols, data: d.to_vec() },
            (HostMatrix::F32(d), Precision::F16) => {
                CpuMatrix::F16 { rows, cols, data: d.iter().map(|&x| f16::from_f32(x)).collect() }
            }
            (HostMatrix::F32(d), Precision::I8) => CpuMatrix::I8(QuantizedMatrix::new(d, rows, cols)),
            (HostMatrix::F16(d), Precision::I8) => CpuMatrix::I8(QuantizedMatrix::new(&d.to_f32_vec(), rows, cols)),
        })
    }

    fn vector(&self, data: &[f32]) -> Result<Vec<f32>, BackendError> {
        Ok(data.to_vec())
    }

    fn lane(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn buffer(&self, _lane: &(), max_rows: usize, cols: usize) -> Result<CpuBuf, BackendError> {
        Ok(CpuBuf { data: vec![0.0; max_rows * cols], rows: 0, cols, max_rows })
    }

    fn rows(&self, buf: &CpuBuf) -> usize {
        buf.rows
    }

    fn set_rows(&self, buf: &mut CpuBuf, rows: usize) {
        buf.set_rows(rows);
    }

    fn upload(&self, data: &[f32], dst: &mut CpuBuf) -> Result<(), BackendError> {
        let rows = data.len() / dst.cols;
        dst.set_rows(rows);
        dst.data[..data.len()].copy_from_slice(data);
        Ok(())
    }

    fn download(&self, src: &CpuBuf, rows: Range<usize>, out: &mut [f32]) -> Result<(), BackendError> {
        out.copy_from_slice(&src.data[rows.start * src.cols..rows.end * src.cols]);
        Ok(())
    }

    fn linear(
        &self,
        x: View<'_, Self>,
        w: &CpuMatrix,
        b: Option<&Vec<f32>>,
        act: Activation,
        write: Write,
        out: &mut CpuBuf,
    ) -> Result<(), BackendError> {
        let (n, k) = w.dims();
        assert_eq!(x.width, k, "linear: input width {} vs weight in-features {k}", x.width);
        assert_eq!(out.cols, n, "linear: output width {} vs weight out-features {n}", out.cols);
        let m = x.buf.rows;
        out.set_rows(m);
        let xs = &x.buf.data[x.col..];
        let x_stride = x.buf.cols;
        let dst = &mut out.data[..m * n];
        if m <= SKINNY_ROWS && !matches!(w, CpuMatrix::I8(_)) {
            skinny_linear(xs, x_stride, m, w, b, act, write, dst);
            return Ok(());
        }
        match w {
            CpuMatrix::F32 { data, .. } => gemm_xwt(xs, x_stride, m, data, n, k, write, dst),
            CpuMatrix::F16 { data, .. } => with_scratch(n * k, |wide| {
                data.convert_to_f32_slice(wide);
                gemm_xwt(xs, x_stride, m, wide, n, k, write, dst)
            }),
            CpuMatrix::I8(q) => int8::linear(xs, x_stride, m, q, write == Write::Accumulate, dst),
        }
        if b.is_some() || act != Activation::None {
            dst.par_chunks_mut(n).for_each(|row| epilogue(row, b.map(|v| v.as_slice()), act));
        }
        Ok(())
    }

    fn layer_norm(
        &self,
        x: &CpuBuf,
        gamma: &Vec<f32>,
        beta: &Vec<f32>,
        eps: f32,
        out: &mut CpuBuf,
    ) -> Result<(), BackendError> {
        let d = x.cols;
        out.set_rows(x.rows);
        out.data[..x.rows * d].par_chunks_mut(d).zip(x.data[..x.rows * d].par_chunks(d)).for_each(|(o, r)| {
            let mean = r.iter().sum::<f32>() / d as f32;
            let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for i in 0..d {
                o[i] = (r[i] - mean) * inv * gamma[i] + beta[i];
            }
        });
        Ok(())
    }

    fn conv1d_gelu(
        &self,
        x: &CpuBuf,
        w: &CpuMatrix,
        b: &Vec<f32>,
        stride: usize,
        out: &mut CpuBuf,
    ) -> Result<(), BackendError> {
        let (n, k3) = w.dims();
        let c_in = x.cols;
        assert_eq!(k3, 3 * c_in, "conv1d: weight has {k3} columns for {c_in} input channels");
        let t_in = x.rows;
        let t_out = (t_in + 2 - 3) / stride + 1;
        // im2col: row t holds x[t·stride − 1 + j] for j = 0..3, channel-major
        // within the tap (CT2's [out, in, 3] layout flattens as in·3 + tap).
        with_scratch(t_out * k3, |cols| {
            cols.par_chunks_mut(k3).enumerate().for_each(|(t, row)| {
                for c in 0..c_in {
                    for j in 0..3 {
                        let src = (t * stride + j) as isize - 1;
                        row[c * 3 + j] =
                            if src >= 0 && (src as usize) < t_in { x.data[src as usize * c_in + c] } else { 0.0 };
                    }
                }
            });
            out.set_rows(t_out);
            let dst = &mut out.data[..t_out * n];
            match w {
                CpuMatrix::F32 { data, .. } => gemm_xwt(cols, k3, t_out, data, n, k3, Write::Overwrite, dst),
                CpuMatrix::F16 { .. } | CpuMatrix::I8(_) => unreachable!("convolution weights are loaded as f32"),
            }
        });
        out.data[..t_out * n].par_chunks_mut(n).for_each(|row| epilogue(row, Some(b), Activation::Gelu));
        Ok(())
    }

    fn add_rows(&self, x: &mut CpuBuf, table: &CpuMatrix, offset: usize) -> Result<(), BackendError> {
        let d = x.cols;
        let rows = x.rows;
        x.data[..rows * d].par_chunks_mut(d).enumerate().for_each(|(i, r)| {
            with_scratch(d, |buf| {
                let t = table.row_f32(offset + i, buf);
                r.iter_mut().zip(t).for_each(|(a, b)| *a += b);
            })
        });
        Ok(())
    }

    fn embed(
        &self,
        tokens: &[u32],
        seq_len: usize,
        pos0: usize,
        embeddings: &CpuMatrix,
        positions: &CpuMatrix,
        out: &mut CpuBuf,
    ) -> Result<(), BackendError> {
        let d = out.cols;
        out.set_rows(tokens.len());
        for (i, (&t, r)) in tokens.iter().zip(out.data.chunks_mut(d)).enumerate() {
            with_scratch(2 * d, |buf| {
                let (b1, b2) = buf.split_at_mut(d);
                let e = embeddings.row_f32(t as usize, b1);
                let p = positions.row_f32(pos0 + i % seq_len, b2);
                for j in 0..d {
                    r[j] = e[j] + p[j];
                }
            });
        }
        Ok(())
    }

    /// One rayon task per (sequence, head), each with its own scores in the
    /// thread's scratch: no allocation, and no task writes where another does.
    fn attention(
        &self,
        q: View<'_, Self>,
        k: View<'_, Self>,
        v: View<'_, Self>,
        s: AttentionShape,
        out: &mut CpuBuf,
        probs: Option<(&mut CpuBuf, &[usize])>,
    ) -> Result<(), BackendError> {
        let d = q.width;
        let hd = d / s.heads;
        let scale = 1.0 / (hd as f32).sqrt();
        out.set_rows(s.seqs * s.q_len);
        assert_eq!(out.cols, d);
        let out_ptr = SyncPtr(out.data.as_mut_ptr());
        let (probs_ptr, probs_heads) = match probs {
            Some((p, heads)) => {
                assert_eq!(s.seqs, 1, "attention weights are returned for one sequence");
                p.set_rows(heads.len() * s.q_len);
                (Some(SyncPtr(p.data.as_mut_ptr())), heads)
            }
            None => (None, &[][..]),
        };
        if s.q_len == 1 && s.kv_seq_stride == 0 && s.seqs > 1 && s.seqs <= 8 && probs_ptr.is_none() {
            shared_kv_step(q, k, v, s, out);
            return Ok(());
        }
        (0..s.seqs * s.heads).into_par_iter().for_each(|task| {
            let (seq, h) = (task / s.heads, task % s.heads);
            let q0 = seq * s.q_len;
            let kv0 = seq * s.kv_seq_stride;
            let head = HeadTask {
                qs: &q.buf.data[q0 * q.buf.cols + q.col + h * hd..],
                q_stride: q.buf.cols,
                ks: &k.buf.data[kv0 * k.buf.cols + k.col + h * hd..],
                k_stride: k.buf.cols,
                vs: &v.buf.data[kv0 * v.buf.cols + v.col + h * hd..],
                v_stride: v.buf.cols,
                hd,
                scale,
                s,
            };
            with_scratch(s.q_len * s.kv_len, |scores| {
                head.scores(scores);
                head.softmax(scores);
                if let Some(pp) = probs_ptr {
                    if let Some(slot) = probs_heads.iter().position(|&ph| ph == h) {
                        // SAFETY: each (head) task writes its own disjoint band of rows.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(pp.get().add(slot * s.q_len * s.kv_len), s.q_len * s.kv_len)
                        };
                        dst.copy_from_slice(scores);
                    }
                }
                // out = p · v, written into this head's columns of this sequence's rows.
                // SAFETY: rows of this sequence × columns of this head are disjoint across tasks.
                unsafe { head.output(scores, out_ptr.get().add(q0 * d + h * hd), d) };
            });
        });
        Ok(())
    }

    fn copy_rows(
        &self,
        src: View<'_, Self>,
        src_rows: &[usize],
        dst: &mut CpuBuf,
        dst_rows: &[usize],
    ) -> Result<(), BackendError> {
        assert_eq!(src.width, dst.cols);
        let w = src.width;
        let needed = dst_rows.iter().map(|r| r + 1).max().unwrap_or(0);
        if needed > dst.rows {
            dst.set_rows(needed);
        }
        for (&s, &t) in src_rows.iter().zip(dst_rows) {
            let from = s * src.buf.cols + src.col;
            dst.data[t * w..(t + 1) * w].copy_from_slice(&src.buf.data[from..from + w]);
        }
        Ok(())
    }
}

/// One (sequence, head) of [`Cpu::attention`]: its Q, K and V start at the
/// head's first column, rows `*_stride` apart. A prompt (16 queries or
/// more) goes through `gemm`; a decoding step's few rows through dot
/// products, which skip gemm's packing.
struct HeadTask<'a> {
    qs: &'a [f32],
    q_stride: usize,
    ks: &'a [f32],
    k_stride: usize,
    vs: &'a [f32],
    v_stride: usize,
    hd: usize,
    scale: f32,
    s: AttentionShape,
}

impl HeadTask<'_> {
    /// scores = q · kᵀ · scale, `q_len × kv_len`.
    fn scores(&self, scores: &mut [f32]) {
        let (s, hd) = (self.s, self.hd);
        if s.q_len >= 16 {
            unsafe {
                gemm::gemm(
                    s.q_len,
                    s.kv_len,
                    hd,
                    scores.as_mut_ptr(),
                    1,
                    s.kv_len as isize,
                    false,
                    self.qs.as_ptr(),
                    1,
                    self.q_stride as isize,
                    self.ks.as_ptr(),
                    self.k_stride as isize,
                    1,
                    0.0,
                    self.scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        } else {
            for i in 0..s.q_len {
                let qi = &self.qs[i * self.q_stride..i * self.q_stride + hd];
                for j in 0..s.kv_len {
                    scores[i * s.kv_len + j] =
                        dot(qi, &self.ks[j * self.k_stride..j * self.k_stride + hd]) * self.scale;
                }
            }
        }
    }

    /// Softmax of each query's row over the keys it may see; the keys a
    /// causal query may not see get exactly 0 (weightless in `output`).
    fn softmax(&self, scores: &mut [f32]) {
        let s = self.s;
        for i in 0..s.q_len {
            let row = &mut scores[i * s.kv_len..(i + 1) * s.kv_len];
            let visible = if s.causal { s.kv_len - s.q_len + i + 1 } else { s.kv_len };
            softmax(&mut row[..visible]);
            row[visible..].iter_mut().for_each(|x| *x = 0.0);
        }
    }

    /// out = p · v into `o`: `q_len` rows of `hd` values, `d` apart.
    ///
    /// # Safety
    /// `o` must point at this task's first output value, with `q_len` rows
    /// of `hd` values, `d` apart, that no other task reads or writes.
    unsafe fn output(&self, scores: &[f32], o: *mut f32, d: usize) {
        let (s, hd) = (self.s, self.hd);
        if s.q_len >= 16 {
            unsafe {
                gemm::gemm(
                    s.q_len,
                    hd,
                    s.kv_len,
                    o,
                    1,
                    d as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    s.kv_len as isize,
                    self.vs.as_ptr(),
                    1,
                    self.v_stride as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        } else {
            for i in 0..s.q_len {
                // SAFETY: row i of this task's output (the caller's contract).
                let oi = unsafe { std::slice::from_raw_parts_mut(o.add(i * d), hd) };
                oi.iter_mut().for_each(|x| *x = 0.0);
                let p = &scores[i * s.kv_len..(i + 1) * s.kv_len];
                for (j, &pj) in p.iter().enumerate() {
                    if pj != 0.0 {
                        axpy(pj, &self.vs[j * self.v_stride..j * self.v_stride + hd], oi);
                    }
                }
            }
        }
    }
}

/// One decoding step of several sequences (beams) against one shared K/V
/// (cross-attention): every key and value row is read once for all of them.
fn shared_kv_step(q: View<'_, Cpu>, k: View<'_, Cpu>, v: View<'_, Cpu>, s: AttentionShape, out: &mut CpuBuf) {
    let d = q.width;
    let hd = d / s.heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let n = s.seqs;
    let out_ptr = SyncPtr(out.data.as_mut_ptr());
    (0..s.heads).into_par_iter().for_each(|h| {
        with_scratch(n * s.kv_len + n * hd, |buf| {
            let (scores, acc) = buf.split_at_mut(n * s.kv_len);
            let qs = &q.buf.data[q.col + h * hd..];
            let mut ys = [0.0f32; 8];
            for j in 0..s.kv_len {
                let kr = &k.buf.data[j * k.buf.cols + k.col + h * hd..][..hd];
                simd::dot_rows_f32(qs, q.buf.cols, n, kr, &mut ys);
                for r in 0..n {
                    scores[r * s.kv_len + j] = ys[r] * scale;
                }
            }
            for r in 0..n {
                softmax(&mut scores[r * s.kv_len..(r + 1) * s.kv_len]);
            }
            acc.iter_mut().for_each(|x| *x = 0.0);
            for j in 0..s.kv_len {
                let vr = &v.buf.data[j * v.buf.cols + v.col + h * hd..][..hd];
                for r in 0..n {
                    axpy(scores[r * s.kv_len + j], vr, &mut acc[r * hd..(r + 1) * hd]);
                }
            }
            for r in 0..n {
                // SAFETY: row r × this head's columns belong to this task only.
                let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(r * d + h * hd), hd) };
                o.copy_from_slice(&acc[r * hd..(r + 1) * hd]);
            }
        });
    });
}

/// `dst (=|+=) x · Wᵀ` with W `[n, k]` row-major.
#[allow(clippy::too_many_arguments)]
fn gemm_xwt(x: &[f32], x_stride: usize, m: usize, w: &[f32], n: usize, k: usize, write: Write, dst: &mut [f32]) {
    let read = write == Write::Accumulate;
    // SAFETY: shapes and strides are checked by the callers; dst has m·n elements.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            read,
            x.as_ptr(),
            1,
            x_stride as isize,
            w.as_ptr(),
            k as isize,
            1,
            if read { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

/// Linear layer for a few rows: each weight row is read once and dotted with
/// every input row; the work is split over output features.
#[allow(clippy::too_many_arguments)]
fn skinny_linear(
    x: &[f32],
    x_stride: usize,
    m: usize,
    w: &CpuMatrix,
    b: Option<&Vec<f32>>,
    act: Activation,
    write: Write,
    dst: &mut [f32],
) {
    let (n, k) = w.dims();
    const CHUNK: usize = 64;
    let dst_ptr = SyncPtr(dst.as_mut_ptr());
    (0..n.div_ceil(CHUNK)).into_par_iter().for_each(|c| {
        let mut ys = [0.0f32; 8];
        for o in c * CHUNK..((c + 1) * CHUNK).min(n) {
            match w {
                CpuMatrix::F32 { data, .. } => simd::dot_rows_f32(x, x_stride, m, &data[o * k..(o + 1) * k], &mut ys),
                CpuMatrix::F16 { data, .. } => simd::dot_rows_f16(x, x_stride, m, &data[o * k..(o + 1) * k], &mut ys),
                CpuMatrix::I8(_) => unreachable!("int8 products take int8::linear"),
            }
            for (r, &y) in ys.iter().enumerate().take(m) {
                let mut y = y + b.map_or(0.0, |b| b[o]);
                if act == Activation::Gelu {
                    y = gelu(y);
                }
                // SAFETY: output column o belongs to this task only.
                unsafe {
                    let p = dst_ptr.get().add(r * n + o);
                    *p = if write == Write::Accumulate { *p + y } else { y };
                }
            }
        }
    });
}

fn epilogue(row: &mut [f32], b: Option<&[f32]>, act: Activation) {
    if let Some(b) = b {
        row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
    }
    if act == Activation::Gelu {
        row.iter_mut().for_each(|y| *y = gelu(*y));
    }
}

#[inline]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + simd::erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

use simd::dot;

#[inline]
fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += alpha * x);
}

use simd::softmax;

#[cfg(test)]
mod tests {
    use super::*;

    /// Int8 weights give the f32 layer's output within the quantization's
    /// error, through the backend: a band of a wider input, bias, GELU and
    /// the residual write, a decoding step's few rows and an encoder's many.
    #[test]
    fn int8_weights_follow_the_f32_layer() {
        let (k, n, x_cols, col) = (96, 80, 200, 40);
        let wave =
            |len: usize, f: f32| -> Vec<f32> { (0..len).map(|i| ((i as f32 * f).sin() * 1.7).fract()).collect() };
        let w = wave(n * k, 0.37);
        let bias = wave(n, 1.3);
        let (exact, int8) = (
            Cpu.matrix(n, k, HostMatrix::F32(&w), Precision::F32).unwrap(),
            Cpu.matrix(n, k, HostMatrix::F32(&w), Precision::I8).unwrap(),
        );
        for m in [3, 37] {
            let mut x = Cpu.buffer(&(), m, x_cols).unwrap();
            Cpu.upload(&wave(m * x_cols, 0.11), &mut x).unwrap();
            for (act, write) in [(Activation::None, Write::Accumulate), (Activation::Gelu, Write::Overwrite)] {
                let run = |wm: &CpuMatrix| {
                    let mut out = Cpu.buffer(&(), m, n).unwrap();
                    Cpu.upload(&wave(m * n, 0.5), &mut out).unwrap();
                    Cpu.linear(View::cols(&x, col, k), wm, Some(&bias), act, write, &mut out).unwrap();
                    out.as_slice().to_vec()
                };
                let (want, got) = (run(&exact), run(&int8));
                let err = want.iter().zip(&got).map(|(a, b)| (a - b).powi(2)).sum::<f32>().sqrt();
                let norm = want.iter().map(|a| a * a).sum::<f32>().sqrt();
                assert!(err < 0.02 * norm, "m {m}, {act:?}, {write:?}: error {err} against norm {norm}");
            }
        }
    }
}
