//! Compute backends behind one small interface.
//!
//! The Whisper graph (`model::encoder`, `model::decoder`) is written once
//! against [`Backend`]; a backend owns where tensors live and how the dozen
//! primitive operations run. All activation buffers are created by the model's
//! `State` once, at their worst-case size, so that steady-state decoding
//! allocates no device memory — on a GPU that is what lets every session's
//! memory come from one arena. (Host-side bookkeeping still allocates small
//! vectors: the CUDA backend's row gather copies its index lists, and beam
//! search builds its candidate lists at every step.)
//!
//! Conventions shared by every operation:
//! - activations are f32, row-major `[rows, cols]`, one row per time step or
//!   token; an operation sets its output's row count;
//! - weight matrices are `[out, in]` (PyTorch `nn.Linear` layout), so a
//!   linear layer computes `y = x · Wᵀ + b`;
//! - a [`View`] selects a contiguous band of columns of a buffer, which is how
//!   fused Q/K/V projections are split without copies;
//! - every operation that touches a buffer returns `Result`: a device error
//!   (possibly from earlier, asynchronous work) is carried up through
//!   `Whisper::encode` and the decoder step to the session, which ends with
//!   it rather than decoding zeros. Shape mismatches are programming errors
//!   and panic.

pub mod cpu;
pub mod cuda;
mod int8;
pub mod simd;

use half::f16;

/// Element type a weight matrix is stored in. Whisper checkpoints ship as
/// float16; keeping the large decoder matrices in f16 halves the memory
/// traffic of every decoding step without changing a single value (each f16
/// widens to f32 exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
    /// Int8 per output row, for large products whose activations are
    /// quantized per row too (CTranslate2's `int8`): the CPU encoder's
    /// linear layers when asked for. Changes values (about 1 % of a
    /// product); a backend without int8 kernels keeps its own type.
    I8,
}

/// Host-side weight data handed to a backend at load time.
pub enum HostMatrix<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// Activation applied to a linear layer's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    None,
    /// Exact GELU, `0.5·x·(1 + erf(x/√2))`, as CTranslate2 and Whisper use.
    Gelu,
}

/// How a linear layer writes its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// `out = x · Wᵀ + b`
    Overwrite,
    /// `out += x · Wᵀ + b` (residual connections)
    Accumulate,
}

/// The geometry of one attention call.
///
/// `q` holds `seqs × q_len` rows; sequence `s` attends to rows
/// `s·kv_seq_stride .. s·kv_seq_stride + kv_len` of `k` and `v`. A stride of 0
/// shares one K/V among all sequences (cross-attention over one encoder output
/// for every beam).
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub seqs: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub kv_seq_stride: usize,
    pub heads: usize,
    /// Query `i` of a sequence sees keys `0 ..= kv_len - q_len + i` only.
    pub causal: bool,
}

/// A band of columns `[col, col + width)` of a buffer.
pub struct View<'a, B: Backend + ?Sized> {
    pub buf: &'a B::Buf,
    pub col: usize,
    pub width: usize,
}

impl<'a, B: Backend + ?Sized> View<'a, B> {
    pub fn cols(buf: &'a B::Buf, col: usize, width: usize) -> Self {
        View { buf, col, width }
    }
}

impl<B: Backend + ?Sized> Clone for View<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend + ?Sized> Copy for View<'_, B> {}

/// A device backend's memory at a glance (for `/metrics`): the one arena
/// and the lanes (session slots) carved from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Bytes of the arena, allocated once at start-up.
    pub arena_bytes: u64,
    /// Of those, in use now: the weights and the lanes taken.
    pub arena_used_bytes: u64,
    pub lanes: usize,
    pub lanes_free: usize,
}

/// Errors a backend can report. The CPU backend only fails on programming
/// errors; device backends report their driver's errors here.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Device(String),
    #[error("out of memory: needed {needed} bytes, {available} available")]
    OutOfMemory { needed: u64, available: u64 },
    /// Every lane is taken (`max_sessions` streams are running).
    #[error("all {lanes} device lanes (GPU session slots) are in use")]
    Busy { lanes: usize },
}

/// Where the numbers are crunched.
pub trait Backend: Send + Sync + 'static {
    /// A weight matrix `[rows, cols]`, resident where this backend computes.
    type Matrix: Send + Sync;
    /// A weight vector (bias, LayerNorm gain or shift).
    type Vector: Send + Sync;
    /// An activation buffer `[rows, cols]` with a fixed row capacity.
    type Buf: Send;
    /// One stream's own share of the device, taken when a model `State` is
    /// made and given back when it drops: on a GPU a slot of the arena with
    /// its CUDA stream and cuBLAS handle; nothing on the CPU. Every buffer is
    /// carved from a lane, and an operation runs on the lane of the buffer
    /// it writes, so sessions never share a stream or scratch memory.
    type Lane: Send;

    fn name(&self) -> &'static str;

    /// An error that leaves the device unusable for every stream (a sticky
    /// CUDA error): nothing more can be served until the process restarts.
    fn fatal_error(&self) -> Option<String> {
        None
    }

    /// Every weight of the model is in (called once, at the end of its
    /// load): a GPU's idle period starts now, not in the middle of the load.
    fn loaded(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// The device's arena and lanes; `None` for a backend without either.
    fn memory(&self) -> Option<DeviceMemory> {
        None
    }

    fn matrix(
        &self,
        rows: usize,
        cols: usize,
        data: HostMatrix<'_>,
        precision: Precision,
    ) -> Result<Self::Matrix, BackendError>;
    fn vector(&self, data: &[f32]) -> Result<Self::Vector, BackendError>;
    /// A free lane, or [`BackendError::Busy`] at once when every one is taken.
    fn lane(&self) -> Result<Self::Lane, BackendError>;
    /// A zeroed buffer in `lane` with room for `max_rows` rows of `cols` columns.
    fn buffer(&self, lane: &Self::Lane, max_rows: usize, cols: usize) -> Result<Self::Buf, BackendError>;

    fn rows(&self, buf: &Self::Buf) -> usize;
    /// Sets the row count (within capacity) without touching the contents.
    fn set_rows(&self, buf: &mut Self::Buf, rows: usize);
    /// Copies host rows into `dst`, which then has `data.len() / cols` rows.
    fn upload(&self, data: &[f32], dst: &mut Self::Buf) -> Result<(), BackendError>;
    /// Copies rows `rows` of `src` to the host.
    fn download(&self, src: &Self::Buf, rows: std::ops::Range<usize>, out: &mut [f32]) -> Result<(), BackendError>;

    /// `out (=|+=) act(x · Wᵀ + b)`.
    fn linear(
        &self,
        x: View<'_, Self>,
        w: &Self::Matrix,
        b: Option<&Self::Vector>,
        act: Activation,
        write: Write,
        out: &mut Self::Buf,
    ) -> Result<(), BackendError>;
    fn layer_norm(
        &self,
        x: &Self::Buf,
        gamma: &Self::Vector,
        beta: &Self::Vector,
        eps: f32,
        out: &mut Self::Buf,
    ) -> Result<(), BackendError>;
    /// Kernel-3, padding-1 convolution over time of a time-major input,
    /// followed by GELU. `w` is `[out, in·3]` (CT2's `[out, in, 3]` flattened).
    fn conv1d_gelu(
        &self,
        x: &Self::Buf,
        w: &Self::Matrix,
        b: &Self::Vector,
        stride: usize,
        out: &mut Self::Buf,
    ) -> Result<(), BackendError>;
    /// `x[i] += table[offset + i]` for every row `i`.
    fn add_rows(&self, x: &mut Self::Buf, table: &Self::Matrix, offset: usize) -> Result<(), BackendError>;
    /// `out[i] = embeddings[tokens[i]] + positions[pos0 + i % seq_len]`, for
    /// `tokens.len() / seq_len` sequences of `seq_len` tokens.
    fn embed(
        &self,
        tokens: &[u32],
        seq_len: usize,
        pos0: usize,
        embeddings: &Self::Matrix,
        positions: &Self::Matrix,
        out: &mut Self::Buf,
    ) -> Result<(), BackendError>;
    /// Multi-head scaled dot-product attention; `out` gets `seqs × q_len` rows.
    /// When `probs` is given, the softmax weights of heads `heads` are written
    /// to it as `heads.len() × q_len` rows of `kv_len` columns (one sequence only).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: View<'_, Self>,
        k: View<'_, Self>,
        v: View<'_, Self>,
        shape: AttentionShape,
        out: &mut Self::Buf,
        probs: Option<(&mut Self::Buf, &[usize])>,
    ) -> Result<(), BackendError>;
    /// Copies rows `src_rows` of `src` (columns `[col, col + width)`) to rows
    /// `dst_row0 + j` of `dst`: how new K/V rows enter a cache and how the
    /// last position of each sequence is picked out before the logits.
    fn copy_rows(
        &self,
        src: View<'_, Self>,
        src_rows: &[usize],
        dst: &mut Self::Buf,
        dst_rows: &[usize],
    ) -> Result<(), BackendError>;
}
