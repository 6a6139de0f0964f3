//! `CudaBackend`: the [`Backend`] operations on a GPU, on top of the arena.
//!
//! Not yet run on a real GPU: in CI it runs, unchanged, on the fake CUDA
//! device of `tests/fake_cuda` (driver, NVRTC and cuBLAS on the CPU, strict
//! about pointers, contexts, streams and cuBLAS's argument rules), where
//! every operation matches the CPU backend and tiny.en decodes the CPU's
//! tokens (`tests/cuda_fake.rs`).
//!
//! Memory: one allocation at start-up ([`Layout`], [`ArenaMemory`]), nothing
//! after; with `idle_release`, given back when no session has run for that
//! long and taken again, at the same addresses, for the next. Buffers
//! are raw device pointers into it, never cudarc `CudaSlice`s: a carved slice
//! would free an interior pointer on drop and, with event tracking on, make
//! sessions' streams wait on each other. Event tracking is disabled anyway,
//! and all cross-stream ordering is explicit (weights are uploaded and
//! synchronised before any session stream runs; a slot is used by one
//! session thread at a time).
//!
//! Sessions: each model `State` takes a [`CudaLane`] (a lease on one slot of
//! the arena, given back when the state drops); its buffers are carved from
//! that slot, and every operation runs on the stream (and cuBLAS handle) of
//! the slot its output buffer belongs to.
//!
//! No CUDA graphs (yet). A tiny.en decoder step is 76 kernel launches and 41
//! cuBLAS GEMMs (counted on the fake; about 8× that for large-v3's 32
//! layers), so at a few microseconds per launch a graph could pay on a GPU.
//! But a captured graph fixes every launch's arguments and every GEMM's
//! shape, and a step's depend on its position: self-attention spans
//! `kv_len = position + 1` rows (the scores and output GEMMs' `m`/`n`, the
//! softmax width), the positional embedding row moves, and cross-attention
//! spans the window's encoded length, which changes with every shortened
//! encode. Replaying one graph per step needs kernels that read the position
//! from device memory and attend over the whole cache with a mask (fixed
//! shapes; little extra work, as a step's attention is a small part of it),
//! re-captured once per encode. Whether that is worth it is for
//! `benches/gpu.sh` on a lent GPU to say (decoder ms per token against 117
//! launches), so it waits for one.
//!
//! Errors: an operation returns its slot's CUDA error. Launches are
//! asynchronous, so a failure may surface at a later call (at the latest at
//! the download that synchronises); the first error of a slot is kept
//! ([`CudaBackend::slot_error`]) and every later operation on that slot
//! returns it without touching the device, so the session ends with it.

use std::ffi::c_void;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{result as drv, CudaContext, CudaFunction, CudaStream, PushKernelArg};
use half::f16;

use super::arena::{ArenaConfig, Cursor, Layout, SlotLease, SlotPool};
use super::device::{self, DeviceInfo};
use super::error::CudaError;
use super::kernels::{self, HeadSlots, Kernel, Launch};
use super::memory::ArenaMemory;
use super::sizing::Footprint;
use crate::backend::{
    Activation, AttentionShape, Backend, BackendError, DeviceMemory, HostMatrix, Precision, View, Write,
};
use crate::model::Dims;

/// A weight matrix `[rows, cols]` in f16 in the weights region.
pub struct CudaMatrix {
    ptr: u64,
    rows: usize,
    cols: usize,
}

/// A weight vector in f32 in the weights region.
pub struct CudaVector {
    ptr: u64,
    len: usize,
}

/// An activation buffer in a session's slot.
pub struct CudaBuf {
    ptr: u64,
    rows: usize,
    cols: usize,
    max_rows: usize,
    slot: usize,
}

struct Slot {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    /// Device address of the slot.
    base: u64,
    /// Carves the model `State`'s buffers from the front of the slot.
    cursor: Mutex<Cursor>,
    /// Scratch parts (absolute device addresses) and their sizes in bytes.
    gemm_in: (u64, u64),
    gemm_out: (u64, u64),
    scores: (u64, u64),
    tokens: (u64, u64),
    src_rows: (u64, u64),
    dst_rows: (u64, u64),
    error: Mutex<Option<String>>,
}

/// One attention call's operands as device addresses (the views' first
/// columns) and row strides in floats.
struct Attention {
    qp: u64,
    qld: usize,
    kp: u64,
    kld: usize,
    vp: u64,
    vld: usize,
    op: u64,
    d: usize,
    hd: usize,
    scale: f32,
    sh: AttentionShape,
    /// Where the alignment heads' weights go (0: nowhere).
    probs_ptr: u64,
    slots: HeadSlots,
}

/// Addresses of one sequence's Q, K, V and output at its first head `h0`.
struct HeadPtrs {
    q: u64,
    k: u64,
    v: u64,
    out: u64,
}

impl Attention {
    fn heads(&self, seq: usize, h0: usize) -> HeadPtrs {
        let sh = self.sh;
        let ho = (h0 * self.hd * 4) as u64;
        HeadPtrs {
            q: self.qp + (seq * sh.q_len * self.qld * 4) as u64 + ho,
            k: self.kp + (seq * sh.kv_seq_stride * self.kld * 4) as u64 + ho,
            v: self.vp + (seq * sh.kv_seq_stride * self.vld * 4) as u64 + ho,
            out: self.op + (seq * sh.q_len * self.d * 4) as u64 + ho,
        }
    }
}

impl Slot {
    /// Slot `base`'s stream and cuBLAS handle, its workspace in the slot,
    /// and where its scratch parts lie: all fixed by the arena's layout.
    fn new(ctx: &Arc<CudaContext>, layout: &Layout, base: u64) -> Result<Slot, CudaError> {
        let part = |name: &str| -> Result<(u64, u64), CudaError> {
            let p = layout.slot_part(name).ok_or(CudaError::Missing(format!("arena part {name}")))?;
            Ok((base + p.offset, p.bytes))
        };
        let state_bytes = layout.slot_part("scratch/gemm_in_f16").map_or(0, |p| p.offset);
        let stream = ctx.new_stream()?;
        let blas = CudaBlas::new(stream.clone())?;
        let (ws, ws_bytes) = part("cublas_workspace")?;
        // SAFETY: the workspace lies in this slot, used only by this handle's stream.
        unsafe { blas_sys::cublasSetWorkspace_v2(*blas.handle(), ws as *mut c_void, ws_bytes as usize) }.result()?;
        Ok(Slot {
            stream,
            blas,
            base,
            cursor: Mutex::new(Cursor::new("session slot", state_bytes)),
            gemm_in: part("scratch/gemm_in_f16")?,
            gemm_out: part("scratch/gemm_out")?,
            scores: part("scratch/scores")?,
            tokens: part("scratch/tokens")?,
            src_rows: part("scratch/src_rows")?,
            dst_rows: part("scratch/dst_rows")?,
            error: Mutex::new(None),
        })
    }
}

/// Compiles the kernels for this device's compute capability (NVRTC, at
/// start-up: no toolkit needed where the daemon runs) and loads them in
/// `Kernel::ALL` order, which `CudaBackend::f` relies on.
fn load_kernels(ctx: &Arc<CudaContext>, info: &DeviceInfo) -> Result<Vec<CudaFunction>, CudaError> {
    let (major, minor) = info.compute_capability;
    let mut functions = Vec::with_capacity(Kernel::ALL.len());
    let cubins = kernels::compile_all(major, minor)?;
    let modules = cubins
        .into_iter()
        .map(|c| ctx.load_module(cudarc::nvrtc::Ptx::from_binary(c.image)))
        .collect::<Result<Vec<_>, _>>()?;
    for k in Kernel::ALL {
        let module = modules.get(k.source_index()).ok_or(CudaError::Missing(format!("kernel module for {k:?}")))?;
        functions.push(module.load_function(k.function())?);
    }
    Ok(functions)
}

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    pub info: DeviceInfo,
    pub layout: Layout,
    memory: Arc<ArenaMemory>,
    /// `memory.base()`, fixed for the backend's life.
    base: u64,
    load_stream: Arc<CudaStream>,
    weights: Mutex<Cursor>,
    functions: Vec<CudaFunction>,
    slots: Vec<Slot>,
    pool: Arc<SlotPool>,
    /// Gives the arena back after `idle_release` with no session; started
    /// when the model is loaded (`Backend::loaded`).
    releaser: Mutex<Option<JoinHandle<()>>>,
    /// A sticky error: the context is lost for every slot (`fatal_error`).
    fatal: Mutex<Option<String>>,
}

/// Whether a driver error leaves the whole context unusable (CUDA then
/// returns it from every later call, whatever the stream): a kernel's
/// illegal access, a launch failure, an uncorrectable ECC error.
fn is_sticky(e: &CudaError) -> bool {
    use cudarc::driver::sys::CUresult::*;
    matches!(
        e,
        CudaError::Driver(drv::DriverError(
            CUDA_ERROR_ILLEGAL_ADDRESS
                | CUDA_ERROR_HARDWARE_STACK_ERROR
                | CUDA_ERROR_ILLEGAL_INSTRUCTION
                | CUDA_ERROR_MISALIGNED_ADDRESS
                | CUDA_ERROR_INVALID_ADDRESS_SPACE
                | CUDA_ERROR_INVALID_PC
                | CUDA_ERROR_LAUNCH_FAILED
                | CUDA_ERROR_ECC_UNCORRECTABLE
        ))
    )
}

/// The thread that gives the arena back once `pool` has had no session for
/// `idle` (until the pool is closed, when the backend drops).
fn spawn_releaser(
    memory: &Arc<ArenaMemory>,
    pool: &Arc<SlotPool>,
    idle: Duration,
) -> Result<JoinHandle<()>, CudaError> {
    let (memory, pool) = (Arc::clone(memory), Arc::clone(pool));
    std::thread::Builder::new()
        .name("scribed-gpu-idle".into())
        .spawn(move || {
            while pool.wait_idle(idle) {
                if let Err(e) = memory.release_if_idle(&pool) {
                    tracing::error!("GPU arena: giving it back failed: {e}");
                }
            }
        })
        .map_err(|e| CudaError::Missing(format!("idle-release thread ({e})")))
}

/// One model `State`'s slot of the arena: free again when this drops.
pub struct CudaLane {
    lease: SlotLease,
}

impl CudaLane {
    pub fn slot(&self) -> usize {
        self.lease.index()
    }
}

impl CudaBackend {
    /// Opens GPU `gpu`, plans and allocates the arena for a model of shape
    /// `dims` that takes `footprint` (measured by `ArenaSizer`) and `config`
    /// (or says what would fit), compiles the kernels for the device, and
    /// makes each slot's stream and cuBLAS handle.
    pub fn new(gpu: usize, dims: &Dims, footprint: &Footprint, config: ArenaConfig) -> Result<CudaBackend, CudaError> {
        // Before any cuBLAS handle exists: each handle's own allocation is
        // then 4 MiB instead of 64 MiB (the arena provides the workspace).
        if std::env::var_os("CUBLAS_WORKSPACE_CONFIG").is_none() {
            std::env::set_var("CUBLAS_WORKSPACE_CONFIG", ":4096:1");
        }
        let (ctx, info, free) = device::open(gpu)?;
        let layout = Layout::plan(dims, footprint, config)?;
        layout.check_fits(free)?;
        tracing::info!("{info}: {}", layout.summary());
        // SAFETY: no CudaSlice is ever made from the arena; ordering between
        // streams is explicit (see the module doc).
        unsafe { ctx.disable_event_tracking() };
        ctx.bind_to_thread()?;
        let functions = load_kernels(&ctx, &info)?;
        // The weights' stream exists before any session stream.
        let load_stream = ctx.new_stream()?;
        let memory =
            Arc::new(ArenaMemory::new(ctx.clone(), load_stream.clone(), layout.total_bytes()?, layout.weights_bytes)?);
        let base = memory.base();
        let slots = (0..layout.config.max_sessions)
            .map(|i| Slot::new(&ctx, &layout, base + layout.slot_offset(i)))
            .collect::<Result<Vec<_>, _>>()?;
        let pool = SlotPool::new(slots.len());
        Ok(CudaBackend {
            ctx,
            info,
            weights: Mutex::new(Cursor::new("weights", layout.weights_bytes)),
            layout,
            memory,
            base,
            load_stream,
            functions,
            slots,
            pool,
            releaser: Mutex::new(None),
            fatal: Mutex::new(None),
        })
    }

    /// Admission: a free slot or `PoolFull` at once.
    pub fn pool(&self) -> &Arc<SlotPool> {
        &self.pool
    }

    /// The first CUDA error on slot `slot` since it was bound, if any.
    pub fn slot_error(&self, slot: usize) -> Option<String> {
        self.slots.get(slot).and_then(|s| lock(&s.error).clone())
    }

    /// Runs `f` on slot `slot` unless it already failed. The first error is
    /// kept: work queued after it on the stream cannot be trusted, so every
    /// later operation of the slot reports it too.
    fn on(&self, slot: usize, f: impl FnOnce(&Slot) -> Result<(), CudaError>) -> Result<(), BackendError> {
        let s = self.slots.get(slot).ok_or_else(|| dev_err(CudaError::Missing(format!("session slot {slot}"))))?;
        if let Some(e) = lock(&s.error).as_ref() {
            return Err(BackendError::Device(e.clone()));
        }
        // The driver and cuBLAS act on the thread's current context; session
        // threads are not the one that made it.
        self.ctx.bind_to_thread().map_err(CudaError::from).and_then(|()| f(s)).map_err(|e| {
            tracing::error!("GPU slot {slot}: {e}");
            let msg = format!("GPU slot {slot}: {e}");
            *lock(&s.error) = Some(msg.clone());
            self.check_context(&e);
            BackendError::Device(msg)
        })
    }

    /// After a slot's error: whether the context itself is lost. A sticky
    /// error may first show up as another library's failure (cuBLAS's), so
    /// the context is asked too.
    fn check_context(&self, e: &CudaError) {
        let sticky = if is_sticky(e) {
            Some(e.to_string())
        } else {
            self.ctx.synchronize().err().map(CudaError::from).filter(is_sticky).map(|e| e.to_string())
        };
        if let Some(msg) = sticky {
            tracing::error!("GPU {}: the CUDA context is lost: {msg}", self.info.index);
            lock(&self.fatal).get_or_insert(msg);
        }
    }

    /// Attention on slot `s`'s stream, sequence by sequence and, within
    /// one, as many heads at a time as the scores scratch holds: the
    /// arena is planned once, so a long prompt takes more launches rather
    /// than more memory.
    fn attention_on(&self, s: &Slot, a: &Attention) -> Result<(), CudaError> {
        let sh = a.sh;
        let per_head = (sh.q_len * sh.kv_len * 4) as u64;
        let chunk = ((s.scores.1 / per_head.max(1)) as usize).min(sh.heads);
        if chunk == 0 {
            return Err(CudaError::SlotTooSmall(format!("attention scores {}×{}", sh.q_len, sh.kv_len)));
        }
        for seq in 0..sh.seqs {
            for h0 in (0..sh.heads).step_by(chunk) {
                let hn = chunk.min(sh.heads - h0);
                let heads = a.heads(seq, h0);
                self.attention_scores(s, a, &heads, hn)?;
                self.attention_softmax(s, a, h0, hn)?;
                self.attention_output(s, a, &heads, hn)?;
            }
        }
        Ok(())
    }

    /// Scores of `hn` heads, per head b: column-major Sᵀ (kv × q) = Kᵀ · Q.
    fn attention_scores(&self, s: &Slot, a: &Attention, at: &HeadPtrs, hn: usize) -> Result<(), CudaError> {
        let (sh, one, zero) = (a.sh, 1.0f32, 0.0f32);
        use blas_sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        // SAFETY: every operand lies in the arena as planned.
        unsafe {
            blas::sgemm_strided_batched(
                *s.blas.handle(),
                CUBLAS_OP_T,
                CUBLAS_OP_N,
                sh.kv_len as i32,
                sh.q_len as i32,
                a.hd as i32,
                &one,
                at.k as *const f32,
                a.kld as i32,
                a.hd as i64,
                at.q as *const f32,
                a.qld as i32,
                a.hd as i64,
                &zero,
                s.scores.0 as *mut f32,
                sh.kv_len as i32,
                (sh.q_len * sh.kv_len) as i64,
                hn as i32,
            )?;
        }
        Ok(())
    }

    /// Scale, causal mask and softmax of heads `h0..h0 + hn` in the scores
    /// scratch; the kernel also copies the alignment heads' rows out.
    fn attention_softmax(&self, s: &Slot, a: &Attention, h0: usize, hn: usize) -> Result<(), CudaError> {
        let sh = a.sh;
        let rows = hn * sh.q_len;
        let (rows_i, ql, kl, heads, h0_i, causal) =
            (rows as i32, sh.q_len as i32, sh.kv_len as i32, sh.heads as i32, h0 as i32, sh.causal as i32);
        // SAFETY: argument types match attn_softmax_f32's signature.
        unsafe {
            s.stream
                .launch_builder(self.f(Kernel::AttnSoftmax))
                .arg(&s.scores.0)
                .arg(&rows_i)
                .arg(&ql)
                .arg(&kl)
                .arg(&heads)
                .arg(&h0_i)
                .arg(&a.scale)
                .arg(&causal)
                .arg(&a.probs_ptr)
                .arg(&a.slots)
                .launch(Launch::per_row(rows).config())?;
        }
        Ok(())
    }

    /// out_h, column-major (hd × q, ld d) = V_h (hd × kv, ld v) · Pᵀ (kv × q).
    fn attention_output(&self, s: &Slot, a: &Attention, at: &HeadPtrs, hn: usize) -> Result<(), CudaError> {
        let (sh, one, zero) = (a.sh, 1.0f32, 0.0f32);
        use blas_sys::cublasOperation_t::CUBLAS_OP_N;
        // SAFETY: every operand lies in the arena as planned.
        unsafe {
            blas::sgemm_strided_batched(
                *s.blas.handle(),
                CUBLAS_OP_N,
                CUBLAS_OP_N,
                a.hd as i32,
                sh.q_len as i32,
                sh.kv_len as i32,
                &one,
                at.v as *const f32,
                a.vld as i32,
                a.hd as i64,
                s.scores.0 as *const f32,
                sh.kv_len as i32,
                (sh.q_len * sh.kv_len) as i64,
                &zero,
                at.out as *mut f32,
                a.d as i32,
                a.hd as i64,
                hn as i32,
            )?;
        }
        Ok(())
    }

    fn f(&self, k: Kernel) -> &CudaFunction {
        // `functions` holds Kernel::ALL in order (built in `new`).
        &self.functions[Kernel::ALL.iter().position(|&x| x == k).unwrap_or(0)]
    }

    fn upload_weights<T>(&self, data: &[T]) -> Result<u64, BackendError> {
        let bytes = std::mem::size_of_val(data) as u64;
        let off = lock(&self.weights).take(bytes).map_err(|e| BackendError::Device(e.to_string()))?;
        let ptr = self.base + off;
        // Under the arena's lock, so that no release can overlap a copy.
        let r = self.memory.while_resident(|| {
            self.ctx.bind_to_thread()?;
            // SAFETY: `ptr .. ptr + bytes` lies in the weights region; the
            // host slice outlives the copy (synchronised below).
            unsafe { drv::memcpy_htod_async(ptr, data, self.load_stream.cu_stream()) }?;
            self.load_stream.synchronize()?;
            Ok(())
        });
        r.map_err(|e| BackendError::Device(e.to_string()))?;
        Ok(ptr)
    }

    /// `C = A · B` with f16 operands, f32 accumulation and output, in cuBLAS's
    /// column-major terms (see the callers for the row-major mapping).
    #[allow(clippy::too_many_arguments)]
    fn gemm_f16(
        s: &Slot,
        m: usize,
        n: usize,
        k: usize,
        a: u64,
        lda: usize,
        b: u64,
        ldb: usize,
        c: u64,
        ldc: usize,
        beta: f32,
    ) -> Result<(), CudaError> {
        let (alpha, beta) = (1.0f32, beta);
        // SAFETY: pointers and leading dimensions describe buffers of the
        // arena sized by the layout; the handle is bound to the slot's stream.
        unsafe {
            blas::gemm_ex(
                *s.blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                m as i32,
                n as i32,
                k as i32,
                (&alpha as *const f32).cast(),
                a as *const c_void,
                blas_sys::cudaDataType::CUDA_R_16F,
                lda as i32,
                b as *const c_void,
                blas_sys::cudaDataType::CUDA_R_16F,
                ldb as i32,
                (&beta as *const f32).cast(),
                c as *mut c_void,
                blas_sys::cudaDataType::CUDA_R_32F,
                ldc as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )?;
        }
        Ok(())
    }

    /// `y (=|+=) act(x · Wᵀ + b)` where x is `rows × k` f16 in `s.gemm_in`.
    #[allow(clippy::too_many_arguments)]
    fn gemm_epilogue(
        &self,
        s: &Slot,
        rows: usize,
        w: &CudaMatrix,
        b: Option<u64>,
        act: Activation,
        write: Write,
        out: u64,
        out_cols: usize,
    ) -> Result<(), CudaError> {
        let (n, k) = (w.rows, w.cols);
        let gelu = act == Activation::Gelu;
        let accumulate_after = gelu && write == Write::Accumulate;
        // Row-major Y[rows, n] = X[rows, k] · W[n, k]ᵀ is column-major
        // Yᵀ (n × rows) = Wᵀ-op(W as k × n) · X (k × rows).
        let (c, ldc, beta) = if accumulate_after {
            if (rows * n * 4) as u64 > s.gemm_out.1 {
                return Err(CudaError::SlotTooSmall(format!("GEMM output {rows}×{n}")));
            }
            (s.gemm_out.0, n, 0.0)
        } else {
            (out, out_cols, if write == Write::Accumulate { 1.0 } else { 0.0 })
        };
        Self::gemm_f16(s, n, rows, k, w.ptr, k, s.gemm_in.0, k, c, ldc, beta)?;
        if b.is_some() || gelu {
            let l = Launch::elementwise(rows * n);
            let bias = b.unwrap_or(0);
            let (rows_i, n_i, gelu_i, acc_i) = (rows as i32, n as i32, gelu as i32, accumulate_after as i32);
            // SAFETY: argument types match bias_act_f32's signature.
            unsafe {
                s.stream
                    .launch_builder(self.f(Kernel::BiasAct))
                    .arg(&c)
                    .arg(&bias)
                    .arg(&out)
                    .arg(&rows_i)
                    .arg(&n_i)
                    .arg(&gelu_i)
                    .arg(&acc_i)
                    .launch(l.config())?;
            }
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn dev_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Device(e.to_string())
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // The releaser first, so the arena is not given back under our feet;
        // the arena's memory goes when `memory` drops.
        self.pool.close();
        if let Some(t) = lock(&self.releaser).take() {
            let _ = t.join();
        }
        let _ = self.ctx.synchronize();
    }
}

impl Backend for CudaBackend {
    type Matrix = CudaMatrix;
    type Vector = CudaVector;
    type Buf = CudaBuf;
    type Lane = CudaLane;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn fatal_error(&self) -> Option<String> {
        lock(&self.fatal).clone().or_else(|| self.memory.failure())
    }

    /// The idle period starts once every weight is in: with `idle_release`,
    /// the releaser starts now.
    fn loaded(&self) -> Result<(), BackendError> {
        let Some(idle) = self.layout.config.idle_release else { return Ok(()) };
        let mut releaser = lock(&self.releaser);
        if releaser.is_none() {
            self.pool.touch();
            *releaser = Some(spawn_releaser(&self.memory, &self.pool, idle).map_err(dev_err)?);
        }
        Ok(())
    }

    /// Zero bytes while the arena is given back (idle release).
    fn memory(&self) -> Option<DeviceMemory> {
        let l = &self.layout;
        let (lanes, free) = (self.pool.capacity(), self.pool.available());
        let taken = (lanes - free) as u64 * l.slot_bytes;
        let resident = self.memory.is_resident();
        Some(DeviceMemory {
            arena_bytes: if resident { self.memory.bytes() } else { 0 },
            arena_used_bytes: if resident { l.weights_bytes + taken } else { 0 },
            lanes,
            lanes_free: free,
        })
    }

    /// Every matrix is stored in f16 whatever `precision` asks: cuBLAS
    /// multiplies f16 by f16 with fp32 accumulation. Whisper checkpoints are
    /// f16, so nothing is lost for them.
    fn matrix(
        &self,
        rows: usize,
        cols: usize,
        data: HostMatrix<'_>,
        _precision: Precision,
    ) -> Result<CudaMatrix, BackendError> {
        let ptr = match data {
            HostMatrix::F16(d) => self.upload_weights(d)?,
            HostMatrix::F32(d) => {
                let h: Vec<f16> = d.iter().map(|&x| f16::from_f32(x)).collect();
                self.upload_weights(&h)?
            }
        };
        Ok(CudaMatrix { ptr, rows, cols })
    }

    fn vector(&self, data: &[f32]) -> Result<CudaVector, BackendError> {
        Ok(CudaVector { ptr: self.upload_weights(data)?, len: data.len() })
    }

    /// A free slot, emptied for the `State` about to be carved from it (the
    /// previous lease's work on its stream precedes anything queued now);
    /// the arena taken again first if it was given back while idle.
    fn lane(&self) -> Result<CudaLane, BackendError> {
        let lease = self.pool.try_acquire().map_err(|e| BackendError::Busy { lanes: e.capacity })?;
        self.memory.ensure_resident().map_err(dev_err)?;
        let s = self.slots.get(lease.index()).ok_or_else(|| dev_err(format!("no slot {}", lease.index())))?;
        lock(&s.cursor).reset();
        *lock(&s.error) = None;
        Ok(CudaLane { lease })
    }

    fn buffer(&self, lane: &CudaLane, max_rows: usize, cols: usize) -> Result<CudaBuf, BackendError> {
        let slot = lane.slot();
        let s = self.slots.get(slot).ok_or_else(|| dev_err(format!("no slot {slot}")))?;
        let bytes = (max_rows as u64).checked_mul(cols as u64 * 4).ok_or_else(|| dev_err("buffer size overflows"))?;
        let off = lock(&s.cursor).take(bytes).map_err(|e| BackendError::OutOfMemory {
            needed: bytes,
            available: match e {
                super::arena::ArenaError::RegionFull { used, capacity, .. } => capacity.saturating_sub(used),
                _ => 0,
            },
        })?;
        let ptr = s.base + off;
        // Zeroed, as the trait promises.
        self.on(slot, |s| {
            // SAFETY: the range lies in this slot.
            unsafe { drv::memset_d8_async(ptr, 0, bytes as usize, s.stream.cu_stream()) }?;
            Ok(())
        })?;
        Ok(CudaBuf { ptr, rows: 0, cols, max_rows, slot })
    }

    fn rows(&self, buf: &CudaBuf) -> usize {
        buf.rows
    }

    fn set_rows(&self, buf: &mut CudaBuf, rows: usize) {
        assert!(rows <= buf.max_rows, "buffer of {} rows asked for {rows}", buf.max_rows);
        buf.rows = rows;
    }

    fn upload(&self, data: &[f32], dst: &mut CudaBuf) -> Result<(), BackendError> {
        let rows = data.len() / dst.cols.max(1);
        self.set_rows(dst, rows);
        let ptr = dst.ptr;
        self.on(dst.slot, |s| {
            // Pageable memory: the call returns once `data` is staged, so it
            // may be reused at once.
            // SAFETY: `rows ≤ max_rows`, so the copy stays in the buffer.
            unsafe { drv::memcpy_htod_async(ptr, data, s.stream.cu_stream()) }?;
            Ok(())
        })
    }

    fn download(&self, src: &CudaBuf, rows: Range<usize>, out: &mut [f32]) -> Result<(), BackendError> {
        let from = src.ptr + (rows.start * src.cols * 4) as u64;
        self.on(src.slot, |s| {
            // SAFETY: `out` has `rows.len() × cols` elements (the trait's contract).
            unsafe { drv::memcpy_dtoh_async(out, from, s.stream.cu_stream()) }?;
            s.stream.synchronize()?;
            Ok(())
        })
    }

    fn linear(
        &self,
        x: View<'_, Self>,
        w: &CudaMatrix,
        b: Option<&CudaVector>,
        act: Activation,
        write: Write,
        out: &mut CudaBuf,
    ) -> Result<(), BackendError> {
        assert_eq!(x.width, w.cols, "linear: input width {} vs weight in-features {}", x.width, w.cols);
        assert_eq!(out.cols, w.rows, "linear: output width {} vs weight out-features {}", out.cols, w.rows);
        let m = x.buf.rows;
        self.set_rows(out, m);
        let (xp, xs, xc, k) = (x.buf.ptr, x.buf.cols as i32, x.col as i32, x.width);
        let (op, oc) = (out.ptr, out.cols);
        self.on(out.slot, |s| {
            if (m * k * 2) as u64 > s.gemm_in.1 {
                return Err(CudaError::SlotTooSmall(format!("GEMM input {m}×{k}")));
            }
            let l = Launch::elementwise(m * k);
            let (m_i, k_i) = (m as i32, k as i32);
            // SAFETY: argument types match f32_to_f16_2d's signature.
            unsafe {
                s.stream
                    .launch_builder(self.f(Kernel::F32ToF16))
                    .arg(&xp)
                    .arg(&xs)
                    .arg(&xc)
                    .arg(&m_i)
                    .arg(&k_i)
                    .arg(&s.gemm_in.0)
                    .launch(l.config())?;
            }
            self.gemm_epilogue(s, m, w, b.map(|v| v.ptr), act, write, op, oc)
        })
    }

    fn layer_norm(
        &self,
        x: &CudaBuf,
        gamma: &CudaVector,
        beta: &CudaVector,
        eps: f32,
        out: &mut CudaBuf,
    ) -> Result<(), BackendError> {
        assert_eq!(gamma.len, x.cols);
        self.set_rows(out, x.rows);
        let (xp, gp, bp, op, rows, d) = (x.ptr, gamma.ptr, beta.ptr, out.ptr, x.rows as i32, x.cols as i32);
        self.on(out.slot, |s| {
            // SAFETY: argument types match layer_norm_f32's signature.
            unsafe {
                s.stream
                    .launch_builder(self.f(Kernel::LayerNorm))
                    .arg(&xp)
                    .arg(&gp)
                    .arg(&bp)
                    .arg(&op)
                    .arg(&rows)
                    .arg(&d)
                    .arg(&eps)
                    .launch(Launch::per_row(x.rows).config())?;
            }
            Ok(())
        })
    }

    fn conv1d_gelu(
        &self,
        x: &CudaBuf,
        w: &CudaMatrix,
        b: &CudaVector,
        stride: usize,
        out: &mut CudaBuf,
    ) -> Result<(), BackendError> {
        let c_in = x.cols;
        assert_eq!(w.cols, 3 * c_in, "conv1d: weight has {} columns for {c_in} input channels", w.cols);
        let t_in = x.rows;
        let t_out = (t_in + 2 - 3) / stride + 1;
        self.set_rows(out, t_out);
        let (xp, op, oc, bp) = (x.ptr, out.ptr, out.cols, b.ptr);
        self.on(out.slot, |s| {
            let k3 = 3 * c_in;
            if (t_out * k3 * 2) as u64 > s.gemm_in.1 {
                return Err(CudaError::SlotTooSmall(format!("im2col {t_out}×{k3}")));
            }
            let (ti, ci, st, to) = (t_in as i32, c_in as i32, stride as i32, t_out as i32);
            // SAFETY: argument types match im2col_k3_f16's signature.
            unsafe {
                s.stream
                    .launch_builder(self.f(Kernel::Im2col))
                    .arg(&xp)
                    .arg(&ti)
                    .arg(&ci)
                    .arg(&st)
                    .arg(&to)
                    .arg(&s.gemm_in.0)
                    .launch(Launch::elementwise(t_out * k3).config())?;
            }
            self.gemm_epilogue(s, t_out, w, Some(bp), Activation::Gelu, Write::Overwrite, op, oc)
        })
    }

    fn add_rows(&self, x: &mut CudaBuf, table: &CudaMatrix, offset: usize) -> Result<(), BackendError> {
        assert!(offset + x.rows <= table.rows, "add_rows: rows {offset}.. past the table's {}", table.rows);
        let (xp, rows, d, tp, off) = (x.ptr, x.rows as i32, x.cols as i32, table.ptr, offset as i32);
        let n = x.rows * x.cols;
        self.on(x.slot, |s| {
            // SAFETY: argument types match add_rows_f16's signature.
            unsafe {
                s.stream
                    .launch_builder(self.f(Kernel::AddRows))
                    .arg(&xp)
                    .arg(&rows)
                    .arg(&d)
                    .arg(&tp)
                    .arg(&off)
                    .launch(Launch::elementwise(n).config())?;
            }
            Ok(())
        })
    }

    fn embed(
        &self,
        tokens: &[u32],
        seq_len: usize,
        pos0: usize,
        embeddings: &CudaMatrix,
        positions: &CudaMatrix,
        out: &mut CudaBuf,
    ) -> Result<(), BackendError> {
        self.set_rows(out, tokens.len());
        let (op, d) = (out.ptr, out.cols as i32);
        let n = tokens.len();
        self.on(out.slot, |s| {
            if (n * 4) as u64 > s.tokens.1 {
                return Err(CudaError::SlotTooSmall(format!("{n} tokens")));
            }
            // SAFETY: fits (checked); pageable copy, `tokens` may be reused after.
            unsafe { drv::memcpy_htod_async(s.tokens.0, tokens, s.stream.cu_stream()) }?;
            let (n_i, sl, p0) = (n as i32, seq_len.max(1) as i32, pos0 as i32);
            let (ep, vocab, pp, n_pos) = (embeddings.ptr, embeddings.rows as i32, positions.ptr, positions.rows as i32);
            // SAFETY: argument types match embed_f16's signature.
            unsafe {
                s.stream
                    .launch_builder(self.f(Kernel::Embed))
                    .arg(&s.tokens.0)
                    .arg(&n_i)
                    .arg(&sl)
                    .arg(&p0)
                    .arg(&ep)
                    .arg(&vocab)
                    .arg(&pp)
                    .arg(&n_pos)
                    .arg(&op)
                    .arg(&d)
                    .launch(Launch::per_row_across(n, d as usize).config())?;
            }
            Ok(())
        })
    }

    /// The heads go through cuBLAS in chunks that fit the slot's scores
    /// scratch (see [`CudaBackend::attention_on`]).
    fn attention(
        &self,
        q: View<'_, Self>,
        k: View<'_, Self>,
        v: View<'_, Self>,
        sh: AttentionShape,
        out: &mut CudaBuf,
        probs: Option<(&mut CudaBuf, &[usize])>,
    ) -> Result<(), BackendError> {
        let d = q.width;
        let hd = d / sh.heads;
        let scale = 1.0 / (hd as f32).sqrt();
        self.set_rows(out, sh.seqs * sh.q_len);
        assert_eq!(out.cols, d);
        let (probs_ptr, slots) = match probs {
            Some((p, heads)) => {
                assert_eq!(sh.seqs, 1, "attention weights are returned for one sequence");
                self.set_rows(p, heads.len() * sh.q_len);
                let slots = HeadSlots::for_heads(heads).unwrap_or_else(|| panic!("bad alignment heads {heads:?}"));
                (p.ptr, slots)
            }
            None => (0u64, HeadSlots::none()),
        };
        let a = Attention {
            qp: q.buf.ptr + (q.col * 4) as u64,
            qld: q.buf.cols,
            kp: k.buf.ptr + (k.col * 4) as u64,
            kld: k.buf.cols,
            vp: v.buf.ptr + (v.col * 4) as u64,
            vld: v.buf.cols,
            op: out.ptr,
            d,
            hd,
            scale,
            sh,
            probs_ptr,
            slots,
        };
        self.on(out.slot, |s| self.attention_on(s, &a))
    }

    fn copy_rows(
        &self,
        src: View<'_, Self>,
        src_rows: &[usize],
        dst: &mut CudaBuf,
        dst_rows: &[usize],
    ) -> Result<(), BackendError> {
        assert_eq!(src.width, dst.cols);
        assert_eq!(src_rows.len(), dst_rows.len());
        let needed = dst_rows.iter().map(|r| r + 1).max().unwrap_or(0);
        if needed > dst.rows {
            self.set_rows(dst, needed);
        }
        let n = src_rows.len();
        if n == 0 {
            return Ok(());
        }
        let s_idx: Vec<u32> = src_rows.iter().map(|&r| r as u32).collect();
        let d_idx: Vec<u32> = dst_rows.iter().map(|&r| r as u32).collect();
        let (sp, ss, sc, dp, w) = (src.buf.ptr, src.buf.cols as i32, src.col as i32, dst.ptr, src.width as i32);
        self.on(dst.slot, |s| {
            if (n * 4) as u64 > s.src_rows.1.min(s.dst_rows.1) {
                return Err(CudaError::SlotTooSmall(format!("{n} row indices")));
            }
            // SAFETY: fits (checked); pageable copies, the vectors may drop after.
            unsafe {
                drv::memcpy_htod_async(s.src_rows.0, &s_idx, s.stream.cu_stream())?;
                drv::memcpy_htod_async(s.dst_rows.0, &d_idx, s.stream.cu_stream())?;
            }
            let n_i = n as i32;
            // SAFETY: argument types match gather_rows_f32's signature.
            unsafe {
                s.stream
                    .launch_builder(self.f(Kernel::GatherRows))
                    .arg(&sp)
                    .arg(&ss)
                    .arg(&sc)
                    .arg(&s.src_rows.0)
                    .arg(&dp)
                    .arg(&s.dst_rows.0)
                    .arg(&n_i)
                    .arg(&w)
                    .launch(Launch::per_row_across(n, w as usize).config())?;
            }
            Ok(())
        })
    }
}
