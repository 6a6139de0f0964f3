//! `GET /metrics` read as Prometheus reads it: the exposition is parsed (and
//! validated: types, histogram buckets) by `openmetrics-parser`, after real
//! sessions through the real binary; and the Grafana dashboard in
//! `systemd/` asks only for metrics the daemon exports.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::daemon::*;
use common::*;
use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{PrometheusType, PrometheusValue};

type Exposition = openmetrics_parser::MetricsExposition<PrometheusType, PrometheusValue>;

const FAST: Duration = Duration::from_millis(10);

fn scrape(addr: &str) -> Exposition {
    let (status, _, body) = http(addr, "/metrics", &[]);
    assert_eq!(status, 200);
    parse_prometheus(&body).unwrap_or_else(|e| panic!("/metrics is not valid Prometheus text: {e:?}\n{body}"))
}

/// The value of an unlabelled counter or gauge.
fn value(m: &Exposition, name: &str) -> f64 {
    let family = m.families.get(name).unwrap_or_else(|| panic!("no {name}"));
    match &family.iter_samples().next().unwrap_or_else(|| panic!("{name} has no sample")).value {
        PrometheusValue::Counter(c) => c.value.as_f64(),
        PrometheusValue::Gauge(g) => g.as_f64(),
        other => panic!("{name} is {other:?}"),
    }
}

/// A labelled counter's value for one label value (0 when absent).
fn labelled(m: &Exposition, name: &str, label: &str) -> f64 {
    let family = m.families.get(name).unwrap_or_else(|| panic!("no {name}"));
    match family.get_sample_by_label_values(&[label.to_string()]).map(|s| &s.value) {
        Some(PrometheusValue::Counter(c)) => c.value.as_f64(),
        None => 0.0,
        other => panic!("{name}{{{label}}} is {other:?}"),
    }
}

/// A histogram's observation count and sum.
fn histogram(m: &Exposition, name: &str) -> (u64, f64) {
    let family = m.families.get(name).unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(family.family_type, PrometheusType::Histogram, "{name}");
    match &family.iter_samples().next().unwrap_or_else(|| panic!("{name} has no sample")).value {
        PrometheusValue::Histogram(h) => {
            let count = h.count.unwrap_or_else(|| panic!("{name} has no _count"));
            let inf = h.buckets.iter().find(|b| b.upper_bound.is_infinite()).expect("+Inf bucket");
            assert_eq!(inf.count.as_f64() as u64, count, "{name}: +Inf bucket and _count differ");
            (count, h.sum.map_or(0.0, |s| s.as_f64()))
        }
        other => panic!("{name} is {other:?}"),
    }
}

/// Waits until `ready` holds for a fresh scrape (a worker records its
/// real-time factor as its thread ends, just after the close frame).
fn scrape_until(addr: &str, ready: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(addr);
        if ready(&m) || Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_parse_as_prometheus_and_count_what_happened() {
    let Some(model) = model_dir("tiny.en") else { return };
    let d = Daemon::start(&model, &["--max-sessions", "3"]);
    let before = scrape(&d.addr);
    assert_eq!(value(&before, "scribed_slots_free"), 3.0);
    assert_eq!(histogram(&before, "scribed_final_latency_seconds").0, 0);

    // One jfk session with interims, a Finalize after the speech, then CloseStream.
    let audio = load("jfk.wav");
    let mut steps: Vec<Step> = audio.chunks(800).map(|c| Step::Audio(pcm16(c))).collect();
    steps.push(Step::Text(r#"{"type":"Finalize"}"#.into()));
    steps.push(Step::Text(r#"{"type":"CloseStream"}"#.into()));
    let run =
        rt().block_on(session(&d.ws("encoding=linear16&sample_rate=16000&interim_results=true"), &[], steps, FAST));
    assert_eq!(run.close, Some(1000));
    assert!(word_errors(&reference("jfk.wav"), &run.finals()).0 <= 1, "{}", run.finals());
    // One session that ends in an error: a text message that is not JSON.
    let bad =
        rt().block_on(session(&d.ws("encoding=linear16&sample_rate=16000"), &[], vec![Step::Text("{".into())], FAST));
    assert_eq!(bad.close, Some(1007));

    // The channel's real-time factor is observed when its worker ends; its
    // slot is free a moment later, once the reaper has joined the thread.
    let m = scrape_until(&d.addr, |m| {
        histogram(m, "scribed_real_time_factor").0 >= 1 && value(m, "scribed_slots_free") == 3.0
    });
    let words: usize = run
        .of_type("Results")
        .iter()
        .filter(|r| r["is_final"] == true)
        .map(|r| r["channel"]["alternatives"][0]["words"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(value(&m, "scribed_words_final_total"), words as f64);
    assert_eq!(histogram(&m, "scribed_final_latency_seconds").0, words as u64, "one observation per final word");
    let has_words =
        |r: &&&serde_json::Value| r["channel"]["alternatives"][0]["words"].as_array().is_some_and(|w| !w.is_empty());
    let interims = run.of_type("Results").iter().filter(|r| r["is_final"] == false).filter(has_words).count();
    assert_eq!(histogram(&m, "scribed_interim_latency_seconds").0, interims as u64);
    assert_eq!(histogram(&m, "scribed_finalize_reply_seconds").0, 1);
    let (hypotheses, busy) = histogram(&m, "scribed_hypothesis_seconds");
    assert_eq!(hypotheses as f64, value(&m, "scribed_transcriptions_total"));
    assert!((busy - value(&m, "scribed_inference_seconds_total")).abs() < 0.01 * busy.max(1.0));
    // The real-time factor of the jfk channel: its compute time over its 11 s.
    let (channels, rtf) = histogram(&m, "scribed_real_time_factor");
    assert_eq!(channels, 1, "the session that sent no audio has no real-time factor");
    assert!((rtf - busy / 11.0).abs() < 0.05, "real-time factor {rtf}, compute {busy} s for 11 s");

    assert_eq!(labelled(&m, "scribed_sessions_ended_total", "1000"), 1.0);
    assert_eq!(labelled(&m, "scribed_sessions_ended_total", "1007"), 1.0);
    assert_eq!(labelled(&m, "scribed_session_errors_total", "BAD_MESSAGE"), 1.0);
    assert_eq!(value(&m, "scribed_sessions_active"), 0.0);
    assert_eq!(value(&m, "scribed_slots_free"), 3.0);
    assert_eq!(value(&m, "scribed_sessions_started_total"), 2.0);
    println!(
        "{words} final words, {interims} interims, {hypotheses} hypotheses ({busy:.2} s), real-time factor {rtf:.3}"
    );
}

#[test]
fn the_grafana_dashboard_reads_only_exported_metrics() {
    let Some(model) = model_dir("tiny.en") else { return };
    let d = Daemon::start(&model, &[]);
    let exported: BTreeSet<String> = scrape(&d.addr).families.into_keys().collect();
    let asked = dashboard_metrics();
    // The GPU's gauges exist only on a GPU: tests/cuda_fake.rs checks them
    // against the daemon on the fake device.
    let (gpu, cpu): (BTreeSet<String>, BTreeSet<String>) =
        asked.iter().cloned().partition(|n| n.starts_with("scribed_gpu_"));
    let missing: Vec<_> = cpu.difference(&exported).collect();
    assert!(missing.is_empty(), "the dashboard asks for metrics the daemon does not export: {missing:?}");
    assert!(exported.iter().all(|n| !n.starts_with("scribed_gpu_")), "GPU gauges on the CPU: {exported:?}");
    assert_eq!(gpu.len(), 4, "the GPU panels: {gpu:?}");
    let histograms = ["final_latency", "interim_latency", "finalize_reply", "hypothesis"];
    for h in histograms {
        assert!(asked.contains(&format!("scribed_{h}_seconds")), "no panel for scribed_{h}_seconds");
    }
    println!("the dashboard reads {} of {} exported metrics, and {} GPU gauges", cpu.len(), exported.len(), gpu.len());
}
