//! The daemon's network side: `run(listener, shared, shutdown)` accepts
//! connections until `shutdown` resolves, routes each request, and on
//! shutdown lets every session flush its finals and close with 1001 before
//! returning.
//!
//! Admission is a semaphore of `max_sessions` permits taken with
//! `try_acquire` before the websocket upgrade: a request beyond it gets 503
//! with `Retry-After` at once instead of queueing. The permit lives as long
//! as the session.

pub mod connection;
pub mod http;
mod notify;
mod prerecorded;
#[cfg(test)]
mod session_tests;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::audio::pcm::{PcmFormat, SampleFormat};
use crate::config::Config;
use crate::engine::Engine;
use crate::metrics::{Capacity, Metrics};
use crate::protocol::{Encoding, ListenParams, ParamError};
use crate::session::scheduler::Scheduler;
use crate::session::PANIC_KEYTERM;

/// `GET /`: live captions from the browser's microphone (no build step).
const CAPTIONS_PAGE: &str = include_str!("captions.html");

/// What every connection shares: the engine (read-only), the settings, the
/// metrics and the session slots.
pub struct Shared {
    pub engine: Arc<dyn Engine>,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub slots: Arc<Semaphore>,
    /// One queue of hypotheses for all sessions.
    pub scheduler: Arc<Scheduler>,
    /// What SIGHUP can change without a restart: keys and origins.
    access: RwLock<Arc<Access>>,
    shutdown: watch::Receiver<bool>,
    next_id: AtomicU64,
}

/// Who may open a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub api_keys: Vec<String>,
    pub allowed_origins: Vec<String>,
}

impl Access {
    fn of(config: &Config) -> Access {
        Access { api_keys: config.api_keys.clone(), allowed_origins: config.allowed_origins.clone() }
    }
}

impl Shared {
    pub fn new(engine: Arc<dyn Engine>, config: Config) -> (Arc<Shared>, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(false);
        if config.fault_injection {
            tracing::warn!("fault injection is on: sessions with keyterm={PANIC_KEYTERM} will panic");
        }
        let shared = Shared {
            engine,
            slots: Arc::new(Semaphore::new(config.max_sessions)),
            scheduler: Scheduler::new(config.compute_slots),
            access: RwLock::new(Arc::new(Access::of(&config))),
            config,
            metrics: Arc::new(Metrics::default()),
            shutdown: rx,
            next_id: AtomicU64::new(1),
        };
        (Arc::new(shared), tx)
    }

    /// The keys and origins in force.
    pub fn access(&self) -> Arc<Access> {
        self.access.read().map(|a| a.clone()).unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Applies what can change while running (SIGHUP); the rest of `config`
    /// needs a restart. Returns whether anything changed.
    pub fn reload(&self, config: &Config) -> bool {
        let new = Access::of(config);
        let mut slot = self.access.write().unwrap_or_else(|e| e.into_inner());
        let changed = **slot != new;
        *slot = Arc::new(new);
        changed
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// Serves until `shutdown` resolves, then drains the sessions.
pub async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    shutdown: impl Future<Output = ()>,
) {
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    notify::ready(&shared);
    // Pings come from this loop, so a wedged accept loop or runtime stops
    // them and systemd's watchdog restarts the daemon.
    let mut alive = tokio::time::interval(notify::ping_period());
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = alive.tick() => notify::alive(&shared),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    shared.metrics.connections_total.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    tasks.spawn(async move { handle(stream, shared).await; let _ = peer; });
                }
                Err(e) => {
                    // Out of descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    let active = shared.metrics.sessions_active.load(Ordering::Relaxed);
    tracing::info!(active, "shutting down: flushing sessions");
    notify::stopping(active);
    let _ = stop.send(true);
    let grace = shared.config.shutdown_grace;
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!(?grace, "sessions still open after the grace period; closing them");
        tasks.shutdown().await;
    }
}

async fn handle(mut stream: TcpStream, shared: Arc<Shared>) {
    let req = match tokio::time::timeout(Duration::from_secs(10), http::read_request(&mut stream)).await {
        Ok(Ok(r)) => r,
        Ok(Err(http::HeadError::TooLarge)) => {
            return http::respond_json(
                &mut stream,
                431,
                &[],
                &http::error_body("HEAD_TOO_LARGE", "request head too large"),
            )
            .await
        }
        Ok(Err(http::HeadError::Malformed(m))) => {
            return http::respond_json(&mut stream, 400, &[], &http::error_body("BAD_REQUEST", &m)).await
        }
        _ => return,
    };
    let listen_path = matches!(req.path.as_str(), "/v1/listen" | "/v1/listen/");
    if req.method != "GET" && !(listen_path && req.method == "POST") {
        let (allow, only) = if listen_path { ("GET, POST", "only GET or POST") } else { ("GET", "only GET") };
        let body = http::error_body("METHOD_NOT_ALLOWED", only);
        return http::respond_json(&mut stream, 405, &[("Allow", allow.into())], &body).await;
    }
    match req.path.as_str() {
        "/" | "/index.html" => http::respond(&mut stream, 200, "text/html; charset=utf-8", &[], CAPTIONS_PAGE).await,
        "/healthz" => http::respond(&mut stream, 200, "text/plain", &[], "ok\n").await,
        "/readyz" => {
            if let Some(e) = shared.engine.fatal_error() {
                let body = format!("device failed: {e}\n");
                http::respond(&mut stream, 503, "text/plain", &[], &body).await
            } else if shared.slots.available_permits() > 0 && !shared.shutting_down() {
                http::respond(&mut stream, 200, "text/plain", &[], "ready\n").await
            } else {
                http::respond(&mut stream, 503, "text/plain", &[("Retry-After", "1".into())], "busy\n").await
            }
        }
        "/metrics" => {
            let body = shared.metrics.render(Capacity {
                slots_free: shared.slots.available_permits(),
                max_sessions: shared.config.max_sessions,
                compute_waiting: shared.scheduler.waiting(),
                device: shared.engine.device_memory(),
            });
            http::respond(&mut stream, 200, "text/plain; version=0.0.4", &[], &body).await
        }
        "/v1/listen" | "/v1/listen/" | "/v2/listen" | "/v2/listen/" => listen(stream, req, shared).await,
        _ => http::respond_json(&mut stream, 404, &[], &http::error_body("NOT_FOUND", "no such route")).await,
    }
}

/// `/v1/listen` and `/v2/listen`: auth, parameters, admission, then the
/// upgrade (or, for `POST`, the upload) — in that order.
async fn listen(mut stream: TcpStream, req: http::Request, shared: Arc<Shared>) {
    let m = &shared.metrics;
    let access = shared.access();
    if !http::origin_allowed(&req, &access.allowed_origins) {
        m.rejected_auth_total.fetch_add(1, Ordering::Relaxed);
        let body = http::error_body(
            "FORBIDDEN_ORIGIN",
            "this browser origin may not open sessions (add it to `allowed_origins` in the config)",
        );
        return http::respond_json(&mut stream, 403, &[], &body).await;
    }
    let protocol = match http::authorize(&req, &access.api_keys) {
        http::Auth::Allowed { protocol } => protocol,
        http::Auth::Denied => {
            m.rejected_auth_total.fetch_add(1, Ordering::Relaxed);
            let body = http::error_body("INVALID_AUTH", "missing or wrong API key (Authorization: Token KEY)");
            return http::respond_json(&mut stream, 401, &[("WWW-Authenticate", "Token".into())], &body).await;
        }
    };
    let params = match ListenParams::parse(&req.query).and_then(|p| resolve_language(p, shared.engine.as_ref())) {
        // `/v2/listen` is Deepgram Flux: turns, one channel.
        Ok(p) if req.path.starts_with("/v2/") => ListenParams { turns: true, multichannel: false, ..p },
        Ok(p) => p,
        Err(e) => {
            m.rejected_params_total.fetch_add(1, Ordering::Relaxed);
            return http::respond_json(&mut stream, 400, &[], &e.to_json()).await;
        }
    };
    let upload = req.method == "POST";
    if !upload && !req.is_upgrade() {
        let body = http::error_body("UPGRADE_REQUIRED", "/v1/listen is a websocket endpoint (or POST a recording)");
        return http::respond_json(&mut stream, 426, &[("Upgrade", "websocket".into())], &body).await;
    }
    if shared.shutting_down() {
        let body = http::error_body("SHUTTING_DOWN", "the daemon is shutting down");
        return http::respond_json(&mut stream, 503, &[("Retry-After", "5".into())], &body).await;
    }
    // A multichannel stream runs a worker per channel and costs a slot each;
    // an upload's channels are transcribed one after another in one slot.
    let slots_needed = if params.multichannel && !upload { params.channels as u32 } else { 1 };
    if slots_needed as usize > shared.config.max_sessions {
        m.rejected_params_total.fetch_add(1, Ordering::Relaxed);
        let why = format!(
            "multichannel audio with {slots_needed} channels needs {slots_needed} session slots; this server has {}",
            shared.config.max_sessions
        );
        return http::respond_json(&mut stream, 400, &[], &ParamError::new("channels", why).to_json()).await;
    }
    let Ok(permit) = shared.slots.clone().try_acquire_many_owned(slots_needed) else {
        m.rejected_busy_total.fetch_add(1, Ordering::Relaxed);
        let body = http::error_body("TOO_MANY_SESSIONS", "every session slot is in use; retry later");
        return http::respond_json(&mut stream, 503, &[("Retry-After", "1".into())], &body).await;
    };
    if upload {
        prerecorded::serve(stream, req, params, shared.clone(), permit).await
    } else {
        upgrade(stream, req, protocol, params, shared.clone(), permit).await
    }
}

/// Answers the websocket handshake (echoing the offered subprotocol
/// scheme) and serves the session on the upgraded connection.
async fn upgrade(
    mut stream: TcpStream,
    req: http::Request,
    protocol: Option<String>,
    params: ListenParams,
    shared: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let id = shared.next_id();
    let request_id = request_id(id);
    let Some(answer) = http::handshake_response(&req, protocol.as_deref(), &request_id) else { return };
    use tokio::io::AsyncWriteExt;
    if stream.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    let ws_config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(shared.config.max_frame_bytes))
        .max_frame_size(Some(shared.config.max_frame_bytes));
    let ws = tokio_tungstenite::WebSocketStream::from_partially_read(
        stream,
        req.rest,
        tokio_tungstenite::tungstenite::protocol::Role::Server,
        Some(ws_config),
    )
    .await;
    let (sink, stream) = futures_util::StreamExt::split(ws);
    connection::serve(sink, stream, params, shared, request_id, id, permit).await;
}

/// Checks `language` against the model, so that a session the model cannot
/// serve is refused with 400 before the upgrade rather than failing later.
/// Codes and English names both work (`de`, `german`); `multi` asks for
/// detection, which is what an unset language does.
fn resolve_language(mut p: ListenParams, engine: &dyn Engine) -> Result<ListenParams, ParamError> {
    let Some(requested) = p.language.take() else { return Ok(p) };
    if requested == "multi" {
        return Ok(p);
    }
    let code = engine.resolve_language(&requested).map_err(|e| ParamError::new("language", e.to_string()))?;
    p.language = Some(code.to_string());
    Ok(p)
}

/// A unique, UUID-shaped request id (time and sequence number).
fn request_id(seq: u64) -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let h = (t as u64) ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (h >> 32) as u32,
        (h >> 16) as u16,
        (h & 0xfff) as u16,
        (seq & 0xfff) as u16,
        (t as u64 ^ seq) & 0xffff_ffff_ffff
    )
}

/// RFC 3339 UTC time, as Deepgram's `created`.
pub(crate) fn created_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// The wire format of raw audio (`encoding` and `sample_rate` given); `None`
/// when the audio comes in a container (a WAV header, or any file uploaded).
fn raw_format(params: &ListenParams) -> Option<PcmFormat> {
    let (e, rate) = (params.encoding?, params.sample_rate?);
    let sample = match e {
        Encoding::Linear16 => SampleFormat::Linear16,
        Encoding::Linear32 => SampleFormat::Linear32,
        Encoding::Mulaw => SampleFormat::Mulaw,
        Encoding::Alaw => SampleFormat::Alaw,
    };
    Some(PcmFormat { sample, sample_rate: rate, channels: params.channels })
}
