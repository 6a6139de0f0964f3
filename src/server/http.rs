//! The HTTP/1.1 front: reads one request head, answers plain routes
//! (`/healthz`, `/readyz`, `/metrics`, errors), checks API keys, and writes
//! the websocket handshake.
//!
//! Everything a client can get wrong (bad key, bad parameter, no free slot)
//! is answered here with a status code and a JSON body, before the upgrade;
//! only a request that will be served becomes a websocket.

use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest request head accepted.
const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    /// Bytes read past the head (the websocket's first bytes, if any).
    pub rest: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether this is a websocket upgrade request.
    pub fn is_upgrade(&self) -> bool {
        let has = |name: &str, token: &str| {
            self.header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        };
        has("connection", "upgrade") && has("upgrade", "websocket") && self.header("sec-websocket-key").is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("connection closed before a request")]
    Closed,
    #[error("request head over {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads and parses one request head.
pub async fn read_request(stream: &mut TcpStream) -> Result<Request, HeadError> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let target = req.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                return Ok(Request {
                    method: req.method.unwrap_or("").to_string(),
                    path: path.to_string(),
                    query: query.to_string(),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                        .collect(),
                    rest: buf[len..].to_vec(),
                });
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(HeadError::TooLarge),
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(HeadError::Malformed(e.to_string())),
        }
    }
}

/// Writes a complete response and closes our side.
pub async fn respond(stream: &mut TcpStream, status: u16, content_type: &str, extra: &[(&str, String)], body: &str) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    // The client may already be gone; there is no one left to tell.
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

pub async fn respond_json(stream: &mut TcpStream, status: u16, extra: &[(&str, String)], body: &str) {
    respond(stream, status, "application/json", extra, body).await
}

pub fn error_body(code: &str, msg: &str) -> String {
    serde_json::json!({ "err_code": code, "err_msg": msg }).to_string()
}

/// The outcome of the API-key check.
#[derive(Debug, PartialEq, Eq)]
pub enum Auth {
    Allowed {
        /// The browser form was used: the handshake must echo the scheme
        /// the client offered (`token` or `bearer`, as it spelled it), or
        /// the client's websocket library fails the connection.
        protocol: Option<String>,
    },
    Denied,
}

/// Checks `Authorization: Token|Bearer K` and `Sec-WebSocket-Protocol:
/// token, K` against the configured keys, in constant time per key.
pub fn authorize(req: &Request, keys: &[String]) -> Auth {
    let offered = req.header("sec-websocket-protocol").and_then(|v| {
        let mut parts = v.split(',').map(str::trim);
        match (parts.next(), parts.next()) {
            (Some(t), Some(k)) if t.eq_ignore_ascii_case("token") || t.eq_ignore_ascii_case("bearer") => {
                Some((t.to_string(), k.to_string()))
            }
            _ => None,
        }
    });
    let (protocol, protocol_key) = offered.map_or((None, None), |(t, k)| (Some(t), Some(k)));
    if keys.is_empty() {
        return Auth::Allowed { protocol };
    }
    let header_key = req.header("authorization").and_then(|v| {
        let (scheme, key) = v.trim().split_once(' ')?;
        (scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer")).then(|| key.trim().to_string())
    });
    let matches = |candidate: &str| {
        // Every key is compared, so the time does not say which one matched.
        keys.iter().fold(0u8, |acc, k| acc | candidate.as_bytes().ct_eq(k.as_bytes()).unwrap_u8()) == 1
    };
    if header_key.as_deref().is_some_and(matches) || protocol_key.as_deref().is_some_and(matches) {
        return Auth::Allowed { protocol };
    }
    Auth::Denied
}

/// Whether a browser page may open a session. Non-browser clients send no
/// `Origin` and pass. A page is allowed when its origin is listed (or `*`
/// is), or when it is the daemon's own captions page reached by an IP
/// address or `localhost`: a DNS-rebinding page has a host name of its own
/// in both `Origin` and `Host`, so "same as Host" alone would let it in.
pub fn origin_allowed(req: &Request, allowed: &[String]) -> bool {
    let Some(origin) = req.header("origin").map(str::trim) else { return true };
    if allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let Some(host) = req.header("host").map(str::trim) else { return false };
    let own = ["http://", "https://"].iter().any(|scheme| origin.eq_ignore_ascii_case(&format!("{scheme}{host}")));
    own && is_local_literal(host)
}

/// `127.0.0.1:8080`, `[::1]:8080`, `localhost:8080`, `192.0.2.7` and the like.
fn is_local_literal(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, port)| if port.parse::<u16>().is_ok() { h } else { host }),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// The `101 Switching Protocols` answer.
pub fn handshake_response(req: &Request, protocol: Option<&str>, request_id: &str) -> Option<String> {
    let key = req.header("sec-websocket-key")?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
    let mut r = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\ndg-request-id: {request_id}\r\n"
    );
    if let Some(p) = protocol {
        r.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    r.push_str("\r\n");
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            path: "/v1/listen".into(),
            query: String::new(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            rest: Vec::new(),
        }
    }

    #[test]
    fn origins() {
        let r = |origin: &str, host: &str| req(&[("Origin", origin), ("Host", host)]);
        let listed = vec!["https://app.example".to_string()];
        assert!(origin_allowed(&req(&[]), &[]), "no Origin: not a browser");
        assert!(origin_allowed(&r("http://127.0.0.1:8080", "127.0.0.1:8080"), &[]));
        assert!(origin_allowed(&r("http://localhost:8080", "localhost:8080"), &[]));
        assert!(origin_allowed(&r("http://[::1]:8080", "[::1]:8080"), &[]));
        assert!(!origin_allowed(&r("https://evil.example", "127.0.0.1:8080"), &[]));
        assert!(!origin_allowed(&r("http://rebound.example:8080", "rebound.example:8080"), &[]), "DNS rebinding");
        assert!(origin_allowed(&r("https://app.example", "127.0.0.1:8080"), &listed));
        assert!(origin_allowed(&r("https://evil.example", "x"), &["*".to_string()]));
    }

    #[test]
    fn keys() {
        let keys = vec!["secret".to_string(), "other".to_string()];
        let none = Auth::Allowed { protocol: None };
        assert_eq!(authorize(&req(&[]), &[]), none);
        assert_eq!(authorize(&req(&[]), &keys), Auth::Denied);
        assert_eq!(authorize(&req(&[("Authorization", "Token secret")]), &keys), none);
        assert_eq!(authorize(&req(&[("authorization", "Bearer other")]), &keys), none);
        assert_eq!(authorize(&req(&[("Authorization", "Token secreT")]), &keys), Auth::Denied);
        assert_eq!(
            authorize(&req(&[("Sec-WebSocket-Protocol", "token, secret")]), &keys),
            Auth::Allowed { protocol: Some("token".into()) }
        );
        assert_eq!(
            authorize(&req(&[("Sec-WebSocket-Protocol", "bearer, secret")]), &keys),
            Auth::Allowed { protocol: Some("bearer".into()) }
        );
        assert_eq!(
            authorize(&req(&[("Sec-WebSocket-Protocol", "bearer, x")]), &[]),
            Auth::Allowed { protocol: Some("bearer".into()) }
        );
        assert_eq!(authorize(&req(&[("Sec-WebSocket-Protocol", "token, nope")]), &keys), Auth::Denied);
    }
}
