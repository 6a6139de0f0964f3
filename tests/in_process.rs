//! The server started in-process on a free loopback port with the fake tone
//! engine (as mini-redis's `start_server`): routing, authentication,
//! admission and shutdown over real sockets, in milliseconds and without a
//! model. The same paths on real speech through the binary are in
//! `daemon.rs` and `reliability.rs`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::daemon::{http, session, try_upgrade, Step};
use scribed::config::{Config, FileConfig, Overrides};
use scribed::decode::DecodeError;
use scribed::engine::tones::{self, ToneEngine};
use scribed::engine::{Engine, EngineStream};
use scribed::model::ModelError;
use tokio::sync::oneshot;

/// A running in-process server; dropping `stop` (or sending on it) shuts it
/// down.
struct Server {
    addr: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start_server(file: FileConfig) -> Server {
    start_server_with(Arc::new(ToneEngine), file).await
}

async fn start_server_with(engine: Arc<dyn Engine>, file: FileConfig) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free loopback port");
    let addr = listener.local_addr().expect("bound").to_string();
    let mut config = Config::merge(file, Overrides::default(), "tones".into()).expect("valid test config");
    // Tones are not voices: the energy gate hears them.
    config.vad = scribed::audio::vad::VadKind::Energy;
    let (shared, stop_sessions) = scribed::server::Shared::new(engine, config);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(scribed::server::run(listener, shared, stop_sessions, async {
        let _ = stopped.await;
    }));
    Server { addr, stop, task }
}

impl Server {
    /// Shuts down and waits for `run` to return.
    async fn shut_down(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(5), self.task).await.expect("run returns").expect("no panic");
    }

    /// A blocking raw HTTP request, off the runtime's threads.
    async fn get(&self, path: &'static str, headers: &'static [&'static str]) -> (u16, String, String) {
        let addr = self.addr.clone();
        tokio::task::spawn_blocking(move || http(&addr, path, headers)).await.expect("request")
    }

    async fn upgrade(&self, path: &'static str) -> (u16, String, String) {
        let addr = self.addr.clone();
        tokio::task::spawn_blocking(move || try_upgrade(&addr, path)).await.expect("request")
    }
}

/// The tone words as 100 ms linear16 frames, then `CloseStream`.
fn steps(ks: &[usize]) -> Vec<Step> {
    let mut v: Vec<Step> = tones::linear16(0.3, ks).chunks(3_200).map(|c| Step::Audio(c.to_vec())).collect();
    v.push(Step::Text(r#"{"type":"CloseStream"}"#.into()));
    v
}

const LISTEN: &str = "/v1/listen?encoding=linear16&sample_rate=16000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_over_a_socket_needs_its_key_and_shutdown_waits_for_it() {
    let server = start_server(FileConfig { api_keys: Some(vec!["k1".into()]), ..FileConfig::default() }).await;
    let url = format!("ws://{}{LISTEN}", server.addr);

    let (status, _, body) =
        server.get("/v1/listen?encoding=linear16&sample_rate=16000", &common::daemon::UPGRADE).await;
    assert_eq!(status, 401, "{body}");

    let run = session(&url, &[("Authorization", "Token k1")], steps(&[2, 4, 6]), Duration::ZERO).await;
    assert_eq!(run.finals(), "two four six");
    assert_eq!(run.of_type("Metadata").len(), 1);
    assert_eq!(run.close, Some(1000));
    server.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_sessions_is_503_until_the_slot_frees() {
    let server = start_server(FileConfig { max_sessions: Some(1), ..FileConfig::default() }).await;
    let url = format!("ws://{}{LISTEN}", server.addr);
    let (first, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("first session");

    let (status, head, _) = server.upgrade(LISTEN).await;
    assert_eq!(status, 503, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    assert_eq!(server.get("/readyz", &[]).await.0, 503, "no free slot: not ready");

    drop(first);
    let mut status = 0;
    for _ in 0..100 {
        status = server.get("/readyz", &[]).await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200, "the slot of a vanished client is free again");
    let run = session(&url, &[], steps(&[7]), Duration::ZERO).await;
    assert_eq!(run.finals(), "seven");
    server.shut_down().await;
}

/// The tone engine on a device that has failed for good (a lost CUDA
/// context): what `/readyz` says then.
struct FailedDevice;

impl Engine for FailedDevice {
    fn name(&self) -> &str {
        ToneEngine.name()
    }
    fn uuid(&self) -> &str {
        ToneEngine.uuid()
    }
    fn is_multilingual(&self) -> bool {
        false
    }
    fn resolve_language(&self, code_or_name: &str) -> Result<&'static str, DecodeError> {
        ToneEngine.resolve_language(code_or_name)
    }
    fn stream(&self, max_seqs: usize) -> Result<Box<dyn EngineStream + '_>, ModelError> {
        static TONES: ToneEngine = ToneEngine;
        TONES.stream(max_seqs)
    }
    fn fatal_error(&self) -> Option<String> {
        Some("CUDA_ERROR_ILLEGAL_ADDRESS (injected)".into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_device_is_not_ready_and_says_why() {
    let server = start_server_with(Arc::new(FailedDevice), FileConfig::default()).await;
    let (status, _, body) = server.get("/readyz", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("device failed") && body.contains("CUDA_ERROR_ILLEGAL_ADDRESS"), "{body}");
    assert_eq!(server.get("/healthz", &[]).await.0, 200, "alive, though not ready");
    server.shut_down().await;
}
