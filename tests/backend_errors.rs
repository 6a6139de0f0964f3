//! A compute device that fails mid-decode (a CUDA error) ends the work that
//! was using it with an error, never with text decoded from garbage: the
//! CPU backend wrapped so that one chosen operation fails, offline through
//! `Transcriber` and live through the in-process server, where only the
//! session that hit the error ends and the next one is served.

mod common;

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::daemon::{frames16, load, session};
use common::{model_dir, wer};
use scribed::backend::cpu::{Cpu, CpuBuf, CpuMatrix};
use scribed::backend::{Activation, AttentionShape, Backend, BackendError, HostMatrix, Precision, View, Write};
use scribed::config::{Config, FileConfig, Overrides};
use scribed::decode::{DecodeError, DecodeOptions, Transcriber};
use scribed::engine::WhisperEngine;
use scribed::model::Whisper;
use tokio::sync::oneshot;

/// The CPU backend, except that the `fail_at`-th buffer operation (counted
/// from 1 over every thread) returns a device error, as a CUDA launch or
/// copy would; the ones after it succeed again, so a later session is fine.
/// Clones share the counters (the test keeps one, the model the other).
#[derive(Clone)]
struct Flaky(Arc<Counters>);

struct Counters {
    ops: AtomicUsize,
    fail_at: AtomicUsize,
}

impl Flaky {
    fn new() -> Self {
        Flaky(Arc::new(Counters { ops: AtomicUsize::new(0), fail_at: AtomicUsize::new(usize::MAX) }))
    }

    /// Makes the `n`-th operation from now fail.
    fn fail_in(&self, n: usize) {
        self.0.fail_at.store(self.0.ops.load(Ordering::SeqCst) + n, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), BackendError> {
        let op = self.0.ops.fetch_add(1, Ordering::SeqCst) + 1;
        if op == self.0.fail_at.load(Ordering::SeqCst) {
            return Err(BackendError::Device("injected: CUDA_ERROR_LAUNCH_FAILED".into()));
        }
        Ok(())
    }
}

fn cpu_view(v: View<'_, Flaky>) -> View<'_, Cpu> {
    View::cols(v.buf, v.col, v.width)
}

impl Backend for Flaky {
    type Matrix = CpuMatrix;
    type Vector = Vec<f32>;
    type Buf = CpuBuf;
    type Lane = ();

    fn name(&self) -> &'static str {
        "flaky"
    }
    fn matrix(&self, r: usize, c: usize, d: HostMatrix<'_>, p: Precision) -> Result<CpuMatrix, BackendError> {
        Cpu.matrix(r, c, d, p)
    }
    fn vector(&self, data: &[f32]) -> Result<Vec<f32>, BackendError> {
        Cpu.vector(data)
    }
    fn lane(&self) -> Result<(), BackendError> {
        Cpu.lane()
    }
    fn buffer(&self, lane: &(), max_rows: usize, cols: usize) -> Result<CpuBuf, BackendError> {
        Cpu.buffer(lane, max_rows, cols)
    }
    fn rows(&self, buf: &CpuBuf) -> usize {
        Cpu.rows(buf)
    }
    fn set_rows(&self, buf: &mut CpuBuf, rows: usize) {
        Cpu.set_rows(buf, rows)
    }
    fn upload(&self, data: &[f32], dst: &mut CpuBuf) -> Result<(), BackendError> {
        self.check()?;
        Cpu.upload(data, dst)
    }
    fn download(&self, src: &CpuBuf, rows: Range<usize>, out: &mut [f32]) -> Result<(), BackendError> {
        self.check()?;
        Cpu.download(src, rows, out)
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
        self.check()?;
        Cpu.linear(cpu_view(x), w, b, act, write, out)
    }
    fn layer_norm(
        &self,
        x: &CpuBuf,
        g: &Vec<f32>,
        b: &Vec<f32>,
        eps: f32,
        out: &mut CpuBuf,
    ) -> Result<(), BackendError> {
        self.check()?;
        Cpu.layer_norm(x, g, b, eps, out)
    }
    fn conv1d_gelu(
        &self,
        x: &CpuBuf,
        w: &CpuMatrix,
        b: &Vec<f32>,
        s: usize,
        out: &mut CpuBuf,
    ) -> Result<(), BackendError> {
        self.check()?;
        Cpu.conv1d_gelu(x, w, b, s, out)
    }
    fn add_rows(&self, x: &mut CpuBuf, table: &CpuMatrix, offset: usize) -> Result<(), BackendError> {
        self.check()?;
        Cpu.add_rows(x, table, offset)
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
        self.check()?;
        Cpu.embed(tokens, seq_len, pos0, embeddings, positions, out)
    }
    fn attention(
        &self,
        q: View<'_, Self>,
        k: View<'_, Self>,
        v: View<'_, Self>,
        shape: AttentionShape,
        out: &mut CpuBuf,
        probs: Option<(&mut CpuBuf, &[usize])>,
    ) -> Result<(), BackendError> {
        self.check()?;
        Cpu.attention(cpu_view(q), cpu_view(k), cpu_view(v), shape, out, probs)
    }
    fn copy_rows(&self, src: View<'_, Self>, s: &[usize], dst: &mut CpuBuf, d: &[usize]) -> Result<(), BackendError> {
        self.check()?;
        Cpu.copy_rows(cpu_view(src), s, dst, d)
    }
}

fn flaky_model() -> Option<(Whisper<Flaky>, Flaky)> {
    let dir = model_dir("tiny.en")?;
    let flaky = Flaky::new();
    let model = Whisper::load(&dir, flaky.clone()).expect("tiny.en loads");
    Some((model, flaky))
}

/// Offline: an error in the encoder, in the first decoder pass or deep in
/// the token loop is returned as `DecodeError::Backend`, and the same
/// transcriber decodes the file correctly afterwards.
#[test]
fn a_device_error_is_returned_not_decoded() {
    let Some((model, flaky)) = flaky_model() else { return };
    let audio = load("jfk.wav");
    let mut tr = Transcriber::new(&model, 1).unwrap();
    let opts = DecodeOptions { beam_size: 1, best_of: 1, temperatures: vec![0.0], ..DecodeOptions::default() };
    // The encoder runs ~40 operations, the prompt pass ~50, each token ~50.
    for n in [1, 30, 70, 400] {
        flaky.fail_in(n);
        match tr.transcribe(&audio, &opts, &mut |_| {}) {
            Err(DecodeError::Backend(e)) => assert!(e.to_string().contains("injected"), "{e}"),
            other => panic!("operation {n} failed but transcribe returned {other:?}"),
        }
    }
    let text = |tr: &mut Transcriber<'_, Flaky>| -> String {
        tr.transcribe(&audio, &opts, &mut |_| {}).unwrap().segments.iter().map(|s| s.text.clone()).collect()
    };
    let after = text(&mut tr);
    let fresh = text(&mut Transcriber::new(&model, 1).unwrap());
    assert_eq!(after, fresh, "the transcriber that saw the errors decodes as a new one");
    let reference = common::daemon::reference("jfk.wav");
    assert!(wer(&reference, &after) <= 0.10, "{after}");
}

/// Live: the session whose decode fails gets an error and a close, the
/// daemon stays up, and the next session transcribes jfk.wav.
#[test]
fn a_device_error_ends_its_session_only() {
    let Some((model, flaky)) = flaky_model() else { return };
    common::daemon::rt().block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let config = Config::merge(FileConfig::default(), Overrides::default(), "tiny.en".into()).unwrap();
        let engine = Arc::new(WhisperEngine::new(model));
        let (shared, stop_sessions) = scribed::server::Shared::new(engine, config);
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(scribed::server::run(listener, shared, stop_sessions, async {
            let _ = stopped.await;
        }));
        let url = format!("ws://{addr}/v1/listen?encoding=linear16&sample_rate=16000&punctuate=true");
        let audio = load("jfk.wav");

        flaky.fail_in(500);
        let failed = session(&url, &[], frames16(&audio, 100), Duration::from_millis(5)).await;
        let errors = failed.of_type("Error");
        assert_eq!(errors.len(), 1, "one error message: {:?}", failed.msgs);
        assert!(errors[0].to_string().contains("injected"), "{}", errors[0]);
        assert_eq!(failed.close, Some(1011), "closed as a server error");

        let ok = session(&url, &[], frames16(&audio, 100), Duration::from_millis(5)).await;
        assert!(ok.of_type("Error").is_empty(), "{:?}", ok.msgs);
        let reference = common::daemon::reference("jfk.wav");
        assert!(wer(&reference, &ok.finals()) <= 0.10, "next session: {}", ok.finals());

        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(10), server).await.expect("run returns").expect("no panic");
    });
}
