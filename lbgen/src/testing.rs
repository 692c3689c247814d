//! Test harness shared by lbgen's tests, its benchmark (`examples/lbgen_bench.rs`) and the
//! agent's LB tests: HTTP backends, a real HAProxy in master-worker mode (killed on drop,
//! whole process group), a bounded load generator, members documents. 127.0.0.1 only.
//! Only built with the `testing` feature; it panics on setup failures, as tests should.

pub mod browser;
pub mod pebble;
pub mod status_page;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Ports handed out for HAProxy to bind: below Linux's ephemeral range (32768–60999), so
/// the kernel never gives one of them to another socket's `bind(:0)` or `connect()` between
/// our check and HAProxy's bind (the race of "bind :0, read it, release it"); a block per
/// process (from the pid) and a counter, so parallel test binaries and runs do not pick the
/// same one; each still checked free on 127.0.0.1 and on every address before it is used.
const PORTS: std::ops::Range<u16> = 20_000..32_000;
const PORTS_PER_PROCESS: u32 = 64;

/// A free TCP port for a listener we cannot pass a bound socket to (HAProxy's config).
pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let span = u32::from(PORTS.end - PORTS.start);
    let blocks = span / PORTS_PER_PROCESS;
    let base = (std::process::id() % blocks) * PORTS_PER_PROCESS;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::SeqCst) as u32;
        let port = PORTS.start + ((base + n) % span) as u16;
        let free = |addr: &str| std::net::TcpListener::bind((addr, port)).is_ok();
        if free("127.0.0.1") && free("0.0.0.0") {
            return port;
        }
    }
    panic!("no free TCP port in {PORTS:?}");
}

/// The builtin template's variables for a real HAProxy run by a test in `dir`: listeners on
/// 127.0.0.1 (`http_port` and a free stats port), the stats socket and the server-state file
/// in `dir`; then `extra` (`NAME=VALUE`), which may override them.
pub fn loopback_vars(dir: &Path, http_port: u16, extra: &[&str]) -> Vec<String> {
    let mut vars = vec![
        "bind=127.0.0.1".to_string(),
        format!("http_port={http_port}"),
        format!("stats_port={}", free_port()),
        format!("stats_socket={}", dir.join("admin.sock").display()),
        format!("server_state_file={}", dir.join("server-state").display()),
    ];
    vars.extend(extra.iter().map(|v| v.to_string()));
    vars
}

/// `cmd.output()` with a deadline: the command runs in its own process group, and the
/// group is killed if it takes longer than `within`, failing the test with what it
/// printed instead of hanging the suite.
pub fn output_within(cmd: &mut Command, within: Duration) -> std::process::Output {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    // stdin is the caller's to set (a file, or null).
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().expect("spawn command");
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + within;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            kill_group(child.id(), "KILL");
            let _ = child.kill();
            let _ = child.wait();
            let text = |h: std::thread::JoinHandle<Vec<u8>>| {
                String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned()
            };
            panic!(
                "{cmd:?} still running after {within:?}; stdout:\n{}\nstderr:\n{}",
                text(out),
                text(err)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// `kill -SIG -PGID` through the shell's builtin (no procps needed).
pub fn kill_group(pgid: u32, sig: &str) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{sig} -{pgid}"))
        .stderr(Stdio::null())
        .status();
}

/// Longest a command a test runs may take (a render, `haproxy -c`).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A tiny HTTP/1.1 server (keep-alive capable) that counts requests, health checks apart.
pub struct Backend {
    pub name: String,
    pub port: u16,
    pub hits: Arc<AtomicU64>,
    pub checks: Arc<AtomicU64>,
    /// The last request heads (health checks apart), newest last.
    pub heads: Arc<Mutex<std::collections::VecDeque<String>>>,
    /// Connections open now that carried a request (health checks' own apart): what a
    /// supervisor's drain sees of HAProxy, idle keep-alive connections included.
    pub open: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// Request heads a [`Backend`] keeps.
const HEADS_KEPT: usize = 32;

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let port = l.local_addr().unwrap().port();
        let hits = Arc::new(AtomicU64::new(0));
        let checks = Arc::new(AtomicU64::new(0));
        let heads = Arc::new(Mutex::new(std::collections::VecDeque::new()));
        let open = Arc::new(AtomicU64::new(0));
        let (h, c, hd, n, o) = (
            hits.clone(),
            checks.clone(),
            heads.clone(),
            name.to_string(),
            open.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let (h, c, hd, n) = (h.clone(), c.clone(), hd.clone(), n.clone());
                let o = OpenGuard {
                    open: o.clone(),
                    counted: false,
                };
                tokio::spawn(serve_conn(s, h, c, hd, n, o));
            }
        });
        Backend {
            name: name.to_string(),
            port,
            hits,
            checks,
            heads,
            open,
            task,
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// See [`Backend::open`].
    pub fn open_connections(&self) -> u64 {
        self.open.load(Ordering::SeqCst)
    }

    /// The request heads kept so far (health checks apart), oldest first.
    pub fn heads(&self) -> Vec<String> {
        self.heads
            .lock()
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts a connection in [`Backend::open`] from its first request until it closes.
struct OpenGuard {
    open: Arc<AtomicU64>,
    counted: bool,
}

impl OpenGuard {
    fn count(&mut self) {
        if !self.counted {
            self.counted = true;
            self.open.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if self.counted {
            self.open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

async fn serve_conn(
    mut s: TcpStream,
    hits: Arc<AtomicU64>,
    checks: Arc<AtomicU64>,
    heads: Arc<Mutex<std::collections::VecDeque<String>>>,
    name: String,
    mut open: OpenGuard,
) {
    let mut buf = Vec::with_capacity(1024);
    let mut tmp = [0u8; 1024];
    loop {
        // Read one request head (GET only, no body).
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
            if buf.len() > 64 * 1024 {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split_whitespace().nth(1).unwrap_or("/");
        if path == "/health" {
            checks.fetch_add(1, Ordering::SeqCst);
        } else {
            open.count();
            hits.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut kept) = heads.lock() {
                if kept.len() == HEADS_KEPT {
                    kept.pop_front();
                }
                kept.push_back(head.clone());
            }
        }
        // `/slow/MS`: a long request (a download, a slow report) answered after MS ms.
        if let Some(ms) = path
            .strip_prefix("/slow/")
            .and_then(|m| m.parse::<u64>().ok())
        {
            tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
        }
        let close = head.to_ascii_lowercase().contains("connection: close");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{}",
            name.len(),
            if close { "Connection: close\r\n" } else { "" },
            name
        );
        if s.write_all(resp.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// HAProxy `-W -S master.sock -f cfg` in its own process group; SIGTERM then SIGKILL to the
/// whole group on drop, so no worker outlives a failed test. It runs in `dir`, so a relative
/// path in the config (`stats socket unix@admin.sock`) is its own: several LBs on one host
/// can then run the very same config text.
pub struct Haproxy {
    child: Child,
    pub master_sock: PathBuf,
    pub log: PathBuf,
}

impl Haproxy {
    pub fn start(dir: &Path, cfg: &Path) -> Haproxy {
        use std::os::unix::process::CommandExt;
        let master_sock = dir.join("master.sock");
        let log = dir.join("haproxy.log");
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(crate::output::resolve_program("haproxy"))
            .arg("-W")
            .arg("-S")
            .arg(&master_sock)
            .arg("-f")
            .arg(cfg)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .process_group(0)
            .spawn()
            .expect("haproxy must be installed (apt-get install haproxy)");
        let h = Haproxy {
            child,
            master_sock,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        // Ready = the master answers and a worker is listed.
        while !h.show_proc().contains("worker") {
            assert!(
                Instant::now() < deadline,
                "haproxy did not start: {}",
                std::fs::read_to_string(&h.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }

    /// `show proc` over the master socket ("" if it does not answer).
    pub fn show_proc(&self) -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.master_sock) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut out = String::new();
        if s.write_all(b"show proc\n").is_ok() && s.shutdown(std::net::Shutdown::Write).is_ok() {
            let _ = s.read_to_string(&mut out);
        }
        out
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let pg = format!("-{}", self.child.id());
        // The shell's `kill` builtin signals a process group without needing procps.
        let signal = |sig: &str| {
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("kill -{sig} {pg}"))
                .stderr(Stdio::null())
                .status();
        };
        signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal("KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Closed-loop load: `workers` tasks each send one request per new connection, until
/// stopped, `max_requests` are done, or `max_time` passes. Every response is counted.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    /// Keep-alive mode only: a reused idle connection closed by HAProxy before any response
    /// byte (a soft-stopping old worker). HTTP clients retry these; not counted as failed.
    pub idle_closed: Arc<AtomicU64>,
    pub errors: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

pub struct LoadResult {
    pub ok: u64,
    pub failed: u64,
    pub idle_closed: u64,
    pub errors: Vec<String>,
    pub elapsed: Duration,
}

impl Load {
    pub fn start(port: u16, workers: usize, max_requests: u64, max_time: Duration) -> Load {
        Load::start_mode(port, workers, max_requests, max_time, false)
    }

    /// `keepalive`: each worker reuses one connection (reconnecting when it is closed).
    pub fn start_mode(
        port: u16,
        workers: usize,
        max_requests: u64,
        max_time: Duration,
        keepalive: bool,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let idle_closed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let tasks = (0..workers)
            .map(|_| {
                let (stop, ok, failed, errors, idle) = (
                    stop.clone(),
                    ok.clone(),
                    failed.clone(),
                    errors.clone(),
                    idle_closed.clone(),
                );
                tokio::spawn(async move {
                    let mut conn: Option<KeepAlive> = None;
                    while !stop.load(Ordering::SeqCst)
                        && started.elapsed() < max_time
                        && ok.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst) < max_requests
                    {
                        let res = if keepalive {
                            keepalive_request(port, &mut conn).await
                        } else {
                            one_request(port).await
                        };
                        match res {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) if e == IDLE_CLOSED => {
                                idle.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::SeqCst);
                                let mut v = errors.lock().unwrap();
                                if v.len() < 20 {
                                    v.push(e);
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            idle_closed,
            errors,
            tasks,
            started,
        }
    }

    pub fn total(&self) -> u64 {
        self.ok.load(Ordering::SeqCst) + self.failed.load(Ordering::SeqCst)
    }

    pub async fn finish(self) -> LoadResult {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        LoadResult {
            ok: self.ok.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
            idle_closed: self.idle_closed.load(Ordering::SeqCst),
            errors: self.errors.lock().unwrap().clone(),
            elapsed: self.started.elapsed(),
        }
    }
}

async fn one_request(port: u16) -> Result<(), String> {
    let fut = async {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: lbgen-test\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let head = String::from_utf8_lossy(&out[..out.len().min(64)]).into_owned();
        if head.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!(
                "bad response: {:?}",
                head.lines().next().unwrap_or("")
            ))
        }
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| "timeout".to_string())?
}

const IDLE_CLOSED: &str = "idle connection closed before the response";

struct KeepAlive {
    s: TcpStream,
    buf: Vec<u8>,
}

/// One request on a reused connection; a fresh connection if there is none.
async fn keepalive_request(port: u16, conn: &mut Option<KeepAlive>) -> Result<(), String> {
    let reused = conn.is_some();
    if conn.is_none() {
        let s = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        *conn = Some(KeepAlive { s, buf: Vec::new() });
    }
    let c = conn.as_mut().unwrap();
    let res = tokio::time::timeout(Duration::from_secs(5), async {
        c.s.write_all(b"GET / HTTP/1.1\r\nHost: lbgen-test\r\n\r\n")
            .await
            .map_err(|e| (false, format!("write: {e}")))?;
        let mut tmp = [0u8; 4096];
        let head_end = loop {
            if let Some(p) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match c.s.read(&mut tmp).await {
                Ok(0) => return Err((c.buf.is_empty(), "closed".to_string())),
                Err(e) => return Err((c.buf.is_empty(), format!("read: {e}"))),
                Ok(n) => c.buf.extend_from_slice(&tmp[..n]),
            }
        };
        let head = String::from_utf8_lossy(&c.buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while c.buf.len() < head_end + len {
            match c.s.read(&mut tmp).await {
                Ok(0) | Err(_) => return Err((false, "body cut".to_string())),
                Ok(n) => c.buf.extend_from_slice(&tmp[..n]),
            }
        }
        c.buf.drain(..head_end + len);
        let close = head.contains("connection: close");
        Ok((
            head.starts_with("http/1.1 200"),
            close,
            head.lines().next().unwrap_or("").to_string(),
        ))
    })
    .await;
    match res {
        Err(_) => {
            *conn = None;
            Err("timeout".into())
        }
        Ok(Err((nothing_read, e))) => {
            *conn = None;
            if reused && nothing_read {
                Err(IDLE_CLOSED.into())
            } else {
                Err(e)
            }
        }
        Ok(Ok((ok, close, status))) => {
            if close {
                *conn = None;
            }
            if ok {
                Ok(())
            } else {
                Err(format!("bad response: {status:?}"))
            }
        }
    }
}

/// Writes a members document the way a careful producer does: temp file + rename.
pub fn write_members(path: &Path, members: &[serde_json::Value]) {
    let doc = serde_json::json!({ "members": members });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub fn member(name: &str, port: u16, status: &str, extra: &[(&str, &str)]) -> serde_json::Value {
    let mut tags = serde_json::Map::new();
    tags.insert("service".into(), "web".into());
    tags.insert("port".into(), port.to_string().into());
    tags.insert("check".into(), "/health".into());
    for (k, v) in extra {
        tags.insert(k.to_string(), v.to_string().into());
    }
    serde_json::json!({"name": name, "addr": "127.0.0.1:7946", "status": status, "tags": tags})
}

/// The next report of an in-process `lbgen watch`; panics after 15 s or if it stopped.
pub async fn next_report(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<crate::watch::Report>,
) -> crate::watch::Report {
    tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("no report from lbgen watch within 15 s")
        .expect("watch stopped")
}

/// The `show servers state POOL` row of `pool/server` in the running worker (columns as
/// HAProxy prints them: 6 = srv_admin_state, 7 = srv_uweight); None if it has no such server.
pub async fn server_state(h: &Haproxy, pool: &str, server: &str) -> Option<Vec<String>> {
    let out = crate::haproxy::Master::new(&h.master_sock)
        .command(&format!("@1 show servers state {pool}"))
        .await
        .expect("show servers state");
    out.lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|c| c.len() > 7 && c[1] == pool && c[3] == server)
}

/// HAProxy's `srv_admin_state` bit for a drained server (`set server ... state drain`).
pub const ADMIN_DRAINED: u32 = 0x08;

/// `pool/server`'s `show servers state` row once its admin state is drained, polled every
/// 20 ms for up to 2 s; Err(the last row seen) if it never was. One read is not enough:
/// lbgen closes a drained server's idle keep-alive connections with a `maint` then `drain`
/// pulse (one CLI batch), and a read can land between the two.
pub async fn drained_row(
    h: &Haproxy,
    pool: &str,
    server: &str,
) -> Result<Vec<String>, Option<Vec<String>>> {
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let row = server_state(h, pool, server).await;
        let admin = row
            .as_ref()
            .and_then(|r| r.get(6))
            .and_then(|a| a.parse::<u32>().ok())
            .unwrap_or(0);
        if admin & ADMIN_DRAINED != 0 {
            return row.ok_or(None);
        }
        if Instant::now() >= end {
            return Err(row);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (reloads, failed reloads) as the master counts them.
pub async fn reload_counts(h: &Haproxy) -> (u64, u64) {
    let p = crate::haproxy::Master::new(&h.master_sock)
        .show_proc()
        .await
        .expect("show proc");
    (p.reloads, p.failed)
}

/// One `GET /` with `Connection: close`; the whole response.
pub async fn get(port: u16) -> String {
    get_with(port, "/", "", Duration::from_secs(5)).await
}

/// One `GET path` with `Connection: close` and extra header lines (`"Cookie: a=b\r\n"`);
/// the whole response, or what arrived within `within`.
pub async fn get_with(port: u16, path: &str, headers: &str, within: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to haproxy");
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send request");
    let mut out = String::new();
    let _ = tokio::time::timeout(within, s.read_to_string(&mut out)).await;
    out
}

/// The server names `show servers state POOL` lists in the running worker, sorted.
pub async fn running_servers(h: &Haproxy, pool: &str) -> Vec<String> {
    let out = crate::haproxy::Master::new(&h.master_sock)
        .command(&format!("@1 show servers state {pool}"))
        .await
        .expect("show servers state");
    let mut names: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|c| c.len() > 7 && c[1] == pool)
        .map(|c| c[3].to_string())
        .collect();
    names.sort();
    names
}

/// lbgen's own log lines (INFO and up) into the running test's captured output, which
/// the harness prints when the test fails: what a "no report within 15 s" was waiting on.
/// The first call in a test binary installs it; later calls do nothing.
pub fn log_to_test_output() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

/// The `watch` settings every live test starts from: the default template and variables,
/// the default `haproxy -c` check, a 20 ms:200 ms debounce, a 10 s reload timeout, no
/// periodic resync, no reports. Tests override what they vary with struct-update syntax.
/// Turns on [`log_to_test_output`].
pub fn watch_config(
    source: crate::source::SourceSpec,
    out: PathBuf,
    master: PathBuf,
) -> crate::watch::WatchConfig {
    log_to_test_output();
    crate::watch::WatchConfig {
        template: None,
        vars: crate::render::Vars::default(),
        out,
        source,
        master: Some(master),
        check: Some(
            crate::output::CheckCmd::parse(crate::output::CheckCmd::DEFAULT)
                .expect("the default check command parses"),
        ),
        wait: crate::watch::Wait::parse("20ms:200ms").expect("a valid --wait"),
        reload_timeout: Duration::from_secs(10),
        leaving_max: crate::watch::LEAVING_MAX,
        resync: None,
        renders: Vec::new(),
        local: None,
        reports: None,
        http: None,
    }
}
