//! `scribed stream FILE`: streams a file to a daemon the way a live client
//! would — 16 kHz linear16 in short frames at real-time pace (or `speed`
//! times faster) — and hands every server message to a callback.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::protocol::{ClientMessage, ServerMessage};

#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Base URL, e.g. `ws://127.0.0.1:8080` (the path and query are added).
    pub url: String,
    pub speed: f64,
    pub interim: bool,
    pub api_key: Option<String>,
    /// Frame length, milliseconds (20–100).
    pub frame_ms: u32,
    /// Extra query parameters, `k=v&…`.
    pub extra_query: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad URL `{0}`")]
    Url(String),
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("the server closed the stream without Metadata (close code {0:?})")]
    NoMetadata(Option<u16>),
    #[error("server error: {0}")]
    Server(String),
}

/// The full URL of `/v1/listen` for mono linear16 at `sample_rate`.
pub fn listen_url(opts: &StreamOptions, sample_rate: u32) -> String {
    let base = opts.url.trim_end_matches('/');
    let base = base.strip_suffix("/v1/listen").unwrap_or(base);
    let mut url = format!(
        "{base}/v1/listen?encoding=linear16&sample_rate={sample_rate}&channels=1&punctuate=true&interim_results={}",
        opts.interim
    );
    if !opts.extra_query.is_empty() {
        url.push('&');
        url.push_str(&opts.extra_query);
    }
    url
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
pub(crate) type Sink = futures_util::stream::SplitSink<Socket, Message>;
pub(crate) type Source = futures_util::stream::SplitStream<Socket>;

/// Opens `/v1/listen` with the key (if any) as `Authorization: Token`.
pub(crate) async fn connect(url: &str, api_key: Option<&str>) -> Result<(Sink, Source), ClientError> {
    let mut request = url.into_client_request().map_err(|_| ClientError::Url(url.to_string()))?;
    if let Some(key) = api_key {
        let v = HeaderValue::from_str(&format!("Token {key}")).map_err(|_| ClientError::Url("API key".into()))?;
        request.headers_mut().insert("Authorization", v);
    }
    let (ws, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(ws.split())
}

/// Linear16 bytes of `samples`.
pub(crate) fn linear16(samples: &[f32], out: &mut Vec<u8>) {
    out.clear();
    out.extend(samples.iter().flat_map(|&x| ((x.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes()));
}

/// Hands every server message to `on_message` until the close; an error
/// message from the server or a close without `Metadata` is an error.
pub(crate) async fn receive(
    mut rx: Source,
    mut on_message: impl FnMut(&ServerMessage, &str),
) -> Result<(), ClientError> {
    let mut got_metadata = false;
    let mut code = None;
    while let Some(msg) = rx.next().await {
        match msg? {
            Message::Text(t) => {
                if let Ok(m) = serde_json::from_str::<ServerMessage>(t.as_str()) {
                    got_metadata |= matches!(m, ServerMessage::Metadata { .. });
                    on_message(&m, t.as_str());
                    if let ServerMessage::Error { description, .. } = &m {
                        if !description.starts_with("unknown message type") {
                            return Err(ClientError::Server(description.clone()));
                        }
                    }
                }
            }
            Message::Close(f) => {
                code = f.map(|f| u16::from(f.code));
                break;
            }
            _ => {}
        }
    }
    if got_metadata {
        Ok(())
    } else {
        Err(ClientError::NoMetadata(code))
    }
}

/// Streams `samples` (16 kHz mono) and calls `on_message` with each server
/// message (parsed) and its raw JSON, until `Metadata` and the close.
pub async fn stream_samples(
    samples: &[f32],
    opts: &StreamOptions,
    on_message: impl FnMut(&ServerMessage, &str),
) -> Result<(), ClientError> {
    let (mut tx, rx) = connect(&listen_url(opts, 16_000), opts.api_key.as_deref()).await?;
    let frame_len = (16 * opts.frame_ms.clamp(20, 100)) as usize;
    let speed = if opts.speed.is_finite() && opts.speed > 0.0 { opts.speed } else { 1.0 };
    let sender = async move {
        let start = tokio::time::Instant::now();
        let per_frame = Duration::from_secs_f64(crate::audio::seconds(frame_len as u64) / speed);
        let mut bytes = Vec::with_capacity(frame_len * 2);
        for (i, frame) in samples.chunks(frame_len).enumerate() {
            tokio::time::sleep_until(start + per_frame * i as u32).await;
            linear16(frame, &mut bytes);
            tx.send(Message::binary(bytes.clone())).await?;
        }
        Ok::<_, ClientError>(tx)
    };
    converse(sender, rx, on_message).await
}

/// One session from the client's side: `send_audio` streams the audio and
/// hands the sink back, `CloseStream` follows; meanwhile every server
/// message goes to `on_message` until `Metadata` and the close.
pub(crate) async fn converse(
    send_audio: impl std::future::Future<Output = Result<Sink, ClientError>>,
    rx: Source,
    on_message: impl FnMut(&ServerMessage, &str),
) -> Result<(), ClientError> {
    let sender = async {
        let mut tx = send_audio.await?;
        tx.send(Message::text(ClientMessage::CloseStream.to_json())).await?;
        Ok::<_, ClientError>(tx)
    };
    let (sent, received) = tokio::join!(sender, receive(rx, on_message));
    received?;
    // A send error after the server closed is not a failure of its own.
    if let Ok(mut tx) = sent {
        let _ = tx.close().await;
    }
    Ok(())
}
