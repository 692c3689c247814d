//! `webapp`: the demo backend of the shoal compose demo (like the lab's demo app).
//!
//! - `GET /health` → `200 ok` (the supervisor's `--check` and the LB's `httpchk`); with a
//!   health port ([`health`], [`Options::health_port`]) it is answered there and 404 here.
//! - `POST /echo` → JSON `{"hostname", "ip", "bytes", "checksum", "posts"}`: the body's length
//!   and FNV-1a 64 checksum (hex), and how many POSTs this process has answered; bodies over
//!   [`MAX_POST_BODY`] get a 413.
//! - `GET /download?seconds=S&rate=B` → `S × B` bytes at a steady rate ([`download`]).
//! - `GET /ws` → a WebSocket echo ([`ws`]).
//! - any other `GET` → JSON `{"hostname", "ip", "tag", "session", "path"}`: `ip` is the
//!   address the request arrived on (the container's address the LB connected to), `tag`
//!   comes from `WEBAPP_TAG`, `session` counts this client's requests with a cookie
//!   (`webapp_session=N`, answered with `Set-Cookie: webapp_session=N+1`); `forwarded_for`,
//!   `forwarded_proto` and `request_id` echo what the LB sent (`X-Forwarded-For`,
//!   `X-Forwarded-Proto`, `X-Request-ID`; null when absent).
//!
//! Layout: [`run`] serves a bound listener until a shutdown future resolves, then lets the
//! open connections and WebSocket sessions finish (graceful); `main.rs` only parses flags,
//! binds and wires SIGTERM.

pub mod download;
pub mod health;
pub mod open;
pub mod ws;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, SET_COOKIE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::open::Open;

/// The body type of every answer: fixed bodies and the streaming download alike.
pub type Body = BoxBody<Bytes, Infallible>;

/// Largest `POST /echo` body (bytes); more is a 413.
pub const MAX_POST_BODY: usize = 1 << 20;

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

/// How [`serve`] answers beyond [`AppInfo`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `/health` lives on this other port ([`health::serve`]): the served port answers it
    /// 404, so an LB checking the wrong port marks the server down.
    pub health_port: Option<u16>,
}

/// Longest time open connections get to finish after shutdown is asked for.
pub const GRACE: Duration = Duration::from_secs(10);

/// What the request handlers share.
struct App {
    info: AppInfo,
    /// Open WebSocket sessions.
    sessions: Open,
    posts: AtomicU64,
    opts: Options,
}

/// Serves `listener` until `shutdown` resolves; then stops accepting and waits (at most
/// [`GRACE`]) for the open connections to finish their current request and for the open
/// WebSocket sessions to be closed by their clients.
pub async fn run(listener: TcpListener, info: AppInfo, shutdown: impl Future<Output = ()>) {
    serve(listener, info, Options::default(), shutdown).await
}

/// [`run`] with [`Options`].
pub async fn serve(
    listener: TcpListener,
    info: AppInfo,
    opts: Options,
    shutdown: impl Future<Output = ()>,
) {
    let app = Arc::new(App {
        info,
        sessions: Open::default(),
        posts: AtomicU64::new(0),
        opts,
    });
    let connections = Open::default();
    // Flips to true on shutdown: every connection then finishes its request and closes.
    let (stopping_tx, stopping) = watch::channel(false);
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
                let app = app.clone();
                let service = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(handle(req, &app, local).await) }
                });
                let conn = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                let guard = connections.enter();
                let mut stopping = stopping.clone();
                tokio::spawn(async move {
                    let _guard = guard;
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = stopping.wait_for(|s| *s) => {}
                    }
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    let open = app.sessions.count();
    if open > 0 {
        eprintln!("webapp: waiting for {open} open websocket session(s)");
    }
    let _ = tokio::time::timeout(GRACE, async {
        connections.wait_idle().await;
        app.sessions.wait_idle().await;
    })
    .await;
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

async fn handle(req: Request<Incoming>, app: &App, local: Option<SocketAddr>) -> Response<Body> {
    let ip = local.map(|a| a.ip().to_string()).unwrap_or_default();
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/echo") => echo(req, app, ip).await,
        (_, "/echo") => text(StatusCode::METHOD_NOT_ALLOWED, "only POST\n"),
        (m, _) if m != Method::GET && m != Method::HEAD => {
            text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n")
        }
        (_, "/health") => match app.opts.health_port {
            Some(p) => text(StatusCode::NOT_FOUND, format!("/health is on port {p}\n")),
            None => text(StatusCode::OK, "ok\n"),
        },
        (_, "/ws") => ws::upgrade(req, &app.sessions),
        (_, "/download") => match download::Download::from_query(req.uri().query()) {
            Ok(d) => {
                let mut resp = Response::new(d.body().boxed());
                let h = resp.headers_mut();
                h.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                h.insert(CONTENT_LENGTH, HeaderValue::from(d.len()));
                resp
            }
            Err(e) => text(StatusCode::BAD_REQUEST, format!("/download: {e}\n")),
        },
        _ => hello(&req, &app.info, ip),
    }
}

/// The JSON answer of every plain `GET`, with the cookie session counted up.
fn hello(req: &Request<Incoming>, info: &AppInfo, ip: String) -> Response<Body> {
    let session = session_from_cookies(req.headers().get_all(COOKIE).iter()).saturating_add(1);
    let body = serde_json::json!({
        "hostname": info.hostname,
        "ip": ip,
        "tag": info.tag,
        "session": session,
        "path": req.uri().path(),
        "forwarded_for": header(req, "x-forwarded-for"),
        "forwarded_proto": header(req, "x-forwarded-proto"),
        "request_id": header(req, "x-request-id"),
    });
    let mut resp = json(&body);
    if let Ok(v) = HeaderValue::from_str(&format!("{SESSION_COOKIE}={session}; Path=/; HttpOnly")) {
        resp.headers_mut().insert(SET_COOKIE, v);
    }
    resp
}

/// A request header as text, for the JSON answer (None when absent or not visible ASCII).
fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// `POST /echo`: reads the whole body (at most [`MAX_POST_BODY`]) and reports its length
/// and checksum, so a client can tell its POST arrived whole.
async fn echo(req: Request<Incoming>, app: &App, ip: String) -> Response<Body> {
    let body = match Limited::new(req.into_body(), MAX_POST_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("POST /echo: body over {MAX_POST_BODY} bytes\n"),
            )
        }
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("POST /echo: {e}\n")),
    };
    let posts = app.posts.fetch_add(1, Ordering::Relaxed) + 1;
    json(&serde_json::json!({
        "hostname": app.info.hostname,
        "ip": ip,
        "bytes": body.len(),
        "checksum": format!("{:016x}", fnv1a64(&body)),
        "posts": posts,
    }))
}

/// FNV-1a, 64 bit: a checksum any client computes in three lines.
pub fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn json(v: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{v}\n"))).boxed());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.into())).boxed());
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
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn missing_or_garbage_session_cookie_counts_from_zero() {
        assert_eq!(session_from_cookies([].iter()), 0);
        let h = [HeaderValue::from_static("webapp_session=abc")];
        assert_eq!(session_from_cookies(h.iter()), 0);
    }
}
