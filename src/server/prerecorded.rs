//! `POST /v1/listen`: a whole recording in the request body, Deepgram's
//! pre-recorded JSON out (meeting bots upload their recordings this way).
//!
//! An upload takes a session slot as a live stream does (the work is the
//! same), its body is bounded by `max_upload_bytes` (413 above, before a
//! byte of it is read), and decoding and transcription run on a blocking
//! thread, never on the async runtime. The whole recording is decoded as
//! `scribed transcribe` does it (beam search, long-form windows), not
//! streamed. A client that goes away while its recording is transcribed
//! cancels the work, which frees the slot (no work outlives its client).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::http::{self, Request};
use super::Shared;
use crate::audio::file::{decode_bytes, DecodedAudio};
use crate::audio::resample::resample_to_16k;
use crate::decode::{Cancel, DecodeError, DecodeOptions, Transcript};
use crate::protocol::{
    Alternative, Channel, ListenParams, ModelInfo, Prerecorded, PrerecordedMetadata, PrerecordedResults, Utterance,
    WireWord,
};

/// Why an upload is refused: an HTTP status and Deepgram-style error body.
#[derive(Debug)]
struct Refusal {
    status: u16,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal { status, code, message: message.into() }
    }
}

/// Serves one upload to its response. `slot` is held until the work ends.
pub(super) async fn serve(
    mut stream: TcpStream,
    req: Request,
    params: ListenParams,
    shared: Arc<Shared>,
    slot: OwnedSemaphorePermit,
) {
    let request_id = super::request_id(shared.next_id());
    let started = Instant::now();
    // The slot is free again before the response goes out (the work drops
    // it as it ends): a client that has its answer can upload again at once.
    let answer = match read_body(&mut stream, req, &shared).await {
        Ok(body) => {
            let cancel = Cancel::default();
            let work = transcribe_blocking(body, params, shared.clone(), request_id.clone(), slot, cancel.clone());
            tokio::pin!(work);
            tokio::select! {
                answer = &mut work => answer,
                () = client_gone(&mut stream) => {
                    cancel.cancel();
                    // The thread stops at its next window or decoder step.
                    let _ = work.await;
                    tracing::info!(request_id, "upload cancelled: the client went away");
                    return;
                }
            }
        }
        Err(refusal) => {
            drop(slot);
            Err(refusal)
        }
    };
    match answer {
        Ok(response) => {
            let m = &response.metadata;
            tracing::info!(request_id, audio_s = m.duration, wall_s = started.elapsed().as_secs_f64(), "upload done");
            let body = serde_json::to_string(&response).unwrap_or_default();
            http::respond_json(&mut stream, 200, &[("dg-request-id", request_id)], &body).await
        }
        Err(r) => {
            tracing::info!(request_id, status = r.status, error = %r.message, "upload refused");
            http::respond_json(&mut stream, r.status, &[], &http::error_body(r.code, &r.message)).await
        }
    }
}

/// The request body: its announced length checked against the limit first,
/// then read with a deadline per read (a stalled upload ends with 408).
async fn read_body(stream: &mut TcpStream, req: Request, shared: &Shared) -> Result<Vec<u8>, Refusal> {
    if req.header("content-type").is_some_and(|t| t.trim_start().starts_with("application/json")) {
        return Err(Refusal::new(
            400,
            "REMOTE_URL_UNSUPPORTED",
            "this server transcribes the audio in the request body; it does not fetch URLs",
        ));
    }
    let length = body_length(&req, shared.config.max_upload_bytes)?;
    if req.header("expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue")) {
        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
    }
    let mut body = req.rest;
    body.truncate(length);
    body.reserve_exact(length - body.len());
    let mut chunk = vec![0u8; 64 * 1024];
    let limit = shared.config.no_audio_timeout;
    while body.len() < length {
        let want = (length - body.len()).min(chunk.len());
        match tokio::time::timeout(limit, stream.read(&mut chunk[..want])).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Err(Refusal::new(400, "INCOMPLETE_BODY", "the connection ended before the whole body"))
            }
            Ok(Ok(n)) => body.extend_from_slice(&chunk[..n]),
            Err(_) => {
                let msg = format!("no body bytes for {} s", limit.as_secs_f64());
                return Err(Refusal::new(408, "REQUEST_TIMEOUT", msg));
            }
        }
    }
    Ok(body)
}

/// Resolves when the client has closed the connection (or it failed) while
/// it waits for its answer. Bytes it sends meanwhile (a pipelined request)
/// are not served: the answer closes the connection. A client that shuts
/// down only its sending side counts as gone; HTTP clients do not.
async fn client_gone(stream: &mut TcpStream) {
    let mut byte = [0u8; 1];
    while let Ok(1..) = stream.read(&mut byte).await {}
}

/// `Content-Length`, within 1 byte and `max`.
fn body_length(req: &Request, max: usize) -> Result<usize, Refusal> {
    if req.header("transfer-encoding").is_some() {
        return Err(Refusal::new(411, "LENGTH_REQUIRED", "send the audio with a Content-Length (not chunked)"));
    }
    let Some(value) = req.header("content-length") else {
        return Err(Refusal::new(411, "LENGTH_REQUIRED", "send the audio with a Content-Length"));
    };
    let length: usize =
        value.trim().parse().map_err(|_| Refusal::new(400, "BAD_REQUEST", "Content-Length is not a number"))?;
    if length == 0 {
        return Err(Refusal::new(400, "EMPTY_BODY", "the request body holds no audio"));
    }
    if length > max {
        let msg = format!("{length} bytes of audio; this server takes at most {max} (max_upload_bytes)");
        return Err(Refusal::new(413, "PAYLOAD_TOO_LARGE", msg));
    }
    Ok(length)
}

async fn transcribe_blocking(
    body: Vec<u8>,
    params: ListenParams,
    shared: Arc<Shared>,
    request_id: String,
    slot: OwnedSemaphorePermit,
    cancel: Cancel,
) -> Result<Prerecorded, Refusal> {
    let work = move || {
        let answer = transcribe(body, &params, &shared, request_id, cancel);
        drop(slot);
        answer
    };
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(Refusal::new(500, "INTERNAL", format!("the transcription failed: {e}"))))
}

/// Decodes the body, transcribes each channel (or the mix) and shapes the
/// response.
fn transcribe(
    body: Vec<u8>,
    params: &ListenParams,
    shared: &Shared,
    request_id: String,
    cancel: Cancel,
) -> Result<Prerecorded, Refusal> {
    // Hashed before the body moves into the decoder (an upload is not copied).
    let sha256 = Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
    let audio = decode(body, params)?;
    let tracks = tracks(&audio, params.multichannel)?;
    let opts = DecodeOptions { cancel, ..options(params, shared) };
    let engine = shared.engine.as_ref();
    let mut decoder =
        engine.stream(opts.max_seqs()).map_err(|e| Refusal::new(500, "INTERNAL", format!("decoder state: {e}")))?;
    let mut channels = Vec::with_capacity(tracks.len());
    let mut utterances = Vec::new();
    for (index, samples) in tracks.iter().enumerate() {
        let transcript = decoder.transcribe(samples, &opts).map_err(|e| match e {
            DecodeError::Cancelled => Refusal::new(499, "CANCELLED", "the client went away"),
            e => Refusal::new(500, "INTERNAL", format!("transcription: {e}")),
        })?;
        let words = wire_words(&transcript);
        if params.utterances {
            utterances.extend(split_utterances(&words, params.utt_split, index as u32, params.punctuate));
        }
        channels.push(Channel { alternatives: vec![Alternative::of(words, params.punctuate)] });
    }
    let info =
        ModelInfo { name: engine.name().into(), version: env!("CARGO_PKG_VERSION").into(), arch: "whisper".into() };
    let metadata = PrerecordedMetadata {
        transaction_key: "deprecated".into(),
        request_id,
        sha256,
        created: super::created_now(),
        duration: crate::audio::round3(audio.duration_secs()),
        channels: channels.len() as u32,
        models: vec![engine.uuid().into()],
        model_info: [(engine.uuid().to_string(), info)].into(),
    };
    let utterances = params.utterances.then(|| sorted(utterances));
    Ok(Prerecorded { metadata, results: PrerecordedResults { channels, utterances } })
}

/// Raw samples when `encoding` is given, else any container the offline
/// transcriber reads (WAV, FLAC, MP3, Ogg/Vorbis).
fn decode(body: Vec<u8>, params: &ListenParams) -> Result<DecodedAudio, Refusal> {
    let unsupported = |e: String| Refusal::new(400, "UNSUPPORTED_AUDIO", e);
    let Some(format) = super::raw_format(params) else {
        return decode_bytes(body, None, Path::new("request body")).map_err(|e| unsupported(e.to_string()));
    };
    let mut decoder = crate::audio::pcm::PcmDecoder::raw(format);
    let mut samples = Vec::new();
    decoder.decode(&body, &mut samples).map_err(|e| Refusal::new(400, "BAD_AUDIO", e.to_string()))?;
    let channels = usize::from(format.channels);
    samples.truncate(samples.len() / channels * channels);
    Ok(DecodedAudio { samples, sample_rate: format.sample_rate, channels })
}

/// 16 kHz mono tracks: one per channel with `multichannel`, else the mix.
fn tracks(audio: &DecodedAudio, multichannel: bool) -> Result<Vec<Vec<f32>>, Refusal> {
    let c = audio.channels.max(1);
    let split: Vec<Vec<f32>> = if multichannel && c > 1 {
        (0..c).map(|ch| audio.samples.chunks_exact(c).map(|f| f[ch]).collect()).collect()
    } else {
        vec![audio.to_mono()]
    };
    split
        .iter()
        .map(|x| resample_to_16k(x, audio.sample_rate))
        .collect::<Result<_, _>>()
        .map_err(|e| Refusal::new(400, "UNSUPPORTED_AUDIO", e.to_string()))
}

/// `scribed transcribe`'s decoding (faster-whisper's defaults: beam 5,
/// temperature fallback), with word times, the key terms as the prompt and
/// the requested language.
fn options(params: &ListenParams, shared: &Shared) -> DecodeOptions {
    let prompt = params.keyterms.join(", ");
    DecodeOptions {
        word_timestamps: true,
        initial_prompt: (!prompt.is_empty()).then_some(prompt),
        language: if shared.engine.is_multilingual() { params.language.clone() } else { None },
        vad: true,
        ..DecodeOptions::default()
    }
}

fn wire_words(t: &Transcript) -> Vec<WireWord> {
    let words = t.segments.iter().flat_map(|s| s.words.iter().flatten());
    words
        .filter(|w| !w.word.trim().is_empty())
        .map(|w| WireWord::new(w.word.trim(), w.start, w.end, w.probability))
        .collect()
}

/// Groups one channel's words into utterances at pauses of `split` seconds.
fn split_utterances(words: &[WireWord], split: f64, channel: u32, punctuate: bool) -> Vec<Utterance> {
    let mut groups: Vec<Vec<WireWord>> = Vec::new();
    for w in words {
        match groups.last_mut() {
            Some(g) if g.last().is_some_and(|p| w.start - p.end < split) => g.push(w.clone()),
            _ => groups.push(vec![w.clone()]),
        }
    }
    groups
        .into_iter()
        .map(|g| {
            let (start, end) = (g[0].start, g[g.len() - 1].end);
            let a = Alternative::of(g, punctuate);
            let id = utterance_id(channel, start);
            Utterance { start, end, confidence: a.confidence, channel, transcript: a.transcript, words: a.words, id }
        })
        .collect()
}

/// Every channel's utterances in time order, as Deepgram lists them.
fn sorted(mut u: Vec<Utterance>) -> Vec<Utterance> {
    u.sort_by(|a, b| a.start.total_cmp(&b.start).then(a.channel.cmp(&b.channel)));
    u
}

/// A UUID-shaped id, unique within the response (channel and start time).
fn utterance_id(channel: u32, start: f64) -> String {
    let ms = (start * 1000.0).round() as u64;
    format!("{:08x}-0000-4000-8000-{:012x}", channel, ms & 0xffff_ffff_ffff)
}
