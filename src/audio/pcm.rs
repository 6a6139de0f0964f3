//! Wire-format audio: raw PCM frames (linear16, linear32 float, G.711 µ-law
//! and A-law) and a streaming WAV header reader, decoded into interleaved
//! `f32` samples in [-1, 1].
//!
//! A live stream arrives in arbitrary frames, so the decoder is incremental:
//! with a WAV header it carries partial samples across frames (a file sliced
//! into chunks splits samples anywhere); with a raw encoding announced in
//! the query, a frame must hold whole samples (an odd-length linear16 frame is
//! a client bug, reported rather than silently realigned).

/// The raw sample formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleFormat {
    Linear16,
    Linear32,
    Mulaw,
    Alaw,
}

impl SampleFormat {
    pub fn bytes(self) -> usize {
        match self {
            Self::Linear16 => 2,
            Self::Linear32 => 4,
            Self::Mulaw | Self::Alaw => 1,
        }
    }
}

/// Format of a stream once known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcmFormat {
    pub sample: SampleFormat,
    pub sample_rate: u32,
    pub channels: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PcmError {
    #[error("{format} frame of {len} bytes is not a whole number of {bytes}-byte samples")]
    PartialSample { format: &'static str, len: usize, bytes: usize },
    #[error("non-finite sample (NaN or Inf) in linear32 audio")]
    NonFinite,
    #[error("no encoding was given and the stream does not start with a WAV header: {0}")]
    NotWav(String),
    #[error("unsupported WAV audio: {0}")]
    UnsupportedWav(String),
}

/// Largest WAV header we wait for before giving up on it.
const MAX_HEADER: usize = 64 * 1024;

/// Sample rates and channel counts accepted on the wire (query parameters
/// and WAV headers alike).
pub const MIN_SAMPLE_RATE: u32 = 8_000;
pub const MAX_SAMPLE_RATE: u32 = 96_000;
pub const MAX_CHANNELS: u16 = 8;

/// Incremental decoder of one stream's binary frames.
#[derive(Debug)]
pub struct PcmDecoder {
    format: Option<PcmFormat>,
    /// Whether partial samples may straddle frames (WAV streams).
    carry_partial: bool,
    /// Bytes not yet decoded: a partial header, or a partial sample.
    pending: Vec<u8>,
}

impl PcmDecoder {
    /// A decoder for a raw encoding announced up front.
    pub fn raw(format: PcmFormat) -> Self {
        PcmDecoder { format: Some(format), carry_partial: false, pending: Vec::new() }
    }

    /// A decoder that reads a WAV header from the first bytes.
    pub fn wav() -> Self {
        PcmDecoder { format: None, carry_partial: true, pending: Vec::new() }
    }

    /// The format, once known (after the WAV header for [`PcmDecoder::wav`]).
    pub fn format(&self) -> Option<PcmFormat> {
        self.format
    }

    /// Decodes one frame, appending interleaved samples to `out`.
    pub fn decode(&mut self, frame: &[u8], out: &mut Vec<f32>) -> Result<(), PcmError> {
        let Some(format) = self.format else {
            self.pending.extend_from_slice(frame);
            match parse_wav_header(&self.pending)? {
                None if self.pending.len() > MAX_HEADER => {
                    return Err(PcmError::NotWav(format!("no data chunk in the first {MAX_HEADER} bytes")))
                }
                None => return Ok(()),
                Some((format, data_at)) => {
                    self.format = Some(format);
                    let rest = self.pending.split_off(data_at);
                    self.pending.clear();
                    return self.decode(&rest, out);
                }
            }
        };
        let bytes = format.sample.bytes();
        if !self.carry_partial {
            if !frame.len().is_multiple_of(bytes) {
                let name = match format.sample {
                    SampleFormat::Linear16 => "linear16",
                    SampleFormat::Linear32 => "linear32",
                    SampleFormat::Mulaw => "mulaw",
                    SampleFormat::Alaw => "alaw",
                };
                return Err(PcmError::PartialSample { format: name, len: frame.len(), bytes });
            }
            return decode_whole(format.sample, frame, out);
        }
        if self.pending.is_empty() {
            let whole = frame.len() / bytes * bytes;
            decode_whole(format.sample, &frame[..whole], out)?;
            self.pending.extend_from_slice(&frame[whole..]);
        } else {
            self.pending.extend_from_slice(frame);
            let whole = self.pending.len() / bytes * bytes;
            let rest = self.pending.split_off(whole);
            let head = std::mem::replace(&mut self.pending, rest);
            decode_whole(format.sample, &head, out)?;
        }
        Ok(())
    }
}

fn decode_whole(format: SampleFormat, b: &[u8], out: &mut Vec<f32>) -> Result<(), PcmError> {
    out.reserve(b.len() / format.bytes());
    match format {
        SampleFormat::Linear16 => {
            out.extend(b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as f32 / 32768.0));
        }
        SampleFormat::Linear32 => {
            let start = out.len();
            out.extend(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
            if !out[start..].iter().all(|x| x.is_finite()) {
                out.truncate(start);
                return Err(PcmError::NonFinite);
            }
            super::sanitize(&mut out[start..]);
        }
        SampleFormat::Mulaw => out.extend(b.iter().map(|&x| mulaw_to_linear(x) as f32 / 32768.0)),
        SampleFormat::Alaw => out.extend(b.iter().map(|&x| alaw_to_linear(x) as f32 / 32768.0)),
    }
    Ok(())
}

/// G.711 µ-law expansion.
pub fn mulaw_to_linear(u: u8) -> i16 {
    let u = !u;
    let t = (((u & 0x0f) as i32) << 3) + 0x84;
    let t = t << ((u & 0x70) >> 4);
    (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
}

/// G.711 µ-law compression (for clients and tests).
pub fn linear_to_mulaw(s: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut x = s as i32;
    let sign = if x < 0 {
        x = -x;
        0x80
    } else {
        0
    };
    x = x.min(CLIP) + BIAS;
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && x & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (x >> (exponent + 3)) & 0x0f;
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// G.711 A-law expansion.
pub fn alaw_to_linear(a: u8) -> i16 {
    let a = a ^ 0x55;
    let mut t = ((a & 0x0f) as i32) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

/// G.711 A-law compression (for clients and tests).
pub fn linear_to_alaw(s: i16) -> u8 {
    let mut x = s as i32;
    let sign = if x >= 0 {
        0x80
    } else {
        x = -x - 1;
        0
    };
    x = x.min(32767);
    let (seg, mantissa) = if x < 256 {
        (0, (x >> 4) & 0x0f)
    } else {
        let mut seg = 1;
        while seg < 7 && x >= (256 << seg) {
            seg += 1;
        }
        (seg, (x >> (seg + 3)) & 0x0f)
    };
    ((sign | (seg << 4) | mantissa) as u8) ^ 0x55
}

/// Reads a RIFF/WAVE header. `Ok(None)`: not enough bytes yet;
/// `Ok(Some((format, offset of the first data byte)))`.
fn parse_wav_header(b: &[u8]) -> Result<Option<(PcmFormat, usize)>, PcmError> {
    if b.len() < 12 {
        if !b"RIFF"[..b.len().min(4)].eq(&b[..b.len().min(4)]) {
            return Err(PcmError::NotWav("no RIFF magic".into()));
        }
        return Ok(None);
    }
    if &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return Err(PcmError::NotWav("no RIFF/WAVE magic".into()));
    }
    let mut at = 12;
    let mut format = None;
    loop {
        let Some(head) = b.get(at..at + 8) else { return Ok(None) };
        let id = &head[0..4];
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let body = at + 8;
        if id == b"data" {
            let f = format.ok_or_else(|| PcmError::UnsupportedWav("data chunk before fmt chunk".into()))?;
            return Ok(Some((f, body)));
        }
        let Some(chunk) = b.get(body..body + len) else { return Ok(None) };
        if id == b"fmt " {
            if chunk.len() < 16 {
                return Err(PcmError::UnsupportedWav("short fmt chunk".into()));
            }
            let mut tag = u16::from_le_bytes([chunk[0], chunk[1]]);
            let channels = u16::from_le_bytes([chunk[2], chunk[3]]);
            let rate = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
            let bits = u16::from_le_bytes([chunk[14], chunk[15]]);
            if tag == 0xfffe && chunk.len() >= 26 {
                // WAVE_FORMAT_EXTENSIBLE: the real tag opens the sub-format GUID.
                tag = u16::from_le_bytes([chunk[24], chunk[25]]);
            }
            let sample = match (tag, bits) {
                (1, 16) => SampleFormat::Linear16,
                (3, 32) => SampleFormat::Linear32,
                (6, 8) => SampleFormat::Alaw,
                (7, 8) => SampleFormat::Mulaw,
                _ => return Err(PcmError::UnsupportedWav(format!("format tag {tag} with {bits} bits per sample"))),
            };
            if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&rate) {
                return Err(PcmError::UnsupportedWav(format!("sample rate {rate} Hz")));
            }
            if !(1..=MAX_CHANNELS).contains(&channels) {
                return Err(PcmError::UnsupportedWav(format!("{channels} channels")));
            }
            format = Some(PcmFormat { sample, sample_rate: rate, channels });
        }
        at = body + len + (len & 1);
        if at > MAX_HEADER {
            return Err(PcmError::NotWav(format!("no data chunk in the first {MAX_HEADER} bytes")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g711_round_trips_closely() {
        for s in [-32000i16, -1000, -5, 0, 5, 1000, 32000] {
            let m = mulaw_to_linear(linear_to_mulaw(s)) as i32;
            let a = alaw_to_linear(linear_to_alaw(s)) as i32;
            let tol = (s as i32).abs() / 16 + 16;
            assert!((m - s as i32).abs() <= tol, "mulaw {s} -> {m}");
            assert!((a - s as i32).abs() <= tol, "alaw {s} -> {a}");
        }
    }

    #[test]
    fn raw_linear16_rejects_odd_frames() {
        let mut d = PcmDecoder::raw(PcmFormat { sample: SampleFormat::Linear16, sample_rate: 16000, channels: 1 });
        let mut out = Vec::new();
        assert!(d.decode(&[0, 0, 1], &mut out).is_err());
        d.decode(&[0, 0x40], &mut out).unwrap();
        assert_eq!(out, vec![0.5]);
    }

    #[test]
    fn linear32_rejects_nan() {
        let mut d = PcmDecoder::raw(PcmFormat { sample: SampleFormat::Linear32, sample_rate: 16000, channels: 1 });
        let mut out = Vec::new();
        assert_eq!(d.decode(&f32::NAN.to_le_bytes(), &mut out), Err(PcmError::NonFinite));
        assert!(out.is_empty());
    }

    #[test]
    fn linear32_is_clipped_to_full_scale() {
        let mut d = PcmDecoder::raw(PcmFormat { sample: SampleFormat::Linear32, sample_rate: 44100, channels: 1 });
        let mut out = Vec::new();
        let frame: Vec<u8> = [1e37f32, -3e38, 0.25].iter().flat_map(|x| x.to_le_bytes()).collect();
        d.decode(&frame, &mut out).unwrap();
        assert_eq!(out, vec![1.0, -1.0, 0.25]);
    }

    #[test]
    fn wav_header_split_anywhere() {
        let mut wav = Vec::new();
        wav.extend_from_slice(b"RIFF\0\0\0\0WAVEfmt ");
        wav.extend_from_slice(&16u32.to_le_bytes());
        wav.extend_from_slice(&1u16.to_le_bytes());
        wav.extend_from_slice(&2u16.to_le_bytes());
        wav.extend_from_slice(&44100u32.to_le_bytes());
        wav.extend_from_slice(&(44100u32 * 4).to_le_bytes());
        wav.extend_from_slice(&4u16.to_le_bytes());
        wav.extend_from_slice(&16u16.to_le_bytes());
        wav.extend_from_slice(b"data\x08\0\0\0");
        for s in [1i16, 2, 3, 4] {
            wav.extend_from_slice(&s.to_le_bytes());
        }
        let mut d = PcmDecoder::wav();
        let mut out = Vec::new();
        for chunk in wav.chunks(3) {
            d.decode(chunk, &mut out).unwrap();
        }
        assert_eq!(d.format().unwrap().channels, 2);
        assert_eq!(out.len(), 4);
        assert!(PcmDecoder::wav().decode(b"OggS\0\0\0\0\0\0\0\0\0", &mut out).is_err());
    }
}
