//! Driving a real `scribed serve` from tests: the daemon on a free loopback
//! port (killed on drop), raw HTTP requests, and a websocket client session
//! that plays audio frames and collects every server message.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::{bin, manifest, shared_audio};

/// A running daemon, killed on drop.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
}

impl Daemon {
    pub fn start(model: &Path, extra: &[&str]) -> Daemon {
        Daemon::start_with_env(model, extra, &[])
    }

    pub fn start_with_env(model: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut child = Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--threads", "2", "--model"])
            .arg(model)
            .args(extra)
            // SCRIBED_TEST_LOG (e.g. `scribed=trace`) shows a test daemon's own log.
            .env("RUST_LOG", std::env::var("SCRIBED_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("scribed serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("address line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Daemon { child, addr }
    }

    /// A daemon started with `toml` as its config file (kept in the
    /// returned folder for as long as the daemon runs) and `extra` flags.
    pub fn with_config(model: &Path, toml: &str, extra: &[&str]) -> (tempfile::TempDir, Daemon) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("scribed.toml");
        std::fs::write(&cfg, toml).unwrap();
        let args: Vec<&str> = ["--config", cfg.to_str().unwrap()].into_iter().chain(extra.iter().copied()).collect();
        let d = Daemon::start(model, &args);
        (dir, d)
    }

    pub fn ws(&self, query: &str) -> String {
        format!("ws://{}/v1/listen?{query}", self.addr)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One raw HTTP/1.1 request: (status, head, body).
pub fn http(addr: &str, path: &str, headers: &[&str]) -> (u16, String, String) {
    request(addr, path, headers, false)
}

/// A websocket upgrade request: returns as soon as a 101 head is in (the
/// server would keep that connection open), else the whole refusal.
pub fn try_upgrade(addr: &str, path: &str) -> (u16, String, String) {
    request(addr, path, &UPGRADE, true)
}

/// Sends a GET and reads the answer to its end, or only to the end of a 101
/// head when `until_upgrade`.
pub fn request(addr: &str, path: &str, headers: &[&str], until_upgrade: bool) -> (u16, String, String) {
    exchange(addr, "GET", path, headers, &[], until_upgrade)
}

/// A POST with `body` (and its Content-Length), read to its end.
pub fn post(addr: &str, path: &str, headers: &[&str], body: &[u8]) -> (u16, String, String) {
    let length = format!("Content-Length: {}", body.len());
    let headers: Vec<&str> = headers.iter().copied().chain([length.as_str()]).collect();
    exchange(addr, "POST", path, &headers, body, false)
}

/// One raw HTTP/1.1 exchange: `body` is sent as is (the caller's headers
/// say how long it is).
pub fn exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
    until_upgrade: bool,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // The server may answer (413, 411) without reading the body.
    let _ = s.write_all(body);
    // A POST waits for its transcription.
    let wait = if method == "POST" { 120 } else { 10 };
    s.set_read_timeout(Some(Duration::from_secs(wait))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if until_upgrade && buf.starts_with(b"HTTP/1.1 101") && buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// The value of an unlabelled metric in the daemon's `/metrics`.
pub fn metric(addr: &str, name: &str) -> f64 {
    let (_, _, body) = http(addr, "/metrics", &[]);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

pub const UPGRADE: [&str; 4] = [
    "Connection: Upgrade",
    "Upgrade: websocket",
    "Sec-WebSocket-Version: 13",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
];

pub fn pcm16(samples: &[f32]) -> Vec<u8> {
    samples.iter().flat_map(|&x| ((x.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes()).collect()
}

pub fn load(name: &str) -> Vec<f32> {
    scribed::audio::load_mono_16k(&shared_audio(name)).expect("shared audio decodes")
}

/// Everything a session returned.
#[derive(Debug, Default)]
pub struct Run {
    pub msgs: Vec<Value>,
    pub close: Option<u16>,
}

impl Run {
    pub fn of_type(&self, t: &str) -> Vec<&Value> {
        self.msgs.iter().filter(|m| m["type"] == t).collect()
    }

    pub fn finals(&self) -> String {
        self.of_type("Results")
            .into_iter()
            .filter(|m| m["is_final"] == true)
            .map(|m| m["channel"]["alternatives"][0]["transcript"].as_str().unwrap_or("").to_string())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn texts(&self) -> Vec<String> {
        self.of_type("Results")
            .into_iter()
            .filter_map(|m| m["channel"]["alternatives"][0]["transcript"].as_str())
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect()
    }
}

pub enum Step {
    Audio(Vec<u8>),
    Text(String),
    Pause(Duration),
}

/// Plays `steps` (audio frames paced `frame_gap` apart) while collecting
/// every server message until the close.
pub async fn session(url: &str, headers: &[(&'static str, &str)], steps: Vec<Step>, frame_gap: Duration) -> Run {
    session_within(url, headers, steps, frame_gap, Duration::from_secs(150)).await
}

/// [`session`] with its own time limit, for sessions meant to be slow.
pub async fn session_within(
    url: &str,
    headers: &[(&'static str, &str)],
    steps: Vec<Step>,
    frame_gap: Duration,
    limit: Duration,
) -> Run {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(*k, HeaderValue::from_str(v).unwrap());
    }
    let (ws, _) = tokio_tungstenite::connect_async(req).await.expect("websocket upgrade");
    let (mut tx, mut rx) = ws.split();
    let sender = async move {
        let start = tokio::time::Instant::now();
        let mut at = start;
        for s in steps {
            match s {
                Step::Audio(b) => {
                    tokio::time::sleep_until(at).await;
                    at += frame_gap;
                    if tx.send(Message::binary(b)).await.is_err() {
                        break;
                    }
                }
                Step::Text(t) => {
                    if tx.send(Message::text(t)).await.is_err() {
                        break;
                    }
                }
                Step::Pause(d) => {
                    tokio::time::sleep(d).await;
                    at = tokio::time::Instant::now();
                }
            }
        }
        // Keep the sink alive until the server closes.
        tokio::time::sleep(Duration::from_secs(600)).await;
    };
    let receiver = async {
        let mut run = Run::default();
        while let Some(m) = rx.next().await {
            match m {
                Ok(Message::Text(t)) => run.msgs.push(serde_json::from_str(t.as_str()).expect("server sends JSON")),
                Ok(Message::Close(f)) => {
                    run.close = f.map(|f| u16::from(f.code));
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        run
    };
    tokio::select! {
        run = receiver => run,
        _ = sender => unreachable!(),
        _ = tokio::time::sleep(limit) => panic!("session timed out after {limit:?}"),
    }
}

/// 16 kHz samples as linear16 frames of `ms`, then CloseStream.
pub fn frames16(samples: &[f32], ms: usize) -> Vec<Step> {
    let mut v: Vec<Step> = samples.chunks(16 * ms).map(|c| Step::Audio(pcm16(c))).collect();
    v.push(Step::Text(r#"{"type":"CloseStream"}"#.into()));
    v
}

pub fn offline(model: &Path, file: &str) -> String {
    let o = Command::new(bin())
        .args(["transcribe", "--beam", "1", "--threads", "2", "--model"])
        .arg(model)
        .arg(shared_audio(file))
        .output()
        .expect("transcribe runs");
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout).replace('\n', " ")
}

pub fn reference(file: &str) -> String {
    manifest().into_iter().find(|e| e.file == file).and_then(|e| e.reference).expect("reference")
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}
