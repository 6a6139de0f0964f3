//! Deepgram's official Python SDKs pointed at the real daemon: the 3.x API
//! that frameworks still use and the current 7.x. A live session (frames,
//! `Finalize` at the end of the turn, `CloseStream`) and a pre-recorded
//! upload must parse into the SDK's own types, with no error, no unhandled
//! message and no warning (`tests/sdk/*.py`; `scripts/setup.sh --with-sdks`
//! installs the SDKs into `.cache/sdk3` and `.cache/sdk7`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::daemon::*;
use common::*;
use serde_json::Value;

/// The SDK environments that are installed; one line for each that is not.
fn sdks() -> Vec<(&'static str, PathBuf)> {
    let mut found = Vec::new();
    for name in ["sdk3", "sdk7"] {
        let python = repo().join(".cache").join(name).join("bin/python");
        if python.exists() {
            found.push((name, python));
        } else {
            println!("skipped: Deepgram {name}: {} is missing (scripts/setup.sh --with-sdks)", python.display());
        }
    }
    found
}

/// Runs one script of `tests/sdk/`; its one JSON line.
fn run(python: &PathBuf, script: &str, d: &Daemon, audio: &str) -> Value {
    let out = Command::new(python)
        .arg(repo().join("tests/sdk").join(script))
        .arg(format!("http://{}", d.addr))
        .arg(shared_audio(audio))
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    assert!(!stderr.contains("Warning") && !stderr.contains("Traceback"), "{script} warned:\n{stderr}");
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|_| panic!("{script} printed no JSON: {stdout}"))
}

#[test]
fn the_official_python_sdks_parse_every_message() {
    let Some(model) = model_dir("tiny.en") else { return };
    let sdks = sdks();
    if sdks.is_empty() {
        return;
    }
    let d = Daemon::start(&model, &[]);
    let reference = reference("jfk.wav");
    for (name, python) in sdks {
        let live = run(&python, "live.py", &d, "jfk.wav");
        assert_eq!(live["errors"], serde_json::json!([]), "{name} live: {live}");
        assert_eq!(live["finalized"], true, "{name}: a from_finalize result after Finalize: {live}");
        assert_eq!(live["seen"]["Metadata"], 1, "{name}: {live}");
        let text = live["transcript"].as_str().unwrap_or_default();
        assert!(wer(&reference, text) <= 0.1, "{name} live: {text}");

        let pre = run(&python, "prerecorded.py", &d, "jfk.wav");
        let expected_type = if name == "sdk3" { "PrerecordedResponse" } else { "ListenV1Response" };
        assert_eq!(pre["type"], expected_type, "{name}: {pre}");
        assert_eq!(pre["duration"], 11.0, "{name}: {pre}");
        assert!(pre["utterances"].as_u64() >= Some(1), "{name}: {pre}");
        let text = pre["transcript"].as_str().unwrap_or_default();
        assert!(wer(&reference, text) <= 0.05, "{name} pre-recorded: {text}");
        assert_eq!(pre["words"].as_u64(), Some(text.split_whitespace().count() as u64), "{name}: {pre}");
    }
}
