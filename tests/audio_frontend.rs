//! End-to-end checks of the audio front end: decoding every PCM flavour
//! and the compressed formats, resampling to 16 kHz, and the log-mel
//! features against values from the float64 reference implementation.

use std::f64::consts::PI;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use scribed::audio::mel::MelFrontend;
use scribed::audio::{decode_file, load_mono_16k};

const JFK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/audio/jfk.wav");

/// A few tones well inside 4 kHz, so 8 kHz files can carry it unchanged.
fn signal_at(rate: u32, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let t = i as f64 / rate as f64;
            0.4 * (2.0 * PI * 220.0 * t).sin()
                + 0.2 * (2.0 * PI * 1_234.5 * t + 0.3).sin()
                + 0.1 * (2.0 * PI * 3_100.0 * t + 1.0).sin()
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).abs()).fold(0.0, f64::max)
}

fn hound_spec(channels: u16, rate: u32, bits: u16, float: bool) -> hound::WavSpec {
    hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: if float { hound::SampleFormat::Float } else { hound::SampleFormat::Int },
    }
}

#[test]
fn jfk_decodes_bit_exact_at_16k() {
    let audio = decode_file(Path::new(JFK)).unwrap();
    assert_eq!((audio.sample_rate, audio.channels), (16_000, 1));
    assert_eq!(audio.samples.len(), 176_000);

    // Same scaling as faster-whisper: int16 / 32768, no other rounding.
    let mut reader = hound::WavReader::open(JFK).unwrap();
    let want: Vec<f32> = reader.samples::<i16>().map(|s| s.unwrap() as f32 / 32_768.0).collect();
    assert_eq!(audio.samples, want);

    // Already 16 kHz mono: load_mono_16k must be a pure passthrough.
    assert_eq!(load_mono_16k(Path::new(JFK)).unwrap(), want);
}

#[test]
fn every_pcm_format_decodes_to_the_same_signal() {
    let dir = tempfile::tempdir().unwrap();
    let rate = 16_000;
    let x = signal_at(rate, 8_000);

    // Integer PCM must come back as q / 2^(bits-1), float as written.
    for (bits, float) in [(8, false), (16, false), (24, false), (32, false), (32, true)] {
        let path = dir.path().join(format!("pcm{bits}{}.wav", if float { "f" } else { "i" }));
        let mut w = hound::WavWriter::create(&path, hound_spec(1, rate, bits, float)).unwrap();
        let scale = 2f64.powi(bits as i32 - 1);
        let mut expected = Vec::with_capacity(x.len());
        for &v in &x {
            if float {
                w.write_sample(v as f32).unwrap();
                expected.push(v as f32 as f64);
            } else {
                let q = (v * scale).round().clamp(-scale, scale - 1.0);
                match bits {
                    8 => w.write_sample(q as i8).unwrap(),
                    16 => w.write_sample(q as i16).unwrap(),
                    _ => w.write_sample(q as i32).unwrap(),
                }
                expected.push(q / scale);
            }
        }
        w.finalize().unwrap();

        let audio = decode_file(&path).unwrap();
        assert_eq!((audio.sample_rate, audio.channels), (rate, 1), "{bits}-bit");
        assert_eq!(audio.samples.len(), x.len(), "{bits}-bit");
        // Only 32-bit integers do not fit f32's 24-bit mantissa.
        let tol = if !float && bits == 32 { 6e-8 } else { 0.0 };
        let exact = max_abs_diff(&audio.samples, &expected);
        assert!(exact <= tol, "{bits}-bit float={float}: scale off by {exact}");
        // And the same signal up to quantisation (plus f32 rounding, 2^-25).
        let quant = max_abs_diff(&audio.samples, &x);
        assert!(quant <= 1.0 / scale + 3e-8, "{bits}-bit: {quant}");
    }

    // 64-bit float: hound cannot write it, so build the file by hand.
    let path = dir.path().join("pcm64f.wav");
    write_f64_wav(&path, rate, &x);
    let audio = decode_file(&path).unwrap();
    assert_eq!((audio.sample_rate, audio.channels, audio.samples.len()), (rate, 1, x.len()));
    assert!(max_abs_diff(&audio.samples, &x) < 1e-7);

    // Stereo: L = x, R = x/2 → mono is the average, 0.75 x.
    let path = dir.path().join("stereo.wav");
    let mut w = hound::WavWriter::create(&path, hound_spec(2, rate, 32, true)).unwrap();
    for &v in &x {
        w.write_sample(v as f32).unwrap();
        w.write_sample((v / 2.0) as f32).unwrap();
    }
    w.finalize().unwrap();
    let audio = decode_file(&path).unwrap();
    assert_eq!((audio.channels, audio.frames()), (2, x.len()));
    let mono = load_mono_16k(&path).unwrap();
    let want: Vec<f64> = x.iter().map(|v| 0.75 * v).collect();
    assert!(max_abs_diff(&mono, &want) < 1e-6);
}

fn write_f64_wav(path: &Path, rate: u32, x: &[f64]) {
    let data_len = (x.len() * 8) as u32;
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(4 + 26 + 12 + 8 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&18u32.to_le_bytes());
    b.extend_from_slice(&3u16.to_le_bytes()); // WAVE_FORMAT_IEEE_FLOAT
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * 8).to_le_bytes());
    b.extend_from_slice(&8u16.to_le_bytes());
    b.extend_from_slice(&64u16.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes()); // cbSize
    b.extend_from_slice(b"fact");
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&(x.len() as u32).to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for v in x {
        b.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::File::create(path).unwrap().write_all(&b).unwrap();
}

#[test]
fn other_rates_resample_onto_the_16k_signal() {
    let dir = tempfile::tempdir().unwrap();
    let reference = signal_at(16_000, 16_000);
    for rate in [8_000u32, 22_050, 44_100, 48_000] {
        let path = dir.path().join(format!("r{rate}.wav"));
        let mut w = hound::WavWriter::create(&path, hound_spec(1, rate, 32, true)).unwrap();
        for v in signal_at(rate, rate as usize) {
            w.write_sample(v as f32).unwrap();
        }
        w.finalize().unwrap();

        let y = load_mono_16k(&path).unwrap();
        assert_eq!(y.len(), 16_000, "{rate} Hz");
        // Away from the edges (where the filter sees implicit silence) the
        // result is the same signal, sampled at 16 kHz, with no time shift.
        let err = max_abs_diff(&y[500..15_500], &reference[500..15_500]);
        assert!(err < 1e-3, "{rate} Hz: max error {err}");
    }
}

/// The interpreter that can make FLAC/MP3/Ogg fixtures: `SCRIBED_TEST_PYTHON`
/// or the project's faster-whisper venv, if it has PyAV.
fn python_with_av() -> Option<PathBuf> {
    let candidate = std::env::var_os("SCRIBED_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/fwenv/bin/python"));
    let ok = Command::new(&candidate).args(["-c", "import av, numpy"]).output().is_ok_and(|o| o.status.success());
    ok.then_some(candidate)
}

/// Encodes a 16-bit WAV to fixture.{flac,mp3,ogg} with PyAV (ffmpeg).
const MAKE_FIXTURES: &str = r#"
import sys, wave
import av
import numpy as np

src, out = sys.argv[1], sys.argv[2]
with wave.open(src, "rb") as w:
    rate, ch = w.getframerate(), w.getnchannels()
    pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(1, -1)
layout = {1: "mono", 2: "stereo"}[ch]
for ext, codec in [("flac", "flac"), ("mp3", "libmp3lame"), ("ogg", "vorbis")]:
    with av.open(f"{out}/fixture.{ext}", "w") as o:
        st = o.add_stream(codec, rate=rate, layout=layout)
        cc = st.codec_context
        if codec == "vorbis":
            cc.options = {"strict": "-2"}
        cc.open()
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm), format="s16", layout=layout)
        frame.sample_rate = rate
        fs = cc.frame_size or 4096
        fifo = av.AudioFifo()
        rs = av.AudioResampler(format=cc.format.name, layout=layout, rate=rate)
        for g in rs.resample(frame) + rs.resample(None):
            fifo.write(g)
        while fifo.samples:
            for p in st.encode(fifo.read(min(fs, fifo.samples))):
                o.mux(p)
        for p in st.encode(None):
            o.mux(p)
"#;

#[test]
fn compressed_formats_decode() {
    let Some(python) = python_with_av() else {
        println!("skipping FLAC/MP3/Ogg checks: no Python with PyAV (set SCRIBED_TEST_PYTHON)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rate = 44_100;
    let n = rate as usize / 2;
    let left = signal_at(rate, n);
    let src = dir.path().join("src.wav");
    let mut w = hound::WavWriter::create(&src, hound_spec(2, rate, 16, false)).unwrap();
    let mut pcm = Vec::with_capacity(2 * n);
    for &v in &left {
        let (l, r) = ((v * 32_767.0).round() as i16, (v * -16_384.0).round() as i16);
        w.write_sample(l).unwrap();
        w.write_sample(r).unwrap();
        pcm.extend([l as f32 / 32_768.0, r as f32 / 32_768.0]);
    }
    w.finalize().unwrap();

    let status = Command::new(&python).args(["-c", MAKE_FIXTURES]).arg(&src).arg(dir.path()).status().unwrap();
    assert!(status.success(), "fixture generation failed");

    // FLAC is lossless: identical samples to the WAV.
    let flac = decode_file(&dir.path().join("fixture.flac")).unwrap();
    assert_eq!((flac.sample_rate, flac.channels), (rate, 2));
    assert_eq!(flac.samples, pcm);

    // Lossy codecs: same rate/layout, about the same length (encoder delay
    // trimmed), and the waveform is recognisably the input at lag 0.
    for ext in ["mp3", "ogg"] {
        let path = dir.path().join(format!("fixture.{ext}"));
        let audio = decode_file(&path).unwrap();
        assert_eq!((audio.sample_rate, audio.channels), (rate, 2), "{ext}");
        let frames = audio.frames() as i64;
        assert!((frames - n as i64).abs() <= 2_048, "{ext}: {frames} frames, want ~{n}");
        // SNR of the left channel against the source shifted by `lag` frames.
        let snr = |lag: isize| {
            let (mut sig, mut noise) = (0.0, 0.0);
            for i in 2_000..20_000 {
                let want = pcm[2 * i] as f64;
                let got = audio.samples[(2 * (i as isize + lag)) as usize] as f64;
                sig += want * want;
                noise += (got - want).powi(2);
            }
            10.0 * f64::log10(sig / noise)
        };
        let at_zero = snr(0);
        println!("{ext}: {frames} frames (source {n}), SNR at lag 0: {at_zero:.1} dB");
        assert!(at_zero > 20.0, "{ext}: SNR {at_zero:.1} dB");
        // Encoder delay must be trimmed exactly: any shift fits worse.
        for lag in [-3, -2, -1, 1, 2, 3] {
            assert!(snr(lag) < at_zero, "{ext}: lag {lag} fits better than 0");
        }

        let mono16 = load_mono_16k(&path).unwrap();
        let want_len = (frames as f64 * 16_000.0 / rate as f64).round() as usize;
        assert_eq!(mono16.len(), want_len, "{ext}");
    }
}

#[test]
fn log_mel_matches_reference_on_jfk() {
    let samples = load_mono_16k(Path::new(JFK)).unwrap();
    let fe = MelFrontend::new(80).unwrap();
    let mel = fe.log_mel(&samples);
    assert_eq!((mel.n_mels, mel.frames), (80, 176_000 / 160 + 1));
    assert_eq!(mel.data.len(), 1_101 * 80);

    // Values from /work/shared/tools/ct2_reference.py's float64 log_mel on
    // jfk.wav (array [m, t]), NOT from this crate's output. Our measured
    // max abs error over all 88 080 values is 7.4e-8.
    const REF_MAX: f64 = 1.461_258_046_995_686_4;
    const SPOTS: [(usize, usize, f64); 10] = [
        (0, 0, -0.538_741_953_004_313_6),
        (0, 79, -0.538_741_953_004_313_6),
        (50, 10, 0.705_067_928_471_282_7),
        (100, 40, 0.145_013_063_610_897_94),
        (250, 5, 0.579_663_011_680_253_7),
        (500, 20, 0.023_543_190_974_056_216),
        (600, 60, 0.291_374_066_012_240_25),
        (1_000, 30, 0.265_316_080_905_662_06),
        (1_099, 79, -0.538_741_953_004_313_6),
        (1_100, 0, 0.021_474_173_156_580_956),
    ];
    let tol = 1e-5;
    assert!((mel.max() as f64 - REF_MAX).abs() < tol, "max {}", mel.max());
    for (t, m, want) in SPOTS {
        let got = mel.get(t, m).unwrap() as f64;
        assert!((got - want).abs() < tol, "[t={t}, m={m}] {got} vs reference {want}");
    }
    // The clamp floor is file-wide max − 8, i.e. max − 2 after scaling.
    let floor = mel.data.iter().copied().fold(f32::INFINITY, f32::min) as f64;
    assert!((floor - (REF_MAX - 2.0)).abs() < tol);
}

#[test]
fn log_mel_of_220s_is_fast() {
    // jfk × 20 ≈ 220 s, the long-form benchmark input.
    let jfk = load_mono_16k(Path::new(JFK)).unwrap();
    let long: Vec<f32> = jfk.iter().copied().cycle().take(jfk.len() * 20).collect();
    let fe = MelFrontend::new(80).unwrap();
    let t = std::time::Instant::now();
    let mel = fe.log_mel(&long);
    let elapsed = t.elapsed();
    println!("log_mel of {} s: {elapsed:?}", long.len() / 16_000);
    assert_eq!(mel.frames, long.len() / 160 + 1);
    // Generous bound (≈0.2 s measured on 2 cores): catches only gross
    // regressions on a loaded CI machine.
    assert!(elapsed.as_secs_f64() < 3.0, "{elapsed:?}");
}
