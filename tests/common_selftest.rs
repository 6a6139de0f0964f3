//! Tests of the shared test helpers in `tests/common/mod.rs` (a `#[cfg(test)]`
//! module inside `tests/common` would never run, so they live here).
mod common;

use common::*;

fn words(s: &[&str]) -> Vec<String> {
    s.iter().map(|w| w.to_string()).collect()
}

#[test]
fn wer_basic_cases() {
    assert!((wer("a b c", "a x c") - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(wer("a b c", "a b c"), 0.0);
    assert_eq!(wer("", ""), 0.0);
    assert_eq!(wer("a b c", ""), 1.0); // three deletions
    assert!((wer("a b", "a b c d") - 1.0).abs() < 1e-12); // two insertions
    assert_eq!(wer("", "thank you"), 2.0); // empty reference: insertions / 1
    assert!((wer("a b c d", "b c d e") - 0.5).abs() < 1e-12); // one del + one ins
}

#[test]
fn wer_ignores_case_and_punctuation() {
    assert_eq!(wer("AND SO MY FELLOW AMERICANS ASK NOT", "And so, my fellow Americans, ask not."), 0.0);
    assert_eq!(wer("YOU DON'T MEAN THAT", "You don't mean that?"), 0.0);
}

#[test]
fn word_errors_counts_edits_and_reference_words() {
    assert_eq!(word_errors("a b c", "a x c"), (1, 3));
    assert_eq!(word_errors("the cat sat", "cat sat on the mat"), (4, 3));
    assert_eq!(word_errors("", "x"), (1, 0));
    assert_eq!(word_errors("one two", "one two"), (0, 2));
}

#[test]
fn normalize_rules() {
    assert_eq!(
        normalize("And so, my fellow Americans: ask NOT!"),
        words(&["and", "so", "my", "fellow", "americans", "ask", "not"])
    );
    // In-word apostrophes stay; quote marks and trailing apostrophes go.
    assert_eq!(normalize("Don't  THERE'S"), words(&["don't", "there's"]));
    assert_eq!(normalize("there’s"), words(&["there's"]));
    assert_eq!(normalize("'quoted' the patients' food"), words(&["quoted", "the", "patients", "food"]));
    // Hyphens and dashes split words; other punctuation is removed in place.
    assert_eq!(normalize("post-mortem—done"), words(&["post", "mortem", "done"]));
    assert_eq!(normalize("Mr. Quilter, U.S. 1,000"), words(&["mr", "quilter", "us", "1000"]));
    assert_eq!(normalize(" \t\n"), Vec::<String>::new());
}

#[test]
fn manifest_parse_rules() {
    let text = "file\tseconds\treference_text\tsource\tlicense\n\
                a.wav\t1.500\tHELLO THERE\tsrc\tlic\n\
                b.wav\t89.208\t[no reference]\tsrc\tlic\n";
    let m = parse_manifest(text);
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].file, "a.wav");
    assert_eq!(m[0].seconds, 1.5);
    assert_eq!(m[0].reference.as_deref(), Some("HELLO THERE"));
    assert_eq!(m[1].reference, None);
}

#[test]
fn shared_manifest_reads_and_files_exist() {
    let m = manifest();
    assert!(m.len() >= 10, "manifest has only {} entries", m.len());
    let jfk = m.iter().find(|e| e.file == "jfk.wav").expect("jfk.wav in manifest");
    assert!((jfk.seconds - 11.0).abs() < 0.01);
    assert!(jfk.reference.as_deref().unwrap().starts_with("And so my fellow Americans"));
    assert!(m.iter().any(|e| e.reference.is_none()));
    for e in &m {
        assert!(shared_audio(&e.file).is_file(), "{} listed but missing", e.file);
    }
}

#[test]
fn paths_point_at_the_repository() {
    assert!(repo().join("Cargo.toml").is_file());
    assert!(shared_audio_dir().is_dir());
    // model_dir: None (with a printed skip line) for a model that is not there.
    assert_eq!(model_dir("no-such-model"), None);
}

#[test]
fn write_wav_writes_16_bit_pcm_mono() {
    let dir = std::env::temp_dir().join(format!("scribed-common-selftest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.wav");
    write_wav(&path, &[0.0, 1.0, -1.0, 0.5, 2.0], 16_000).unwrap();
    let b = std::fs::read(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    assert_eq!(b.len(), 44 + 10);
    assert_eq!(&b[0..4], b"RIFF");
    assert_eq!(u32_at(4) as usize, b.len() - 8);
    assert_eq!(&b[8..16], b"WAVEfmt ");
    assert_eq!(u32_at(16), 16);
    assert_eq!(u16_at(20), 1); // PCM
    assert_eq!(u16_at(22), 1); // mono
    assert_eq!(u32_at(24), 16_000);
    assert_eq!(u32_at(28), 32_000);
    assert_eq!(u16_at(32), 2);
    assert_eq!(u16_at(34), 16);
    assert_eq!(&b[36..40], b"data");
    assert_eq!(u32_at(40), 10);
    let samples: Vec<i16> = b[44..].chunks(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
    assert_eq!(samples, vec![0, 32767, -32767, 16384, 32767]);
}
