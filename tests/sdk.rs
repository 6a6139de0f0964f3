//! Deepgram's official SDKs pointed at the real daemon: Python's 3.x API
//! that frameworks still use, the current Python 7.x, and JavaScript 5.x on
//! Node (also on `/v2/listen`, Flux). A live session (frames,
//! `Finalize` at the end of the turn, `CloseStream`) and a pre-recorded
//! upload must parse into the SDK's own types, with no error, no unhandled
//! message and no warning (`tests/sdk/*.py`; `scripts/setup.sh --with-sdks`
//! installs them into `.cache/sdk3`, `.cache/sdk7` and `.cache/sdkjs`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::daemon::*;
use common::*;
use serde_json::Value;

/// One installed SDK: how to run its scripts.
struct Sdk {
    name: &'static str,
    program: PathBuf,
    /// Script suffix: `py` or `js`.
    ext: &'static str,
    env: Vec<(&'static str, PathBuf)>,
    /// The type the SDK parses a pre-recorded response into.
    response_type: &'static str,
}

/// The SDKs that are installed; one line for each that is not.
fn sdks() -> Vec<Sdk> {
    let cache = repo().join(".cache");
    let mut found = Vec::new();
    for (name, response_type) in [("sdk3", "PrerecordedResponse"), ("sdk7", "ListenV1Response")] {
        let python = cache.join(name).join("bin/python");
        if python.exists() {
            found.push(Sdk { name, program: python, ext: "py", env: Vec::new(), response_type });
        } else {
            println!("skipped: Deepgram {name}: {} is missing (scripts/setup.sh --with-sdks)", python.display());
        }
    }
    let modules = cache.join("sdkjs/node_modules");
    if modules.join("@deepgram/sdk").exists() {
        let env = vec![("NODE_PATH", modules)];
        found.push(Sdk { name: "sdkjs", program: "node".into(), ext: "js", env, response_type: "" });
    } else {
        println!("skipped: Deepgram's JavaScript SDK: {} is missing (scripts/setup.sh --with-sdks)", modules.display());
    }
    found
}

/// Runs one script of `tests/sdk/`; its one JSON line.
fn run(sdk: &Sdk, script: &str, d: &Daemon, audio: &str) -> Value {
    let script = format!("{script}.{}", sdk.ext);
    let out = Command::new(&sdk.program)
        .arg(repo().join("tests/sdk").join(&script))
        .arg(format!("http://{}", d.addr))
        .arg(shared_audio(audio))
        .envs(sdk.env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("the SDK's interpreter runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{} {script} failed:\n{stdout}\n{stderr}", sdk.name);
    assert!(!stderr.contains("Warning") && !stderr.contains("Traceback"), "{} {script} warned:\n{stderr}", sdk.name);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|_| panic!("{} {script} printed no JSON: {stdout}", sdk.name))
}

#[test]
fn the_official_sdks_parse_every_message() {
    let Some(model) = model_dir("tiny.en") else { return };
    let sdks = sdks();
    if sdks.is_empty() {
        return;
    }
    let d = Daemon::start(&model, &[]);
    let reference = reference("jfk.wav");
    for sdk in &sdks {
        let name = sdk.name;
        let live = run(sdk, "live", &d, "jfk.wav");
        assert_eq!(live["errors"], serde_json::json!([]), "{name} live: {live}");
        assert_eq!(live["finalized"], true, "{name}: a from_finalize result after Finalize: {live}");
        assert_eq!(live["seen"]["Metadata"], 1, "{name}: {live}");
        let text = live["transcript"].as_str().unwrap_or_default();
        assert!(wer(&reference, text) <= 0.1, "{name} live: {text}");

        let pre = run(sdk, "prerecorded", &d, "jfk.wav");
        if !sdk.response_type.is_empty() {
            assert_eq!(pre["type"], sdk.response_type, "{name}: {pre}");
        }
        assert_eq!(pre["duration"], 11.0, "{name}: {pre}");
        assert!(pre["utterances"].as_u64() >= Some(1), "{name}: {pre}");
        let text = pre["transcript"].as_str().unwrap_or_default();
        assert!(wer(&reference, text) <= 0.05, "{name} pre-recorded: {text}");
        assert_eq!(pre["words"].as_u64(), Some(text.split_whitespace().count() as u64), "{name}: {pre}");

        if sdk.ext == "js" {
            // Flux (`/v2/listen`) through the SDK's own `listen.v2` socket.
            let flux = run(sdk, "flux", &d, "jfk.wav");
            assert_eq!((&flux["errors"], &flux["code"]), (&serde_json::json!([]), &serde_json::json!(1000)), "{flux}");
            assert_eq!(flux["others"], serde_json::json!(["Connected"]), "{flux}");
            // The VAD hears jfk's pause after "Americans." and a finished
            // sentence then ends the turn: each turn's `EndOfTurn` carries
            // its words, numbered from 0, and together they are the clip.
            let turns = flux["turns"].as_array().expect("turn events");
            assert_eq!(turns.last().map(|t| &t[0]), Some(&serde_json::json!("EndOfTurn")), "{flux}");
            let ends: Vec<&serde_json::Value> = turns.iter().filter(|t| t[0] == "EndOfTurn").collect();
            for (i, end) in ends.iter().enumerate() {
                assert_eq!(end[1], serde_json::json!(i), "{flux}");
            }
            let text: Vec<&str> = ends.iter().filter_map(|t| t[2].as_str()).collect();
            let text = text.join(" ");
            assert!(wer(&reference, &text) <= 0.1, "{name} flux: {text}");
        }
    }
}
