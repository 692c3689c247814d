//! `lbgen acme --http ADDR`: answers `GET /.well-known/acme-challenge/TOKEN` with the key
//! authorization any LB published in the shared directory (HAProxy routes the CA's requests
//! here, `--var acme_challenge=ADDR`), and `GET /status.json` with each certificate's state.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use super::store::Store;
use super::CertStatus;
use crate::Error;

const PREFIX: &str = "/.well-known/acme-challenge/";
const MAX_CONNECTIONS: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub type Shared = Arc<Mutex<Vec<CertStatus>>>;

/// Serves `listener` (from [`crate::http::bind`], as `watch --http`) until the task is aborted.
pub fn spawn(
    listener: std::net::TcpListener,
    store: Store,
    status: Shared,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let local = listener
        .local_addr()
        .map_err(|e| Error::new(format!("--http: {e}")))?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| Error::new(format!("--http {local}: {e}")))?;
    tracing::info!(addr = %local, "answering ACME http-01 challenges and /status.json");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "--http: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (store, status) = (store.clone(), status.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let r = answer(&store, &status, &req);
                    async move { Ok::<_, Infallible>(r) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                drop(permit);
            });
        }
    }))
}

fn answer(store: &Store, status: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    let path = req.uri().path();
    if let Some(token) = path.strip_prefix(PREFIX) {
        return match store.challenge(token) {
            Some(ka) => {
                tracing::info!(token, "answered an http-01 challenge");
                reply(StatusCode::OK, "application/octet-stream", ka)
            }
            None => {
                tracing::warn!(token, "http-01 challenge for a token no order published");
                reply(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "no such challenge\n".into(),
                )
            }
        };
    }
    if path == "/status.json" {
        let certs = status.lock().map(|s| s.clone()).unwrap_or_default();
        let body = serde_json::to_string_pretty(&serde_json::json!({ "certs": certs }))
            .unwrap_or_default();
        return reply(StatusCode::OK, "application/json", body + "\n");
    }
    reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into())
}

fn reply(code: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    if let Ok(v) = ctype.parse() {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}
