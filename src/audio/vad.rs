//! Voice activity detection: an energy detector with an adaptive noise floor.
//!
//! Whisper invents text for silence ("you", "Thank you.") and sometimes for
//! noise; this gate keeps audio without speech away from the decoder. It
//! decides per 10 ms frame (one mel frame), so offline and streaming callers
//! share one clock. A frame is speech when it stands `margin_db` above the
//! running noise floor and above an absolute floor; the noise floor follows
//! quiet frames down at once and rises slowly, so a steady noise (fan, hiss,
//! line noise) becomes the floor instead of "speech". A short hangover keeps
//! the gaps between words inside the utterance.

/// Samples per decision at 16 kHz (10 ms, one mel frame).
pub const FRAME: usize = 160;

#[derive(Debug, Clone, Copy)]
pub struct VadConfig {
    /// How far above the noise floor speech must be, dB.
    pub margin_db: f32,
    /// Frames quieter than this are never speech, dBFS.
    pub min_db: f32,
    /// How fast the floor climbs towards louder audio, dB per second.
    pub floor_rise_db_per_s: f32,
    /// Frames still counted as speech after the energy drops.
    pub hangover_frames: u32,
}

impl Default for VadConfig {
    fn default() -> Self {
        VadConfig { margin_db: 10.0, min_db: -55.0, floor_rise_db_per_s: 1.0, hangover_frames: 20 }
    }
}

/// Streaming detector state (a few floats: one per session and channel).
#[derive(Debug, Clone)]
pub struct Vad {
    cfg: VadConfig,
    floor_db: Option<f32>,
    hangover: u32,
}

impl Vad {
    pub fn new(cfg: VadConfig) -> Self {
        Vad { cfg, floor_db: None, hangover: 0 }
    }

    /// Classifies one frame of up to [`FRAME`] samples.
    pub fn push(&mut self, frame: &[f32]) -> bool {
        let energy = frame.iter().map(|x| x * x).sum::<f32>() / frame.len().max(1) as f32;
        let db = 10.0 * (energy + 1e-12).log10();
        let floor = match self.floor_db {
            None => db,
            Some(f) if db < f => db,
            Some(f) => (f + self.cfg.floor_rise_db_per_s * FRAME as f32 / super::SAMPLE_RATE as f32).min(db),
        };
        self.floor_db = Some(floor);
        let loud = db > self.cfg.min_db && db > floor + self.cfg.margin_db;
        if loud {
            self.hangover = self.cfg.hangover_frames;
            true
        } else if self.hangover > 0 {
            self.hangover -= 1;
            true
        } else {
            false
        }
    }

    pub fn reset(&mut self) {
        self.floor_db = None;
        self.hangover = 0;
    }
}

/// Speech decision for every 10 ms frame of a 16 kHz recording.
pub fn speech_frames(samples: &[f32], cfg: VadConfig) -> Vec<bool> {
    let mut vad = Vad::new(cfg);
    samples.chunks(FRAME).map(|f| vad.push(f)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(seconds: f32, amp: f32) -> Vec<f32> {
        (0..(seconds * 16_000.0) as usize).map(|i| amp * (i as f32 * 0.2).sin()).collect()
    }

    fn noise(seconds: f32, amp: f32, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..(seconds * 16_000.0) as usize)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * amp
            })
            .collect()
    }

    #[test]
    fn silence_and_steady_noise_are_not_speech() {
        assert!(!speech_frames(&vec![0.0; 16_000 * 5], VadConfig::default()).contains(&true));
        assert!(!speech_frames(&noise(5.0, 0.3, 7), VadConfig::default()).contains(&true));
    }

    #[test]
    fn a_loud_burst_over_quiet_noise_is_speech_with_hangover() {
        let mut x = noise(1.0, 0.001, 3);
        x.extend(tone(0.5, 0.3));
        x.extend(noise(1.0, 0.001, 5));
        let v = speech_frames(&x, VadConfig::default());
        assert!(v[..100].iter().all(|&s| !s));
        assert!(v[101..150].iter().all(|&s| s));
        assert!(v[150..150 + 20].iter().all(|&s| s), "hangover bridges short gaps");
        assert!(v[200..].iter().all(|&s| !s));
    }
}
