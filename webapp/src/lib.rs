//! `webapp`: the demo backend of the shoal compose demo (like the lab's demo app).
//!
//! - `GET /health` → `200 ok` (the supervisor's `--check` and the LB's `httpchk`).
//! - any other `GET` → JSON `{"hostname", "ip", "tag", "session", "path"}`: `ip` is the
//!   address the request arrived on (the container's address the LB connected to), `tag`
//!   comes from `WEBAPP_TAG`, `session` counts this client's requests with a cookie
//!   (`webapp_session=N`, answered with `Set-Cookie: webapp_session=N+1`); `forwarded_for`,
//!   `forwarded_proto` and `request_id` echo what the LB sent (`X-Forwarded-For`,
//!   `X-Forwarded-Proto`, `X-Request-ID`; null when absent).
//!
//! Layout: [`run`] serves a bound listener until a shutdown future resolves, then lets the
//! open connections finish (graceful); `main.rs` only parses flags, binds and wires SIGTERM.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, COOKIE, SET_COOKIE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

/// Name of the session-counter cookie.
pub const SESSION_COOKIE: &str = "webapp_session";

/// What every answer reports besides the per-request values.
#[derive(Debug, Clone)]
pub struct AppInfo {
    pub hostname: String,
    pub tag: String,
}

impl AppInfo {
    /// Hostname from the kernel (the container's name in compose), tag from `WEBAPP_TAG`.
    pub fn from_env() -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown".to_string());
        let tag = std::env::var("WEBAPP_TAG").unwrap_or_default();
        AppInfo { hostname, tag }
    }
}

/// Longest time open connections get to finish after shutdown is asked for.
pub const GRACE: Duration = Duration::from_secs(10);

/// Serves `listener` until `shutdown` resolves; then stops accepting and waits (at most
/// [`GRACE`]) for the open connections to finish their current request.
pub async fn run(listener: TcpListener, info: AppInfo, shutdown: impl Future<Output = ()>) {
    let info = Arc::new(info);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        eprintln!("webapp: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let local = stream.local_addr().ok();
                let info = info.clone();
                let service = service_fn(move |req| {
                    let info = info.clone();
                    async move { Ok::<_, Infallible>(handle(&req, &info, local)) }
                });
                let conn = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(GRACE, graceful.shutdown()).await;
}

/// Parses `webapp_session=N` out of the request's Cookie headers (0 when absent or bad).
pub fn session_from_cookies<'a>(headers: impl Iterator<Item = &'a HeaderValue>) -> u64 {
    headers
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

fn handle(
    req: &Request<Incoming>,
    info: &AppInfo,
    local: Option<SocketAddr>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    if req.uri().path() == "/health" {
        return text(StatusCode::OK, "ok\n");
    }
    let session = session_from_cookies(req.headers().get_all(COOKIE).iter()).saturating_add(1);
    let body = serde_json::json!({
        "hostname": info.hostname,
        "ip": local.map(|a| a.ip().to_string()).unwrap_or_default(),
        "tag": info.tag,
        "session": session,
        "path": req.uri().path(),
        "forwarded_for": header(req, "x-forwarded-for"),
        "forwarded_proto": header(req, "x-forwarded-proto"),
        "request_id": header(req, "x-request-id"),
    });
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&format!("{SESSION_COOKIE}={session}; Path=/; HttpOnly")) {
        headers.insert(SET_COOKIE, v);
    }
    resp
}

/// A request header as text, for the JSON answer (None when absent or not visible ASCII).
fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// `webapp probe`: one `GET /health` to 127.0.0.1:`port` with std only (for a Docker
/// `HEALTHCHECK`, where no curl is installed). True on a 2xx answer within `timeout`.
pub fn probe(port: u16, timeout: Duration) -> bool {
    use std::io::{Read, Write};
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 2")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cookie_is_found_among_others() {
        let h = [HeaderValue::from_static(
            "a=1; webapp_session=41; SERVERID=web-1",
        )];
        assert_eq!(session_from_cookies(h.iter()), 41);
    }

    #[test]
    fn missing_or_garbage_session_cookie_counts_from_zero() {
        assert_eq!(session_from_cookies([].iter()), 0);
        let h = [HeaderValue::from_static("webapp_session=abc")];
        assert_eq!(session_from_cookies(h.iter()), 0);
    }
}
