//! Harness for the Docker end-to-end tests (`tests/docker.rs`).
//!
//! - [`setup`]: is a Docker engine there (skip, or fail under `CI=true`), and the images
//!   built once per test run by `docker/build-images.sh` (the script `./demo up` uses).
//! - [`Project`]: one compose project with a unique name and its own 127.0.0.1 host ports
//!   (`LB_HTTP_PORT=0`), removed (containers, networks, volumes; never the shared images)
//!   when dropped, also when a test panics.
//! - [`Load`]: a bounded closed-loop HTTP load against the LB's published port that records
//!   every response; [`http_get`] is a one-shot std-only HTTP/1.1 client.
//! - [`stats`] / [`Project::members`]: what HAProxy runs (its stats CSV) and what the LB's
//!   agent sees (`shoal members --format json`).
//!
//! - [`clients`]: a POST client, a checked long download and a held WebSocket (deploys).
//! - [`Project::haproxy_master`]: HAProxy's master PID and reload counter (`show proc`).
//! - [`swarm`]: a single-node swarm made (and left) by the test, and a stack deployed on it.
//! - [`multihost`]: three Docker engines in containers joined into one swarm (a multi-host
//!   bed), and the stack deployed across them.
//!
//! Every external command runs with a deadline, so no test can hang.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod clients;
pub mod multihost;
pub mod swarm;

/// The repository root (this crate is `tests/e2e`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// Runs `cmd` with a deadline; on timeout the process is killed and the output so far is
/// returned with a failed status. Output is read on threads so a full pipe cannot block.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let t_out = read_all(out);
    let t_err = read_all(err);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let s = child.wait().expect("wait");
            eprintln!("timeout after {timeout:?}: {desc}");
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.recv_timeout(PIPE_GRACE).unwrap_or_default(),
        stderr: t_err.recv_timeout(PIPE_GRACE).unwrap_or_default(),
    }
}

/// How long [`run`] waits for a pipe's end after the command exited: a grandchild that
/// outlives a killed command (a shell's child) may hold the pipe open forever.
const PIPE_GRACE: Duration = Duration::from_secs(5);

/// Reads `r` to its end on a thread; the result arrives on the channel (nothing, if the pipe
/// never ends and the caller stops waiting).
fn read_all(mut r: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        let _ = tx.send(v);
    });
    rx
}

/// Like [`run`] but panics (with both outputs) unless the command succeeds; returns stdout.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> String {
    let desc = format!("{cmd:?}");
    let out = run(cmd, timeout);
    if !out.status.success() {
        panic!(
            "command failed ({}): {desc}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Why the end-to-end tests are skipped on purpose (`shoal_e2e`: the value of
/// `SHOAL_E2E`, `0` skips), if they are. Panics under `CI=true`: there the switch is
/// refused, not obeyed.
pub fn e2e_skip(shoal_e2e: Option<&str>, ci: bool) -> Option<&'static str> {
    let off = shoal_e2e == Some("0");
    if off && ci {
        panic!("SHOAL_E2E=0 under CI=true: CI does not skip the Docker end-to-end tests");
    }
    off.then_some("SHOAL_E2E=0")
}

/// Checks for a usable Docker engine and docker-compose. `false`: skip (message printed).
/// Under `CI=true` a missing engine is a panic (a failure), never a skip. `SHOAL_E2E=0`
/// skips on purpose (e.g. a quick `cargo test --workspace` on a laptop), but not under
/// `CI=true`: CI must not be able to skip the tests it gates on.
pub fn docker_ready() -> bool {
    let ci = ci();
    if let Some(skip) = e2e_skip(std::env::var("SHOAL_E2E").ok().as_deref(), ci) {
        eprintln!("SKIPPED: shoal end-to-end tests: {skip}");
        return false;
    }
    let problem = if which("docker").is_none() {
        Some("the docker CLI is not installed".to_string())
    } else if which("docker-compose").is_none() {
        Some("docker-compose is not installed".to_string())
    } else {
        let out = run(
            Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]),
            Duration::from_secs(20),
        );
        (!out.status.success()).then(|| {
            format!(
                "no Docker engine reachable: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
    };
    match problem {
        None => true,
        Some(p) if ci => panic!("CI=true and {p}: the end-to-end tests need a Docker engine"),
        Some(p) => {
            eprintln!("SKIPPED: shoal end-to-end tests: {p} (set CI=true to make this a failure)");
            false
        }
    }
}

/// `CI=true` (or `1`): a missing Docker engine or an unusable one is a failure, not a skip.
pub fn ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(bin))
            .find(|p| p.is_file())
    })
}

/// Builds the base images, release binaries and the `shoal-webapp`/`shoal-lb` images once
/// per test process (the script itself takes a lock, so parallel runs build one at a time).
/// `SHOAL_E2E_PREBUILT=1`: the images of `SHOAL_IMAGE_TAG` are already built and current;
/// skip the script (whose lock another checkout's build may hold for many minutes).
pub fn build_images_once() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if std::env::var("SHOAL_E2E_PREBUILT").is_ok_and(|v| v == "1") {
            eprintln!("SHOAL_E2E_PREBUILT=1: using the images as built");
            return;
        }
        let t = Instant::now();
        let script = repo_root().join("docker/build-images.sh");
        let out = run(&mut Command::new(&script), Duration::from_secs(1500));
        if !out.status.success() {
            panic!(
                "{} failed ({}):\n{}\n{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        eprintln!("images ready in {:.1}s", t.elapsed().as_secs_f64());
    });
}

/// What [`setup`] returns: hold it for the whole scenario.
pub struct Serial {
    _machine: MachineLock,
    _process: std::sync::MutexGuard<'static, ()>,
}

/// Serialises the scenarios (2 cores: parallel clusters would only measure each other) and
/// prepares Docker. `None`: skip this test. Scenarios of other test processes (the compose
/// binary `docker`, the Swarm binary `swarm`, another checkout's run) wait too: see
/// [`MachineLock`].
pub fn setup() -> Option<Serial> {
    static SERIAL: Mutex<()> = Mutex::new(());
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !docker_ready() {
        return None;
    }
    let machine = MachineLock::acquire(Duration::from_secs(1800));
    build_images_once();
    Some(Serial {
        _machine: machine,
        _process: guard,
    })
}

/// A lock shared by every e2e test process on this machine: a directory made with `mkdir`
/// (atomic) that holds the owner's pid, removed on drop. A lock whose owner is gone (a
/// killed test run) is stale and taken over. One Docker engine serves them all: a Swarm
/// scenario turns the engine into a swarm manager, and timings measured while another
/// cluster runs on the same 2 cores mean nothing.
pub struct MachineLock {
    dir: PathBuf,
}

impl MachineLock {
    pub fn acquire(timeout: Duration) -> MachineLock {
        let dir = std::env::temp_dir().join("shoal-e2e-docker.lock");
        let deadline = Instant::now() + timeout;
        let mut announced = false;
        loop {
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    let _ = std::fs::write(dir.join("pid"), std::process::id().to_string());
                    return MachineLock { dir };
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if Self::stale(&dir) {
                        eprintln!("e2e lock {}: owner gone, taking it over", dir.display());
                        let _ = std::fs::remove_dir_all(&dir);
                        continue;
                    }
                }
                Err(e) => panic!("cannot create the e2e lock {}: {e}", dir.display()),
            }
            if !announced {
                eprintln!(
                    "waiting for another e2e test process (lock {})",
                    dir.display()
                );
                announced = true;
            }
            if Instant::now() > deadline {
                panic!("e2e lock {} still held after {timeout:?}", dir.display());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The owner's pid is gone, or the pid file never appeared (10 s after mkdir).
    fn stale(dir: &Path) -> bool {
        match std::fs::read_to_string(dir.join("pid")) {
            Ok(pid) => {
                let pid = pid.trim();
                !pid.is_empty() && !Path::new("/proc").join(pid).exists()
            }
            Err(_) => std::fs::metadata(dir)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(10)),
        }
    }
}

impl Drop for MachineLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Records a measured figure: printed (`FIGURE name: value`) and, if `SHOAL_E2E_FIGURES`
/// names a file, appended to it (bench/e2e.sh collects them there).
pub fn figure(name: &str, value: impl std::fmt::Display) {
    let line = format!("FIGURE {name}: {value}");
    eprintln!("{line}");
    if let Ok(path) = std::env::var("SHOAL_E2E_FIGURES") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Polls `f` every `every` until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// One member as `shoal members --format json` prints it.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub addr: String,
    pub status: String,
    pub tags: BTreeMap<String, String>,
}

impl Member {
    pub fn ip(&self) -> &str {
        self.addr
            .rsplit_once(':')
            .map(|(ip, _)| ip)
            .unwrap_or(&self.addr)
    }
}

/// Parses the members document (the contract in docs/api.md).
/// `2026-11-28T05:00:00.123Z` (the agent's event time, UTC with milliseconds) as Unix
/// milliseconds; `None` for any other shape.
pub fn rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 24
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[19] != b'.'
        || b[23] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + hh) * 60 + mm) * 60 * 1000 + ss * 1000 + ms).ok()
}

/// Now as Unix milliseconds (the clock the agents' event times use: containers share it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn parse_members(json: &str) -> Option<Vec<Member>> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v["members"]
        .as_array()?
        .iter()
        .map(|m| {
            Some(Member {
                name: m["name"].as_str()?.to_string(),
                addr: m["addr"].as_str()?.to_string(),
                status: m["status"].as_str()?.to_string(),
                tags: m["tags"]
                    .as_object()?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect(),
            })
        })
        .collect()
}

/// A compose project of the demo (`compose/docker-compose.yml` plus optional extra files).
pub struct Project {
    pub name: String,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
    /// Containers a test started outside compose (removed before `down`).
    pub extra_containers: Mutex<Vec<String>>,
}

impl Project {
    /// `scenario` becomes part of the unique project name; `extra_files` are relative to
    /// `tests/e2e/compose/`; `env` is added to the compose environment.
    pub fn new(scenario: &str, extra_files: &[&str], env: &[(&str, &str)]) -> Project {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("shoal-e2e-{scenario}-{}-{nanos:x}", std::process::id());
        let root = repo_root();
        let mut files = vec![root.join("compose/docker-compose.yml")];
        files.extend(
            extra_files
                .iter()
                .map(|f| root.join("tests/e2e/compose").join(f)),
        );
        let mut all_env = vec![
            ("LB_HTTP_PORT".to_string(), "0".to_string()),
            ("LB_STATS_PORT".to_string(), "0".to_string()),
            ("LB_STATUS_PORT".to_string(), "0".to_string()),
            ("LB_HTTPS_PORT".to_string(), "0".to_string()),
        ];
        all_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        eprintln!("compose project {name}");
        Project {
            name,
            files,
            env: all_env,
            extra_containers: Mutex::new(Vec::new()),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker-compose");
        c.arg("-p").arg(&self.name);
        for f in &self.files {
            c.arg("-f").arg(f);
        }
        c.args(args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Runs `docker-compose ARGS` (deadline 180 s), panicking on failure; returns stdout.
    pub fn compose(&self, args: &[&str]) -> String {
        run_ok(&mut self.command(args), Duration::from_secs(180))
    }

    /// Runs `docker-compose ARGS` with a deadline, whatever its exit status.
    pub fn compose_raw(&self, args: &[&str], timeout: Duration) -> Output {
        run(&mut self.command(args), timeout)
    }

    /// `docker-compose up -d --no-recreate --scale webapp=N [more...]`.
    pub fn up(&self, extra: &[&str]) {
        let mut args = vec!["up", "-d", "--no-recreate", "--no-build"];
        args.extend_from_slice(extra);
        self.compose(&args);
    }

    /// The 127.0.0.1 address the LB's container `port` is published on.
    pub fn lb_addr(&self, port: u16) -> SocketAddr {
        let p = port.to_string();
        let out = self.compose(&["port", "lb", &p]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("docker-compose port lb {p}: {out:?}"))
    }

    /// Full container ids of a service, in compose's order.
    pub fn containers(&self, service: &str) -> Vec<String> {
        self.compose(&["ps", "-q", service])
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Member names of a service's containers (= their hostnames: the short container id).
    pub fn hostnames(&self, service: &str) -> BTreeSet<String> {
        self.containers(service)
            .iter()
            .map(|id| id[..12].to_string())
            .collect()
    }

    /// The LB agent's members (`None` while the LB or its agent is not answering).
    pub fn members(&self) -> Option<Vec<Member>> {
        let out = self.compose_raw(
            &["exec", "-T", "lb", "shoal", "members", "--format", "json"],
            Duration::from_secs(20),
        );
        if !out.status.success() {
            return None;
        }
        parse_members(&String::from_utf8_lossy(&out.stdout))
    }

    /// Runs `./demo ARGS` on this project (`COMPOSE_PROJECT_NAME`, its env, `SKIP_BUILD=1`:
    /// the harness built the images) with a deadline, whatever its exit status.
    pub fn demo(&self, args: &[&str], timeout: Duration) -> Output {
        let mut c = Command::new(repo_root().join("demo"));
        c.args(args)
            .env("COMPOSE_PROJECT_NAME", &self.name)
            .env("SKIP_BUILD", "1");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        run(&mut c, timeout)
    }

    /// Runs a command in the LB container; stdout.
    pub fn exec_lb(&self, cmd: &[&str]) -> String {
        let mut args = vec!["exec", "-T", "lb"];
        args.extend_from_slice(cmd);
        self.compose(&args)
    }

    /// HAProxy's master in the LB: `(pid, reloads)` from the master CLI's `show proc` (the
    /// master line's reload counter), asked through its socket with the image's perl; the write side is
    /// shut, or the master CLI waits for more commands.
    pub fn haproxy_master(&self) -> Option<(u32, u64)> {
        let script = r#"my $s = IO::Socket::UNIX->new(Peer => "/run/haproxy-master.sock") or die "connect: $!\n"; print $s "show proc\n"; shutdown($s, 1); print while <$s>;"#;
        let out = self.compose_raw(
            &[
                "exec",
                "-T",
                "lb",
                "perl",
                "-MIO::Socket::UNIX",
                "-e",
                script,
            ],
            Duration::from_secs(20),
        );
        if !out.status.success() {
            return None;
        }
        parse_show_proc_master(&String::from_utf8_lossy(&out.stdout))
    }

    /// The LB's log lines (HAProxy's access log and every service's output, as
    /// `docker-compose logs` gives them) that contain any of `needles`, at most `max` of
    /// them, the last ones: what a failed assertion shows of why requests failed.
    pub fn lb_log_lines(&self, needles: &[&str], max: usize) -> Vec<String> {
        let out = self.compose_raw(
            &["logs", "--no-color", "--timestamps", "lb"],
            Duration::from_secs(60),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let hits: Vec<String> = text
            .lines()
            .filter(|l| needles.iter().any(|n| l.contains(n)))
            .map(str::to_string)
            .collect();
        hits[hits.len().saturating_sub(max)..].to_vec()
    }

    /// The network compose made for this project.
    pub fn network(&self) -> String {
        format!("{}_default", self.name.replace('.', ""))
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let extra = std::mem::take(
            &mut *self
                .extra_containers
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if !extra.is_empty() {
            let mut c = Command::new("docker");
            c.args(["rm", "-f"]).args(&extra);
            let _ = run(&mut c, Duration::from_secs(60));
        }
        if std::thread::panicking() {
            // Leave a trace of what the cluster saw before it is removed: each container's
            // last lines without HAProxy's access log, which would crowd out the services'
            // own lines (start, stop, apply, restart) that tell why a test failed.
            let logs = self.compose_raw(
                &["logs", "--no-color", "--timestamps"],
                Duration::from_secs(60),
            );
            eprintln!(
                "--- logs of {} (HAProxy access lines left out) ---\n{}",
                self.name,
                last_lines_per_container(&String::from_utf8_lossy(&logs.stdout), 60)
            );
        }
        let out = self.compose_raw(
            &["down", "-v", "--remove-orphans", "-t", "5"],
            Duration::from_secs(120),
        );
        if !out.status.success() {
            eprintln!(
                "cleanup of {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// `docker-compose logs` output cut to each container's last `max` lines that are not
/// HAProxy access-log records (JSON with a `request_id`), with a count of those left out.
fn last_lines_per_container(logs: &str, max: usize) -> String {
    let mut per: Vec<(&str, Vec<&str>, usize)> = Vec::new();
    for line in logs.lines() {
        let container = line.split_once(" |").map_or("", |(c, _)| c.trim());
        let i = match per.iter().position(|(c, _, _)| *c == container) {
            Some(i) => i,
            None => {
                per.push((container, Vec::new(), 0));
                per.len() - 1
            }
        };
        if line.contains("\"request_id\":") {
            per[i].2 += 1;
        } else {
            per[i].1.push(line);
        }
    }
    let mut out = String::new();
    for (container, lines, access) in per {
        let from = lines.len().saturating_sub(max);
        out.push_str(&format!(
            "[{container}: last {} of {} lines, {access} access-log lines left out]\n",
            lines.len() - from,
            lines.len()
        ));
        for l in &lines[from..] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// The master line of the master CLI's `show proc`
/// (`<PID> master <reloads> [failed: N] <uptime> <version>`): `(pid, reloads)`.
pub fn parse_show_proc_master(out: &str) -> Option<(u32, u64)> {
    out.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let pid = f.next()?.parse().ok()?;
        (f.next()? == "master").then_some(())?;
        Some((pid, f.next()?.parse().ok()?))
    })
}

/// Docker-level helpers on single containers.
pub fn docker(args: &[&str]) -> String {
    run_ok(Command::new("docker").args(args), Duration::from_secs(60))
}

/// A container's IP on `network`.
pub fn container_ip(id: &str, network: &str) -> String {
    let fmt = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
    docker(&["inspect", "-f", &fmt, id]).trim().to_string()
}

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub set_cookies: Vec<String>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }
    /// The `hostname` the demo webapp reports.
    pub fn hostname(&self) -> Option<String> {
        self.json()?["hostname"].as_str().map(str::to_string)
    }
    /// Value of a cookie this answer sets (`name=value; ...`).
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookies.iter().find_map(|c| {
            let first = c.split(';').next()?;
            let (k, v) = first.split_once('=')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    }
}

/// `GET path` on a new connection (`Connection: close`), with the given `Cookie` header.
pub fn http_get(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    timeout: Duration,
) -> Result<Resp, String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{cookie}Connection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    parse_response(&String::from_utf8_lossy(&raw))
}

/// `GET path` over HTTPS with `curl --cacert ca` (HTTP/1.1, a new connection): the
/// certificate must verify for the address's IP. Same answer as [`http_get`].
pub fn https_get(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    ca: &Path,
    timeout: Duration,
) -> Result<Resp, String> {
    let mut c = Command::new("curl");
    c.args(["-sS", "-i", "--http1.1", "--max-time"])
        .arg(timeout.as_secs().max(1).to_string())
        .arg("--cacert")
        .arg(ca);
    if let Some(cookie) = cookie {
        c.args(["-H", &format!("Cookie: {cookie}")]);
    }
    c.arg(format!("https://{addr}{path}"));
    let out = run(&mut c, timeout + Duration::from_secs(5));
    if !out.status.success() {
        return Err(format!(
            "curl https://{addr}{path}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse_response(&String::from_utf8_lossy(&out.stdout))
}

/// Status, `Set-Cookie`s and body of a raw HTTP/1.1 response (a chunked body decoded).
fn parse_response(raw: &str) -> Result<Resp, String> {
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {raw:?}"))?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once(':')).collect();
    let header = |name: &'static str| {
        headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    };
    let set_cookies = header("set-cookie").map(str::to_string).collect();
    let chunked = header("transfer-encoding").any(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok(Resp {
        status,
        set_cookies,
        body,
    })
}

/// Decodes a `Transfer-Encoding: chunked` body (HAProxy's stats page uses it).
fn dechunk(mut rest: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size_line, after) = rest.split_once("\r\n").ok_or("truncated chunk size")?;
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_line:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = after.get(..size).ok_or("truncated chunk")?;
        out.push_str(chunk);
        rest = after
            .get(size..)
            .unwrap_or_default()
            .trim_start_matches("\r\n");
    }
}

/// One HAProxy server (or FRONTEND/BACKEND row) from the stats CSV.
#[derive(Debug, Clone)]
pub struct StatRow {
    pub pool: String,
    pub server: String,
    pub status: String,
}

/// HAProxy's view: the stats page's CSV (`/;csv`) on the published stats port.
pub fn stats(addr: SocketAddr) -> Option<Vec<StatRow>> {
    let resp = http_get(addr, "/;csv", None, Duration::from_secs(3)).ok()?;
    if resp.status != 200 {
        return None;
    }
    let mut lines = resp.body.lines();
    let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (px, sv, st) = (col("pxname")?, col("svname")?, col("status")?);
    Some(
        lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                let get = |i: usize| f.get(i).copied().unwrap_or_default().to_string();
                StatRow {
                    pool: get(px),
                    server: get(sv),
                    status: get(st),
                }
            })
            .collect(),
    )
}

/// Servers of `pool` HAProxy has UP (not FRONTEND/BACKEND rows).
pub fn up_servers(rows: &[StatRow], pool: &str) -> BTreeSet<String> {
    rows.iter()
        .filter(|r| r.pool == pool && r.server != "BACKEND" && r.server != "FRONTEND")
        .filter(|r| r.status.starts_with("UP"))
        .map(|r| r.server.clone())
        .collect()
}

/// One request of a [`Load`].
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the request was sent, since the load started.
    pub at: Duration,
    pub latency: Duration,
    /// `Ok(hostname)` for a 200 with the demo's JSON; `Err(reason)` for anything else.
    pub result: Result<String, String>,
}

/// A bounded closed-loop load: `workers` threads, each sending one request at a time with
/// `pause` between requests, until [`Load::stop`] or `max_time` or `max_requests`.
pub struct Load {
    pub started: Instant,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// `GET /` load: each sample is the answering webapp's hostname.
    pub fn start(
        addr: SocketAddr,
        workers: usize,
        pause: Duration,
        max_time: Duration,
        max_requests: usize,
    ) -> Load {
        Self::start_with(workers, pause, max_time, max_requests, move || {
            // 20 s: longer than HAProxy's connect timeout × retries, so a failure
            // counted here is HAProxy's answer, not the client giving up early.
            match http_get(addr, "/", None, Duration::from_secs(20)) {
                Ok(r) if r.status == 200 => r
                    .hostname()
                    .ok_or_else(|| format!("200 without hostname: {:?}", r.body)),
                Ok(r) => Err(format!("status {}", r.status)),
                Err(e) => Err(e),
            }
        })
    }

    /// `POST /echo` load with a 4 KiB body, each answer checked (length and checksum).
    pub fn start_posts(
        addr: SocketAddr,
        workers: usize,
        pause: Duration,
        max_time: Duration,
        max_requests: usize,
    ) -> Load {
        let body: Arc<Vec<u8>> = Arc::new((0..4096u32).map(|i| (i * 7 % 256) as u8).collect());
        Self::start_with(workers, pause, max_time, max_requests, move || {
            clients::post_echo(addr, &body, Duration::from_secs(20))
        })
    }

    /// `workers` threads each calling `request` in a loop (bounded by `max_time` and
    /// `max_requests`): `Ok(hostname)` or `Err(reason)` per request.
    pub fn start_with(
        workers: usize,
        pause: Duration,
        max_time: Duration,
        max_requests: usize,
        request: impl Fn() -> Result<String, String> + Send + Sync + 'static,
    ) -> Load {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let request = Arc::new(request);
        let threads = (0..workers)
            .map(|_| {
                let (stop, samples, request) = (stop.clone(), samples.clone(), request.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < max_time {
                        if samples.lock().unwrap().len() >= max_requests {
                            break;
                        }
                        let t = Instant::now();
                        let result = request();
                        samples.lock().unwrap().push(Sample {
                            at: t - started,
                            latency: t.elapsed(),
                            result,
                        });
                        std::thread::sleep(pause);
                    }
                })
            })
            .collect();
        Load {
            started,
            stop,
            samples,
            threads,
        }
    }

    /// Time since the load started (to mark phases).
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// A copy of the samples so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// Hostnames that answered requests sent at or after `since`.
    pub fn hosts_since(&self, since: Duration) -> BTreeSet<String> {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.at >= since)
            .filter_map(|s| s.result.as_ref().ok().cloned())
            .collect()
    }

    /// Stops the workers and returns every sample.
    pub fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.samples()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Failed samples sent within `[from, to)`.
pub fn failures(samples: &[Sample], from: Duration, to: Duration) -> Vec<&Sample> {
    samples
        .iter()
        .filter(|s| s.at >= from && s.at < to && s.result.is_err())
        .collect()
}

/// A short summary of failures for assertion messages.
pub fn describe_failures(f: &[&Sample]) -> String {
    f.iter()
        .take(10)
        .map(|s| format!("{:.2}s: {:?}", s.at.as_secs_f64(), s.result))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::{e2e_skip, last_lines_per_container, parse_show_proc_master, rfc3339_ms};

    #[test]
    fn an_agent_event_time_parses_to_unix_milliseconds_and_other_shapes_do_not() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            rfc3339_ms("2000-03-01T00:00:01.250Z"),
            Some(951_868_801_250)
        );
        assert_eq!(
            rfc3339_ms("2026-11-28T05:00:00.123Z"),
            Some(1_795_842_000_123)
        );
        assert_eq!(rfc3339_ms("2026-11-28T05:00:00Z"), None);
        assert_eq!(rfc3339_ms("2026-13-28T05:00:00.123Z"), None);
        assert_eq!(rfc3339_ms("2026-11-28 05:00:00.123Z"), None);
    }

    #[test]
    fn a_failure_dump_keeps_each_containers_last_lines_without_access_log_records() {
        let logs = "lb_1  | 2026 agent started\n\
                    lb_1  | {\"ts\":1.0,\"request_id\":\"a\",\"status\":200}\n\
                    web_1 | 2026 web one\n\
                    lb_1  | 2026 haproxy exited\n\
                    web_1 | 2026 web two\n";
        let out = last_lines_per_container(logs, 1);
        assert_eq!(
            out,
            "[lb_1: last 1 of 2 lines, 1 access-log lines left out]\n\
             lb_1  | 2026 haproxy exited\n\
             [web_1: last 1 of 2 lines, 0 access-log lines left out]\n\
             web_1 | 2026 web two\n"
        );
    }

    #[test]
    fn the_master_line_of_show_proc_gives_pid_and_reloads() {
        let out = "#<PID>          <type>          <reloads>       <uptime>        <version>\n\
                   8               master          3 [failed: 0]   0d00h00m31s     2.6.12-1+deb12u3\n\
                   # workers\n\
                   42              worker          0               0d00h00m05s     2.6.12-1+deb12u3\n";
        assert_eq!(parse_show_proc_master(out), Some((8, 3)));
        assert_eq!(parse_show_proc_master("# workers\n"), None);
    }

    #[test]
    fn shoal_e2e_0_skips_on_a_laptop() {
        assert_eq!(e2e_skip(Some("0"), false), Some("SHOAL_E2E=0"));
        assert_eq!(e2e_skip(None, false), None);
        assert_eq!(e2e_skip(Some("1"), true), None);
    }

    #[test]
    #[should_panic(expected = "CI=true")]
    fn shoal_e2e_0_does_not_skip_under_ci() {
        e2e_skip(Some("0"), true);
    }
}
