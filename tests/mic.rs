//! `scribed mic` end to end, without a sound card: ALSA's `file` plugin
//! (part of libasound, which the binary links) plays a recording as the
//! default capture device, chosen through `$HOME/.asoundrc`. The real
//! binary captures it through cpal and streams it to a real daemon.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;

struct Daemon(Child, String);

impl Daemon {
    fn start(model: &Path) -> Daemon {
        let mut child = Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--threads", "2", "--model"])
            .arg(model)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("scribed serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("address line");
        let addr = line.trim().strip_prefix("listening on ").expect("listening line").to_string();
        Daemon(child, addr)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A home directory whose `.asoundrc` makes `file` the default capture
/// device, reading 16 kHz mono linear16 `samples` (the mic prefers that
/// format when the device offers it, as the null slave does).
fn fake_microphone(samples: &[f32]) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let raw = home.path().join("speech.raw");
    let bytes: Vec<u8> =
        samples.iter().flat_map(|&x| ((x.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes()).collect();
    std::fs::write(&raw, bytes).unwrap();
    let rc = format!(
        "pcm.!default {{\n  type file\n  slave.pcm \"null\"\n  file \"/dev/null\"\n  infile \"{}\"\n  format \"raw\"\n}}\n",
        raw.display()
    );
    std::fs::write(home.path().join(".asoundrc"), rc).unwrap();
    home
}

fn mic(home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .arg("mic")
        .args(args)
        .env("HOME", home)
        .env("RUST_LOG", "warn")
        .output()
        .expect("scribed mic runs")
}

#[test]
fn dictation_from_the_microphone_reaches_the_daemon_and_comes_back_as_text() {
    let Some(model) = model_dir("tiny.en") else { return };
    let d = Daemon::start(&model);
    let mut speech = scribed::audio::load_mono_16k(&shared_audio("jfk.wav")).unwrap();
    speech.extend(std::iter::repeat_n(0.0, 16_000 * 2));
    let home = fake_microphone(&speech);
    let url = format!("ws://{}", d.1);
    let out = mic(home.path(), &["--url", &url, "--seconds", "12.5"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("stdout: {stdout}\nstderr: {stderr}");
    assert!(out.status.success(), "{stderr}");
    let reference = manifest().into_iter().find(|e| e.file == "jfk.wav").and_then(|e| e.reference).unwrap();
    let (errors, n) = word_errors(&reference, &stdout);
    assert!(errors <= 1, "{errors}/{n} errors: {stdout}");
    assert!(stderr.contains("12.5 s of audio"), "the whole capture was sent: {stderr}");
}

#[test]
fn microphone_errors_are_one_clear_line() {
    let home = fake_microphone(&[0.0; 1600]);
    let out = mic(home.path(), &["--device", "no-such-device", "--seconds", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no input device named `no-such-device`"), "{stderr}");

    // A daemon that is not there.
    let out = mic(home.path(), &["--url", "ws://127.0.0.1:9", "--seconds", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let line = stderr.lines().find(|l| l.starts_with("scribed: websocket")).unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(line.matches("Connection refused").count(), 1, "said once: {line}");

    // No sound card at all: an empty ALSA configuration.
    let bare = tempfile::tempdir().unwrap();
    std::fs::write(bare.path().join(".asoundrc"), "pcm.!default { type hw card 99 }\n").unwrap();
    let out = mic(bare.path(), &["--seconds", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("scribed: no microphone available") || stderr.contains("scribed: the microphone"),
        "{stderr}"
    );

    let out = mic(home.path(), &["--seconds=0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--seconds must be a positive"));
}

/// `--lines`: final text only, one line per utterance, each written when
/// its utterance ends rather than when the program exits. Two recordings
/// 2 s apart are two utterances; `endpointing=1500` keeps jfk's 0.7 s pauses
/// inside its own. (ALSA's `file` plugin over the `null` device plays faster
/// than real time, so the test shows the lines coming apart, not their
/// real-time latency.)
#[test]
fn dictation_lines_are_one_per_utterance_and_come_at_once() {
    let Some(model) = model_dir("tiny.en") else { return };
    let d = Daemon::start(&model);
    let files = ["jfk.wav", "1272-128104-0000.wav"];
    let mut speech = Vec::new();
    for f in files {
        speech.extend(scribed::audio::load_mono_16k(&shared_audio(f)).unwrap());
        speech.extend(std::iter::repeat_n(0.0, 16_000 * 2));
    }
    let seconds = format!("{:.1}", speech.len() as f64 / 16_000.0);
    let home = fake_microphone(&speech);
    let url = format!("ws://{}", d.1);
    let args = ["mic", "--lines", "--url", &url, "--seconds", &seconds, "--query", "endpointing=1500"];
    let start = std::time::Instant::now();
    let mut child = Command::new(bin())
        .args(args)
        .env("HOME", home.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("scribed mic runs");
    let lines: Vec<(String, std::time::Duration)> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|l| (l.expect("utf-8 line"), start.elapsed()))
        .collect();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    println!("lines: {lines:?}\nstderr: {stderr}");
    assert!(status.success(), "{stderr}");
    assert_eq!(lines.len(), 2, "one line per utterance: {lines:?}");
    for ((text, _), f) in lines.iter().zip(files) {
        let offline = common::daemon::offline(&model, f);
        let (errors, n) = word_errors(&offline, text);
        assert!(errors <= 1, "{f}: {errors}/{n} words differ from offline ({offline}): {text}");
    }
    // Written as each utterance ended: a program that buffered its output
    // until exit would deliver both lines at once.
    let apart = lines[1].1 - lines[0].1;
    assert!(apart >= std::time::Duration::from_millis(100), "the lines came {apart:?} apart");
}
