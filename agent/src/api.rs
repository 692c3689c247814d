//! The agent's local HTTP API (hyper). JSON everywhere; errors are
//! `{"error": "..."}` with a fitting status code. `GET /v1/events` streams one
//! JSON event per line and resumes after `?index=N`.
//!
//! Routes: `GET /v1/members`, `GET /v1/events`, `PUT /v1/tags`,
//! `POST /v1/join`, `POST /v1/leave`, `POST /v1/force-leave/{name}`,
//! `GET /v1/info`, `GET /v1/health`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info};

use crate::agent::Handle;
use crate::tags::{self, Tags};
use crate::wire::KeyOp;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// A keepalive line is sent on idle event streams this often.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

/// Extra information for `/v1/info` (the supervisor's services).
pub type InfoHook = Arc<dyn Fn() -> Value + Send + Sync>;

#[derive(Clone)]
pub struct ApiState {
    pub agent: Handle,
    /// Asks `main` for a graceful shutdown; answered once the leave is done.
    pub shutdown: mpsc::Sender<oneshot::Sender<()>>,
    pub info_hook: Option<InfoHook>,
    /// When set, every request must carry `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

/// Serves the API until the listener fails.
pub async fn serve(listener: TcpListener, state: ApiState) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(req, &state).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "API connection error");
            }
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind the API on {addr}: {e}")))
}

type ApiBody = http_body_util::Either<Full<Bytes>, EventBody>;
type Reply = Response<ApiBody>;

fn json_reply(status: StatusCode, value: &Value) -> Reply {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(http_body_util::Either::Left(Full::new(Bytes::from(body))))
        .unwrap_or_else(|_| Response::new(http_body_util::Either::Left(Full::new(Bytes::new()))))
}

fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    json_reply(status, &json!({ "error": message.into() }))
}

/// See [`crate::token::authorizes`]: case-insensitive scheme, a comparison
/// that leaks neither matching bytes nor the token's length.
fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| crate::token::authorizes(v, token))
}

async fn route(req: Request<Incoming>, state: &ApiState) -> Reply {
    if let Some(token) = &state.token {
        if !authorized(&req, token) {
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API token (Authorization: Bearer ...; the CLI sends --api-token / SHOAL_API_TOKEN)",
            );
        }
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/v1/members") => members(state),
        (Method::GET, "/v1/events") => events(state, &query),
        (Method::GET, "/v1/info") => info_doc(state),
        (Method::GET, "/v1/health") => {
            let joined = state.agent.lock().joined;
            json_reply(StatusCode::OK, &json!({ "status": "ok", "joined": joined }))
        }
        (Method::PUT, "/v1/tags") => match read_json::<TagsRequest>(req).await {
            Ok(body) => put_tags(state, body).await,
            Err(e) => e,
        },
        (Method::POST, "/v1/join") => match read_json::<JoinRequest>(req).await {
            Ok(body) => join(state, body).await,
            Err(e) => e,
        },
        (Method::POST, "/v1/leave") => {
            let (tx, rx) = oneshot::channel();
            if state.shutdown.send(tx).await.is_err() {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the agent is already stopping",
                );
            }
            let _ = tokio::time::timeout(Duration::from_secs(30), rx).await;
            json_reply(StatusCode::OK, &json!({ "left": true }))
        }
        (Method::GET, "/v1/keys") => key_op(state, KeyOp::List).await,
        (Method::POST, "/v1/keys/install" | "/v1/keys/use" | "/v1/keys/remove") => {
            let body = match read_json::<KeyRequest>(req).await {
                Ok(b) => b,
                Err(e) => return e,
            };
            let op = match path.as_str() {
                "/v1/keys/install" => KeyOp::Install(body.key),
                "/v1/keys/use" => KeyOp::Use(body.key),
                _ => KeyOp::Remove(body.key),
            };
            key_op(state, op).await
        }
        (Method::POST, p) if p.starts_with("/v1/force-leave/") => {
            let name = &p["/v1/force-leave/".len()..];
            if name.is_empty() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "missing node name: /v1/force-leave/{name}",
                );
            }
            match state.agent.force_leave(name.to_string()).await {
                Ok(()) => json_reply(StatusCode::OK, &json!({ "name": name, "status": "left" })),
                Err(e) if e.starts_with("no member") => error(StatusCode::NOT_FOUND, e),
                Err(e) => error(StatusCode::CONFLICT, e),
            }
        }
        (
            _,
            "/v1/members" | "/v1/events" | "/v1/info" | "/v1/health" | "/v1/tags" | "/v1/join"
            | "/v1/leave",
        ) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not allowed on {path}", req_method_name(&path)),
        ),
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRequest {
    key: String,
}

async fn key_op(state: &ApiState, op: KeyOp) -> Reply {
    match state.agent.key_op(op).await {
        Ok(summary) => {
            let status = if summary.errors.is_empty() {
                StatusCode::OK
            } else {
                // Some members failed: the caller must see it and retry.
                StatusCode::MULTI_STATUS
            };
            json_reply(status, &json!(summary))
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

fn req_method_name(path: &str) -> &'static str {
    match path {
        "/v1/tags" => "only PUT",
        "/v1/join" | "/v1/leave" => "only POST",
        _ => "only GET",
    }
}

async fn read_json<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, Reply> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body exceeds {MAX_BODY} bytes"),
                )
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read request body: {e}"),
                )
            }
        })?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

fn members(state: &ApiState) -> Reply {
    let shared = state.agent.lock();
    json_reply(StatusCode::OK, &json!({ "members": shared.members }))
}

fn info_doc(state: &ApiState) -> Reply {
    let stats = state.agent.stats.view();
    let shared = state.agent.lock();
    let local = &shared.local;
    let mut doc = json!({
        "self": {
            "name": local.name,
            "addr": local.addr.to_string(),
            "generation": local.generation,
            "tags": local.tags,
            "bind": state.agent.gossip_addr.to_string(),
        },
        "protocol": {
            "version": crate::wire::VERSION,
            "profile": format!("{:?}", shared.profile).to_lowercase(),
            "agent_version": env!("CARGO_PKG_VERSION"),
        },
        "joined": shared.joined,
        "members": shared.counts,
        "events": { "last_index": shared.events.last_index() },
        "stats": stats,
    });
    drop(shared);
    if let Some(hook) = &state.info_hook {
        doc["services"] = hook();
    }
    json_reply(StatusCode::OK, &doc)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TagsRequest {
    #[serde(default)]
    set: Tags,
    #[serde(default)]
    delete: Vec<String>,
}

async fn put_tags(state: &ApiState, body: TagsRequest) -> Reply {
    for (k, v) in &body.set {
        if let Err(e) = tags::parse_tag(&format!("{k}={v}")) {
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
    }
    match state.agent.set_tags(body.set, body.delete).await {
        Ok(tags) => json_reply(StatusCode::OK, &json!({ "tags": tags })),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinRequest {
    addrs: Vec<String>,
}

async fn join(state: &ApiState, body: JoinRequest) -> Reply {
    let mut targets = Vec::new();
    for a in &body.addrs {
        match crate::addr::parse_host_port(a) {
            Ok(t) => targets.push(t),
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        }
    }
    if targets.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no address to join");
    }
    match state.agent.join(targets).await {
        Ok(n) => {
            info!(contacted = n, "join requested through the API");
            json_reply(StatusCode::OK, &json!({ "contacted": n }))
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, e),
    }
}

fn events(state: &ApiState, query: &str) -> Reply {
    let mut after = 0u64;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("index", v)) => match v.parse() {
                Ok(n) => after = n,
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("index={v:?} is not a number"),
                    )
                }
            },
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {pair:?}; only index=N"),
                )
            }
        }
    }
    let (backlog, mut live, oldest, last) = {
        let shared = state.agent.lock();
        let (backlog, live) = shared.events.subscribe_after(after);
        (
            backlog,
            live,
            shared.events.oldest_index(),
            shared.events.last_index(),
        )
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        let line = |v: &Value| {
            let mut b = serde_json::to_vec(v).unwrap_or_default();
            b.push(b'\n');
            Bytes::from(b)
        };
        if after > 0 && oldest.is_some_and(|o| o > after + 1) {
            // The client asked to resume from events no longer buffered.
            let gap = json!({ "type": "resync", "index": last, "reason": "events were dropped from the buffer; refetch /v1/members" });
            if tx.send(line(&gap)).await.is_err() {
                return;
            }
        }
        let mut sent = after;
        for e in backlog {
            sent = e.index;
            if tx.send(line(&json!(*e))).await.is_err() {
                return;
            }
        }
        loop {
            match tokio::time::timeout(KEEPALIVE, live.recv()).await {
                Ok(Ok(e)) => {
                    if e.index <= sent {
                        continue;
                    }
                    sent = e.index;
                    if tx.send(line(&json!(*e))).await.is_err() {
                        return;
                    }
                }
                Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                    let gap = json!({ "type": "resync", "index": sent, "reason": format!("client too slow, {n} events skipped; refetch /v1/members") });
                    if tx.send(line(&gap)).await.is_err() {
                        return;
                    }
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return,
                Err(_) => {
                    if tx
                        .send(line(&json!({ "type": "keepalive", "index": sent })))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-ndjson")
        .body(http_body_util::Either::Right(EventBody { rx }))
        .unwrap_or_else(|_| Response::new(http_body_util::Either::Left(Full::new(Bytes::new()))))
}

/// A streaming body fed by a channel: one chunk per event line.
pub struct EventBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}
