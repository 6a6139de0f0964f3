//! The websocket session driven through channels with a fake engine: the
//! protocol's paths (finals, `Finalize`, `Configure`, errors, closing,
//! shutdown, the no-audio timer) without a model, a socket or the binary,
//! each in well under a second. The end-to-end tests in `tests/` cover the
//! same paths through the real daemon on real speech.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, Stream};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use super::{connection, Shared};
use crate::config::{Config, FileConfig, Overrides};
use crate::engine::tones::{self, ToneEngine, FAIL, NAMES};
use crate::engine::Engine;
use crate::protocol::ListenParams;

/// The client end of one in-process session.
struct Client {
    tx: mpsc::UnboundedSender<Result<Message, tungstenite::Error>>,
    rx: mpsc::UnboundedReceiver<Message>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    session: tokio::task::JoinHandle<()>,
}

fn config(file: FileConfig) -> Config {
    let mut c = Config::merge(file, Overrides::default(), "tones".into()).expect("valid test config");
    c.fault_injection = true;
    // Tones are not voices: the energy gate hears them.
    c.vad = crate::audio::vad::VadKind::Energy;
    c
}

fn start(query: &str, config: Config) -> Client {
    start_with(ListenParams::parse(query).expect("valid query"), config)
}

/// A `/v2/listen` (turns) session.
fn start_turns(query: &str) -> Client {
    let params = ListenParams { turns: true, ..ListenParams::parse(query).expect("valid query") };
    start_with(params, config(FileConfig::default()))
}

fn start_with(params: ListenParams, config: Config) -> Client {
    let (shared, stop) = Shared::new(Arc::new(ToneEngine), config);
    let permit = shared.slots.clone().try_acquire_owned().expect("a free slot");
    let (tx, from_client) = mpsc::unbounded_channel();
    let (to_client, rx) = mpsc::unbounded_channel();
    let session = tokio::spawn(connection::serve(
        channel_sink(to_client),
        channel_stream(from_client),
        params,
        shared.clone(),
        "test-request".into(),
        1,
        permit,
    ));
    Client { tx, rx, shared, stop, session }
}

fn channel_sink(tx: mpsc::UnboundedSender<Message>) -> impl Sink<Message, Error = tungstenite::Error> + Unpin + Send {
    Box::pin(futures_util::sink::unfold(tx, |tx, msg: Message| async move {
        tx.send(msg).map_err(|_| tungstenite::Error::ConnectionClosed)?;
        Ok::<_, tungstenite::Error>(tx)
    }))
}

fn channel_stream(
    rx: mpsc::UnboundedReceiver<Result<Message, tungstenite::Error>>,
) -> impl Stream<Item = Result<Message, tungstenite::Error>> + Unpin + Send {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) }))
}

const RAW: &str = "encoding=linear16&sample_rate=16000";

impl Client {
    fn send_audio(&self, bytes: &[u8]) {
        // 100 ms frames, as a live client sends them.
        for chunk in bytes.chunks(3_200) {
            self.tx.send(Ok(Message::binary(chunk.to_vec()))).expect("session reads");
        }
    }

    fn send_text(&self, text: &str) {
        self.tx.send(Ok(Message::text(text))).expect("session reads");
    }

    /// The next message from the server (in a few milliseconds; the limit
    /// is for a loaded machine).
    async fn next(&mut self) -> Message {
        tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .expect("a message within 5 s")
            .expect("the session sent a message before ending")
    }

    /// JSON messages until (and without) the Close frame; its code.
    async fn until_close(&mut self) -> (Vec<Value>, u16) {
        let mut msgs = Vec::new();
        loop {
            match self.next().await {
                Message::Text(t) => msgs.push(serde_json::from_str(t.as_str()).expect("JSON")),
                Message::Close(frame) => return (msgs, frame.map_or(1005, |f| u16::from(f.code))),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// JSON messages until one of `type` satisfying `done`, inclusive.
    async fn until(&mut self, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut msgs = Vec::new();
        loop {
            match self.next().await {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                    let last = done(&v);
                    msgs.push(v);
                    if last {
                        return msgs;
                    }
                }
                other => panic!("unexpected {other:?} before the awaited message"),
            }
        }
    }

    /// The session task ends and every slot is free again.
    async fn ended(self) {
        tokio::time::timeout(Duration::from_secs(5), self.session).await.expect("session ends").expect("no panic");
        for _ in 0..100 {
            if self.shared.slots.available_permits() == self.shared.config.max_sessions {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the session's slot was not freed");
    }
}

fn final_words(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m["type"] == "Results" && m["is_final"] == true)
        .flat_map(|m| m["channel"]["alternatives"][0]["words"].as_array().cloned().unwrap_or_default())
        .map(|w| w["word"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn close_stream_flushes_finals_then_metadata_then_close() {
    let mut c = start(RAW, config(FileConfig::default()));
    let audio = tones::linear16(0.3, &[2, 4, 6]);
    c.send_audio(&audio);
    c.send_text(r#"{"type":"CloseStream"}"#);
    let (msgs, code) = c.until_close().await;
    assert_eq!(final_words(&msgs), ["two", "four", "six"]);
    let meta = msgs.last().expect("messages");
    assert_eq!(meta["type"], "Metadata");
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(&audio).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(meta["sha256"], sha.as_str());
    assert_eq!(meta["models"][0], ToneEngine.uuid());
    assert_eq!(code, 1000);
    c.ended().await;
}

#[tokio::test]
async fn finalize_at_every_turn_replies_with_that_turns_words() {
    let mut c = start(RAW, config(FileConfig::default()));
    let mut seen = Vec::new();
    for turn in [[1, 3], [5, 7], [9, 2]] {
        c.send_audio(&tones::linear16(0.2, &turn));
        c.send_text(r#"{"type":"Finalize"}"#);
        let msgs = c.until(|m| m["from_finalize"] == true).await;
        let words = final_words(&msgs);
        let expected: Vec<&str> = turn.iter().map(|&k| NAMES[k]).collect();
        assert_eq!(words, expected, "turn {turn:?}: {msgs:?}");
        seen.extend(words);
    }
    c.send_text(r#"{"type":"CloseStream"}"#);
    let (msgs, code) = c.until_close().await;
    assert!(final_words(&msgs).is_empty(), "nothing repeated after the last Finalize: {msgs:?}");
    assert_eq!((seen.len(), code), (6, 1000));
    c.ended().await;
}

#[tokio::test]
async fn configure_replaces_key_terms_or_says_why_not() {
    let mut c = start(&format!("{RAW}&keyterm=alpha"), config(FileConfig::default()));
    c.send_text(r#"{"type":"Configure","keyterms":["beta","gamma"]}"#);
    let ok = c.until(|_| true).await;
    assert_eq!(ok[0]["type"], "ConfigureSuccess");
    assert_eq!(ok[0]["keyterms"], serde_json::json!(["beta", "gamma"]));
    c.send_text(r#"{"type":"Configure","sample_rate":8000}"#);
    let bad = c.until(|_| true).await;
    assert_eq!(bad[0]["type"], "ConfigureFailure");
    c.send_text(r#"{"type":"CloseStream"}"#);
    assert_eq!(c.until_close().await.1, 1000);
    c.ended().await;
}

#[tokio::test]
async fn a_bad_message_ends_the_session_with_an_error_and_1007() {
    let mut c = start(RAW, config(FileConfig::default()));
    c.send_text("{not json");
    let (msgs, code) = c.until_close().await;
    assert_eq!(msgs[0]["type"], "Error");
    assert_eq!(msgs[0]["variant"], "BAD_MESSAGE");
    assert_eq!(code, u16::from(CloseCode::Invalid));
    c.ended().await;
}

#[tokio::test]
async fn an_engine_failure_ends_that_session_with_1011() {
    let mut c = start(&format!("{RAW}&keyterm={FAIL}"), config(FileConfig::default()));
    c.send_audio(&tones::linear16(0.2, &[3]));
    c.send_text(r#"{"type":"Finalize"}"#);
    let (msgs, code) = c.until_close().await;
    let err = msgs.iter().find(|m| m["type"] == "Error").expect("an Error message");
    assert!(err["description"].as_str().unwrap_or_default().contains("fake device failed"), "{err}");
    assert_eq!(code, 1011);
    c.ended().await;
}

#[tokio::test]
async fn a_worker_panic_ends_that_session_with_1011() {
    let mut c = start(&format!("{RAW}&keyterm={}", crate::session::PANIC_KEYTERM), config(FileConfig::default()));
    c.send_audio(&tones::linear16(0.2, &[3]));
    c.send_text(r#"{"type":"Finalize"}"#);
    let (msgs, code) = c.until_close().await;
    assert!(msgs.iter().any(|m| m["type"] == "Error"), "{msgs:?}");
    assert_eq!(code, 1011);
    c.ended().await;
}

#[tokio::test]
async fn a_client_close_ends_the_session_and_frees_its_slot() {
    let c = start(RAW, config(FileConfig::default()));
    c.send_audio(&tones::linear16(0.2, &[4, 4]));
    c.tx.send(Ok(Message::Close(None))).expect("session reads");
    c.ended().await;
}

#[tokio::test]
async fn a_vanished_client_frees_its_slot() {
    let c = start(RAW, config(FileConfig::default()));
    c.send_audio(&tones::linear16(0.2, &[4, 4]));
    c.tx.send(Err(tungstenite::Error::ConnectionClosed)).expect("session reads");
    c.ended().await;
}

#[tokio::test]
async fn shutdown_flushes_the_finals_and_closes_with_1001() {
    let mut c = start(RAW, config(FileConfig::default()));
    let audio = tones::linear16(0.2, &[6, 8]);
    c.send_audio(&audio);
    // Shutdown stops reading: the audio is in the session first.
    let sent_us = (audio.len() / 2) as u64 * 1_000_000 / 16_000;
    while c.shared.metrics.audio_received_us.load(std::sync::atomic::Ordering::Relaxed) < sent_us {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.stop.send(true).expect("the session watches shutdown");
    let (msgs, code) = c.until_close().await;
    assert_eq!(final_words(&msgs), ["six", "eight"]);
    assert_eq!(code, 1001);
    c.ended().await;
}

#[tokio::test]
async fn no_audio_for_the_timeout_ends_the_session() {
    let file = FileConfig { no_audio_timeout_s: Some(0.2), ..FileConfig::default() };
    let mut c = start(RAW, config(file));
    let (msgs, code) = c.until_close().await;
    assert_eq!(msgs[0]["variant"], "NET-0001");
    assert_eq!(code, 1011);
    c.ended().await;
}

/// `secs` of silence as linear16 bytes.
fn silence(secs: f64) -> Vec<u8> {
    vec![0; (secs * 32_000.0) as usize]
}

/// `(event, transcript)` of the `TurnInfo`s other than `Update`.
fn turn_events(msgs: &[Value]) -> Vec<(String, String)> {
    msgs.iter()
        .filter(|m| m["type"] == "TurnInfo" && m["event"] != "Update")
        .map(|m| (m["event"].as_str().unwrap().to_string(), m["transcript"].as_str().unwrap().to_string()))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[tokio::test]
async fn turns_start_end_eagerly_resume_and_number_every_message() {
    let mut c = start_turns(&format!("{RAW}&eot_threshold=0.7&eager_eot_threshold=0.4"));
    // "two four", a pause long enough for an eager end (0.2 s of VAD
    // hangover, then 0.5 s: confidence 0.46) but not for the end (0.7),
    // "six", then silence.
    let mut audio = tones::linear16(0.3, &[2, 4]);
    audio.extend(silence(0.6));
    audio.extend(tones::linear16(0.0, &[6]));
    audio.extend(silence(1.5));
    audio.extend(tones::linear16(0.0, &[8]));
    c.send_audio(&audio);
    c.send_text(r#"{"type":"CloseStream"}"#);
    let (msgs, code) = c.until_close().await;
    assert_eq!(code, 1000);
    assert_eq!(msgs[0]["type"], "Connected");
    let seq: Vec<u64> = msgs.iter().map(|m| m["sequence_id"].as_u64().expect("sequence_id")).collect();
    assert_eq!(seq, (0..msgs.len() as u64).collect::<Vec<_>>(), "numbered from 0");
    assert_eq!(
        turn_events(&msgs),
        pairs(&[
            ("StartOfTurn", "two four"),
            ("EagerEndOfTurn", "two four"),
            ("TurnResumed", "two four"),
            ("EagerEndOfTurn", "two four six"),
            ("EndOfTurn", "two four six"),
            ("StartOfTurn", "eight"),
            ("EndOfTurn", "eight"),
        ])
    );
    let ends: Vec<(u64, &str)> = msgs
        .iter()
        .filter(|m| m["event"] == "EndOfTurn")
        .map(|m| (m["turn_index"].as_u64().unwrap(), m["trigger"].as_str().unwrap()))
        .collect();
    assert_eq!(ends, [(0, "model"), (1, "manual")], "CloseStream ends the last turn");
    let updates = msgs.iter().filter(|m| m["event"] == "Update").count();
    assert!(updates >= 4, "an Update about every 0.25 s of a turn: {updates}");
    c.ended().await;
}

#[tokio::test]
async fn force_end_turn_and_configure_on_v2() {
    let mut c = start_turns(RAW);
    c.send_text(r#"{"type":"Configure","thresholds":{"eot_threshold":0.9,"eot_timeout_ms":2000}}"#);
    let ok = c.until(|m| m["type"] != "Connected").await;
    let reply = ok.last().unwrap();
    assert_eq!(reply["type"], "ConfigureSuccess", "{reply}");
    assert_eq!(reply["thresholds"]["eot_threshold"], 0.9);
    assert_eq!(reply["thresholds"]["eot_timeout_ms"], 2000);
    c.send_text(r#"{"type":"Configure","thresholds":{"eot_threshold":0.2}}"#);
    let bad = c.until(|_| true).await;
    assert_eq!(bad[0]["type"], "ConfigureFailure", "0.2 is below Flux's range");

    c.send_audio(&tones::linear16(0.2, &[3, 5]));
    c.send_text(r#"{"type":"ForceEndTurn"}"#);
    let msgs = c.until(|m| m["event"] == "EndOfTurn").await;
    let end = msgs.last().unwrap();
    assert_eq!((end["transcript"].as_str(), end["trigger"].as_str()), (Some("three five"), Some("manual")));
    c.send_text(r#"{"type":"CloseStream"}"#);
    let (rest, code) = c.until_close().await;
    assert!(rest.iter().all(|m| m["type"] != "Metadata"), "no v1 Metadata on /v2/listen: {rest:?}");
    assert_eq!(code, 1000);
    c.ended().await;
}
