//! `scribed mic`: microphone dictation to a daemon.
//!
//! cpal's audio callback runs on a real-time thread, so it only downmixes
//! into a preallocated lock-free ring (`ringbuf`) and never allocates, locks
//! or blocks; the async side drains the ring every 50 ms into linear16
//! frames at the device's own rate (the daemon resamples). A microphone
//! cannot be paused, so a full ring drops audio — and says how much at the
//! end instead of hiding it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use futures_util::SinkExt;
use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};
use tokio_tungstenite::tungstenite::Message;

use super::stream::{connect, converse, linear16, listen_url, ClientError, StreamOptions};
use crate::protocol::ServerMessage;

/// Audio the ring holds while the network catches up.
const RING_SECONDS: u32 = 30;
/// How often the ring is drained into a websocket frame.
const FRAME: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum MicError {
    #[error("no microphone found (no default input device on the {0} audio host)")]
    NoDevice(String),
    #[error("no input device named `{0}` (see `scribed mic --list`)")]
    UnknownDevice(String),
    #[error("the audio host cannot list devices: {0}")]
    Devices(#[from] cpal::DevicesError),
    #[error("the microphone has no usable input format: {0}")]
    Config(String),
    #[error("no microphone available: the input device `{0}` cannot be opened (no sound card, or it is in use)")]
    Unavailable(String),
    #[error("the microphone cannot be opened: {0}")]
    Build(#[from] cpal::BuildStreamError),
    #[error("the microphone cannot be started: {0}")]
    Play(#[from] cpal::PlayStreamError),
    #[error(transparent)]
    Client(Box<ClientError>),
}

// Boxed: tungstenite's error is large and would bloat every `Result` here.
impl From<ClientError> for MicError {
    fn from(e: ClientError) -> Self {
        MicError::Client(Box::new(e))
    }
}

/// Names of the input devices the default host offers.
pub fn list_devices() -> Result<Vec<String>, MicError> {
    let host = cpal::default_host();
    Ok(host.input_devices()?.filter_map(|d| d.name().ok()).collect())
}

/// An open, running microphone and the consumer half of its ring.
pub struct Microphone {
    // Dropping the stream stops the callback; it must outlive the session.
    _stream: cpal::Stream,
    cons: HeapCons<f32>,
    pub sample_rate: u32,
    pub name: String,
    dropped: Arc<AtomicU64>,
}

impl Microphone {
    /// Opens `device` (by name) or the default input. Prefers 16 kHz mono
    /// when the device offers it, so nothing needs resampling; otherwise
    /// uses the device's default format.
    pub fn open(device: Option<&str>) -> Result<Microphone, MicError> {
        let host = cpal::default_host();
        let dev = match device {
            None => host.default_input_device().ok_or_else(|| MicError::NoDevice(host.id().name().to_string()))?,
            Some(want) => host
                .input_devices()?
                .find(|d| d.name().is_ok_and(|n| n == want))
                .ok_or_else(|| MicError::UnknownDevice(want.to_string()))?,
        };
        let name = dev.name().unwrap_or_else(|_| "input".into());
        let wanted = cpal::SampleRate(16_000);
        let native = dev
            .supported_input_configs()
            .ok()
            .and_then(|mut it| {
                it.find(|c| {
                    c.channels() == 1
                        && c.sample_format() == cpal::SampleFormat::I16
                        && c.min_sample_rate() <= wanted
                        && wanted <= c.max_sample_rate()
                })
            })
            .map(|c| c.with_sample_rate(wanted));
        let supported = match native {
            Some(c) => c,
            None => dev.default_input_config().map_err(|e| match e {
                cpal::DefaultStreamConfigError::DeviceNotAvailable => MicError::Unavailable(name.clone()),
                other => MicError::Config(other.to_string()),
            })?,
        };
        let config = supported.config();
        let channels = usize::from(config.channels.max(1));
        let sample_rate = config.sample_rate.0;
        let (prod, cons) = HeapRb::<f32>::new((sample_rate * RING_SECONDS) as usize).split();
        let dropped = Arc::new(AtomicU64::new(0));
        let on_error = |e: cpal::StreamError| tracing::error!(error = %e, "microphone stream error");
        let tap = Tap { prod, channels, dropped: dropped.clone() };
        let stream = match supported.sample_format() {
            cpal::SampleFormat::F32 => build::<f32>(&dev, &config, tap, on_error)?,
            cpal::SampleFormat::I16 => build::<i16>(&dev, &config, tap, on_error)?,
            cpal::SampleFormat::U16 => build::<u16>(&dev, &config, tap, on_error)?,
            cpal::SampleFormat::I32 => build::<i32>(&dev, &config, tap, on_error)?,
            other => return Err(MicError::Config(format!("sample format {other} is not supported"))),
        };
        stream.play()?;
        tracing::info!(device = %name, sample_rate, channels, "microphone open");
        Ok(Microphone { _stream: stream, cons, sample_rate, name, dropped })
    }

    /// Seconds of audio lost because the ring was full.
    pub fn dropped_seconds(&self) -> f64 {
        self.dropped.load(Ordering::Relaxed) as f64 / self.sample_rate as f64
    }

    /// Streams the microphone to the daemon until `stop` resolves (or
    /// `max_seconds` of audio were sent), then flushes with `CloseStream`
    /// and returns once the daemon has sent its last finals and `Metadata`.
    pub async fn dictate(
        &mut self,
        opts: &StreamOptions,
        max_seconds: Option<f64>,
        stop: impl Future<Output = ()>,
        on_message: impl FnMut(&ServerMessage, &str),
    ) -> Result<(), MicError> {
        let (mut tx, rx) = connect(&listen_url(opts, self.sample_rate), opts.api_key.as_deref()).await?;
        let limit = max_seconds.map(|s| (s * self.sample_rate as f64) as u64).unwrap_or(u64::MAX);
        let rate = self.sample_rate as usize;
        let cons = &mut self.cons;
        let sender = async move {
            tokio::pin!(stop);
            let mut tick = tokio::time::interval(FRAME);
            let mut samples = vec![0.0f32; (rate / 10).max(1)];
            let mut bytes = Vec::with_capacity(samples.len() * 2);
            let mut sent = 0u64;
            while sent < limit {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tick.tick() => {}
                }
                while cons.occupied_len() > 0 && sent < limit {
                    let want = samples.len().min((limit - sent) as usize);
                    let n = cons.pop_slice(&mut samples[..want]);
                    linear16(&samples[..n], &mut bytes);
                    tx.send(Message::binary(bytes.clone())).await?;
                    sent += n as u64;
                }
            }
            Ok::<_, ClientError>(tx)
        };
        Ok(converse(sender, rx, on_message).await?)
    }
}

/// What the audio callback owns: the ring's producer half.
struct Tap {
    prod: HeapProd<f32>,
    channels: usize,
    dropped: Arc<AtomicU64>,
}

impl Tap {
    /// Downmixes interleaved frames into the ring. Runs on the audio thread:
    /// no allocation, no locks.
    fn push<T: cpal::Sample>(&mut self, data: &[T])
    where
        f32: cpal::FromSample<T>,
    {
        let scale = 1.0 / self.channels as f32;
        let mut lost = 0u64;
        for frame in data.chunks_exact(self.channels) {
            let x: f32 = frame.iter().map(|&s| s.to_sample::<f32>()).sum::<f32>() * scale;
            if self.prod.try_push(x).is_err() {
                lost += 1;
            }
        }
        if lost > 0 {
            self.dropped.fetch_add(lost, Ordering::Relaxed);
        }
    }
}

fn build<T>(
    dev: &cpal::Device,
    config: &cpal::StreamConfig,
    mut tap: Tap,
    on_error: impl FnMut(cpal::StreamError) + Send + 'static,
) -> Result<cpal::Stream, MicError>
where
    T: cpal::SizedSample,
    f32: cpal::FromSample<T>,
{
    Ok(dev.build_input_stream::<T, _, _>(config, move |data: &[T], _| tap.push(data), on_error, None)?)
}
