//! `scribed serve` end to end: the real binary on a free loopback port, the
//! real model, the real audio of `../shared/audio/`, a real websocket client.
//!
//! Audio is streamed faster than real time (the daemon throttles by
//! backpressure), so the file stays within a few minutes on two cores.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

const FAST: Duration = Duration::from_millis(10); // 50 ms frames at 5× real time

#[test]
fn streaming_wer_within_one_point_of_offline_and_interims_come_first() {
    let Some(model) = model_dir("tiny.en") else { return };
    let d = Daemon::start(&model, &[]);
    let files =
        ["jfk.wav", "1089-134686-0000.wav", "1272-128104-0000.wav", "2412-153948-0000.wav", "1688-142285-0002.wav"];
    let (mut err_s, mut err_o, mut total) = (0, 0, 0);
    let rt = rt();
    for f in files {
        let run = rt.block_on(session(
            &d.ws("encoding=linear16&sample_rate=16000&interim_results=true"),
            &[],
            frames16(&load(f), 50),
            FAST,
        ));
        assert_eq!(run.close, Some(1000), "{f}: {:?}", run.msgs.last());
        assert_eq!(run.msgs.last().unwrap()["type"], "Metadata");
        let streamed = run.finals();
        let off = offline(&model, f);
        let r = reference(f);
        let (es, n) = word_errors(&r, &streamed);
        let (eo, _) = word_errors(&r, &off);
        println!("{f}: streaming {es}/{n} errors, offline {eo}/{n}\n  stream : {streamed}\n  offline: {off}");
        err_s += es;
        err_o += eo;
        total += n;
        // Word times: seconds from the stream start, monotonic over finals.
        let mut last = 0.0;
        for m in run.of_type("Results").into_iter().filter(|m| m["is_final"] == true) {
            for w in m["channel"]["alternatives"][0]["words"].as_array().unwrap() {
                let (s, e) = (w["start"].as_f64().unwrap(), w["end"].as_f64().unwrap());
                assert!(s >= last - 1e-6 && e >= s, "{f}: word times go back: {w}");
                last = e;
            }
        }
        if f == "jfk.wav" {
            let first_interim = run.msgs.iter().position(|m| m["type"] == "Results" && m["is_final"] == false);
            let first_final = run
                .msgs
                .iter()
                .position(|m| m["is_final"] == true && m["channel"]["alternatives"][0]["transcript"] != "");
            assert!(
                first_interim.is_some() && first_interim < first_final,
                "an interim result precedes the first final"
            );
        }
    }
    let (ws, wo) = (100.0 * err_s as f64 / total as f64, 100.0 * err_o as f64 / total as f64);
    println!("WER streaming {ws:.2}% vs offline {wo:.2}% over {total} words");
    assert!(ws <= wo + 1.0, "streaming WER {ws:.2}% > offline {wo:.2}% + 1");
}

#[test]
fn finalize_and_close_stream_lose_no_words() {
    let Some(model) = model_dir("tiny.en") else { return };
    let d = Daemon::start(&model, &[]);
    let audio = load("jfk.wav");
    let rt = rt();
    // Finalize in the middle of the speech, then the rest as fast as the
    // daemon takes it, then CloseStream right behind the last frame.
    let half = 16_000 * 5;
    let mut steps: Vec<Step> = audio[..half].chunks(800).map(|c| Step::Audio(pcm16(c))).collect();
    steps.push(Step::Text(r#"{"type":"Finalize"}"#.into()));
    steps.extend(audio[half..].chunks(1600).map(|c| Step::Audio(pcm16(c))));
    steps.push(Step::Text(r#"{"type":"CloseStream"}"#.into()));
    let run = rt.block_on(session(&d.ws("encoding=linear16&sample_rate=16000"), &[], steps, Duration::ZERO));
    assert_eq!(run.close, Some(1000));
    assert!(run.of_type("Results").iter().any(|m| m["from_finalize"] == true), "Finalize answered with from_finalize");
    let text = run.finals();
    let (errors, n) = word_errors(&reference("jfk.wav"), &text);
    println!("{text}");
    assert!(errors <= 1, "{errors}/{n} errors: {text}");
    let meta = &run.of_type("Metadata")[0];
    assert!((meta["duration"].as_f64().unwrap() - 11.0).abs() < 0.05, "all audio accounted for: {meta}");
    assert!(meta["lag_seconds"].as_f64().is_some());
}

#[test]
fn silence_and_noise_produce_no_text() {
    let Some(model) = model_dir("tiny.en") else { return };
    let d = Daemon::start(&model, &[]);
    let silence = vec![0.0f32; 16_000 * 60];
    // Deterministic white noise at about -30 dBFS, plus a hum.
    let mut seed = 0x1234_5678u32;
    let noise: Vec<f32> = (0..16_000 * 60)
        .map(|i| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed as f32 / u32::MAX as f32 - 0.5) * 0.1 + 0.01 * (i as f32 * 0.0393).sin()
        })
        .collect();
    let rt = rt();
    for (name, audio) in [("silence", silence), ("noise", noise)] {
        let q = "encoding=linear16&sample_rate=16000&interim_results=true&vad_events=true&utterance_end_ms=1000";
        let run = rt.block_on(session(&d.ws(q), &[], frames16(&audio, 100), Duration::ZERO));
        assert_eq!(run.close, Some(1000), "{name}");
        assert!(run.texts().is_empty(), "{name} produced text: {:?}", run.texts());
        assert!(run.of_type("Results").is_empty(), "{name}: nothing at all is emitted");
    }
}

fn resample(x: &[f32], to: u32) -> Vec<f32> {
    scribed::audio::Resampler::with_output_rate(16_000, to).unwrap().resample(x).unwrap()
}

/// Each encoding goes in one frame, so every run decodes the same utterances
/// whatever the machine's speed: this compares the decoding of the audio
/// formats, not the streaming policy. (Streamed at real-time pace on a loaded
/// machine, the first words of jfk through 8 kHz mulaw are finalised from
/// hypotheses over 1.5–3 s of audio, which read "so am I fellow America" in
/// about one run in four, with or without the shortened context; the
/// streaming tests and `benches/stream.rs` measure that.)
#[test]
fn other_encodings_give_the_same_words() {
    let Some(model) = model_dir("tiny.en") else { return };
    let d = Daemon::start(&model, &[]);
    let audio = load("jfk.wav");
    let rt = rt();
    let run = |q: &str, frame: Vec<u8>| {
        let steps = vec![Step::Audio(frame), Step::Text(r#"{"type":"CloseStream"}"#.into())];
        rt.block_on(session(&d.ws(q), &[], steps, FAST)).finals()
    };
    let base = run("encoding=linear16&sample_rate=16000", pcm16(&audio));
    assert!(word_errors(&reference("jfk.wav"), &base).0 <= 1, "{base}");
    let a8 = resample(&audio, 8_000);
    let mulaw: Vec<u8> =
        a8.iter().map(|&x| scribed::audio::pcm::linear_to_mulaw((x.clamp(-1.0, 1.0) * 32767.0) as i16)).collect();
    let a44 = resample(&audio, 44_100);
    let stereo: Vec<f32> = a44.iter().flat_map(|&x| [x, x]).collect();
    let a48 = resample(&audio, 48_000);
    let f32le: Vec<u8> = a48.iter().flat_map(|x| x.to_le_bytes()).collect();
    let cases = [
        ("mulaw 8 kHz", "encoding=mulaw&sample_rate=8000", mulaw),
        ("linear16 44.1 kHz stereo", "encoding=linear16&sample_rate=44100&channels=2", pcm16(&stereo)),
        ("linear32 48 kHz", "encoding=linear32&sample_rate=48000", f32le),
    ];
    let base_words = normalize(&base);
    for (name, q, frame) in cases {
        let text = run(q, frame);
        let (errors, _) = word_errors(&base, &text);
        println!("{name}: {text}");
        assert!(
            errors <= 1 || normalize(&text) == base_words,
            "{name}: {errors} words differ from 16 kHz: {text} vs {base}"
        );
    }
}

#[test]
fn http_routes_params_auth_and_admission() {
    let Some(model) = model_dir("tiny.en") else { return };
    let d = Daemon::start(&model, &["--api-key", "sekret", "--api-key", "other", "--max-sessions", "1"]);
    assert_eq!(http(&d.addr, "/healthz", &[]).0, 200);
    assert_eq!(http(&d.addr, "/readyz", &[]).0, 200);
    let (status, _, body) = http(&d.addr, "/metrics", &[]);
    assert_eq!(status, 200);
    assert!(body.contains("scribed_sessions_active 0"), "{body}");
    assert_eq!(http(&d.addr, "/nope", &[]).0, 404);

    let auth = "Authorization: Token sekret";
    let with = |extra: &[&str]| -> Vec<String> { UPGRADE.iter().chain(extra).map(|s| s.to_string()).collect() };
    let get = |path: &str, hs: Vec<String>| {
        let hs: Vec<&str> = hs.iter().map(String::as_str).collect();
        http(&d.addr, path, &hs)
    };
    // Keys.
    assert_eq!(get("/v1/listen", with(&[])).0, 401);
    assert_eq!(get("/v1/listen", with(&["Authorization: Token wrong"])).0, 401);
    // Parameters, checked before the upgrade.
    for (q, param) in [
        ("encoding=opus&sample_rate=16000", "encoding"),
        ("encoding=linear16", "sample_rate"),
        ("encoding=linear16&sample_rate=200000", "sample_rate"),
        ("interim_results=perhaps", "interim_results"),
        ("endpointing=soon", "endpointing"),
    ] {
        let (status, _, body) = get(&format!("/v1/listen?{q}"), with(&[auth]));
        assert_eq!(status, 400, "{q}");
        let v: Value = serde_json::from_str(&body).expect("JSON error body");
        assert_eq!(v["param"], param, "{q}: {body}");
    }
    let rt = rt();
    rt.block_on(async {
        // The browser form of the key, and admission: one slot.
        let mut req = d.ws("encoding=linear16&sample_rate=16000&unknown_param=1").into_client_request().unwrap();
        req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("token, other"));
        let (mut first, resp) = tokio_tungstenite::connect_async(req).await.expect("subprotocol key accepted");
        assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), "token");
        let (status, head, _) = get("/v1/listen?encoding=linear16&sample_rate=16000", with(&[auth]));
        assert_eq!(status, 503);
        assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
        assert_eq!(http(&d.addr, "/readyz", &[]).0, 503);
        first.send(Message::text(r#"{"type":"CloseStream"}"#)).await.unwrap();
        while let Some(Ok(m)) = first.next().await {
            if let Message::Close(f) = m {
                assert_eq!(f.map(|f| u16::from(f.code)), Some(1000));
                break;
            }
        }
    });
    // The slot is free again once the session ended.
    let t0 = Instant::now();
    while http(&d.addr, "/readyz", &[]).0 != 200 {
        assert!(t0.elapsed() < Duration::from_secs(5), "slot released");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sessions that break the protocol get the documented error and close code.
#[test]
fn bad_input_gets_documented_errors_and_close_codes() {
    let Some(model) = model_dir("tiny.en") else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("scribed.toml");
    std::fs::write(&cfg, "no_audio_timeout_s = 1.5\nmax_frame_bytes = 1048576\nmax_sessions = 16\n").unwrap();
    let d = Daemon::start(&model, &["--config", cfg.to_str().unwrap()]);
    let rt = rt();
    let lin16 = "encoding=linear16&sample_rate=16000";
    let close = || Step::Text(r#"{"type":"CloseStream"}"#.into());
    // (name, query, steps, close code, error text)
    type Case<'a> = (&'a str, &'a str, Vec<Step>, u16, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("malformed JSON", lin16, vec![Step::Text("{not json".into())], 1007, Some("BAD_MESSAGE")),
        ("JSON without type", lin16, vec![Step::Text("[1,2]".into())], 1007, Some("BAD_MESSAGE")),
        ("odd-length linear16", lin16, vec![Step::Audio(vec![0; 801])], 1007, Some("BAD_AUDIO")),
        (
            "NaN linear32",
            "encoding=linear32&sample_rate=16000",
            vec![Step::Audio([0.0f32, f32::NAN].iter().flat_map(|x| x.to_le_bytes()).collect())],
            1007,
            Some("BAD_AUDIO"),
        ),
        (
            "Inf linear32",
            "encoding=linear32&sample_rate=16000",
            vec![Step::Audio(f32::INFINITY.to_le_bytes().to_vec())],
            1007,
            Some("BAD_AUDIO"),
        ),
        ("10 MB frame", lin16, vec![Step::Audio(vec![0; 10 << 20])], 1009, None),
        (
            "not WAV without encoding",
            "",
            vec![Step::Audio(b"OggS\0\x02 definitely not a wav header".to_vec())],
            1003,
            Some("UNSUPPORTED_AUDIO"),
        ),
        ("no audio", lin16, vec![], 1011, Some("NET-0001")),
        // Accepted and documented as harmless:
        (
            "unknown type",
            lin16,
            vec![Step::Text(r#"{"type":"Reconfigure"}"#.into()), close()],
            1000,
            Some("UNKNOWN_MESSAGE"),
        ),
        ("empty frame", lin16, vec![Step::Audio(Vec::new()), Step::Audio(vec![0; 3200]), close()], 1000, None),
        (
            "binary after CloseStream",
            lin16,
            vec![Step::Audio(vec![0; 3200]), close(), Step::Audio(vec![0; 3200]), Step::Audio(vec![1; 3])],
            1000,
            None,
        ),
        (
            "KeepAlive holds the session",
            lin16,
            vec![
                Step::Pause(Duration::from_millis(900)),
                Step::Text(r#"{"type":"KeepAlive"}"#.into()),
                Step::Pause(Duration::from_millis(900)),
                close(),
            ],
            1000,
            None,
        ),
    ];
    rt.block_on(async {
        let runs = futures_util::future::join_all(cases.into_iter().map(|(name, q, steps, code, err)| {
            let url = d.ws(q);
            async move { (name, code, err, session(&url, &[], steps, Duration::ZERO).await) }
        }))
        .await;
        for (name, code, err, run) in runs {
            assert_eq!(run.close, Some(code), "{name}: {:?}", run.msgs);
            match err {
                Some(variant) => {
                    assert!(run.of_type("Error").iter().any(|m| m["variant"] == variant), "{name}: {:?}", run.msgs)
                }
                None if code == 1000 => assert!(run.of_type("Error").is_empty(), "{name}: {:?}", run.msgs),
                None => {}
            }
            if code == 1000 {
                assert_eq!(run.msgs.last().unwrap()["type"], "Metadata", "{name}");
            }
        }
    });
    assert_eq!(http(&d.addr, "/healthz", &[]).0, 200);
}

/// A client that vanishes mid-stream and one that never reads do not
/// disturb a well-behaved session, which loses no audio.
#[test]
fn misbehaving_clients_do_not_disturb_others() {
    let Some(model) = model_dir("tiny.en") else { return };
    let d = Daemon::start(&model, &[]);
    let audio = load("jfk.wav");
    let rt = rt();
    rt.block_on(async {
        let lin16 = d.ws("encoding=linear16&sample_rate=16000&interim_results=true");
        // Vanishes: sends speech, then drops the TCP connection.
        let vanish = {
            let url = lin16.clone();
            let audio = audio.clone();
            async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
                for c in audio[..16_000 * 4].chunks(1600) {
                    ws.send(Message::binary(pcm16(c))).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                drop(ws);
            }
        };
        // Never reads: floods audio and never looks at the results.
        let deaf = {
            let url = lin16.clone();
            let audio = audio.clone();
            async move {
                let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
                let (mut tx, _rx) = ws.split();
                for c in audio.chunks(1600).cycle().take(200) {
                    if tx.send(Message::binary(pcm16(c))).await.is_err() {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        };
        let good = session(&lin16, &[], frames16(&audio, 50), FAST);
        let (_, _, run) = tokio::join!(vanish, deaf, good);
        assert_eq!(run.close, Some(1000));
        let (errors, n) = word_errors(&reference("jfk.wav"), &run.finals());
        assert!(errors <= 1, "{errors}/{n}: {}", run.finals());
    });
    assert_eq!(http(&d.addr, "/healthz", &[]).0, 200);
}

#[test]
fn sigterm_flushes_finals_and_closes_with_1001() {
    let Some(model) = model_dir("tiny.en") else { return };
    let mut d = Daemon::start(&model, &[]);
    let audio = load("jfk.wav");
    let rt = rt();
    let pid = d.child.id();
    let run = rt.block_on(async {
        let url = d.ws("encoding=linear16&sample_rate=16000");
        // 6 s of speech, then SIGTERM while the client is still connected.
        let mut steps: Vec<Step> = audio[..16_000 * 6].chunks(800).map(|c| Step::Audio(pcm16(c))).collect();
        steps.push(Step::Pause(Duration::from_millis(200)));
        let killer = async move {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        };
        let (run, _) = tokio::join!(session(&url, &[], steps, Duration::from_millis(10)), killer);
        run
    });
    assert_eq!(run.close, Some(1001), "{:?}", run.msgs);
    assert_eq!(run.msgs.last().unwrap()["type"], "Metadata");
    let text = run.finals();
    assert!(normalize(&text).starts_with(&["and".to_string(), "so".to_string()]), "finals flushed: {text}");
    let status = d.child.wait().unwrap();
    assert!(status.success(), "exit 0 after SIGTERM: {status:?}");
}

#[test]
fn a_worker_panic_ends_only_its_own_session() {
    let Some(model) = model_dir("tiny.en") else { return };
    let d = Daemon::start_with_env(&model, &[], &[("SCRIBED_FAULT_INJECTION", "1")]);
    let audio = load("jfk.wav");
    let rt = rt();
    let lin16 = d.ws("encoding=linear16&sample_rate=16000&interim_results=true");
    let doomed_url = format!("{lin16}&keyterm=__scribed_fault_panic__");
    let (doomed, good) = rt.block_on(async {
        tokio::join!(
            session(&doomed_url, &[], frames16(&audio, 50), FAST),
            session(&lin16, &[], frames16(&audio, 50), FAST)
        )
    });
    // The panicking session gets an error message and 1011, nothing else.
    assert_eq!(doomed.close, Some(1011), "{:?}", doomed.msgs);
    let err = doomed.of_type("Error");
    assert_eq!(err.len(), 1, "{:?}", doomed.msgs);
    assert_eq!(err[0]["variant"], "INTERNAL");
    assert!(err[0]["description"].as_str().unwrap().contains("panicked"), "{}", err[0]);
    // The session beside it lost nothing.
    assert_eq!(good.close, Some(1000));
    let (errors, n) = word_errors(&reference("jfk.wav"), &good.finals());
    assert!(errors <= 1, "{errors}/{n}: {}", good.finals());
    // The daemon counts it and keeps serving new sessions. A session is
    // counted as ended once its connection task returns, just after the
    // close frame the client has seen: scrape until that has happened.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (_, _, m) = http(&d.addr, "/metrics", &[]);
        if m.contains("scribed_sessions_active 0") || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(metrics.contains("scribed_worker_panics_total 1"), "{metrics}");
    assert!(metrics.contains("scribed_sessions_active 0"), "{metrics}");
    let again = rt.block_on(session(&lin16, &[], frames16(&audio, 50), FAST));
    assert_eq!(again.close, Some(1000));
    assert!(word_errors(&reference("jfk.wav"), &again.finals()).0 <= 1, "{}", again.finals());
}

#[test]
fn multichannel_gives_each_channel_its_own_transcript() {
    let Some(model) = model_dir("tiny.en") else { return };
    let d = Daemon::start(&model, &[]);
    let (left, right) = (load("jfk.wav"), load("1272-128104-0000.wav"));
    let n = left.len().max(right.len());
    let at = |x: &[f32], i: usize| x.get(i).copied().unwrap_or(0.0);
    let stereo: Vec<f32> = (0..n).flat_map(|i| [at(&left, i), at(&right, i)]).collect();
    let mut steps: Vec<Step> = pcm16(&stereo).chunks(3200).map(|c| Step::Audio(c.to_vec())).collect();
    steps.push(Step::Text(r#"{"type":"CloseStream"}"#.into()));
    let q = "encoding=linear16&sample_rate=16000&channels=2&multichannel=true&interim_results=true";
    let run = rt().block_on(session(&d.ws(q), &[], steps, FAST));
    assert_eq!(run.close, Some(1000), "{:?}", run.msgs.last());
    for (ch, file) in [(0, "jfk.wav"), (1, "1272-128104-0000.wav")] {
        let finals: Vec<String> = run
            .of_type("Results")
            .into_iter()
            .filter(|m| m["is_final"] == true && m["channel_index"] == serde_json::json!([ch, 2]))
            .map(|m| m["channel"]["alternatives"][0]["transcript"].as_str().unwrap_or("").to_string())
            .collect();
        let text = finals.join(" ");
        let (errors, words) = word_errors(&reference(file), &text);
        let (offline_errors, _) = word_errors(&reference(file), &offline(&model, file));
        println!("channel {ch} ({file}): {errors}/{words} errors (offline {offline_errors}): {text}");
        assert!(errors <= offline_errors + 1, "channel {ch}: {errors}/{words} errors: {text}");
    }
    // Every result says which of the two channels it belongs to.
    for m in run.of_type("Results") {
        let ci = &m["channel_index"];
        assert!(ci == &serde_json::json!([0, 2]) || ci == &serde_json::json!([1, 2]), "{m}");
    }
    let meta = &run.of_type("Metadata")[0];
    assert_eq!(meta["channels"], 2, "{meta}");
}

#[test]
fn language_is_checked_against_the_model_before_the_upgrade() {
    let Some(tiny) = model_dir("tiny.en") else { return };
    let d = Daemon::start(&tiny, &[]);
    let upgrade = |q: &str| try_upgrade(&d.addr, &format!("/v1/listen?{q}"));
    // English-only model: English is fine, anything else is refused.
    for q in ["language=en", "language=en-US", "language=english", "language=multi"] {
        assert_eq!(upgrade(q).0, 101, "{q}");
    }
    for (q, says) in [("language=de", "English-only"), ("language=xx", "not a language")] {
        let (status, _, body) = upgrade(q);
        assert_eq!(status, 400, "{q}: {body}");
        let v: Value = serde_json::from_str(&body).expect("JSON body");
        assert_eq!(v["param"], "language", "{body}");
        assert!(v["reason"].as_str().unwrap().contains(says), "{q}: {body}");
    }
    drop(d);

    // A multilingual model: any Whisper language is accepted, and English
    // speech comes out the same whether `en` is requested or detected.
    let Some(base) = model_dir("base") else { return };
    let d = Daemon::start(&base, &[]);
    assert_eq!(try_upgrade(&d.addr, "/v1/listen?language=de").0, 101);
    let (status, _, body) = try_upgrade(&d.addr, "/v1/listen?language=klingon");
    assert_eq!(status, 400, "{body}");
    let audio = load("jfk.wav");
    let rt = rt();
    for q in ["encoding=linear16&sample_rate=16000&language=en", "encoding=linear16&sample_rate=16000"] {
        let run = rt.block_on(session(&d.ws(q), &[], frames16(&audio, 50), FAST));
        assert_eq!(run.close, Some(1000), "{q}");
        let (errors, n) = word_errors(&reference("jfk.wav"), &run.finals());
        println!("base, {q}: {errors}/{n}: {}", run.finals());
        assert!(errors <= 1, "{q}: {errors}/{n} errors: {}", run.finals());
    }
}
