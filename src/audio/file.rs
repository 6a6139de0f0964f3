//! Decoding audio files (WAV, FLAC, MP3, Ogg/Vorbis) to f32 samples with
//! symphonia, and the one-call path to Whisper's input: [`load_mono_16k`].
//!
//! Integer PCM is scaled by `2^(bits−1)` (16-bit: `int16 / 32768`, exactly
//! as faster-whisper), 8-bit unsigned by `(u8 − 128) / 128`; float PCM is
//! taken as is. Multichannel audio is downmixed by averaging the channels.
//!
//! Policy on bad input (never a panic):
//! * a missing, unreadable or empty (0-byte) file, an unrecognised
//!   container, or a file without a decodable audio track is an error;
//! * a well-formed file holding zero frames decodes to empty audio (`Ok`);
//! * packets that fail to decode are skipped, as faster-whisper (PyAV)
//!   does; if *no* packet decodes, the file is reported corrupt;
//! * a stream that ends early (truncated download) keeps what was decoded.

use std::fs::File;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};

use symphonia::core::audio::GenericAudioBufferRef;
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::packet::Packet;

use super::resample::{resample_to_16k, ResampleError};
use super::SAMPLE_RATE;

/// Why a file could not be turned into samples. Every variant names the
/// file and displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The path does not exist.
    #[error("{}: file not found", path.display())]
    NotFound { path: PathBuf },
    /// The file exists but could not be read (permissions, a directory, I/O).
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file has no bytes at all.
    #[error("{}: file is empty", path.display())]
    Empty { path: PathBuf },
    /// Not a container or codec we can decode (or not audio at all).
    #[error("{}: unsupported or unrecognised audio format ({reason})", path.display())]
    Unsupported { path: PathBuf, reason: String },
    /// A recognised container without any decodable audio track.
    #[error("{}: no audio track", path.display())]
    NoAudioTrack { path: PathBuf },
    /// The container or codec data is broken beyond what can be skipped.
    #[error("{}: corrupt audio data ({reason})", path.display())]
    Corrupt { path: PathBuf, reason: String },
    /// The decoded audio could not be converted to 16 kHz.
    #[error("{}: {source}", path.display())]
    Resample {
        path: PathBuf,
        #[source]
        source: ResampleError,
    },
}

impl AudioError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::NotFound { path }
            | Self::Io { path, .. }
            | Self::Empty { path }
            | Self::Unsupported { path, .. }
            | Self::NoAudioTrack { path }
            | Self::Corrupt { path, .. }
            | Self::Resample { path, .. } => path,
        }
    }
}

/// Decoded audio at its native rate and channel count.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedAudio {
    /// Samples, **interleaved** (`frame * channels + channel`), in [-1, 1].
    pub samples: Vec<f32>,
    /// Frames per second.
    pub sample_rate: u32,
    /// Channels per frame (≥ 1).
    pub channels: usize,
}

impl DecodedAudio {
    /// Number of frames (samples per channel).
    pub fn frames(&self) -> usize {
        self.samples.len() / self.channels.max(1)
    }

    /// Duration in seconds.
    pub fn duration_secs(&self) -> f64 {
        self.frames() as f64 / self.sample_rate.max(1) as f64
    }

    /// Mono copy: the average of the channels of each frame.
    pub fn to_mono(&self) -> Vec<f32> {
        downmix(&self.samples, self.channels)
    }

    /// Mono, without copying when the audio is already mono.
    pub fn into_mono(self) -> Vec<f32> {
        if self.channels == 1 {
            self.samples
        } else {
            self.to_mono()
        }
    }
}

/// Averages interleaved frames of `channels` samples. Summed in f64 so a
/// mono file stored as identical stereo channels comes back bit-exact.
fn downmix(interleaved: &[f32], channels: usize) -> Vec<f32> {
    match channels {
        0 | 1 => interleaved.to_vec(),
        _ => interleaved
            .chunks_exact(channels)
            .map(|frame| (frame.iter().map(|&s| s as f64).sum::<f64>() / channels as f64) as f32)
            .collect(),
    }
}

/// Decodes a whole file (any supported container/codec) to interleaved
/// f32 at its own rate. The container is detected from the content; the
/// extension is only a hint.
pub fn decode_file(path: &Path) -> Result<DecodedAudio, AudioError> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let meta = file.metadata().map_err(|e| io_error(path, e))?;
    // Opening a directory succeeds on Unix; reading it would not.
    if meta.is_dir() {
        return Err(io_error(path, io::Error::other("is a directory")));
    }
    if meta.len() == 0 {
        return Err(AudioError::Empty { path: path.to_path_buf() });
    }
    let ext = path.extension().and_then(|e| e.to_str());
    decode_source(Box::new(file), ext, path)
}

/// Decodes an in-memory file (e.g. an upload). `extension` is an optional
/// hint such as `"mp3"`; `name` labels errors.
pub fn decode_bytes(bytes: Vec<u8>, extension: Option<&str>, name: &Path) -> Result<DecodedAudio, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty { path: name.to_path_buf() });
    }
    decode_source(Box::new(Cursor::new(bytes)), extension, name)
}

/// Decodes `path`, downmixes to mono and resamples to 16 kHz: Whisper's
/// input. Audio already at 16 kHz passes through bit-exact.
pub fn load_mono_16k(path: &Path) -> Result<Vec<f32>, AudioError> {
    let audio = decode_file(path)?;
    let rate = audio.sample_rate;
    let mono = audio.into_mono();
    if rate == SAMPLE_RATE {
        return Ok(mono);
    }
    resample_to_16k(&mono, rate).map_err(|source| AudioError::Resample { path: path.to_path_buf(), source })
}

fn io_error(path: &Path, e: io::Error) -> AudioError {
    let path = path.to_path_buf();
    if e.kind() == io::ErrorKind::NotFound {
        AudioError::NotFound { path }
    } else {
        AudioError::Io { path, source: e }
    }
}

/// Maps a symphonia error met while probing/demuxing/decoding.
fn sym_error(path: &Path, e: SymError) -> AudioError {
    let path = path.to_path_buf();
    match e {
        SymError::IoError(source) if source.kind() == io::ErrorKind::UnexpectedEof => {
            AudioError::Corrupt { path, reason: "unexpected end of file".into() }
        }
        SymError::IoError(source) => AudioError::Io { path, source },
        SymError::Unsupported(what) => AudioError::Unsupported { path, reason: what.into() },
        SymError::DecodeError(what) => AudioError::Corrupt { path, reason: what.into() },
        SymError::LimitError(what) => AudioError::Corrupt { path, reason: format!("limit exceeded: {what}") },
        other => AudioError::Corrupt { path, reason: other.to_string() },
    }
}

fn decode_source(
    source: Box<dyn MediaSource>,
    extension: Option<&str>,
    path: &Path,
) -> Result<DecodedAudio, AudioError> {
    let mut format = probe(source, extension, path)?;
    let track =
        format.default_track(TrackType::Audio).ok_or_else(|| AudioError::NoAudioTrack { path: path.to_path_buf() })?;
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| AudioError::NoAudioTrack { path: path.to_path_buf() })?;
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(params, &AudioDecoderOptions::default())
        .map_err(|e| sym_error(path, e))?;
    // Rate and channels from the header; the decoded buffers have the
    // final word (some containers leave them unset).
    let mut out = Collected::new(params.sample_rate, params.channels.as_ref().map(|c| c.count()));
    while let Some(packet) = next_packet(format.as_mut(), out.decoded_packets, path)? {
        if packet.track_id != track_id {
            continue;
        }
        match decoder.decode(&packet) {
            Ok(buf) => out.append(&buf, path)?,
            // Bad packets are skipped, as faster-whisper's decode_audio does.
            Err(e @ (SymError::DecodeError(_) | SymError::IoError(_))) => out.skip(e),
            Err(e) => return Err(sym_error(path, e)),
        }
    }
    out.finish(path)
}

/// Opens the container (detected from the content; the extension is a hint).
fn probe(
    source: Box<dyn MediaSource>,
    extension: Option<&str>,
    path: &Path,
) -> Result<Box<dyn FormatReader>, AudioError> {
    let mss = MediaSourceStream::new(source, Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = extension {
        hint.with_extension(ext);
    }
    symphonia::default::get_probe().probe(&hint, mss, FormatOptions::default(), MetadataOptions::default()).map_err(
        |e| match e {
            // Probing reads headers; running out of bytes there means the
            // file is too short to be what it claims, or is not audio.
            SymError::IoError(ref io) if io.kind() == io::ErrorKind::UnexpectedEof => {
                AudioError::Unsupported { path: path.to_path_buf(), reason: "truncated or unrecognised header".into() }
            }
            other => sym_error(path, other),
        },
    )
}

/// The next packet, or `None` where the usable stream ends: at its end, at
/// a chained Ogg stream (the first is kept), at a truncation (what was
/// decoded is kept, as PyAV does), or at corrupt data after good packets.
fn next_packet(format: &mut dyn FormatReader, decoded: usize, path: &Path) -> Result<Option<Packet>, AudioError> {
    match format.next_packet() {
        Ok(p) => Ok(p),
        Err(SymError::ResetRequired) => Ok(None),
        Err(SymError::IoError(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            tracing::warn!(path = %path.display(), "audio stream ends early (truncated file?)");
            Ok(None)
        }
        Err(e @ SymError::DecodeError(_)) if decoded > 0 => {
            tracing::warn!(path = %path.display(), error = %e, "stopping at corrupt data");
            Ok(None)
        }
        Err(e) => Err(sym_error(path, e)),
    }
}

/// Decoded samples gathered packet by packet, with the format they share.
struct Collected {
    samples: Vec<f32>,
    sample_rate: Option<u32>,
    channels: Option<usize>,
    decoded_packets: usize,
    /// The first undecodable packet's error, and how many were skipped.
    skipped: Option<SymError>,
    skipped_count: usize,
}

impl Collected {
    fn new(sample_rate: Option<u32>, channels: Option<usize>) -> Self {
        Collected { samples: Vec::new(), sample_rate, channels, decoded_packets: 0, skipped: None, skipped_count: 0 }
    }

    fn append(&mut self, buf: &GenericAudioBufferRef<'_>, path: &Path) -> Result<(), AudioError> {
        let spec = buf.spec();
        let (rate, ch) = (spec.rate(), spec.channels().count());
        if ch == 0 || rate == 0 {
            return Err(AudioError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("decoder reports {ch} channels at {rate} Hz"),
            });
        }
        // A mid-stream format change cannot be represented in one buffer;
        // no supported format produces one in practice.
        if self.decoded_packets > 0 && (self.sample_rate != Some(rate) || self.channels != Some(ch)) {
            return Err(AudioError::Unsupported {
                path: path.to_path_buf(),
                reason: "sample rate or channel count changes mid-stream".into(),
            });
        }
        self.sample_rate = Some(rate);
        self.channels = Some(ch);
        self.decoded_packets += 1;
        let start = self.samples.len();
        self.samples.resize(start + buf.samples_interleaved(), 0.0);
        buf.copy_to_slice_interleaved(&mut self.samples[start..]);
        Ok(())
    }

    fn skip(&mut self, e: SymError) {
        self.skipped_count += 1;
        self.skipped.get_or_insert(e);
    }

    fn finish(mut self, path: &Path) -> Result<DecodedAudio, AudioError> {
        if self.decoded_packets == 0 {
            if let Some(e) = self.skipped.take() {
                return Err(sym_error(path, e));
            }
        } else if self.skipped_count > 0 {
            tracing::warn!(path = %path.display(), skipped_count = self.skipped_count, "skipped undecodable audio packets");
        }
        let (Some(sample_rate), Some(channels)) = (self.sample_rate, self.channels) else {
            return Err(AudioError::Corrupt {
                path: path.to_path_buf(),
                reason: "sample rate or channel count unknown".into(),
            });
        };
        if sample_rate == 0 || channels == 0 {
            return Err(AudioError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("header declares {channels} channels at {sample_rate} Hz"),
            });
        }
        let mut samples = self.samples;
        super::sanitize(&mut samples);
        Ok(DecodedAudio { samples, sample_rate, channels })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A minimal 16-bit PCM WAV, written by hand so the tests need no
    /// encoder.
    fn wav_bytes(rate: u32, channels: u16, pcm: &[i16]) -> Vec<u8> {
        let data_len = (pcm.len() * 2) as u32;
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(36 + data_len).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&channels.to_le_bytes());
        b.extend_from_slice(&rate.to_le_bytes());
        b.extend_from_slice(&(rate * channels as u32 * 2).to_le_bytes());
        b.extend_from_slice(&(channels * 2).to_le_bytes());
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&data_len.to_le_bytes());
        for s in pcm {
            b.extend_from_slice(&s.to_le_bytes());
        }
        b
    }

    fn write_tmp(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.path().join(name);
        let mut f = File::create(&p).unwrap();
        f.write_all(bytes).unwrap();
        p
    }

    #[test]
    fn int16_is_scaled_by_32768() {
        let dir = tempfile::tempdir().unwrap();
        let pcm = [0i16, 1, -1, 16_384, i16::MAX, i16::MIN];
        let p = write_tmp(&dir, "a.wav", &wav_bytes(16_000, 1, &pcm));
        let a = decode_file(&p).unwrap();
        assert_eq!((a.sample_rate, a.channels, a.frames()), (16_000, 1, 6));
        let want: Vec<f32> = pcm.iter().map(|&s| s as f32 / 32_768.0).collect();
        assert_eq!(a.samples, want);
        assert_eq!(load_mono_16k(&p).unwrap(), want);
    }

    #[test]
    fn stereo_is_averaged() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_tmp(&dir, "s.wav", &wav_bytes(16_000, 2, &[100, 300, -8, -8, 0, 32_767]));
        let a = decode_file(&p).unwrap();
        assert_eq!((a.channels, a.frames()), (2, 3));
        let m = a.to_mono();
        assert_eq!(m, vec![200.0 / 32_768.0, -8.0 / 32_768.0, 32_767.0 / 65_536.0]);
        assert_eq!(a.into_mono(), m);
    }

    #[test]
    fn zero_frame_wav_is_empty_audio() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_tmp(&dir, "z.wav", &wav_bytes(8_000, 1, &[]));
        let a = decode_file(&p).unwrap();
        assert!(a.samples.is_empty());
        assert_eq!(a.sample_rate, 8_000);
        assert!(load_mono_16k(&p).unwrap().is_empty());
    }

    #[test]
    fn missing_file() {
        let e = decode_file(Path::new("/nonexistent/x.wav")).unwrap_err();
        assert!(matches!(e, AudioError::NotFound { .. }), "{e}");
        assert_eq!(e.to_string(), "/nonexistent/x.wav: file not found");
    }

    #[test]
    fn empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_tmp(&dir, "e.wav", b"");
        let e = decode_file(&p).unwrap_err();
        assert!(matches!(e, AudioError::Empty { .. }), "{e}");
    }

    #[test]
    fn directory_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = decode_file(dir.path()).unwrap_err();
        assert!(matches!(e, AudioError::Io { .. }), "{e}");
    }

    #[test]
    fn text_file_renamed_wav() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_tmp(&dir, "t.wav", b"hello, this is not audio at all\n".repeat(20).as_slice());
        let e = decode_file(&p).unwrap_err();
        assert!(matches!(e, AudioError::Unsupported { .. }), "{e}");
        assert!(e.to_string().starts_with(&format!("{}: ", p.display())));
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn truncated_wav_keeps_decoded_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let pcm: Vec<i16> = (0..4_000).map(|i| (i % 200) as i16).collect();
        let full = wav_bytes(16_000, 1, &pcm);
        // Cut in the middle of the data chunk (and mid-sample).
        let p = write_tmp(&dir, "cut.wav", &full[..44 + 3_001]);
        let a = decode_file(&p).unwrap();
        assert!(!a.samples.is_empty() && a.samples.len() <= 1_500, "{}", a.samples.len());
        for (got, &want) in a.samples.iter().zip(&pcm) {
            assert_eq!(*got, want as f32 / 32_768.0);
        }
    }

    #[test]
    fn truncated_headers_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let full = wav_bytes(16_000, 1, &[1, 2, 3, 4]);
        for cut in 1..full.len() {
            let p = write_tmp(&dir, "h.wav", &full[..cut]);
            // Any outcome but a panic is fine; errors must be one line.
            if let Err(e) = decode_file(&p) {
                assert!(!e.to_string().contains('\n'));
            }
        }
    }

    #[test]
    fn garbage_after_valid_magic_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for (i, magic) in [&b"RIFF"[..], b"fLaC", b"OggS", b"ID3\x03", b"\xff\xfb\x90\x64"].iter().enumerate() {
            let mut bytes = magic.to_vec();
            for _ in 0..4_000 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(seed as u8);
            }
            let p = write_tmp(&dir, &format!("g{i}.bin"), &bytes);
            let _ = decode_file(&p);
        }
    }

    #[test]
    fn decode_bytes_matches_decode_file() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = wav_bytes(22_050, 1, &[5, -5, 1000]);
        let p = write_tmp(&dir, "b.wav", &bytes);
        let from_mem = decode_bytes(bytes, Some("wav"), Path::new("upload")).unwrap();
        assert_eq!(from_mem, decode_file(&p).unwrap());
        let e = decode_bytes(Vec::new(), None, Path::new("upload")).unwrap_err();
        assert_eq!(e.to_string(), "upload: file is empty");
    }
}
