//! `lbgen watch --http ADDR`: a small HTTP/1.1 server (hyper) for operators —
//! `/` the status page, `/status.html` its live fragment, `/status.json`, `/metrics`
//! (Prometheus text) and `/events` (server-sent events: each agent event and apply).
//!
//! - [`hub`]: the shared state the watch loop records into and the server reads.
//! - [`metrics`]: the Prometheus registry.
//! - [`live`]: HAProxy's own server states (`show stat`) for the page.
//! - [`page`]: the HTML (pure).

pub mod hub;
pub mod live;
pub mod metrics;
pub mod page;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{broadcast, mpsc, Semaphore};

pub use hub::{error_class, StatusHub};

use crate::Error;
use hub::Push;

/// Connections served at once (the page holds one open for `/events`); more wait.
const MAX_CONNECTIONS: usize = 64;
/// A client has this long to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A comment line on `/events` this often, so proxies and the browser keep it open.
const SSE_KEEPALIVE: Duration = Duration::from_secs(15);

/// Binds `--http ADDR` (`127.0.0.1:9100`, `[::1]:9100`, `localhost:9100`); the error names
/// the address.
pub fn bind(addr: &str) -> Result<std::net::TcpListener, Error> {
    let l = std::net::TcpListener::bind(addr)
        .map_err(|e| Error::new(format!("--http {addr}: cannot listen: {e}")))?;
    l.set_nonblocking(true)
        .map_err(|e| Error::new(format!("--http {addr}: {e}")))?;
    Ok(l)
}

/// Stops the server when dropped.
#[derive(Debug)]
pub struct ServerHandle(tokio::task::JoinHandle<()>);

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves `hub` on `listener` (from [`bind`]) until the handle is dropped.
pub fn spawn(listener: std::net::TcpListener, hub: StatusHub) -> Result<ServerHandle, Error> {
    let local = listener
        .local_addr()
        .map_err(|e| Error::new(format!("--http: {e}")))?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| Error::new(format!("--http {local}: {e}")))?;
    tracing::info!(addr = %local, "status page and metrics at http://{local}/");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    Ok(ServerHandle(tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "--http: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let hub = hub.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let hub = hub.clone();
                    async move { Ok::<_, Infallible>(route(&hub, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "--http connection ended");
                }
                drop(permit);
            });
        }
    })))
}

/// A whole body, or the `/events` stream.
pub enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    /// Exact for a whole body, so it goes out with a Content-Length rather than chunked.
    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Body::Full(b) => {
                hyper::body::SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            Body::Stream(_) => hyper::body::SizeHint::default(),
        }
    }
}

/// Only our own origin; inline script and style are the page's own (everything from the
/// network in it is escaped: this is the second line of defence).
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'";

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Body::Full(Some(body.into())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(CONTENT_TYPE, v);
    }
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

async fn route(hub: &StatusHub, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET and HEAD\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let head = req.method() == Method::HEAD;
    let mut r = match req.uri().path() {
        "/" => {
            let mut r = respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                page::page(&hub.view().await),
            );
            r.headers_mut()
                .insert("content-security-policy", HeaderValue::from_static(CSP));
            r
        }
        "/status.html" => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            page::fragment(&hub.view().await),
        ),
        "/status.json" => match serde_json::to_vec(&hub.view().await) {
            Ok(j) => respond(StatusCode::OK, "application/json", j),
            Err(e) => respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                format!("encoding the status: {e}\n"),
            ),
        },
        "/metrics" => respond(
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            hub.metrics().encode(),
        ),
        "/events" if !head => events(hub),
        "/events" => respond(StatusCode::OK, "text/event-stream", ""),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /, /status.json, /metrics or /events\n",
        ),
    };
    if head {
        *r.body_mut() = Body::Full(None);
    }
    r
}

/// `/events`: `event: member` (an agent event) and `event: apply` (an apply ended), each
/// with its JSON as `data`; a comment every [`SSE_KEEPALIVE`].
fn events(hub: &StatusHub) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let mut sub = hub.subscribe();
    tokio::spawn(async move {
        if tx
            .send(Bytes::from_static(b"retry: 2000\n: shoal lbgen events\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let msg = tokio::select! {
                p = sub.recv() => match p {
                    Ok(p) => sse_message(&p),
                    // Missed some: an apply-shaped nudge makes the page refetch everything.
                    Err(broadcast::error::RecvError::Lagged(_)) => "event: apply\ndata: {}\n\n".to_string(),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tokio::time::sleep(SSE_KEEPALIVE) => ": keepalive\n\n".to_string(),
            };
            if tx.send(Bytes::from(msg)).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(Body::Stream(rx));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// One SSE message; JSON never contains a raw newline, so `data:` is one line.
fn sse_message(p: &Push) -> String {
    let (event, data) = match p {
        Push::Event(e) => ("member", serde_json::to_string(e)),
        Push::Apply(a) => ("apply", serde_json::to_string(a)),
    };
    format!(
        "event: {event}\ndata: {}\n\n",
        data.unwrap_or_else(|_| "{}".into())
    )
}
