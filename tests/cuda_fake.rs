//! The CUDA backend, unchanged, on the fake CUDA device of `tests/fake_cuda`:
//! every `Backend` operation of `CudaBackend` against `Cpu` on random inputs,
//! and a whole tiny.en window decoding the CPU's tokens.
//!
//! The fake (driver API, NVRTC, cuBLAS in one library, see its header) is
//! built once per source version and preloaded by absolute path, so that
//! cudarc's later `dlopen("libcuda.so")` (and the NVRTC and cuBLAS names)
//! find it without touching `LD_LIBRARY_PATH`. It runs each stream's work at
//! its synchronisation point, so a missing synchronisation gives wrong
//! numbers here, and it fails any call that breaks CUDA's rules; every test
//! ends by asserting its report: no violation, and one device allocation per
//! `CudaBackend` (the arena), freed when the backend drops.
//!
//! Bounds: where the GPU narrows activations to f16 for a GEMM, each output
//! may differ from the CPU's by 2⁻¹⁰·Σ|xᵢwᵢ| (f16's unit round-off, twice,
//! over the dot product's terms); f32 operations agree to float rounding;
//! copies, gathers and embeddings exactly. Without g++ one SKIP line is
//! printed and the tests pass.

mod common;

use std::ffi::{c_char, CStr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use half::f16;
use scribed::backend::cpu::{Cpu, CpuBuf};
use scribed::backend::cuda::arena::ArenaConfig;
use scribed::backend::cuda::backend::CudaBuf;
use scribed::backend::cuda::{ArenaSizer, CudaBackend, Footprint};
use scribed::backend::{Activation, AttentionShape, Backend, HostMatrix, Precision, View, Write};
use scribed::decode::{DecodeOptions, Transcriber};
use scribed::model::{Dims, Whisper};

use common::daemon::{self, Daemon};
use common::numeric::{assert_close, Rng};

// ------------------------------------------------------------- the fake --

struct Fake {
    _libs: Vec<libloading::os::unix::Library>,
    report: unsafe extern "C" fn() -> *const c_char,
}

/// The directory the fake is built in; `None` (after one SKIP line) where
/// it cannot be built.
fn fake_dir() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = build_fake();
        if dir.is_none() {
            eprintln!("SKIP cuda_fake: g++ (C++20) is not available to build the fake CUDA device");
        }
        dir
    })
    .as_deref()
}

/// The fake device, loaded into this process.
fn fake() -> Option<&'static Fake> {
    static FAKE: OnceLock<Option<Fake>> = OnceLock::new();
    FAKE.get_or_init(|| {
        let dir = fake_dir()?;
        use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
        // libcuda.so first: the others depend on it by that name.
        let libs: Vec<Library> = ["libcuda.so", "libnvrtc.so", "libcublas.so", "libcublasLt.so"]
            .iter()
            // SAFETY: our own library; its initialisers only set up statics.
            .map(|n| unsafe { Library::open(Some(dir.join(n)), RTLD_NOW | RTLD_GLOBAL) }.expect("load the fake"))
            .collect();
        // SAFETY: the symbol is `const char* fake_cuda_report()`.
        let report = unsafe { *libs[0].get::<unsafe extern "C" fn() -> *const c_char>(b"fake_cuda_report\0").unwrap() };
        Some(Fake { _libs: libs, report })
    })
    .as_ref()
}

/// Builds the fake into a directory named by the hash of its sources and
/// the shim's, so an unchanged fake is built once.
fn build_fake() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for d in ["tests/fake_cuda", "kernels/shim"] {
        files.extend(std::fs::read_dir(root.join(d)).ok()?.filter_map(|e| e.ok().map(|e| e.path())));
    }
    files.sort();
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for f in &files {
        for b in std::fs::read(f).ok()? {
            hash = (hash ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fake-cuda-{hash:016x}"));
    if dir.join("libcublasLt.so").is_file() {
        return Some(dir);
    }
    Command::new("g++").arg("--version").output().ok()?;
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    let out = Command::new("bash").arg(root.join("tests/fake_cuda/build.sh")).arg(&tmp).output().expect("run build.sh");
    assert!(out.status.success(), "building the fake CUDA device failed:\n{}", String::from_utf8_lossy(&out.stderr));
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another test process built it first.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Some(dir)
}

fn report(f: &Fake) -> serde_json::Value {
    // SAFETY: returns a NUL-terminated JSON string valid until the next call
    // on this thread.
    let text = unsafe { CStr::from_ptr((f.report)()) }.to_string_lossy().into_owned();
    serde_json::from_str(&text).expect("the fake's report is JSON")
}

/// Backends made and dropped by this process's tests: each owns exactly one
/// device allocation, its arena.
static BACKENDS_MADE: AtomicUsize = AtomicUsize::new(0);
static BACKENDS_DROPPED: AtomicUsize = AtomicUsize::new(0);
/// Tests that make backends run one at a time, so the counts above can be
/// compared with the fake's at the end of each.
static SERIAL: Mutex<()> = Mutex::new(());

/// A backend on the fake device with room for `footprint`, counted (see
/// [`assert_clean`]); call [`dropped`] once it (or the model owning it) is gone.
fn backend(dims: &Dims, footprint: &Footprint, max_sessions: usize) -> CudaBackend {
    let cfg = ArenaConfig { max_sessions, ..ArenaConfig::default() };
    let b = CudaBackend::new(0, dims, footprint, cfg).expect("CudaBackend on the fake device");
    BACKENDS_MADE.fetch_add(1, Ordering::SeqCst);
    b
}

/// Room for the operation tests' weights and buffers (there is no model to
/// measure): 4 MiB of weights, 8 MiB of buffers per slot.
fn room() -> Footprint {
    Footprint { weights: vec![4 << 20], state: vec![8 << 20] }
}

fn dropped() {
    BACKENDS_DROPPED.fetch_add(1, Ordering::SeqCst);
}

/// Every rule kept, and the arena the only allocation, freed with its backend.
fn assert_clean(f: &Fake) {
    let r = report(f);
    assert_eq!(r["violations"], 0, "the fake device saw violations: {}", r["violation_list"]);
    let made = BACKENDS_MADE.load(Ordering::SeqCst) as u64;
    assert_eq!(r["allocs"], made, "one device allocation per backend (the arena), no other: {r}");
    assert_eq!(r["frees"], BACKENDS_DROPPED.load(Ordering::SeqCst) as u64, "the arena is freed with its backend: {r}");
    eprintln!("fake device report: {r}");
}

// ---------------------------------------------------------------- helpers --

/// A small model shape: every operation of every kind, quickly.
fn small_dims() -> Dims {
    Dims {
        n_mels: 80,
        audio_ctx: 100,
        d_model: 64,
        encoder_heads: 4,
        encoder_layers: 1,
        vocab: 200,
        text_ctx: 16,
        decoder_heads: 4,
        decoder_layers: 1,
    }
}

/// The same data in a buffer of each backend.
struct Pair {
    cpu: CpuBuf,
    gpu: CudaBuf,
}

struct Both<'a> {
    gpu: &'a CudaBackend,
    lane: &'a <CudaBackend as Backend>::Lane,
}

impl Both<'_> {
    fn pair(&self, rows: usize, cols: usize, data: &[f32]) -> Pair {
        let mut cpu = Cpu.buffer(&(), rows, cols).unwrap();
        let mut gpu = self.gpu.buffer(self.lane, rows, cols).unwrap();
        if !data.is_empty() {
            Cpu.upload(data, &mut cpu).unwrap();
            self.gpu.upload(data, &mut gpu).unwrap();
        }
        Pair { cpu, gpu }
    }

    fn down(&self, p: &Pair) -> (Vec<f32>, Vec<f32>) {
        let rows = Cpu.rows(&p.cpu);
        assert_eq!(rows, self.gpu.rows(&p.gpu), "row counts differ");
        let mut g = vec![f32::NAN; rows * p.cpu.cols()];
        self.gpu.download(&p.gpu, 0..rows, &mut g).unwrap();
        (g, p.cpu.as_slice().to_vec())
    }
}

/// Σ|xᵢwᵢ| per output of `x · Wᵀ` (rows of x against rows of w), the scale
/// of f16 rounding's effect on each.
fn magnitudes(x: &[f32], w: &[f16], k: usize) -> Vec<f32> {
    let n = w.len() / k;
    let mut m = Vec::with_capacity(x.len() / k * n);
    for xr in x.chunks(k) {
        for wr in w.chunks(k) {
            m.push(xr.iter().zip(wr).map(|(a, b)| (a * b.to_f32()).abs()).sum());
        }
    }
    m
}

// ------------------------------------------------------------------ tests --

#[test]
fn every_backend_op_matches_the_cpu_on_random_inputs() {
    let Some(f) = fake() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dims = small_dims();
    let g = backend(&dims, &room(), 2);
    let gpu = &g;
    let lane = gpu.lane().unwrap();
    let both = Both { gpu, lane: &lane };
    let mut rng = Rng(7);
    let d = dims.d_model;

    // upload / download
    let data = rng.vec(5 * d, 3.0);
    let p = both.pair(5, d, &data);
    let (got, want) = both.down(&p);
    assert_eq!(got, want, "upload then download");

    // linear: a band of a wider buffer, every activation and write mode, a
    // decoding step's few rows and an encoder's many.
    for m in [3, 37] {
        let (k, n, x_cols, col) = (d, 4 * d, 3 * d, d);
        let x = rng.vec(m * x_cols, 2.0);
        let w = rng.vec16(n * k, 0.3);
        let bias = rng.vec(n, 0.5);
        let resid = rng.vec(m * n, 1.0);
        let band: Vec<f32> = x.chunks(x_cols).flat_map(|r| r[col..col + k].to_vec()).collect();
        let mag = magnitudes(&band, &w, k);
        let (wc, wg) = (
            Cpu.matrix(n, k, HostMatrix::F16(&w), Precision::F16).unwrap(),
            gpu.matrix(n, k, HostMatrix::F16(&w), Precision::F16).unwrap(),
        );
        let (bc, bg) = (Cpu.vector(&bias).unwrap(), gpu.vector(&bias).unwrap());
        let xp = both.pair(m, x_cols, &x);
        for (act, write) in [
            (Activation::None, Write::Overwrite),
            (Activation::Gelu, Write::Overwrite),
            (Activation::None, Write::Accumulate),
            (Activation::Gelu, Write::Accumulate),
        ] {
            if act == Activation::Gelu && write == Write::Accumulate && m > 8 {
                // The CPU's GEMM path computes gelu(out + x·Wᵀ + b) here (see
                // tests/kernels_cpu.rs); the model never asks for it.
                continue;
            }
            let mut out = both.pair(m, n, &resid);
            Cpu.linear(View::cols(&xp.cpu, col, k), &wc, Some(&bc), act, write, &mut out.cpu).unwrap();
            gpu.linear(View::cols(&xp.gpu, col, k), &wg, Some(&bg), act, write, &mut out.gpu).unwrap();
            let (got, want) = both.down(&out);
            assert_close(&format!("linear m={m} {act:?} {write:?}"), &got, &want, |i| mag[i] / 1024.0 + 1e-5);
        }
    }

    // layer norm, with an offset mean
    let x: Vec<f32> = rng.vec(7 * d, 3.0).iter().map(|v| v + 20.0).collect();
    let (gamma, beta) = (rng.vec(d, 1.5), rng.vec(d, 0.5));
    let xp = both.pair(7, d, &x);
    let mut out = both.pair(7, d, &[]);
    Cpu.layer_norm(&xp.cpu, &Cpu.vector(&gamma).unwrap(), &Cpu.vector(&beta).unwrap(), 1e-5, &mut out.cpu).unwrap();
    let (gg, bg) = (gpu.vector(&gamma).unwrap(), gpu.vector(&beta).unwrap());
    gpu.layer_norm(&xp.gpu, &gg, &bg, 1e-5, &mut out.gpu).unwrap();
    let (got, want) = both.down(&out);
    assert_close("layer_norm", &got, &want, |_| 2e-4);

    // conv stem: stride 1 (mel → d) then stride 2 (d → d), as the encoder
    for (c_in, stride, t_in) in [(dims.n_mels, 1, 2 * dims.audio_ctx), (d, 2, 2 * dims.audio_ctx)] {
        let x = rng.vec(t_in * c_in, 1.0);
        let w = rng.vec16(d * 3 * c_in, 0.2);
        let b = rng.vec(d, 0.3);
        let t_out = (t_in + 2 - 3) / stride + 1;
        // The im2col rows the GEMM sees, for each output's error budget.
        let mut cols = vec![0f32; t_out * 3 * c_in];
        for t in 0..t_out {
            for c in 0..c_in {
                for j in 0..3 {
                    let src = (t * stride + j) as isize - 1;
                    if (0..t_in as isize).contains(&src) {
                        cols[t * 3 * c_in + c * 3 + j] = x[src as usize * c_in + c];
                    }
                }
            }
        }
        let mag = magnitudes(&cols, &w, 3 * c_in);
        let xp = both.pair(t_in, c_in, &x);
        let mut out = both.pair(t_out, d, &[]);
        let wc = Cpu.matrix(d, 3 * c_in, HostMatrix::F16(&w), Precision::F32).unwrap();
        let wg = gpu.matrix(d, 3 * c_in, HostMatrix::F16(&w), Precision::F16).unwrap();
        Cpu.conv1d_gelu(&xp.cpu, &wc, &Cpu.vector(&b).unwrap(), stride, &mut out.cpu).unwrap();
        gpu.conv1d_gelu(&xp.gpu, &wg, &gpu.vector(&b).unwrap(), stride, &mut out.gpu).unwrap();
        let (got, want) = both.down(&out);
        assert_close(&format!("conv1d_gelu stride {stride}"), &got, &want, |i| mag[i] / 1024.0 + 1e-5);
    }

    // positional rows added, and token embeddings: exact
    let table = rng.vec16(dims.audio_ctx * d, 1.0);
    let x = rng.vec(7 * d, 1.0);
    let mut xp = both.pair(7, d, &x);
    Cpu.add_rows(&mut xp.cpu, &Cpu.matrix(dims.audio_ctx, d, HostMatrix::F16(&table), Precision::F16).unwrap(), 3)
        .unwrap();
    gpu.add_rows(&mut xp.gpu, &gpu.matrix(dims.audio_ctx, d, HostMatrix::F16(&table), Precision::F16).unwrap(), 3)
        .unwrap();
    let (got, want) = both.down(&xp);
    assert_eq!(got, want, "add_rows");

    let emb = rng.vec16(dims.vocab * d, 1.0);
    let pos = rng.vec16(dims.text_ctx * d, 1.0);
    let tokens = [5u32, 199, 0, 17, 42, 3];
    let mut out = both.pair(6, d, &[]);
    let (ec, pc) = (
        Cpu.matrix(dims.vocab, d, HostMatrix::F16(&emb), Precision::F16).unwrap(),
        Cpu.matrix(dims.text_ctx, d, HostMatrix::F16(&pos), Precision::F16).unwrap(),
    );
    let (eg, pg) = (
        gpu.matrix(dims.vocab, d, HostMatrix::F16(&emb), Precision::F16).unwrap(),
        gpu.matrix(dims.text_ctx, d, HostMatrix::F16(&pos), Precision::F16).unwrap(),
    );
    Cpu.embed(&tokens, 3, 4, &ec, &pc, &mut out.cpu).unwrap();
    gpu.embed(&tokens, 3, 4, &eg, &pg, &mut out.gpu).unwrap();
    let (got, want) = both.down(&out);
    assert_eq!(got, want, "embed");

    // attention: the encoder's (one long sequence), the decoder's causal
    // self-attention over a cache of two beams, cross-attention shared by
    // the beams (stride 0), and cross-attention returning alignment heads.
    let heads = dims.encoder_heads;
    let t = dims.audio_ctx;
    let qkv = rng.vec(t * 3 * d, 1.0);
    let qkv = both.pair(t, 3 * d, &qkv);
    let cache = rng.vec(2 * dims.text_ctx * 2 * d, 1.0);
    let cache = both.pair(2 * dims.text_ctx, 2 * d, &cache);
    let q = rng.vec(8 * d, 1.0);
    let q = both.pair(8, d, &q);
    let cases = [
        (
            "encoder",
            &qkv,
            &qkv,
            0,
            d,
            2 * d,
            AttentionShape { seqs: 1, q_len: t, kv_len: t, kv_seq_stride: t, heads, causal: false },
        ),
        (
            "decoder self",
            &q,
            &cache,
            0,
            0,
            d,
            AttentionShape { seqs: 2, q_len: 3, kv_len: 5, kv_seq_stride: dims.text_ctx, heads, causal: true },
        ),
        (
            "cross shared",
            &q,
            &qkv,
            0,
            d,
            2 * d,
            AttentionShape { seqs: 2, q_len: 4, kv_len: t, kv_seq_stride: 0, heads, causal: false },
        ),
    ];
    for (what, qb, kvb, qc, kc, vc, sh) in cases {
        let mut out = both.pair(sh.seqs * sh.q_len, d, &[]);
        Cpu.attention(
            View::cols(&qb.cpu, qc, d),
            View::cols(&kvb.cpu, kc, d),
            View::cols(&kvb.cpu, vc, d),
            sh,
            &mut out.cpu,
            None,
        )
        .unwrap();
        gpu.attention(
            View::cols(&qb.gpu, qc, d),
            View::cols(&kvb.gpu, kc, d),
            View::cols(&kvb.gpu, vc, d),
            sh,
            &mut out.gpu,
            None,
        )
        .unwrap();
        let (got, want) = both.down(&out);
        assert_close(&format!("attention {what}"), &got, &want, |i| 2e-5 * (1.0 + want[i].abs()));
    }
    let sh = AttentionShape { seqs: 1, q_len: 4, kv_len: t, kv_seq_stride: 0, heads, causal: false };
    let align = [1usize, 3];
    let mut out = both.pair(4, d, &[]);
    let mut probs = both.pair(align.len() * 4, t, &[]);
    Cpu.attention(
        View::cols(&q.cpu, 0, d),
        View::cols(&qkv.cpu, d, d),
        View::cols(&qkv.cpu, 2 * d, d),
        sh,
        &mut out.cpu,
        Some((&mut probs.cpu, &align)),
    )
    .unwrap();
    gpu.attention(
        View::cols(&q.gpu, 0, d),
        View::cols(&qkv.gpu, d, d),
        View::cols(&qkv.gpu, 2 * d, d),
        sh,
        &mut out.gpu,
        Some((&mut probs.gpu, &align)),
    )
    .unwrap();
    let (got, want) = both.down(&out);
    assert_close("attention with alignment heads", &got, &want, |i| 2e-5 * (1.0 + want[i].abs()));
    let (got, want) = both.down(&probs);
    assert_close("alignment heads' weights", &got, &want, |_| 1e-6);

    // row copies into a cache: exact
    let mut dst = both.pair(2 * dims.text_ctx, 2 * d, &vec![0.5; 2 * dims.text_ctx * 2 * d]);
    let (src_rows, dst_rows) = ([4usize, 0, 7], [16usize, 3, 20]);
    Cpu.copy_rows(View::cols(&qkv.cpu, d, 2 * d), &src_rows, &mut dst.cpu, &dst_rows).unwrap();
    gpu.copy_rows(View::cols(&qkv.gpu, d, 2 * d), &src_rows, &mut dst.gpu, &dst_rows).unwrap();
    let (got, want) = both.down(&dst);
    assert_eq!(got, want, "copy_rows");

    drop(lane);
    drop(g);
    dropped();
    assert_clean(f);
}

#[test]
fn a_tiny_en_window_decodes_the_cpus_tokens() {
    let Some(f) = fake() else { return };
    let Some(dir) = common::model_dir("tiny.en") else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let audio = scribed::audio::file::load_mono_16k(&common::shared_audio("jfk.wav")).unwrap();
    let opts = DecodeOptions { beam_size: 1, temperatures: vec![0.0], vad: false, ..DecodeOptions::default() };

    let cpu_model = Whisper::load(&dir, Cpu).unwrap();
    let want = Transcriber::new(&cpu_model, 1).unwrap().transcribe(&audio, &opts, &mut |_| {}).unwrap();

    let started = std::time::Instant::now();
    let got = {
        let model = Whisper::load_measured(&dir, ArenaSizer::default(), 1, |dims, sizer| {
            Ok(backend(dims, &sizer.footprint(), 1))
        })
        .unwrap();
        let mut t = Transcriber::new(&model, 1).unwrap();
        t.transcribe(&audio, &opts, &mut |_| {}).unwrap()
    };
    dropped();
    eprintln!("fake GPU: {:.1} s for jfk.wav; text: {}", started.elapsed().as_secs_f64(), got.text());
    let tokens = |t: &scribed::decode::Transcript| t.segments.iter().flat_map(|s| s.tokens.clone()).collect::<Vec<_>>();
    assert_eq!(tokens(&got), tokens(&want), "tokens: fake GPU {:?} vs CPU {:?}", got.text(), want.text());
    assert_clean(f);
}

/// Sessions opening and closing from many threads at once, more of them
/// than there are slots: each takes a lane (retrying while all are busy),
/// carves buffers, computes on its stream and checks the result. The fake
/// fails any stream used by two threads at once; afterwards every slot is
/// free and the arena is still the only allocation.
#[test]
fn a_thousand_sessions_from_64_threads_share_the_slots() {
    let Some(f) = fake() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dims = small_dims();
    let g = backend(&dims, &room(), 4);
    let d = dims.d_model;
    let (gamma, beta) = (g.vector(&vec![1.0; d]).unwrap(), g.vector(&vec![0.0; d]).unwrap());
    let opened = AtomicUsize::new(0);
    let busy = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..64 {
            let (g, gamma, beta, opened, busy) = (&g, &gamma, &beta, &opened, &busy);
            s.spawn(move || {
                let mut rng = Rng(t + 1);
                while opened.fetch_add(1, Ordering::SeqCst) < 1000 {
                    let lane = loop {
                        match g.lane() {
                            Ok(l) => break l,
                            Err(scribed::backend::BackendError::Busy { .. }) => {
                                busy.fetch_add(1, Ordering::Relaxed);
                                std::thread::yield_now();
                            }
                            Err(e) => panic!("lane: {e}"),
                        }
                    };
                    let x = rng.vec(2 * d, 2.0);
                    let mut xb = g.buffer(&lane, 2, d).unwrap();
                    let mut out = g.buffer(&lane, 2, d).unwrap();
                    g.upload(&x, &mut xb).unwrap();
                    g.layer_norm(&xb, gamma, beta, 1e-5, &mut out).unwrap();
                    let mut y = vec![0f32; 2 * d];
                    g.download(&out, 0..2, &mut y).unwrap();
                    for row in y.chunks(d) {
                        let mean: f32 = row.iter().sum::<f32>() / d as f32;
                        assert!(mean.abs() < 1e-4, "a normalised row has mean {mean}");
                    }
                }
            });
        }
    });
    assert_eq!(g.pool().available(), 4, "every slot is free again");
    eprintln!("1000 sessions on 4 slots; {} tries found every slot busy", busy.load(Ordering::Relaxed));
    drop(g);
    dropped();
    assert_clean(f);
}

/// Sends the daemon SIGTERM and waits for it to exit (it writes the fake's
/// report as it does).
fn stop(mut d: Daemon) {
    let pid = d.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    let status = d.child.wait().expect("daemon exits");
    assert!(status.success(), "daemon exit: {status}");
}

fn report_file(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("the fake wrote its report");
    serde_json::from_str(&text).expect("report is JSON")
}

/// The real binary with `--device cuda` on the fake (found by the library
/// path, as a driver would be): two concurrent sessions transcribe jfk.wav.
#[test]
fn the_daemon_on_cuda_serves_two_sessions_at_once() {
    let Some(dir) = fake_dir() else { return };
    let Some(model) = common::model_dir("tiny.en") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let rep = tmp.path().join("report.json");
    let env = [("LD_LIBRARY_PATH", dir.to_str().unwrap()), ("SCRIBED_FAKE_CUDA_REPORT", rep.to_str().unwrap())];
    let d = Daemon::start_with_env(&model, &["--device", "cuda", "--max-sessions", "2"], &env);
    let audio = daemon::load("jfk.wav");
    let url = d.ws("encoding=linear16&sample_rate=16000");
    let runs = daemon::rt().block_on(async {
        let one = || paced_jfk(&url, &audio);
        // While both hold their slots, a third is refused before the upgrade.
        let third = async {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let addr = d.addr.clone();
            tokio::task::spawn_blocking(move || {
                let refused = daemon::try_upgrade(&addr, "/v1/listen?encoding=linear16&sample_rate=16000");
                (refused, daemon::http(&addr, "/readyz", &[]).0, daemon::metric(&addr, "scribed_gpu_slots_free"))
            })
            .await
            .unwrap()
        };
        let (a, b, ((status, head, _), ready, free)) = tokio::join!(one(), one(), third);
        assert_eq!(status, 503, "all slots taken: {head}");
        assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
        assert_eq!((ready, free), (503, 0.0), "/readyz and the slot gauge say full");
        (a, b)
    });
    let reference = daemon::reference("jfk.wav");
    for run in [&runs.0, &runs.1] {
        assert_eq!(run.close, Some(1000), "closed normally: {:?}", run.msgs.last());
        let (errors, words) = common::word_errors(&reference, &run.finals());
        eprintln!("fake GPU session: {errors} of {words} words wrong: {}", run.finals());
        assert!(errors <= 1, "at most one word wrong: {:?}", run.finals());
    }
    // The arena gauges: both slots free again once the workers let go.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while daemon::metric(&d.addr, "scribed_gpu_slots_free") < 2.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(daemon::metric(&d.addr, "scribed_gpu_slots_free"), 2.0);
    assert_eq!(daemon::metric(&d.addr, "scribed_gpu_slots"), 2.0);
    let arena = daemon::metric(&d.addr, "scribed_gpu_arena_bytes");
    let used = daemon::metric(&d.addr, "scribed_gpu_arena_used_bytes");
    assert!(used > 0.0 && used < arena, "weights in use, slots not: {used} of {arena}");
    // The Grafana dashboard's GPU panels read these (the CPU ones are
    // checked in tests/metrics.rs).
    for name in common::dashboard_metrics().iter().filter(|n| n.starts_with("scribed_gpu_")) {
        assert!(daemon::metric(&d.addr, name) >= 0.0, "{name}");
    }
    stop(d);
    let r = report_file(&rep);
    assert_eq!(r["violations"], 0, "violations: {}", r["violation_list"]);
    assert_eq!((r["allocs"].as_u64(), r["frees"].as_u64()), (Some(1), Some(1)), "the arena only: {r}");
    assert_eq!(r["alloc_sizes"][0].as_f64(), Some(arena), "the gauge is the one allocation's size");
}

/// `idle_release_s`: with no session for that long the daemon gives the
/// arena's memory back to the device, and the next session takes the same
/// size again (at the same addresses, the weights copied back) and
/// transcribes as the first did.
#[test]
fn an_idle_arena_is_given_back_and_taken_again() {
    let Some(dir) = fake_dir() else { return };
    let Some(model) = common::model_dir("tiny.en") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (rep, conf) = (tmp.path().join("report.json"), tmp.path().join("scribed.toml"));
    std::fs::write(&conf, "idle_release_s = 0.05\n").unwrap();
    let env = [("LD_LIBRARY_PATH", dir.to_str().unwrap()), ("SCRIBED_FAKE_CUDA_REPORT", rep.to_str().unwrap())];
    let d = Daemon::start_with_env(
        &model,
        &["--device", "cuda", "--max-sessions", "1", "--config", conf.to_str().unwrap()],
        &env,
    );
    let audio = daemon::load("jfk.wav");
    let url = d.ws("encoding=linear16&sample_rate=16000");
    let reference = daemon::reference("jfk.wav");
    let arena = |d: &Daemon| daemon::metric(&d.addr, "scribed_gpu_arena_bytes");
    let wait_for_release = |d: &Daemon| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while arena(d) > 0.0 {
            assert!(std::time::Instant::now() < deadline, "the idle arena was not given back");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(daemon::metric(&d.addr, "scribed_gpu_arena_used_bytes"), 0.0);
        assert_eq!(daemon::http(&d.addr, "/readyz", &[]).0, 200, "a released arena still takes sessions");
    };
    // An unused daemon lets go too (the idle period counts from the end of
    // the model's load).
    wait_for_release(&d);
    let run = daemon::rt().block_on(paced_jfk(&url, &audio));
    assert_eq!(run.close, Some(1000), "closed normally: {:?}", run.msgs.last());
    let (errors, words) = common::word_errors(&reference, &run.finals());
    eprintln!("after a release: {errors} of {words} words wrong: {}", run.finals());
    assert!(errors <= 1, "the weights came back intact: {:?}", run.finals());
    // And once the session has gone, again.
    wait_for_release(&d);
    stop(d);
    let r = report_file(&rep);
    assert_eq!(r["violations"], 0, "violations: {}", r["violation_list"]);
    // At start-up, then for the session after the release; each given back.
    assert_eq!((r["allocs"].as_u64(), r["frees"].as_u64()), (Some(2), Some(2)), "{r}");
    let sizes: Vec<u64> = r["alloc_sizes"].as_array().unwrap().iter().filter_map(|v| v.as_u64()).collect();
    assert!(sizes.len() == 2 && sizes[0] == sizes[1] && sizes[0] > 0, "the same fixed size both times: {sizes:?}");
}

/// An arena that does not fit: `cuda` refuses to start and says what would
/// fit; `auto` says so and serves on the CPU.
#[test]
fn an_arena_that_does_not_fit_is_refused_or_falls_back() {
    let Some(dir) = fake_dir() else { return };
    let Some(model) = common::model_dir("tiny.en") else { return };
    // 1 GiB: 256 MiB reserved, so about 768 MiB free, less than the 512 MiB
    // reserve plus weights plus 8 slots need.
    let env = [("LD_LIBRARY_PATH", dir.to_str().unwrap()), ("SCRIBED_FAKE_CUDA_MEM", "1073741824")];
    let out = Command::new(common::bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--device", "cuda", "--max-sessions", "8", "--model"])
        .arg(&model)
        .envs(env)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused to start");
    assert!(err.contains("does not fit") || err.contains("needs"), "says the arena does not fit: {err}");
    assert!(err.contains("at most") || err.contains("not even one"), "says what fits: {err}");
    eprintln!("--device cuda: {}", err.lines().last().unwrap_or(""));

    let d = Daemon::start_with_env(&model, &["--device", "auto", "--max-sessions", "8"], &env);
    let (status, _, body) = daemon::http(&d.addr, "/readyz", &[]);
    assert_eq!(status, 200, "auto fell back to the CPU and serves: {body}");

    // A GPU without virtual memory management (which the arena needs to be
    // given back and taken again at the same addresses) is refused by name.
    let out = Command::new(common::bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--device", "cuda", "--model"])
        .arg(&model)
        .envs([("LD_LIBRARY_PATH", dir.to_str().unwrap()), ("SCRIBED_FAKE_CUDA_NO_VMM", "1")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("virtual memory management"), "{err}");
}

/// The arena is laid out from the model itself: loading tiny.en against
/// `ArenaSizer` counts every weight (37.8 M parameters at 2 bytes, ~75 MB)
/// and every buffer of a `State`, and a beam's state needs more than one
/// sequence's. No fake device needed.
#[test]
fn the_arena_is_measured_from_the_model() {
    let Some(dir) = common::model_dir("tiny.en") else { return };
    let measure = |max_seqs| {
        let mut seen = None;
        let r = Whisper::<Cpu>::load_measured(&dir, ArenaSizer::default(), max_seqs, |_, sizer| {
            seen = Some(sizer.footprint());
            Err(scribed::backend::BackendError::Device("measured only".into()))
        });
        assert!(r.is_err());
        seen.expect("the sizer was handed over")
    };
    let beam = measure(5);
    let mb = beam.weights.iter().sum::<u64>() as f64 / 1e6;
    assert!((74.0..80.0).contains(&mb), "tiny.en weights {mb} MB");
    assert!(beam.weights.contains(&(51864 * 384 * 2)), "the token embedding, in f16");
    // Whisper::state: the encoder's mel window (2 × 1500 frames × 80 bands)
    // first, and the decoder's logits for 5 sequences among the rest.
    assert_eq!(beam.state[0], 3000 * 80 * 4);
    assert!(beam.state.contains(&(5 * 51864 * 4)), "logits for 5 sequences");
    let greedy = measure(1);
    assert_eq!(greedy.weights, beam.weights);
    assert!(greedy.state.iter().sum::<u64>() < beam.state.iter().sum::<u64>());
}

/// The same operations with each stream's work run at once, as it is
/// enqueued (the other execution order CUDA allows), in a child process
/// (the fake reads its mode once).
#[test]
fn the_operations_also_match_when_work_runs_at_enqueue() {
    if std::env::var_os("SCRIBED_FAKE_CUDA_MODE").is_some() || fake_dir().is_none() {
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["every_backend_op_matches_the_cpu_on_random_inputs", "--exact", "--nocapture"])
        .env("SCRIBED_FAKE_CUDA_MODE", "enqueue")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("1 passed"), "enqueue mode:\n{text}");
    assert!(text.contains(r#""mode":"enqueue""#), "the child ran in enqueue mode:\n{text}");
}

/// A CUDA error that loses nothing else (the fake refuses one launch, as a
/// launch asking for too many resources is) ends its own session with an
/// error, and only that one: the daemon stays ready, and the next session on
/// the same slot transcribes jfk.wav.
#[test]
fn a_cuda_error_ends_only_its_own_session() {
    let Some(dir) = fake_dir() else { return };
    let Some(model) = common::model_dir("tiny.en") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let rep = tmp.path().join("report.json");
    let env = [
        ("LD_LIBRARY_PATH", dir.to_str().unwrap()),
        ("SCRIBED_FAKE_CUDA_FAIL_AT", "50"),
        ("SCRIBED_FAKE_CUDA_REPORT", rep.to_str().unwrap()),
    ];
    let d = Daemon::start_with_env(&model, &["--device", "cuda", "--max-sessions", "1"], &env);
    let audio = daemon::load("jfk.wav");
    let url = d.ws("encoding=linear16&sample_rate=16000");
    let run = || daemon::rt().block_on(paced_jfk(&url, &audio));
    let failed = run();
    assert_eq!(failed.close, Some(1011), "the session that met the error: {:?}", failed.msgs.last());
    assert!(failed.of_type("Error").iter().any(|e| e.to_string().contains("GPU slot")), "{:?}", failed.msgs);
    // Ready again once the failed session's worker has let go of the slot.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, _, body) = daemon::http(&d.addr, "/readyz", &[]);
        assert!(!body.contains("device failed"), "one launch's error is not the device's: {body}");
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "/readyz stayed {status}: {body}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let next = run();
    assert_eq!(next.close, Some(1000), "the next session: {:?}", next.msgs.last());
    let (errors, words) = common::word_errors(&daemon::reference("jfk.wav"), &next.finals());
    eprintln!("after the error: {errors} of {words} words wrong: {}", next.finals());
    assert!(errors <= 1, "{:?}", next.finals());
    stop(d);
    assert_eq!(report_file(&rep)["violations"], 0);
}

/// A lost CUDA context (the fake's injected illegal access, sticky as on a
/// GPU) ends the session with an error, and stops the daemon with a failure
/// status, so that its supervisor restarts it, instead of refusing every
/// later session with the same error.
#[test]
fn a_lost_context_ends_the_session_and_stops_the_daemon() {
    let Some(dir) = fake_dir() else { return };
    let Some(model) = common::model_dir("tiny.en") else { return };
    let env = [("LD_LIBRARY_PATH", dir.to_str().unwrap()), ("SCRIBED_FAKE_CUDA_STICKY_AFTER", "50")];
    let mut d = Daemon::start_with_env(&model, &["--device", "cuda", "--max-sessions", "2"], &env);
    let audio = daemon::load("jfk.wav");
    let url = d.ws("encoding=linear16&sample_rate=16000");
    let gap = std::time::Duration::from_millis(25);
    let run = daemon::rt().block_on(daemon::session_within(
        &url,
        &[],
        daemon::frames16(&audio, 100),
        gap,
        std::time::Duration::from_secs(120),
    ));
    assert_eq!(run.close, Some(1011), "the session ends with an internal error: {:?}", run.msgs.last());
    assert!(run.of_type("Error").iter().any(|e| e.to_string().contains("GPU")), "{:?}", run.msgs);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "the daemon kept running on a lost context");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(!status.success(), "a failure status for the supervisor: {status}");
}

/// jfk.wav streamed at four times real time, as the daemon tests here do:
/// the fake computes slowly, and a session that falls behind merges its
/// steps.
async fn paced_jfk(url: &str, audio: &[f32]) -> daemon::Run {
    let (gap, limit) = (std::time::Duration::from_millis(25), std::time::Duration::from_secs(300));
    daemon::session_within(url, &[], daemon::frames16(audio, 100), gap, limit).await
}
