//! The arena: where every byte of device memory goes, decided once at
//! start-up, and the pool of session slots that admits connections.
//!
//! The daemon makes one device allocation at start-up and none after it
//! (`../shared/docs/design.md`, "GPU memory and streams"; with
//! `idle_release`, the same allocation again after an idle period, see
//! `memory.rs`). This module is the bookkeeping for that allocation and
//! touches no GPU, so all of it is unit-tested in CI:
//!
//! ```text
//! | weights | slot 0 | slot 1 | … | slot max_sessions−1 |
//! ```
//!
//! - **weights**: every tensor as the CUDA backend stores it (matrices f16,
//!   vectors f32), each aligned;
//! - **slots**: one per session, all the same size, each holding that
//!   session's encoder activations, cross-attention K/V, self-attention KV
//!   caches, mel window, scratch (f16 GEMM operands, attention scores, token
//!   and row-index lists) and its cuBLAS workspace — nothing of one session
//!   is ever written by another.
//!
//! Every part starts at a multiple of [`ALIGN`] bytes (what cuMemAlloc
//! guarantees, and what cuBLAS and vector loads want), and parts never
//! overlap. The weights and a slot's state buffers are laid out as the
//! sizing pass measured them (`sizing.rs`: the model's own load and `State`,
//! at the worst case `max_seqs`), so a session can never need more; the GPU's
//! own scratch follows the model's [`Dims`].

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::sizing::Footprint;
use crate::model::Dims;

/// Alignment of every part, in bytes.
pub const ALIGN: u64 = 256;
const MIB: u64 = 1 << 20;

/// What the arena is planned for, besides the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArenaConfig {
    /// Sessions served at once: one slot each.
    pub max_sessions: usize,
    /// Sequences decoded at once per session (beam size / best-of).
    pub max_seqs: usize,
    /// Heads whose attention scores one pass holds (bounds the scores
    /// scratch: `heads_per_pass × 1500 × 1500 × 4` bytes in the encoder).
    pub heads_per_pass: usize,
    /// cuBLAS workspace per session, carved from the slot and handed to
    /// its handle (`cublasSetWorkspace`); NVIDIA recommends 32 MiB on Hopper.
    pub cublas_workspace: u64,
    /// Device memory the process needs outside the arena: context, loaded
    /// modules, cuBLAS's kernels.
    pub reserve: u64,
    /// Outside the arena per session: each cuBLAS handle's own allocation
    /// (4 MiB with `CUBLAS_WORKSPACE_CONFIG=:4096:1`) and its stream.
    pub per_session_outside: u64,
    /// After this long with no session the arena's memory is given back to
    /// the device, and the same size is taken again when the next session
    /// arrives (`None`: held for the daemon's life).
    pub idle_release: Option<Duration>,
}

impl Default for ArenaConfig {
    fn default() -> Self {
        ArenaConfig {
            max_sessions: 4,
            max_seqs: 5,
            heads_per_pass: 8,
            cublas_workspace: 32 * MIB,
            reserve: 512 * MIB,
            per_session_outside: 8 * MIB,
            idle_release: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArenaError {
    #[error("the GPU arena for {sessions} session(s) needs {needed} bytes ({:.1} GiB), but the device has {free} bytes ({:.1} GiB) free; {}",
        gib(*needed), gib(*free), fit_advice(*fits))]
    DoesNotFit { sessions: usize, needed: u64, free: u64, fits: usize },
    #[error("max_sessions must be at least 1")]
    NoSessions,
    #[error("max_seqs and heads_per_pass must be at least 1")]
    NoSequences,
    #[error("the arena for this model and configuration would exceed 2^64 bytes")]
    Overflow,
    #[error("{region} region full: {asked} more bytes asked for at offset {used} of {capacity}")]
    RegionFull { region: &'static str, used: u64, asked: u64, capacity: u64 },
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn fit_advice(fits: usize) -> String {
    match fits {
        0 => "not even one session fits next to the weights: use a smaller model or --device cpu".to_string(),
        n => format!("at most {n} session(s) fit: set max_sessions to {n} or less"),
    }
}

/// One named, aligned part of a region; `offset` is relative to the region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub offset: u64,
    pub bytes: u64,
}

/// Places parts one after another, each aligned; sizes are checked.
#[derive(Debug, Default)]
struct Planner {
    parts: Vec<Part>,
    end: u64,
}

impl Planner {
    fn add(&mut self, name: impl Into<String>, bytes: u64) -> Result<(), ArenaError> {
        let offset = align_up(self.end).ok_or(ArenaError::Overflow)?;
        self.end = offset.checked_add(bytes).ok_or(ArenaError::Overflow)?;
        self.parts.push(Part { name: name.into(), offset, bytes });
        Ok(())
    }

    /// `rows × cols` elements of `elem` bytes.
    fn add_2d(&mut self, name: impl Into<String>, rows: usize, cols: usize, elem: u64) -> Result<(), ArenaError> {
        let n = (rows as u64).checked_mul(cols as u64).and_then(|n| n.checked_mul(elem)).ok_or(ArenaError::Overflow)?;
        self.add(name, n)
    }

    fn finish(self) -> Result<(Vec<Part>, u64), ArenaError> {
        let size = align_up(self.end).ok_or(ArenaError::Overflow)?;
        Ok((self.parts, size))
    }
}

pub fn align_up(x: u64) -> Option<u64> {
    x.checked_add(ALIGN - 1).map(|v| v & !(ALIGN - 1))
}

/// The planned arena: region offsets are absolute (from the arena's base).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub config: ArenaConfig,
    /// Every weight tensor (`weight/i`), in the order the model loads them.
    pub weights: Vec<Part>,
    pub weights_bytes: u64,
    /// The parts of one slot, offsets relative to the slot's start.
    pub slot: Vec<Part>,
    pub slot_bytes: u64,
}

impl Layout {
    /// Plans the arena for a model of shape `dims` whose weights and one
    /// `State` (for `config.max_seqs` sequences) take `footprint`.
    pub fn plan(dims: &Dims, footprint: &Footprint, config: ArenaConfig) -> Result<Layout, ArenaError> {
        if config.max_sessions == 0 {
            return Err(ArenaError::NoSessions);
        }
        if config.max_seqs == 0 || config.heads_per_pass == 0 {
            return Err(ArenaError::NoSequences);
        }
        let mut w = Planner::default();
        for (i, &bytes) in footprint.weights.iter().enumerate() {
            w.add(format!("weight/{i}"), bytes)?;
        }
        let (weights, weights_bytes) = w.finish()?;
        let (slot, slot_bytes) = plan_slot(dims, &footprint.state, &config)?;
        let layout = Layout { config, weights, weights_bytes, slot, slot_bytes };
        layout.total_bytes()?;
        Ok(layout)
    }

    /// Offset of slot `i` from the arena's base.
    pub fn slot_offset(&self, i: usize) -> u64 {
        self.weights_bytes + i as u64 * self.slot_bytes
    }

    /// Bytes of the one allocation.
    pub fn total_bytes(&self) -> Result<u64, ArenaError> {
        (self.config.max_sessions as u64)
            .checked_mul(self.slot_bytes)
            .and_then(|s| s.checked_add(self.weights_bytes))
            .ok_or(ArenaError::Overflow)
    }

    /// Device memory the process needs with this arena, all told.
    pub fn needed_bytes(&self) -> Result<u64, ArenaError> {
        let outside = (self.config.max_sessions as u64)
            .checked_mul(self.config.per_session_outside)
            .and_then(|o| o.checked_add(self.config.reserve))
            .ok_or(ArenaError::Overflow)?;
        self.total_bytes()?.checked_add(outside).ok_or(ArenaError::Overflow)
    }

    /// The most sessions that fit in `free` bytes of device memory.
    pub fn sessions_that_fit(&self, free: u64) -> usize {
        let fixed = self.weights_bytes.saturating_add(self.config.reserve);
        let per = self.slot_bytes.saturating_add(self.config.per_session_outside).max(1);
        (free.saturating_sub(fixed) / per).min(usize::MAX as u64) as usize
    }

    /// This layout when it fits in `free` bytes; otherwise how much it
    /// needed, how much there is, and how many sessions would fit.
    pub fn check_fits(&self, free: u64) -> Result<(), ArenaError> {
        let needed = self.needed_bytes()?;
        if needed <= free {
            return Ok(());
        }
        Err(ArenaError::DoesNotFit {
            sessions: self.config.max_sessions,
            needed,
            free,
            fits: self.sessions_that_fit(free),
        })
    }

    /// A part of the slot by name.
    pub fn slot_part(&self, name: &str) -> Option<&Part> {
        self.slot.iter().find(|p| p.name == name)
    }

    /// One line per region, for the start-up log (whisper.cpp logs every
    /// buffer it sizes; so do we).
    pub fn summary(&self) -> String {
        let total = self.total_bytes().unwrap_or(u64::MAX);
        format!(
            "arena {:.1} MiB: weights {:.1} MiB ({} tensors), {} slot(s) × {:.1} MiB",
            total as f64 / MIB as f64,
            self.weights_bytes as f64 / MIB as f64,
            self.weights.len(),
            self.config.max_sessions,
            self.slot_bytes as f64 / MIB as f64,
        )
    }
}

/// One session's slot: the buffers of one model `State`, as measured, plus
/// what only the GPU needs, sized from the model's shape.
fn plan_slot(d: &Dims, state: &[u64], c: &ArenaConfig) -> Result<(Vec<Part>, u64), ArenaError> {
    let (t, dm, s) = (d.audio_ctx, d.d_model, c.max_seqs);
    let mut p = Planner::default();
    for (i, &bytes) in state.iter().enumerate() {
        p.add(format!("state/{i}"), bytes)?;
    }
    let rows = d.text_ctx.max(s);
    let cache_rows = s.checked_mul(d.text_ctx).ok_or(ArenaError::Overflow)?;
    // GPU scratch. The f16 GEMM operand: the widest input of any linear
    // layer or convolution (im2col) over its most rows.
    let gemm_in = [t * 4 * dm, t * 3 * dm, 2 * t * 3 * d.n_mels, rows * 4 * dm].into_iter().max().unwrap_or(0);
    p.add_2d("scratch/gemm_in_f16", 1, gemm_in, 2)?;
    // A GEMM's output when the epilogue must add it to a residual after an
    // activation: the widest output over the most rows.
    p.add_2d("scratch/gemm_out", t.max(rows), 4 * dm, 4)?;
    // Attention scores of `heads_per_pass` heads: the largest q_len × kv_len
    // (encoder self-attention, t × t; decoder: text_ctx × max(t, text_ctx)).
    let heads = c.heads_per_pass.min(d.encoder_heads.max(d.decoder_heads));
    let qk = (t as u64 * t as u64).max(d.text_ctx as u64 * t.max(d.text_ctx) as u64);
    p.add("scratch/scores", qk.checked_mul(heads as u64 * 4).ok_or(ArenaError::Overflow)?)?;
    // Token ids and the two row-index lists of copy_rows (cache updates,
    // beam reorder), uploaded per call.
    p.add_2d("scratch/tokens", cache_rows, 1, 4)?;
    p.add_2d("scratch/src_rows", cache_rows, 1, 4)?;
    p.add_2d("scratch/dst_rows", cache_rows, 1, 4)?;
    p.add("cublas_workspace", c.cublas_workspace)?;
    p.finish()
}

/// Hands out a region front to back, each part aligned: the weights region
/// as the model loads its tensors (`Backend::matrix` / `Backend::vector`),
/// a session slot as its state's buffers are made (`Backend::buffer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The region's name, for the error when it is full.
    region: &'static str,
    used: u64,
    capacity: u64,
}

impl Cursor {
    pub fn new(region: &'static str, capacity: u64) -> Cursor {
        Cursor { region, used: 0, capacity }
    }

    /// Offset (within the region) of the next `bytes`.
    pub fn take(&mut self, bytes: u64) -> Result<u64, ArenaError> {
        let full =
            ArenaError::RegionFull { region: self.region, used: self.used, asked: bytes, capacity: self.capacity };
        let offset = align_up(self.used).ok_or(full.clone())?;
        let end = offset.checked_add(bytes).ok_or(full.clone())?;
        if end > self.capacity {
            return Err(full);
        }
        self.used = end;
        Ok(offset)
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    /// Forgets everything taken (a slot handed to a new session).
    pub fn reset(&mut self) {
        self.used = 0;
    }
}

/// The session slots: admission is taking a free slot. `try_acquire` never
/// waits — when every slot is taken it fails at once, and the server answers
/// 503 before the websocket upgrade. Taking and returning a slot is O(1) (a
/// free stack), whatever `max_sessions` is. The pool also knows since when
/// no slot has been taken, which is what releases an idle arena
/// ([`SlotPool::wait_idle`]).
#[derive(Debug)]
pub struct SlotPool {
    state: Mutex<PoolState>,
    changed: Condvar,
    capacity: usize,
}

#[derive(Debug)]
struct PoolState {
    free: Vec<usize>,
    /// When the last taken slot came back (or the pool was made), while
    /// none is taken; taken by `wait_idle` once it has waited it out.
    idle_since: Option<Instant>,
    closed: bool,
}

/// Every slot is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("all {capacity} GPU session slots are in use")]
pub struct PoolFull {
    pub capacity: usize,
}

impl SlotPool {
    pub fn new(capacity: usize) -> Arc<SlotPool> {
        // Reversed so that slot 0 is handed out first (lowest addresses).
        let state = PoolState { free: (0..capacity).rev().collect(), idle_since: Some(Instant::now()), closed: false };
        Arc::new(SlotPool { state: Mutex::new(state), changed: Condvar::new(), capacity })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn available(&self) -> usize {
        self.lock().free.len()
    }

    /// A free slot, held until the lease drops.
    pub fn try_acquire(self: &Arc<Self>) -> Result<SlotLease, PoolFull> {
        let mut st = self.lock();
        let index = st.free.pop().ok_or(PoolFull { capacity: self.capacity })?;
        st.idle_since = None;
        Ok(SlotLease { pool: Arc::clone(self), index })
    }

    /// Blocks until no slot has been taken for `idle` (true; the idle
    /// period is then used up, so the next `true` needs a session to come
    /// and go first) or the pool is closed (false).
    pub fn wait_idle(&self, idle: Duration) -> bool {
        let mut st = self.lock();
        loop {
            if st.closed {
                return false;
            }
            st = match st.idle_since.map(|t| t.elapsed()) {
                Some(waited) if waited >= idle => {
                    st.idle_since = None;
                    return true;
                }
                Some(waited) => self.changed.wait_timeout(st, idle - waited).unwrap_or_else(|e| e.into_inner()).0,
                None => self.changed.wait(st).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }

    /// Starts the idle period over if no slot is taken (the model's load
    /// has just ended: it is not idle time).
    pub fn touch(&self) {
        let mut st = self.lock();
        self.idle_from_now_if_free(&mut st);
    }

    /// Wakes `wait_idle` for good (the backend is going away).
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    fn give_back(&self, index: usize) {
        let mut st = self.lock();
        st.free.push(index);
        self.idle_from_now_if_free(&mut st);
    }

    /// With every slot free, the idle period starts now; a waiting
    /// `wait_idle` is woken to time it.
    fn idle_from_now_if_free(&self, st: &mut PoolState) {
        if st.free.len() == self.capacity {
            st.idle_since = Some(Instant::now());
            self.changed.notify_all();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // The state is valid after any panic (each change is one step).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One session's claim on slot [`SlotLease::index`]; the slot is free again
/// when this drops, however the session ends.
#[derive(Debug)]
pub struct SlotLease {
    pool: Arc<SlotPool>,
    index: usize,
}

impl SlotLease {
    pub fn index(&self) -> usize {
        self.index
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        self.pool.give_back(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dims {
        Dims {
            n_mels: 80,
            audio_ctx: 1500,
            d_model: 384,
            encoder_heads: 6,
            encoder_layers: 4,
            vocab: 51864,
            text_ctx: 448,
            decoder_heads: 6,
            decoder_layers: 4,
        }
    }

    fn large_v3() -> Dims {
        Dims {
            n_mels: 128,
            audio_ctx: 1500,
            d_model: 1280,
            encoder_heads: 20,
            encoder_layers: 32,
            vocab: 51866,
            text_ctx: 448,
            decoder_heads: 20,
            decoder_layers: 32,
        }
    }

    /// A measured footprint's shape (the real one comes from loading a
    /// model against `ArenaSizer`: tests/cuda_fake.rs).
    fn fp() -> Footprint {
        Footprint {
            weights: vec![2 * 51864 * 384, 4 * 384, 3, 2 * 1536 * 384],
            state: vec![3000 * 80 * 4, 1500 * 4 * 384 * 4, 5 * 448 * 2 * 384 * 4, 17],
        }
    }

    fn no_overlap(parts: &[Part], size: u64) {
        for p in parts {
            assert_eq!(p.offset % ALIGN, 0, "{} misaligned", p.name);
            assert!(p.offset + p.bytes <= size, "{} past the end", p.name);
        }
        let mut sorted: Vec<&Part> = parts.iter().collect();
        sorted.sort_by_key(|p| p.offset);
        for w in sorted.windows(2) {
            assert!(w[0].offset + w[0].bytes <= w[1].offset, "{} overlaps {}", w[0].name, w[1].name);
        }
    }

    #[test]
    fn parts_are_aligned_and_disjoint() {
        for dims in [tiny(), large_v3()] {
            let l = Layout::plan(&dims, &fp(), ArenaConfig::default()).unwrap();
            no_overlap(&l.weights, l.weights_bytes);
            no_overlap(&l.slot, l.slot_bytes);
            assert_eq!(l.weights_bytes % ALIGN, 0);
            assert_eq!(l.slot_bytes % ALIGN, 0);
            // Regions follow each other without overlap, and fill the total.
            for i in 0..l.config.max_sessions {
                assert_eq!(l.slot_offset(i) % ALIGN, 0);
                assert!(l.slot_offset(i) >= l.weights_bytes);
                assert_eq!(l.slot_offset(i + 1) - l.slot_offset(i), l.slot_bytes);
            }
            assert_eq!(l.slot_offset(l.config.max_sessions), l.total_bytes().unwrap());
        }
    }

    #[test]
    fn the_footprint_is_laid_out_part_by_part_then_the_scratch() {
        let cfg = ArenaConfig { max_seqs: 5, heads_per_pass: 6, ..ArenaConfig::default() };
        let f = fp();
        let l = Layout::plan(&tiny(), &f, cfg).unwrap();
        let weights: Vec<u64> = l.weights.iter().map(|p| p.bytes).collect();
        assert_eq!(weights, f.weights, "every weight, in load order");
        let state: Vec<u64> = l.slot.iter().filter(|p| p.name.starts_with("state/")).map(|p| p.bytes).collect();
        assert_eq!(state, f.state, "every state buffer, in order");
        // The scratch comes after the state (CudaBackend carves the state
        // from the slot's front up to the first scratch part).
        let first_scratch = l.slot_part("scratch/gemm_in_f16").unwrap().offset;
        assert!(l.slot.iter().filter(|p| p.name.starts_with("state/")).all(|p| p.offset + p.bytes <= first_scratch));
        let bytes = |n: &str| l.slot_part(n).unwrap_or_else(|| panic!("no part {n}")).bytes;
        assert_eq!(bytes("scratch/scores"), 6 * 1500 * 1500 * 4);
        assert_eq!(bytes("cublas_workspace"), 32 << 20);
    }

    #[test]
    fn does_not_fit_says_needed_free_and_what_fits() {
        let cfg = ArenaConfig { max_sessions: 8, ..ArenaConfig::default() };
        let l = Layout::plan(&tiny(), &fp(), cfg).unwrap();
        let needed = l.needed_bytes().unwrap();
        assert_eq!(l.check_fits(needed), Ok(()));
        let free = needed - 1;
        let err = l.check_fits(free).unwrap_err();
        match &err {
            ArenaError::DoesNotFit { sessions, needed: n, free: f, fits } => {
                assert_eq!((*sessions, *n, *f, *fits), (8, needed, free, 7));
            }
            e => panic!("{e:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&needed.to_string()) && msg.contains(&free.to_string()) && msg.contains("at most 7"),
            "{msg}"
        );
        // The advice is right: 7 sessions do fit in that memory.
        let seven = Layout::plan(&tiny(), &fp(), ArenaConfig { max_sessions: 7, ..l.config.clone() }).unwrap();
        assert_eq!(seven.check_fits(free), Ok(()));
        // Not even the weights: say so.
        let err = l.check_fits(l.weights_bytes).unwrap_err();
        assert!(matches!(err, ArenaError::DoesNotFit { fits: 0, .. }));
        assert!(err.to_string().contains("not even one session"), "{err}");
    }

    #[test]
    fn sessions_that_fit_is_exact() {
        let l = Layout::plan(&tiny(), &fp(), ArenaConfig::default()).unwrap();
        for n in 1..20 {
            let at_n = Layout::plan(&tiny(), &fp(), ArenaConfig { max_sessions: n, ..l.config.clone() }).unwrap();
            let needed = at_n.needed_bytes().unwrap();
            assert_eq!(l.sessions_that_fit(needed), n);
            assert_eq!(l.sessions_that_fit(needed - 1), n - 1);
        }
        assert_eq!(l.sessions_that_fit(0), 0);
    }

    #[test]
    fn bad_configs_are_errors_not_panics() {
        assert_eq!(
            Layout::plan(&tiny(), &fp(), ArenaConfig { max_sessions: 0, ..Default::default() }),
            Err(ArenaError::NoSessions)
        );
        assert_eq!(
            Layout::plan(&tiny(), &fp(), ArenaConfig { max_seqs: 0, ..Default::default() }),
            Err(ArenaError::NoSequences)
        );
        let absurd = Footprint { weights: vec![u64::MAX / 2, u64::MAX / 2], ..fp() };
        assert_eq!(Layout::plan(&tiny(), &absurd, ArenaConfig::default()), Err(ArenaError::Overflow));
        let many = ArenaConfig { max_sessions: usize::MAX, ..Default::default() };
        assert_eq!(Layout::plan(&tiny(), &fp(), many), Err(ArenaError::Overflow));
    }

    #[test]
    fn weights_cursor_fills_the_planned_region_exactly() {
        let l = Layout::plan(&tiny(), &fp(), ArenaConfig::default()).unwrap();
        let mut c = Cursor::new("weights", l.weights_bytes);
        for p in &l.weights {
            assert_eq!(c.take(p.bytes).unwrap(), p.offset, "{}", p.name);
        }
        assert!(matches!(c.take(1), Err(ArenaError::RegionFull { .. })));
        let mut c = Cursor::new("weights", 1000);
        assert_eq!(c.take(10).unwrap(), 0);
        assert_eq!(c.take(10).unwrap(), 256);
        assert!(c.take(u64::MAX).is_err());
        assert_eq!(c.used(), 266);
    }

    #[test]
    fn pool_admits_up_to_capacity_and_frees_on_drop() {
        let pool = SlotPool::new(3);
        let a = pool.try_acquire().unwrap();
        let b = pool.try_acquire().unwrap();
        let c = pool.try_acquire().unwrap();
        assert_eq!((a.index(), b.index(), c.index()), (0, 1, 2));
        assert_eq!(pool.available(), 0);
        assert_eq!(pool.try_acquire().unwrap_err(), PoolFull { capacity: 3 });
        drop(b);
        assert_eq!(pool.available(), 1);
        let d = pool.try_acquire().unwrap();
        assert_eq!(d.index(), 1, "the freed slot is reused");
        drop((a, c, d));
        assert_eq!(pool.available(), 3);
        assert!(SlotPool::new(0).try_acquire().is_err());
    }

    #[test]
    fn pool_never_hands_one_slot_to_two_sessions() {
        let pool = SlotPool::new(4);
        let in_use: Arc<Vec<std::sync::atomic::AtomicBool>> =
            Arc::new((0..4).map(|_| std::sync::atomic::AtomicBool::new(false)).collect());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (pool, in_use) = (Arc::clone(&pool), Arc::clone(&in_use));
                std::thread::spawn(move || {
                    let mut admitted = 0;
                    for _ in 0..2000 {
                        if let Ok(lease) = pool.try_acquire() {
                            let flag = &in_use[lease.index()];
                            assert!(!flag.swap(true, std::sync::atomic::Ordering::SeqCst), "slot handed out twice");
                            flag.store(false, std::sync::atomic::Ordering::SeqCst);
                            admitted += 1;
                        }
                    }
                    admitted
                })
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(admitted > 0);
        assert_eq!(pool.available(), 4);
    }

    #[test]
    fn the_pool_is_idle_only_after_the_last_session_has_been_gone_long_enough() {
        let pool = SlotPool::new(2);
        let idle = Duration::from_millis(150);
        // A new pool counts as idle from its start: an unused daemon lets go.
        let t = Instant::now();
        assert!(pool.wait_idle(idle));
        assert!(t.elapsed() >= idle);
        // Used up: the next idle period starts when the last session leaves.
        let (a, b) = (pool.try_acquire().unwrap(), pool.try_acquire().unwrap());
        let waiter = {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || {
                let r = pool.wait_idle(idle);
                (r, Instant::now())
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        drop(a);
        std::thread::sleep(Duration::from_millis(100));
        let last_left = Instant::now();
        drop(b);
        let (r, when) = waiter.join().unwrap();
        assert!(r);
        assert!(when.duration_since(last_left) >= idle, "idle is counted from the last session's end");
        // Closing the pool (the backend is dropped) wakes a waiter with false.
        drop(pool.try_acquire().unwrap());
        let closer = {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                pool.close();
            })
        };
        assert!(!pool.wait_idle(Duration::from_secs(60)));
        closer.join().unwrap();
    }
}
