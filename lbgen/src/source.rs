//! Where membership comes from: the agent's HTTP API (`/v1/events` stream + `/v1/members`
//! snapshot) or a members JSON file watched with notify. Either way a source only *signals*
//! "membership may have changed"; the watch loop then reads the full snapshot and renders from
//! it, never from event deltas (a dropped or reordered event cannot leave a stale config).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use notify::{EventKind, RecursiveMode, Watcher};
use shoal_contract::{NoticeKind, StreamLine};
use tokio::sync::mpsc::UnboundedSender;

use crate::model::MembersDoc;
use crate::Error;

/// [`Source::snapshot_within`]: the pause between tries. One try is a GET on loopback; a new
/// LB's HAProxy starts once one succeeds, so a longer pause is time it does not serve.
pub const SNAPSHOT_RETRY: Duration = Duration::from_millis(5);

/// Something the watch loop should react to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Membership may have changed: fetch the snapshot (after debouncing).
    Members,
    /// The template file changed.
    Template,
    /// Something changed in the certificate directory (`tls_certs`).
    Certs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// The agent's API.
    Api {
        /// `HOST:PORT` (an `http://` prefix is accepted).
        addr: String,
        /// Sent as `Authorization: Bearer ...` on every request (snapshot and event
        /// stream); an agent started with `--api-token` answers 401 without it.
        token: Option<String>,
    },
    /// A members JSON document on disk.
    File(PathBuf),
}

impl SourceSpec {
    /// The agent API at `addr`, with its token if it has one.
    pub fn api(addr: impl Into<String>, token: Option<String>) -> SourceSpec {
        SourceSpec::Api {
            addr: addr.into(),
            token,
        }
    }
}

/// Largest members document we accept (a sane cap on network input).
const MAX_DOC: usize = 32 << 20;
/// The agent sends a keepalive every 5 s; silence this long means the stream is dead.
const STREAM_IDLE: Duration = Duration::from_secs(15);

/// Below the agent's API idle timeout (`api::HEADER_TIMEOUT`, 10 s).
const POOL_IDLE: Duration = Duration::from_secs(4);

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub struct Source {
    spec: SourceSpec,
    client: HttpClient,
    tap: Option<EventTap>,
}

/// Sees every parsed line of the agent's event stream (the status page's events, metrics).
pub type EventTap = std::sync::Arc<dyn Fn(&StreamLine) + Send + Sync>;

/// Keeps a source's background task or file watcher alive; stops it on drop.
pub enum SourceHandle {
    Task(tokio::task::JoinHandle<()>),
    Watcher(notify::RecommendedWatcher),
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        if let SourceHandle::Task(t) = self {
            t.abort();
        }
    }
}

fn base_url(addr: &str) -> String {
    let a = addr.trim_end_matches('/');
    if a.starts_with("http://") {
        a.to_string()
    } else {
        format!("http://{a}")
    }
}

/// A GET of `url`, with the bearer token when there is one.
fn get(url: &str, token: Option<&str>) -> Result<hyper::Request<Empty<Bytes>>, Error> {
    let uri: hyper::Uri = url.parse().map_err(|e| Error::new(format!("{url}: {e}")))?;
    let mut req = hyper::Request::get(uri);
    if let Some(t) = token {
        req = req.header(
            hyper::header::AUTHORIZATION,
            shoal_contract::token::bearer(t),
        );
    }
    req.body(Empty::new())
        .map_err(|e| Error::new(format!("GET {url}: {e}")))
}

/// The error for a non-2xx answer; a 401 says which token setting to fix.
fn refused(url: &str, status: hyper::StatusCode, token: Option<&str>) -> Error {
    if status == hyper::StatusCode::UNAUTHORIZED {
        let given = if token.is_some() {
            "refused the token given"
        } else {
            "no token was given"
        };
        return Error::new(format!(
            "GET {url}: HTTP {status}: the agent requires an API token and {given}; \
             set --api-token or LBGEN_API_TOKEN to the agent's --api-token"
        ));
    }
    Error::new(format!("GET {url}: HTTP {status}"))
}

impl Source {
    pub fn new(spec: SourceSpec) -> Source {
        Source {
            spec,
            // Idle pooled connections are dropped before the agent's 10 s idle timeout
            // closes them, so a snapshot never goes out on a connection being closed.
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE)
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .build_http(),
            tap: None,
        }
    }

    /// Also hands every event-stream line to `tap` (members files have no stream).
    pub fn with_tap(mut self, tap: Option<EventTap>) -> Source {
        self.tap = tap;
        self
    }

    pub fn describe(&self) -> String {
        match &self.spec {
            SourceSpec::Api { addr, .. } => format!("agent {}", base_url(addr)),
            SourceSpec::File(p) => format!("file {}", p.display()),
        }
    }

    /// Sends `req` (a GET of `url` built by [`get`] with `token`): the body, at most
    /// `MAX_DOC` bytes; a non-2xx answer is an error naming the status (and the token when it
    /// is a 401).
    async fn get_body(
        &self,
        url: &str,
        req: hyper::Request<Empty<Bytes>>,
        token: Option<&str>,
    ) -> Result<Bytes, Error> {
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| Error::new(format!("GET {url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(refused(url, resp.status(), token));
        }
        Ok(http_body_util::Limited::new(resp.into_body(), MAX_DOC)
            .collect()
            .await
            .map_err(|e| Error::new(format!("GET {url}: {e}")))?
            .to_bytes())
    }

    /// The agent's own member name (`self.name` of `/v1/info`), for per-node templates;
    /// None for a members file, or while the agent does not answer (logged; asked again
    /// with the next snapshot).
    pub async fn local_name(&self) -> Option<String> {
        let SourceSpec::Api { addr: a, token } = &self.spec else {
            return None;
        };
        let url = format!("{}/v1/info", base_url(a));
        let fut = async {
            let req = get(&url, token.as_deref())?;
            let body = self.get_body(&url, req, token.as_deref()).await?;
            let v: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| Error::new(format!("GET {url}: {e}")))?;
            v["self"]["name"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::new(format!("GET {url}: no self.name")))
        };
        match tokio::time::timeout(Duration::from_secs(10), fut).await {
            Ok(Ok(name)) => {
                tracing::info!(local = %name, "this node's name (from the agent) for --render");
                Some(name)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "this node's name is not known yet; --render files see no `local`");
                None
            }
            Err(_) => {
                tracing::warn!(url = %url, "GET timed out; --render files see no `local` yet");
                None
            }
        }
    }

    /// The full, current members document.
    pub async fn snapshot(&self) -> Result<MembersDoc, Error> {
        match &self.spec {
            SourceSpec::File(p) => {
                let text = tokio::fs::read_to_string(p)
                    .await
                    .map_err(|e| Error::new(format!("members file {}: {e}", p.display())))?;
                MembersDoc::from_json(&text)
                    .map_err(|e| Error::new(format!("members file {}: {e}", p.display())))
            }
            SourceSpec::Api { addr: a, token } => {
                let url = format!("{}/v1/members", base_url(a));
                let fut = async {
                    let req = get(&url, token.as_deref())
                        .map_err(|e| Error::new(format!("--api {a}: {e}")))?;
                    let body = self.get_body(&url, req, token.as_deref()).await?;
                    let text = std::str::from_utf8(&body)
                        .map_err(|_| Error::new(format!("GET {url}: body is not UTF-8")))?;
                    let doc = MembersDoc::from_json(text)
                        .map_err(|e| Error::new(format!("GET {url}: {e}")))?;
                    shoal_contract::check_version(doc.version)
                        .map_err(|e| Error::new(format!("GET {url}: {e}")))?;
                    if !doc.is_synced() {
                        // A restarted agent lists itself and few others until its first
                        // push-pull: applying that would empty every pool.
                        return Err(Error::new(format!(
                            "agent {a} has not synced its member table with the cluster yet \
                             (just started?); waiting for it"
                        )));
                    }
                    Ok(doc)
                };
                tokio::time::timeout(Duration::from_secs(10), fut)
                    .await
                    .map_err(|_| Error::new(format!("GET {url}: timed out")))?
            }
        }
    }

    /// [`Source::snapshot`], tried again every [`SNAPSHOT_RETRY`] while it fails (an agent
    /// starting: not answering, or not synced yet) until `wait` has passed; then its last
    /// error. `lbgen render --api --sync-wait`: HAProxy's first config can hold the members
    /// the agent already knows instead of none.
    pub async fn snapshot_within(&self, wait: Duration) -> Result<MembersDoc, Error> {
        let end = tokio::time::Instant::now() + wait;
        loop {
            match self.snapshot().await {
                Ok(doc) => return Ok(doc),
                Err(e) if tokio::time::Instant::now() + SNAPSHOT_RETRY > end => {
                    return Err(Error::new(format!("{e} (waited {wait:?})")))
                }
                Err(e) => tracing::debug!(error = %e, "no synced snapshot yet"),
            }
            tokio::time::sleep(SNAPSHOT_RETRY).await;
        }
    }

    /// Starts signalling changes into `tx` (one initial [`Signal::Members`] included).
    pub fn start(&self, tx: UnboundedSender<Signal>) -> Result<SourceHandle, Error> {
        let _ = tx.send(Signal::Members);
        match &self.spec {
            SourceSpec::File(p) => Ok(SourceHandle::Watcher(watch_file(p, tx, Signal::Members)?)),
            SourceSpec::Api { addr, token } => {
                let base = base_url(addr);
                let client = self.client.clone();
                Ok(SourceHandle::Task(tokio::spawn(follow_events(
                    client,
                    base,
                    token.clone(),
                    tx,
                    self.tap.clone(),
                ))))
            }
        }
    }
}

/// Follows `/v1/events` forever: every event (and every reconnect, which may have missed
/// events) becomes one [`Signal::Members`]. Reconnects with capped exponential backoff.
async fn follow_events(
    client: HttpClient,
    base: String,
    token: Option<String>,
    tx: UnboundedSender<Signal>,
    tap: Option<EventTap>,
) {
    let mut pos = StreamPos::default();
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        let url = match &pos.run {
            Some(run) => format!("{base}/v1/events?index={}&run={run}", pos.index),
            None => format!("{base}/v1/events?index={}", pos.index),
        };
        let mut connected = false;
        let stream = Stream {
            client: &client,
            url: &url,
            token: token.as_deref(),
            tap: tap.as_ref(),
        };
        match stream.once(&mut pos, &tx, first, &mut connected).await {
            Ok(()) => tracing::warn!(%url, "event stream ended; reconnecting"),
            Err(e) => tracing::warn!(error = %e, "event stream failed; reconnecting"),
        }
        first = false;
        if tx.is_closed() {
            return;
        }
        if connected {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Where the client is in the agent's event log. An index is only meaningful within one run
/// of the agent: a restarted agent numbers its events from 1 again.
#[derive(Debug, Default)]
struct StreamPos {
    index: u64,
    run: Option<String>,
}

impl StreamPos {
    /// Takes the run the agent names (header or line); a new one means a restart: the
    /// index is reset and the caller must resync. Returns whether it changed.
    fn observe_run(&mut self, run: Option<&str>) -> bool {
        let Some(run) = run.filter(|r| !r.is_empty() && r.len() <= 64) else {
            return false;
        };
        if self.run.as_deref() == Some(run) {
            return false;
        }
        let restarted = self.run.is_some();
        if restarted {
            tracing::info!(
                old = ?self.run,
                new = %crate::model::sanitize_for_log(run),
                "the agent restarted (new run); resyncing from its table"
            );
            self.index = 0;
        }
        self.run = Some(run.to_string());
        restarted
    }
}

/// One connection to the event stream.
struct Stream<'a> {
    client: &'a HttpClient,
    url: &'a str,
    token: Option<&'a str>,
    tap: Option<&'a EventTap>,
}

impl Stream<'_> {
    async fn once(
        &self,
        pos: &mut StreamPos,
        tx: &UnboundedSender<Signal>,
        first: bool,
        connected: &mut bool,
    ) -> Result<(), Error> {
        let url = self.url;
        let req = get(url, self.token)?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .map_err(|_| Error::new(format!("GET {url}: timed out")))?
            .map_err(|e| Error::new(format!("GET {url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(refused(url, resp.status(), self.token));
        }
        read_events(resp, url, pos, tx, first, connected, self.tap).await
    }
}

/// Follows one open event stream until it ends or fails.
async fn read_events(
    resp: hyper::Response<hyper::body::Incoming>,
    url: &str,
    pos: &mut StreamPos,
    tx: &UnboundedSender<Signal>,
    first: bool,
    connected: &mut bool,
    tap: Option<&EventTap>,
) -> Result<(), Error> {
    *connected = true;
    tracing::info!(%url, "following agent events");
    let header_run = resp
        .headers()
        .get(shoal_contract::RUN_HEADER)
        .and_then(|v| v.to_str().ok());
    pos.observe_run(header_run);
    if !first {
        // We may have missed events while disconnected: resync from the snapshot.
        let _ = tx.send(Signal::Members);
    }
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let frame = tokio::time::timeout(STREAM_IDLE, body.frame())
            .await
            .map_err(|_| Error::new(format!("no event or keepalive for {STREAM_IDLE:?}")))?;
        let Some(frame) = frame else { return Ok(()) };
        let frame = frame.map_err(|e| Error::new(format!("reading events: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        if buf.len() > MAX_DOC {
            return Err(Error::new("event line too long"));
        }
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let parsed = StreamLine::from_json(line);
            if let (Some(tap), Ok(l)) = (tap, &parsed) {
                tap(l);
            }
            match parsed {
                Ok(StreamLine::Notice(n)) if n.kind == NoticeKind::Keepalive => {
                    let restarted = pos.observe_run(n.run.as_deref());
                    // An index going backwards also means the agent restarted: resync.
                    if n.index < pos.index {
                        tracing::info!(
                            old = pos.index,
                            new = n.index,
                            "agent index went back; resyncing"
                        );
                        pos.index = n.index;
                        let _ = tx.send(Signal::Members);
                    }
                    if restarted {
                        let _ = tx.send(Signal::Members);
                    }
                }
                Ok(ev) => {
                    pos.observe_run(ev.run());
                    pos.index = pos.index.max(ev.index());
                    tracing::debug!(kind = ev.kind(), index = pos.index, "member event");
                    let _ = tx.send(Signal::Members);
                }
                Err(e) => {
                    // Unknown shape: still a hint that something changed.
                    tracing::warn!(error = %e, "unparseable event line; resyncing");
                    let _ = tx.send(Signal::Members);
                }
            }
        }
    }
}

/// Watches one file (through its directory, so atomic rename-replacements are seen).
pub fn watch_file(
    path: &Path,
    tx: UnboundedSender<Signal>,
    sig: Signal,
) -> Result<notify::RecommendedWatcher, Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::new(format!("{}: not a file path", path.display())))?
        .to_owned();
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        let relevant = match ev.kind {
            // Our own reads produce open/close events; only a finished write matters.
            EventKind::Access(notify::event::AccessKind::Close(
                notify::event::AccessMode::Write,
            )) => true,
            EventKind::Access(_) => false,
            _ => true,
        };
        if relevant
            && ev
                .paths
                .iter()
                .any(|p| p.file_name() == Some(name.as_os_str()))
        {
            let _ = tx.send(sig);
        }
    })
    .map_err(|e| Error::new(format!("watching {}: {e}", path.display())))?;
    w.watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| Error::new(format!("watching {}: {e}", dir.display())))?;
    Ok(w)
}

/// Watches a directory: any change in it is one `sig` (the certificate directory: a file
/// renamed into place, written, or removed).
pub fn watch_dir(
    dir: &Path,
    tx: UnboundedSender<Signal>,
    sig: Signal,
) -> Result<notify::RecommendedWatcher, Error> {
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        let relevant = match ev.kind {
            EventKind::Access(notify::event::AccessKind::Close(
                notify::event::AccessMode::Write,
            )) => true,
            EventKind::Access(_) => false,
            _ => true,
        };
        if relevant {
            let _ = tx.send(sig);
        }
    })
    .map_err(|e| Error::new(format!("watching {}: {e}", dir.display())))?;
    w.watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| Error::new(format!("watching {}: {e}", dir.display())))?;
    Ok(w)
}
