//! Scale-out: two real daemons behind Debian's HAProxy, configured by
//! `systemd/haproxy.cfg` unchanged, all on loopback. Sessions spread over
//! both daemons, a full daemon is skipped, a draining one (SIGTERM) sends
//! its clients all their words, and a client that finds every daemon full
//! gets 503 with `Retry-After`.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::*;
use common::*;

const FAST: Duration = Duration::from_millis(10);

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// HAProxy on `front` with the repository's config, or `None` (and one
/// line) where it is not installed.
fn haproxy(front: &str, daemons: [&str; 2]) -> Option<Haproxy> {
    if Command::new("haproxy").arg("-v").output().is_err() {
        println!("skipped: haproxy is not installed (apt-get install haproxy; scripts/setup.sh --with-haproxy)");
        return None;
    }
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(repo().join("systemd/haproxy.cfg"))
        .env("SCRIBED_LB_BIND", front)
        .env("SCRIBED_1", daemons[0])
        .env("SCRIBED_2", daemons[1])
        .stdout(Stdio::null())
        .spawn()
        .expect("haproxy starts");
    Some(Haproxy(child))
}

/// The status line and headers of the answer to a websocket upgrade.
fn upgrade_head(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut req = format!("GET /v1/listen?encoding=linear16&sample_rate=16000 HTTP/1.1\r\nHost: {addr}\r\n");
    for h in UPGRADE {
        req.push_str(h);
        req.push_str("\r\n");
    }
    s.write_all(format!("{req}\r\n").as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).is_ok_and(|n| n == 1) {
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn active(d: &Daemon) -> u32 {
    metric(&d.addr, "scribed_sessions_active") as u32
}

/// Waits until the two daemons hold `want` sessions between them; returns
/// how many each holds.
fn wait_for_sessions(a: &Daemon, b: &Daemon, want: u32) -> (u32, u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = (active(a), active(b));
        if n.0 + n.1 == want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client that sends jfk, then only KeepAlive, until the server closes.
fn held_session(url: String) -> std::thread::JoinHandle<Run> {
    std::thread::spawn(move || {
        let mut steps: Vec<Step> = load("jfk.wav").chunks(800).map(|c| Step::Audio(pcm16(c))).collect();
        for _ in 0..60 {
            steps.push(Step::Pause(Duration::from_secs(1)));
            steps.push(Step::Text(r#"{"type":"KeepAlive"}"#.into()));
        }
        rt().block_on(session(&url, &[], steps, FAST))
    })
}

fn sigterm(d: &Daemon) {
    Command::new("kill").args(["-TERM", &d.child.id().to_string()]).status().unwrap();
}

#[test]
fn sessions_spread_skip_full_daemons_and_drain_without_losing_words() {
    let Some(model) = model_dir("tiny.en") else { return };
    let a = Daemon::start(&model, &["--max-sessions", "1"]);
    let mut b = Daemon::start(&model, &["--max-sessions", "3"]);
    let front = format!("127.0.0.1:{}", free_port());
    let Some(_lb) = haproxy(&front, [&a.addr, &b.addr]) else { return };
    // Up when HAProxy answers and both daemons passed a health check.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&front).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    let url = format!("ws://{front}/v1/listen?encoding=linear16&sample_rate=16000");

    // Two sessions: one on each daemon (least connections).
    let mut clients = vec![held_session(url.clone())];
    let first = wait_for_sessions(&a, &b, 1);
    assert_eq!(first.0 + first.1, 1, "the first session started");
    clients.push(held_session(url.clone()));
    assert_eq!(wait_for_sessions(&a, &b, 2), (1, 1), "two sessions spread over two daemons");
    // The one client on A (which has one slot); the others are on B.
    let on_a = clients.remove(if first.0 == 1 { 0 } else { 1 });

    // A is full: the next two go to B, whichever way least-connections leans.
    for n in 3..=4 {
        clients.push(held_session(url.clone()));
        assert_eq!(wait_for_sessions(&a, &b, n), (1, n - 1), "session {n} skips the full daemon");
    }

    // Every slot taken: 503 with Retry-After, as from one daemon.
    let head = upgrade_head(&front);
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.to_ascii_lowercase().contains("\r\nretry-after: "), "{head}");

    // B drains: once its three clients have sent all of jfk, they get every
    // word of it, then 1001.
    let sent = 3.0 * load("jfk.wav").len() as f64 / 16_000.0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&b.addr, "scribed_audio_received_seconds_total") < sent - 0.01 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    sigterm(&b);
    let status = b.child.wait().unwrap();
    assert!(status.success(), "B exits 0 after SIGTERM: {status:?}");
    let on_b: Vec<Run> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    for run in &on_b {
        assert_eq!(run.close, Some(1001), "{:?}", run.msgs.last());
        let (errors, n) = word_errors(&reference("jfk.wav"), &run.finals());
        assert!(errors <= 1, "{errors}/{n} errors after the drain: {}", run.finals());
    }
    // B is gone and A is full: still a clean 503.
    std::thread::sleep(Duration::from_secs(1));
    let head = upgrade_head(&front);
    assert!(head.starts_with("HTTP/1.1 503") && head.to_ascii_lowercase().contains("retry-after"), "{head}");

    sigterm(&a);
    let run = on_a.join().unwrap();
    assert_eq!(run.close, Some(1001));
    assert!(word_errors(&reference("jfk.wav"), &run.finals()).0 <= 1, "{}", run.finals());
}
