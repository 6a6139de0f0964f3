//! Reliability under abuse and overload, end to end through the real daemon:
//! work abandoned by a vanished client stops and frees its slot, the
//! daemon's own backpressure never times a client out, absurd samples
//! cannot panic a session, control frames are answered while the audio path
//! is busy, and every protocol error ends with the RFC 6455 close code.
//!
//! Every loop here is bounded in count and time, and every connection goes
//! to the test's own daemon on a loopback port.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const FAST: Duration = Duration::from_millis(10); // 50 ms frames at 5× real time

/// These tests load both cores on purpose and time what they see: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
const LIN16: &str = "encoding=linear16&sample_rate=16000";

/// Session worker threads alive in the daemon (they are named).
fn workers_alive(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == "scribed-session")
        .count()
}

/// A `/proc/PID/status` figure: `Threads`, or `VmRSS` in kB.
fn proc_status(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One storm connection: upgrade, send a second of speech in one frame,
/// vanish without a Close. Returns whether it was admitted.
fn hit_and_run(url: &str, second: &[u8]) -> bool {
    match tokio_tungstenite::tungstenite::connect(url) {
        Ok((mut ws, _)) => {
            let _ = ws.send(tokio_tungstenite::tungstenite::Message::binary(second.to_vec()));
            // Dropping the socket without a Close frame: the client vanished.
            true
        }
        Err(_) => false, // 503: every slot taken
    }
}

/// The client must not be able to run work past `max_sessions` by leaving:
/// 1,000 connections from 16 threads that each send a second of speech and
/// vanish. Before the fix each left a worker transcribing for nobody
/// (505 threads, 8 GB); now a slot is free only once its worker has stopped.
#[test]
fn vanishing_clients_leave_no_work_behind() {
    let _serial = one_at_a_time();
    let Some(model) = model_dir("tiny.en") else { return };
    let max_sessions = 4;
    let d = Daemon::start(&model, &["--max-sessions", &max_sessions.to_string()]);
    let pid = d.child.id();
    let audio = load("jfk.wav");
    let rt = rt();
    let url = d.ws(LIN16);

    let t = Instant::now();
    let alone = rt.block_on(session(&url, &[], frames16(&audio, 50), FAST));
    let usual = t.elapsed();
    assert!(word_errors(&reference("jfk.wav"), &alone.finals()).0 <= 1, "{}", alone.finals());
    std::thread::sleep(Duration::from_secs(1));
    let (base_threads, base_rss_kb) = (proc_status(pid, "Threads"), proc_status(pid, "VmRSS"));

    let second = pcm16(&audio[16_000..32_000]);
    let storming = Arc::new(AtomicBool::new(true));
    let (admitted, peak_workers) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let sampler = {
        let (storming, peak) = (storming.clone(), peak_workers.clone());
        std::thread::spawn(move || {
            let mut peak_rss = 0;
            while storming.load(Ordering::Relaxed) {
                peak.fetch_max(workers_alive(pid), Ordering::Relaxed);
                peak_rss = peak_rss.max(proc_status(pid, "VmRSS"));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak_rss
        })
    };
    let storm = {
        let (url, admitted) = (url.clone(), admitted.clone());
        std::thread::spawn(move || {
            // The well-behaved session below connects first and keeps its slot.
            std::thread::sleep(Duration::from_millis(300));
            let deadline = Instant::now() + Duration::from_secs(120);
            let threads: Vec<_> = (0..16)
                .map(|_| {
                    let (url, second, admitted) = (url.clone(), second.clone(), admitted.clone());
                    std::thread::spawn(move || {
                        for _ in 0..1000 / 16 + 1 {
                            if Instant::now() > deadline {
                                break;
                            }
                            if hit_and_run(&url, &second) {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            threads.into_iter().for_each(|t| t.join().unwrap());
        })
    };
    let t = Instant::now();
    let good = rt.block_on(session(&url, &[], frames16(&audio, 50), FAST));
    let during = t.elapsed();
    storm.join().unwrap();
    let storm_end = Instant::now();
    // Everything the storm started must be gone within 10 s.
    let mut settled = None;
    while storm_end.elapsed() < Duration::from_secs(10) {
        if workers_alive(pid) == 0 && proc_status(pid, "Threads") <= base_threads {
            settled = Some(storm_end.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    storming.store(false, Ordering::Relaxed);
    let peak_rss_kb = sampler.join().unwrap();
    let rss_kb = proc_status(pid, "VmRSS");
    println!(
        "storm: {} admitted of 1008, peak workers {}, peak RSS {} MB (baseline {} MB, after {} MB), settled after {:?}; \
         jfk alone {usual:?}, during the storm {during:?}",
        admitted.load(Ordering::Relaxed),
        peak_workers.load(Ordering::Relaxed),
        peak_rss_kb / 1024,
        base_rss_kb / 1024,
        rss_kb / 1024,
        settled,
    );
    assert!(peak_workers.load(Ordering::Relaxed) <= max_sessions, "more workers alive than max_sessions allows");
    assert!(settled.is_some(), "workers or threads still alive 10 s after the storm");
    assert!(rss_kb <= base_rss_kb + 100 * 1024, "RSS {rss_kb} kB vs baseline {base_rss_kb} kB");
    assert_eq!(good.close, Some(1000), "{:?}", good.msgs.last());
    assert!(word_errors(&reference("jfk.wav"), &good.finals()).0 <= 1, "{}", good.finals());
    assert!(during <= usual * 2, "jfk took {during:?} during the storm, {usual:?} alone");
    assert_eq!(metric(&d.addr, "scribed_sessions_active"), 0.0);
    assert_eq!(http(&d.addr, "/readyz", &[]).0, 200);
}

/// A client sending far faster than the daemon transcribes is throttled by
/// backpressure, never timed out by it: 31 s of speech in one frame, with a
/// 1 s ring and a 1 s no-audio timeout, still ends with every word.
#[test]
fn backpressure_never_times_out_the_client() {
    let _serial = one_at_a_time();
    let Some(model) = model_dir("tiny.en") else { return };
    let (_dir, d) = Daemon::with_config(&model, "no_audio_timeout_s = 1.0\nring_seconds = 1.0\n", &[]);
    let files = ["jfk.wav", "1272-128104-0000.wav", "1089-134686-0000.wav"];
    let audio: Vec<f32> = files.iter().flat_map(|f| load(f)).collect();
    let steps = vec![Step::Audio(pcm16(&audio)), Step::Text(r#"{"type":"CloseStream"}"#.into())];
    let run = rt().block_on(session(&d.ws(LIN16), &[], steps, FAST));
    assert!(run.of_type("Error").is_empty(), "{:?}", run.of_type("Error"));
    assert_eq!(run.close, Some(1000));
    let reference: String = files.iter().map(|f| reference(f)).collect::<Vec<_>>().join(" ");
    let (errors, words) = word_errors(&reference, &run.finals());
    println!("one 31 s frame through a 1 s ring: {errors}/{words} word errors: {}", run.finals());
    let got = normalize(&run.finals()).len() as f64;
    assert!((got - words as f64).abs() <= 0.05 * words as f64 + 1.0, "{got} words of {words}: {}", run.finals());
}

/// Float samples far outside ±1 (1e37, as a broken or hostile client sends)
/// used to panic the resampler inside the network task: no Error, no close
/// frame, and a session gauge that never came down.
#[test]
fn absurd_float_samples_are_clipped_not_a_panic() {
    let _serial = one_at_a_time();
    let Some(model) = model_dir("tiny.en") else { return };
    let d = Daemon::start(&model, &[]);
    let audio = load("jfk.wav");
    let at_44k1 =
        scribed::audio::resample::Resampler::with_output_rate(16_000, 44_100).unwrap().resample(&audio).unwrap();
    let mut samples = vec![1e37f32; 22_050];
    samples.extend((0..22_050).map(|i| if i % 2 == 0 { -3e38 } else { 3e38 }));
    samples.extend_from_slice(&at_44k1);
    let bytes: Vec<u8> = samples.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut steps: Vec<Step> = bytes.chunks(4 * 4410).map(|c| Step::Audio(c.to_vec())).collect();
    steps.push(Step::Text(r#"{"type":"CloseStream"}"#.into()));
    let rt = rt();
    let run = rt.block_on(session(&d.ws("encoding=linear32&sample_rate=44100"), &[], steps, FAST));
    assert_eq!(run.close, Some(1000), "{:?}", run.msgs);
    assert_eq!(run.msgs.last().unwrap()["type"], "Metadata");
    let words = normalize(&run.finals());
    let jfk = normalize(&reference("jfk.wav"));
    assert!(words.ends_with(&jfk[jfk.len() - 4..]), "the speech after the garbage is transcribed: {words:?}");
    assert_eq!(metric(&d.addr, "scribed_connection_panics_total"), 0.0);
    assert_eq!(metric(&d.addr, "scribed_sessions_active"), 0.0);
}

/// Pings and a client's Close are answered within a second while the final
/// flush after `CloseStream` is still running.
#[test]
fn control_frames_are_answered_while_flushing() {
    let _serial = one_at_a_time();
    let Some(model) = model_dir("tiny.en") else { return };
    let d = Daemon::start(&model, &[]);
    let audio: Vec<f32> = ["jfk.wav", "1272-128104-0000.wav"].iter().flat_map(|f| load(f)).collect();
    rt().block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(d.ws(LIN16).as_str()).await.unwrap();
        ws.send(Message::binary(pcm16(&audio))).await.unwrap();
        ws.send(Message::text(r#"{"type":"CloseStream"}"#)).await.unwrap();
        ws.send(Message::Ping(b"alive?".to_vec().into())).await.unwrap();
        let t = Instant::now();
        let pong = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Pong(p) = m {
                    return Some(p);
                }
            }
            None
        })
        .await;
        assert_eq!(pong.ok().flatten().as_deref(), Some(&b"alive?"[..]), "no pong within 1 s of the ping");
        println!("pong during the flush after {:?}", t.elapsed());
        ws.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() }))).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(m) = ws.next().await {
                if let Ok(Message::Close(f)) = m {
                    return f.map(|f| u16::from(f.code));
                }
            }
            None
        })
        .await;
        assert_eq!(closed.ok().flatten(), Some(1000), "our Close is echoed within 1 s");
    });
    // The abandoned flush stops and frees the slot.
    let t = Instant::now();
    while metric(&d.addr, "scribed_sessions_active") > 0.0 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(&d.addr, "scribed_sessions_active"), 0.0);
}

/// A raw websocket connection to `/v1/listen`, for frames no library sends.
fn raw_ws(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!("GET /v1/listen?{LIN16} HTTP/1.1\r\nHost: {addr}\r\n");
    for h in UPGRADE {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "handshake cut short");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s
}

/// One frame as a client would send it (`first` = FIN, RSV and opcode bits).
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    if payload.len() < 126 {
        f.push(mask_bit | payload.len() as u8);
    } else {
        f.push(mask_bit | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    let key = [0x12, 0x34, 0x56, 0x78];
    if masked {
        f.extend_from_slice(&key);
    }
    f.extend(payload.iter().enumerate().map(|(i, &x)| if masked { x ^ key[i % 4] } else { x }));
    f
}

/// Reads server frames until a Close; its status code (`None`: the TCP
/// connection ended, or nothing came, without one).
fn close_code(s: &mut TcpStream) -> Option<u16> {
    loop {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).ok()?;
        let mut len = (h[1] & 0x7f) as usize;
        if len == 126 {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).ok()?;
            len = u16::from_be_bytes(l) as usize;
        } else if len == 127 {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).ok()?;
            len = u64::from_be_bytes(l) as usize;
        }
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).ok()?;
        if h[0] & 0x0f == 0x8 {
            return Some(payload.get(..2).map_or(1005, |c| u16::from_be_bytes([c[0], c[1]])));
        }
    }
}

/// Each protocol violation gets its RFC 6455 close code, and a client's
/// Close gets a Close back, instead of a dropped TCP connection (1006).
#[test]
fn protocol_errors_end_with_a_close_frame() {
    let _serial = one_at_a_time();
    let Some(model) = model_dir("tiny.en") else { return };
    let d = Daemon::start(&model, &[]);
    let close_999 = 999u16.to_be_bytes();
    let close_1000 = [&1000u16.to_be_bytes()[..], b"bye"].concat();
    let cases: [(&str, Vec<u8>, u16); 7] = [
        ("invalid UTF-8 in a text frame", frame(0x81, &[0xff, 0xfe, 0xfd], true), 1007),
        ("a compressed (RSV1) frame", frame(0xc2, &[0, 0], true), 1002),
        ("an unmasked frame", frame(0x82, &[0, 0], false), 1002),
        ("a reserved opcode", frame(0x83, b"x", true), 1002),
        ("an oversized ping", frame(0x89, &[7; 126], true), 1002),
        ("close code 999", frame(0x88, &close_999, true), 1002),
        ("a client's Close", frame(0x88, &close_1000, true), 1000),
    ];
    for (what, bytes, want) in cases {
        let mut s = raw_ws(&d.addr);
        s.write_all(&bytes).unwrap();
        assert_eq!(close_code(&mut s), Some(want), "{what}");
    }
    assert_eq!(metric(&d.addr, "scribed_connection_panics_total"), 0.0);
}

/// A multichannel session costs a slot per channel: more channels than the
/// server has slots is a 400 naming the parameter, more than are free a 503.
#[test]
fn multichannel_sessions_pay_a_slot_per_channel() {
    let _serial = one_at_a_time();
    let Some(model) = model_dir("tiny.en") else { return };
    let d = Daemon::start(&model, &["--max-sessions", "2"]);
    let q = |ch: u32| format!("/v1/listen?{LIN16}&channels={ch}&multichannel=true");
    let (status, _, body) = try_upgrade(&d.addr, &q(4));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"channels\""), "{body}");
    rt().block_on(async {
        let (mut one, _) = tokio_tungstenite::connect_async(d.ws(LIN16).as_str()).await.unwrap();
        let (status, head, _) = try_upgrade(&d.addr, &q(2));
        assert_eq!(status, 503, "{head}");
        assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
        one.send(Message::text(r#"{"type":"CloseStream"}"#)).await.unwrap();
        while let Some(Ok(m)) = one.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    });
    let (status, _, _) = try_upgrade(&d.addr, &q(2));
    assert_eq!(status, 101, "both slots are free again");
}

/// Unbounded client input is never echoed back: a 1 MB message type gets a
/// short error.
#[test]
fn unknown_messages_are_not_echoed_in_full() {
    let _serial = one_at_a_time();
    let Some(model) = model_dir("tiny.en") else { return };
    let d = Daemon::start(&model, &[]);
    let huge = format!(r#"{{"type":"{}"}}"#, "A".repeat(1 << 20));
    let steps = vec![Step::Text(huge), Step::Text(r#"{"type":"CloseStream"}"#.into())];
    let run = rt().block_on(session(&d.ws(LIN16), &[], steps, FAST));
    let errors = run.of_type("Error");
    assert_eq!(errors.len(), 1, "{:?}", run.msgs.len());
    let len = errors[0].to_string().len();
    assert!(len < 1024, "error of {len} bytes");
    assert_eq!(run.close, Some(1000));
    // A single-valued parameter given twice is refused, not silently resolved.
    let (status, _, body) = try_upgrade(&d.addr, &format!("/v1/listen?{LIN16}&sample_rate=8000"));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"sample_rate\""), "{body}");
}

/// More sessions of continuous speech at real time than two cores can
/// transcribe in time: none is disconnected by the daemon, each reports its
/// lag, and after the audio ends each receives finals for all of it.
#[test]
fn overload_loses_no_words() {
    let _serial = one_at_a_time();
    let Some(model) = model_dir("tiny.en") else { return };
    let sessions = 8;
    // A small ring and a short timeout make the daemon's backpressure, and
    // what used to be its time-out, come within this test's 17 s of audio.
    let max = sessions.to_string();
    let (_dir, d) =
        Daemon::with_config(&model, "ring_seconds = 2.0\nno_audio_timeout_s = 2.0\n", &["--max-sessions", &max]);
    let files = ["jfk.wav", "1272-128104-0000.wav"];
    let audio: Vec<f32> = files.iter().flat_map(|f| load(f)).collect();
    let offline_words: usize = files.iter().map(|f| normalize(&offline(&model, f)).len()).sum();
    let url = d.ws(LIN16);
    let t = Instant::now();
    let runs = rt().block_on(async {
        let all = (0..sessions).map(|_| {
            session_within(&url, &[], frames16(&audio, 100), Duration::from_millis(100), Duration::from_secs(400))
        });
        futures_util::future::join_all(all).await
    });
    println!("{sessions} sessions of {:.1} s at real time ended after {:?}", audio.len() as f64 / 16e3, t.elapsed());
    for (i, run) in runs.iter().enumerate() {
        assert!(run.of_type("Error").is_empty(), "session {i}: {:?}", run.of_type("Error"));
        assert_eq!(run.close, Some(1000), "session {i}");
        let meta = run.of_type("Metadata");
        let lag = meta.first().and_then(|m| m["lag_seconds"].as_f64()).expect("Metadata reports lag_seconds");
        let words = normalize(&run.finals()).len();
        println!("session {i}: {words} words (offline {offline_words}), worst lag {lag:.2} s: {}", run.finals());
        let off_by = (words as f64 - offline_words as f64).abs();
        assert!(off_by <= 0.05 * offline_words as f64, "session {i}: {words} words vs {offline_words} offline");
    }
}

/// `kill -HUP` re-reads the key file (no restart, no exit), and a key file
/// keeps keys out of the process list.
#[test]
fn sighup_reloads_the_key_file_and_keeps_serving() {
    let _serial = one_at_a_time();
    let Some(model) = model_dir("tiny.en") else { return };
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# the daemon's keys\nfirst\n").unwrap();
    let mut d = Daemon::start(&model, &["--api-key-file", keys.to_str().unwrap()]);
    let path = format!("/v1/listen?{LIN16}");
    let upgrade = |key: &str| {
        let auth = format!("Authorization: Token {key}");
        request(&d.addr, &path, &[UPGRADE.as_slice(), &[auth.as_str()]].concat(), true).0
    };
    assert_eq!(upgrade("first"), 101);
    assert_eq!(upgrade("second"), 401);
    std::fs::write(&keys, "second\n").unwrap();
    let pid = d.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let t = Instant::now();
    while upgrade("second") != 101 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(upgrade("second"), 101);
    assert_eq!(upgrade("first"), 401);
    assert!(d.child.try_wait().unwrap().is_none(), "SIGHUP must not stop the daemon");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("second"));
}

/// A web page elsewhere cannot drive a key-less daemon on localhost, by
/// origin or by DNS rebinding; the daemon's own page and listed origins can.
#[test]
fn foreign_browser_origins_are_refused() {
    let _serial = one_at_a_time();
    let Some(model) = model_dir("tiny.en") else { return };
    let (_dir, d) = Daemon::with_config(&model, "allowed_origins = [\"https://captions.example\"]\n", &[]);
    let path = format!("/v1/listen?{LIN16}");
    let with = |extra: &[&str]| request(&d.addr, &path, &[UPGRADE.as_slice(), extra].concat(), true);
    let (status, _, body) = with(&["Origin: https://evil.example"]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("FORBIDDEN_ORIGIN"), "{body}");
    let own = format!("Origin: http://{}", d.addr);
    assert_eq!(with(&[&own]).0, 101, "the daemon's own page");
    assert_eq!(with(&["Origin: https://captions.example"]).0, 101, "a listed origin");
    assert_eq!(with(&[]).0, 101, "no Origin: not a browser");
}
