//! The agent's local HTTP API (hyper). JSON everywhere; errors are
//! `{"error": "..."}` with a fitting status code. `GET /v1/events` streams one
//! JSON event per line and resumes after `?index=N`.
//!
//! Routes: `GET /v1/members`, `GET /v1/events`, `PUT /v1/tags`,
//! `POST /v1/join`, `POST /v1/leave`, `POST /v1/force-leave/{name}`,
//! `GET /v1/info`, `GET /v1/health`, `POST /v1/event` (a user event),
//! `POST /v1/query` (a query; its acks and responses stream as JSON lines),
//! and `GET /metrics` (Prometheus text, [`crate::metrics`]; under the same
//! token as the rest).
//!
//! Open to whoever can connect, so bounded: headers must arrive within
//! [`HEADER_TIMEOUT`] (also the idle timeout of a keep-alive connection),
//! bodies within [`BODY_TIMEOUT`], and at most [`MAX_CONNS`] connections are
//! open: at the cap, the oldest connection with no request in flight makes
//! room for the new one, so an operator's `shoal members` always gets in.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shoal_contract::{MembersDoc, Notice, NoticeKind, Status, API_VERSION, VERSION_HEADER};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info};

use crate::agent::Handle;
use crate::command_error::CommandError;
use crate::membership::ForceLeaveError;
use crate::tags::{self, Tags};
use crate::wire::KeyOp;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// A keepalive line is sent on idle event streams this often.
pub const KEEPALIVE: Duration = Duration::from_secs(5);
/// A request's headers must be in within this of the connection waiting
/// for them: a new connection, or a keep-alive one between requests (hyper
/// runs the same timer there, so this is the idle timeout too).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A request body must be in within this.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// API connections open at once.
pub const MAX_CONNS: usize = 128;

/// Extra information for `/v1/info` (the supervisor's services).
pub type InfoHook = Arc<dyn Fn() -> Value + Send + Sync>;

/// `POST /v1/leave`, handed to the lifecycle, which stops the agent.
pub struct LeaveRequest {
    /// Answered once the leave is done: the API then writes its reply.
    pub left: oneshot::Sender<()>,
    /// Ends (`recv` gives `None`) once the reply is written and its
    /// connection closed, so the process may exit without cutting it off.
    pub answered: mpsc::Receiver<()>,
}

/// Carried by the leave reply to its connection's task, which drops it once
/// the connection is closed (see [`LeaveRequest::answered`]).
#[derive(Clone)]
struct Answered {
    _sender: mpsc::Sender<()>,
}

#[derive(Clone)]
pub struct ApiState {
    pub agent: Handle,
    /// Asks the lifecycle for a graceful stop (see [`LeaveRequest`]).
    pub shutdown: mpsc::Sender<LeaveRequest>,
    pub info_hook: Option<InfoHook>,
    /// When set, every request must carry `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// What `GET /metrics` renders.
    pub scrape: Arc<crate::metrics::Scrape>,
}

/// Serves the API until the listener fails.
pub async fn serve(listener: TcpListener, state: ApiState) {
    let conns = Arc::new(Mutex::new(Conns::default()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (admitted, evicted) = lock(&conns).admit();
        if evicted || admitted.is_none() {
            crate::stats::Stats::add(&state.agent.stats().api_conns_closed, 1);
        }
        let Some((id, busy, close)) = admitted else {
            debug!(%peer, "API connection refused: {MAX_CONNS} connections, each with a request in flight");
            continue;
        };
        let state = state.clone();
        let conns = conns.clone();
        tokio::spawn(async move {
            // Dropped with this task, once the connection is closed.
            let answered: Arc<Mutex<Vec<Answered>>> = Arc::default();
            let holder = answered.clone();
            let service = service_fn(move |req| {
                let state = state.clone();
                let busy = Busy::start(&busy);
                let holder = holder.clone();
                async move {
                    let mut reply = route(req, &state).await;
                    if let Some(a) = reply.extensions_mut().remove::<Answered>() {
                        holder.lock().unwrap_or_else(|p| p.into_inner()).push(a);
                    }
                    // In flight until the whole body is written (event streams: until closed).
                    Ok::<_, Infallible>(reply.map(|inner| TrackedBody { inner, _busy: busy }))
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                done = conn => if let Err(e) = done {
                    debug!(%peer, error = %e, "API connection closed");
                },
                _ = close => debug!(%peer, "idle API connection closed to make room ({MAX_CONNS} open)"),
            }
            lock(&conns).open.remove(&id);
            drop(answered);
        });
    }
}

fn lock(conns: &Mutex<Conns>) -> std::sync::MutexGuard<'_, Conns> {
    conns.lock().unwrap_or_else(|p| p.into_inner())
}

/// The open API connections, oldest first, each with its requests in flight.
#[derive(Default)]
struct Conns {
    next: u64,
    open: BTreeMap<u64, Conn>,
}

struct Conn {
    busy: Arc<AtomicUsize>,
    close: Option<oneshot::Sender<()>>,
}

impl Conns {
    /// Registers a new connection; at the cap, first closes the oldest one
    /// with no request in flight (None if every one has a request). Also
    /// says whether one was closed.
    fn admit(&mut self) -> (Option<Admitted>, bool) {
        let mut evicted = false;
        if self.open.len() >= MAX_CONNS {
            let idle = self
                .open
                .iter()
                .find(|(_, c)| c.busy.load(Ordering::SeqCst) == 0)
                .map(|(id, _)| *id);
            let Some(idle) = idle else {
                return (None, false);
            };
            if let Some(mut c) = self.open.remove(&idle) {
                if let Some(close) = c.close.take() {
                    let _ = close.send(());
                }
                evicted = true;
            }
        }
        let id = self.next;
        self.next += 1;
        let busy = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = oneshot::channel();
        self.open.insert(
            id,
            Conn {
                busy: busy.clone(),
                close: Some(tx),
            },
        );
        (Some((id, busy, rx)), evicted)
    }
}

/// A connection's id, its in-flight count and its "close now" signal.
type Admitted = (u64, Arc<AtomicUsize>, oneshot::Receiver<()>);

/// One request in flight on a connection, until dropped.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn start(count: &Arc<AtomicUsize>) -> Busy {
        count.fetch_add(1, Ordering::SeqCst);
        Busy(count.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in flight.
pub struct TrackedBody {
    inner: ApiBody,
    _busy: Busy,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = <ApiBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind the API on {addr}: {e}")))
}

type ApiBody = http_body_util::Either<Full<Bytes>, EventBody>;
type Reply = Response<ApiBody>;

fn json_reply(status: StatusCode, value: &impl Serialize) -> Reply {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header(VERSION_HEADER, API_VERSION)
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
        (Method::GET, "/v1/logs") => logs(&query),
        (Method::GET, "/v1/info") => info_doc(state),
        (Method::GET, "/metrics") => metrics(state, &req),
        (Method::GET, "/v1/health") => {
            let snapshot = state.agent.snapshot();
            json_reply(
                StatusCode::OK,
                &json!({ "status": "ok", "joined": snapshot.joined, "synced": snapshot.synced }),
            )
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
            let (left, left_rx) = oneshot::channel();
            let (answered, answered_rx) = mpsc::channel(1);
            let request = LeaveRequest {
                left,
                answered: answered_rx,
            };
            if state.shutdown.send(request).await.is_err() {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the agent is already stopping",
                );
            }
            let _ = tokio::time::timeout(Duration::from_secs(30), left_rx).await;
            let mut reply = json_reply(StatusCode::OK, &json!({ "left": true }));
            // The process exits after this reply: close the connection once
            // it is written, and tell the lifecycle then.
            reply.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
            reply
                .extensions_mut()
                .insert(Answered { _sender: answered });
            reply
        }
        (Method::POST, "/v1/event") => match read_json::<shoal_contract::EventRequest>(req).await {
            Ok(body) => user_event(state, body).await,
            Err(e) => e,
        },
        (Method::POST, "/v1/query") => match read_json::<shoal_contract::QueryRequest>(req).await {
            Ok(body) => send_query(state, body).await,
            Err(e) => e,
        },
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
                Ok(()) => json_reply(
                    StatusCode::OK,
                    &json!({ "name": name, "status": Status::Left }),
                ),
                Err(e) => {
                    let code = match &e {
                        CommandError::Refused(ForceLeaveError::NoMember(_)) => {
                            StatusCode::NOT_FOUND
                        }
                        CommandError::Refused(ForceLeaveError::NotFailed { .. })
                        | CommandError::ShuttingDown => StatusCode::CONFLICT,
                    };
                    error(code, e.to_string())
                }
            }
        }
        (
            _,
            "/v1/members" | "/v1/events" | "/v1/logs" | "/v1/info" | "/v1/health" | "/v1/tags"
            | "/v1/join" | "/v1/leave" | "/v1/event" | "/v1/query" | "/metrics",
        ) => method_not_allowed(req.method(), &path),
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

/// The 405 answer: names the method that was used and the one to use, and
/// carries the `Allow` header HTTP asks for.
fn method_not_allowed(method: &Method, path: &str) -> Reply {
    let allowed = match path {
        "/v1/tags" => "PUT",
        "/v1/join" | "/v1/leave" | "/v1/event" | "/v1/query" => "POST",
        _ => "GET",
    };
    let mut reply = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {path}; use {allowed}"),
    );
    reply.headers_mut().insert(
        hyper::header::ALLOW,
        hyper::header::HeaderValue::from_static(allowed),
    );
    reply
}

async fn read_json<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, Reply> {
    let collect = Limited::new(req.into_body(), MAX_BODY).collect();
    let body = tokio::time::timeout(BODY_TIMEOUT, collect)
        .await
        .map_err(|_| {
            error(
                StatusCode::REQUEST_TIMEOUT,
                format!("request body not received within {BODY_TIMEOUT:?}"),
            )
        })?
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

/// The table with what a client needs to trust it: which run of the agent it
/// comes from, the last event index it includes, and whether it is synced
/// with the cluster yet (a just-restarted agent knows almost nobody). Read
/// from the loop's last published snapshot: serialising N members holds
/// nothing the gossip loop needs.
fn members(state: &ApiState) -> Reply {
    let snapshot = state.agent.snapshot();
    let doc = MembersDoc {
        members: snapshot.members.clone(),
        version: Some(API_VERSION),
        run: Some(snapshot.run.to_string()),
        index: Some(snapshot.index),
        synced: Some(snapshot.synced),
        unrecognised: Vec::new(),
    };
    json_reply(StatusCode::OK, &doc)
}

/// `GET /metrics`: Prometheus text 0.0.4, or OpenMetrics if the scraper's
/// `Accept` asks for it. Read from atomics and the published snapshot only.
fn metrics(state: &ApiState, req: &Request<Incoming>) -> Reply {
    let accept = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let (text, content_type) = state.scrape.render(accept);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type)
        .header(VERSION_HEADER, API_VERSION)
        .body(http_body_util::Either::Left(Full::new(Bytes::from(text))))
        .unwrap_or_else(|_| Response::new(http_body_util::Either::Left(Full::new(Bytes::new()))))
}

fn info_doc(state: &ApiState) -> Reply {
    let stats = state.agent.stats().view();
    let snapshot = state.agent.snapshot();
    let local = &snapshot.local;
    let mut doc = json!({
        "self": {
            "name": local.name,
            "addr": local.addr.to_string(),
            "generation": local.generation,
            "tags": local.tags,
            "bind": state.agent.gossip_addr().to_string(),
        },
        "protocol": {
            "version": crate::wire::VERSION,
            "api_version": API_VERSION,
            "profile": format!("{:?}", state.agent.profile()).to_lowercase(),
            "agent_version": env!("CARGO_PKG_VERSION"),
        },
        "joined": snapshot.joined,
        "synced": snapshot.synced,
        "run": &*snapshot.run,
        "members": snapshot.counts,
        "events": { "last_index": snapshot.index },
        "stats": stats,
    });
    if let Some(hook) = &state.info_hook {
        doc["services"] = hook();
    }
    json_reply(StatusCode::OK, &doc)
}

/// A request body that must be a JSON object. serde's derive also reads a
/// struct from an array (fields by position), so `[]` passed as an empty
/// request; this refuses anything but `{...}` first.
struct Object<T>(T);

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = Value::deserialize(d)?;
        let kind = match &value {
            Value::Object(_) => {
                return serde_json::from_value(value)
                    .map(Object)
                    .map_err(D::Error::custom)
            }
            Value::Array(_) => "an array",
            Value::String(_) => "a string",
            Value::Number(_) => "a number",
            Value::Bool(_) => "a boolean",
            Value::Null => "null",
        };
        Err(D::Error::custom(format!(
            "the body must be a JSON object {{...}}, not {kind}"
        )))
    }
}

/// `PUT /v1/tags`: `{"set":{"k":"v"},"delete":["k2"]}`, an object only.
type TagsRequest = Object<TagsFields>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TagsFields {
    #[serde(default)]
    set: Tags,
    #[serde(default)]
    delete: Vec<String>,
}

async fn put_tags(state: &ApiState, Object(body): TagsRequest) -> Reply {
    for (k, v) in &body.set {
        if let Err(e) = tags::parse_tag(&format!("{k}={v}")) {
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
    }
    match state.agent.set_tags(body.set, body.delete).await {
        Ok(tags) => json_reply(StatusCode::OK, &json!({ "tags": tags })),
        // Every refusal is the caller's to fix or retry, as before: a bad
        // tag, a tags file that cannot be written, a node shutting down.
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// `POST /v1/join`: `{"addrs":["host:port"]}`, an object only.
type JoinRequest = Object<JoinFields>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinFields {
    addrs: Vec<String>,
}

/// Answers once every address's push-pull is done: 200 with the counts when
/// at least one node answered, else 502 naming each address and why.
async fn join(state: &ApiState, Object(body): JoinRequest) -> Reply {
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
        Ok(report) => {
            info!(
                contacted = report.contacted,
                joined = report.joined,
                failed = report.failed.len(),
                "join requested through the API"
            );
            json_reply(StatusCode::OK, &json!(report))
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, e),
    }
}

fn events(state: &ApiState, query: &str) -> Reply {
    let mut after = 0u64;
    let mut client_run: Option<String> = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("run", v)) => client_run = Some(v.to_string()),
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
                    format!("unknown query parameter {pair:?}; only index=N and run=ID"),
                )
            }
        }
    }
    let run = state.agent.snapshot().run.to_string();
    // An index from another run of the agent means nothing here: its log began
    // again at 1. Stream from the start and tell the client to refetch.
    let restarted = client_run.as_ref().filter(|r| **r != run).cloned();
    if restarted.is_some() {
        after = 0;
    }
    let crate::agent::EventSubscription {
        backlog,
        mut live,
        oldest,
        last,
    } = state.agent.subscribe_events(after);
    let mut synced = state.agent.synced();
    let header_run = run.clone();
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        if let Some(old) = restarted {
            let gap = Notice::resync(
                last,
                &run,
                format!("the agent restarted (run {old} ended); refetch /v1/members"),
            );
            if tx.send(line(&gap)).await.is_err() {
                return;
            }
        }
        // An index beyond our last one was never ours (another run of this
        // agent, or made up): resync, then go on from our real index, so
        // keep-alives carry it and new events are not skipped as "seen".
        let beyond = after > last;
        let reason = if beyond {
            format!("index {after} is beyond this agent's last index {last} (did the agent restart?); refetch /v1/members")
        } else {
            "events were dropped from the buffer; refetch /v1/members".to_string()
        };
        if beyond || (after > 0 && oldest.is_some_and(|o| o > after + 1)) {
            // The client asked to resume from events we do not have.
            let gap = Notice::resync(last, &run, reason);
            if tx.send(line(&gap)).await.is_err() {
                return;
            }
        }
        let mut sent = after.min(last);
        for e in backlog {
            sent = e.index;
            if tx.send(line(&*e)).await.is_err() {
                return;
            }
        }
        // Once synced, the flag never changes again: stop watching it then.
        let mut announce_sync = !*synced.borrow_and_update();
        loop {
            let received = tokio::select! {
                changed = synced.changed(), if announce_sync => {
                    announce_sync = false;
                    if changed.is_ok() && *synced.borrow() {
                        let note = Notice::new(NoticeKind::Synced, sent, &run);
                        if tx.send(line(&note)).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                r = tokio::time::timeout(KEEPALIVE, live.recv()) => r,
            };
            match received {
                Ok(Ok(e)) => {
                    if e.index <= sent {
                        continue;
                    }
                    sent = e.index;
                    if tx.send(line(&*e)).await.is_err() {
                        return;
                    }
                }
                Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                    let gap = Notice::resync(
                        sent,
                        &run,
                        format!("client too slow, {n} events skipped; refetch /v1/members"),
                    );
                    if tx.send(line(&gap)).await.is_err() {
                        return;
                    }
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return,
                Err(_) => {
                    let keepalive = Notice::new(NoticeKind::Keepalive, sent, &run);
                    if tx.send(line(&keepalive)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-ndjson")
        .header(VERSION_HEADER, API_VERSION)
        .header(shoal_contract::RUN_HEADER, header_run)
        .body(http_body_util::Either::Right(EventBody { rx }))
        .unwrap_or_else(|_| Response::new(http_body_util::Either::Left(Full::new(Bytes::new()))))
}

/// `GET /v1/logs?level=L`: the agent's log lines at L or above (default
/// info), from now on, as NDJSON; `{"lagged":N}` when the client fell
/// behind. Lines are streamed only while somebody listens.
fn logs(query: &str) -> Reply {
    let mut level = tracing::Level::INFO;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("level", v)) => match crate::logstream::parse_level(v) {
                Some(l) => level = l,
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("level={v:?}: use trace, debug, info, warn or error"),
                    )
                }
            },
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {pair:?}; only level=L"),
                )
            }
        }
    }
    let mut live = crate::logstream::subscribe();
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        loop {
            let out = match tokio::time::timeout(KEEPALIVE, live.recv()).await {
                Ok(Ok(l)) if l.severity <= level => line(&*l),
                Ok(Ok(_)) => continue,
                Ok(Err(broadcast::error::RecvError::Lagged(n))) => line(&json!({ "lagged": n })),
                Ok(Err(broadcast::error::RecvError::Closed)) => return,
                // Finds a client that went away while the agent was quiet.
                Err(_) => Bytes::from_static(b"\n"),
            };
            if tx.send(out).await.is_err() {
                return;
            }
        }
    });
    ndjson_stream(rx)
}

/// The status for a refused user event or query.
fn user_status(e: &CommandError<crate::userev::UserError>) -> StatusCode {
    match e {
        CommandError::Refused(crate::userev::UserError::PayloadTooLarge { .. }) => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        CommandError::Refused(_) => StatusCode::BAD_REQUEST,
        CommandError::ShuttingDown => StatusCode::CONFLICT,
    }
}

async fn user_event(state: &ApiState, body: shoal_contract::EventRequest) -> Reply {
    let name = body.name.clone();
    match state
        .agent
        .user_event(body.name, body.payload.into_bytes(), body.coalesce)
        .await
    {
        Ok(ltime) => json_reply(StatusCode::OK, &shoal_contract::EventSent { name, ltime }),
        Err(e) => error(user_status(&e), e.to_string()),
    }
}

/// Sends a query and streams its lines until the done line.
async fn send_query(state: &ApiState, body: shoal_contract::QueryRequest) -> Reply {
    let timeout = match body.timeout.as_deref().map(shoal_contract::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("timeout: {e}")),
    };
    let params = crate::agent::QueryParams {
        name: body.name,
        payload: body.payload.into_bytes(),
        nodes: body.nodes,
        tags: body.tags.into_iter().collect(),
        ack: !body.no_ack,
        timeout,
    };
    let mut lines = match state.agent.query(params).await {
        Ok(rx) => rx,
        Err(e) => return error(user_status(&e), e.to_string()),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        while let Some(l) = lines.recv().await {
            let last = matches!(l, shoal_contract::QueryLine::Done { .. });
            if tx.send(line(&l)).await.is_err() || last {
                return;
            }
        }
    });
    ndjson_stream(rx)
}

/// A 200 whose body is the JSON lines `rx` yields, as they come (`/v1/logs`, `/v1/query`).
fn ndjson_stream(rx: mpsc::Receiver<Bytes>) -> Reply {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-ndjson")
        .header(VERSION_HEADER, API_VERSION)
        .body(http_body_util::Either::Right(EventBody { rx }))
        .unwrap_or_else(|_| Response::new(http_body_util::Either::Left(Full::new(Bytes::new()))))
}

/// One line of the event stream: an event or a notice, JSON and a newline.
fn line(v: &impl Serialize) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
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
