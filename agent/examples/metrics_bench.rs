//! What `GET /metrics` costs a real agent with 1,000 members, and whether
//! scraping it delays gossip.
//!
//! Two release `shoal agent` processes on loopback: A (scraped) and B (a
//! real peer that probes A). A is taught 1,000 more members by one TCP
//! push-pull from this program, as a peer would send it (a simulated table:
//! their addresses are 127.1.x.y, where nobody answers, so foca suspects and
//! fails a few of them per second, in every window alike). Then:
//!
//! 1. CPU per scrape: A's CPU time (utime + stime from /proc) over 2,000
//!    sequential scrapes, minus its idle CPU rate over the same wall time.
//! 2. Gossip lag: 20 s idle, then 20 s of 100 scrapes/s. For each window,
//!    A's `shoal_gossip_timer_lag_seconds` (how late its loop ran due
//!    protocol timers) and B's `shoal_probe_rtt_seconds` (B's probes of A
//!    wait for A's loop to answer).
//!
//! `cargo build --release -p shoal --bin shoal && cargo run --release -p shoal --example metrics_bench`
//! (`bench/agent-examples metrics_bench` does both). `SHOAL_BIN` overrides the binary.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal::identity::NodeId;
use shoal::tags::Tags;
use shoal::wire::{self, TcpMsg};
use shoal_core::testing::converged;

/// Members taught to A (besides A and B).
const N: usize = 1000;
/// Scrapes whose CPU is measured.
const SCRAPES: usize = 2000;
/// Each lag window.
const WINDOW: Duration = Duration::from_secs(20);
/// Scrapes per second in the loaded window.
const RATE: u32 = 100;

const A: &str = "127.0.161.1";
const B: &str = "127.0.161.2";

fn main() {
    let bin = std::env::var_os("SHOAL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/shoal")
        });
    assert!(
        bin.exists(),
        "{} not found: cargo build --release -p shoal --bin shoal (or set SHOAL_BIN)",
        bin.display()
    );
    let mut a = Agents(vec![start(&bin, "bench-a", A, None)]);
    let api_a = format!("{A}:7373");
    wait(
        Duration::from_secs(10),
        || TcpStream::connect(&api_a).is_ok(),
        "A's API",
    );
    a.0.push(start(&bin, "bench-b", B, Some(A)));
    let api_b = format!("{B}:7373");
    wait(
        Duration::from_secs(10),
        || TcpStream::connect(&api_b).is_ok(),
        "B's API",
    );
    teach_members(&format!("{A}:7946"));
    let mut last = String::new();
    let held = wait_until(Duration::from_secs(20), || {
        last = scrape(&api_a);
        sum(&last, "shoal_members", &[]) >= (N + 2) as f64
    });
    assert!(
        held,
        "A does not hold 1,000 members and B after 20 s:\n{last}"
    );
    let b_alive = || {
        let s = scrape(&api_b);
        sum(&s, "shoal_members", &[("status", "alive")]) >= 2.0
            && sum(&s, "shoal_probe_acks_received_total", &[]) > 0.0
    };
    wait(Duration::from_secs(20), b_alive, "B to probe A");
    std::thread::sleep(Duration::from_secs(3));
    let pid = a.0[0].id();
    let alive = |api: &str| sum(&scrape(api), "shoal_members", &[("status", "alive")]);
    let members = sum(&scrape(&api_a), "shoal_members", &[]);
    let alive_at_start = alive(&api_a);
    let size = scrape(&api_a).len();

    // 1. CPU per scrape.
    let idle_for = Duration::from_secs(5);
    let c0 = cpu_seconds(pid);
    std::thread::sleep(idle_for);
    let idle_rate = (cpu_seconds(pid) - c0) / idle_for.as_secs_f64();
    let (t0, c0) = (Instant::now(), cpu_seconds(pid));
    let mut latencies = Vec::with_capacity(SCRAPES);
    for _ in 0..SCRAPES {
        let t = Instant::now();
        let s = scrape(&api_a);
        latencies.push(t.elapsed());
        assert!(s.contains("shoal_members"), "a scrape without members: {s}");
    }
    let wall = t0.elapsed().as_secs_f64();
    let busy = cpu_seconds(pid) - c0 - idle_rate * wall;
    latencies.sort();
    println!(
        "A: {members} members in its table ({alive_at_start} alive), a scrape is {size} bytes of Prometheus text"
    );
    println!(
        "CPU per scrape at A: {:.3} ms ({SCRAPES} scrapes in {wall:.1} s, A's CPU {:.2} s minus {:.1}% idle); latency at the client p50 {:.2} ms, p99 {:.2} ms",
        busy / SCRAPES as f64 * 1e3,
        busy + idle_rate * wall,
        idle_rate * 100.0,
        ms(latencies[SCRAPES / 2]),
        ms(latencies[SCRAPES * 99 / 100]),
    );

    // 2. Gossip lag, idle and under 100 scrapes/s.
    let before = (scrape(&api_a), scrape(&api_b));
    std::thread::sleep(WINDOW);
    let idle = (scrape(&api_a), scrape(&api_b));
    let start = Instant::now();
    let mut done = 0u32;
    while start.elapsed() < WINDOW {
        let due = start + Duration::from_secs_f64(f64::from(done) / f64::from(RATE));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        scrape(&api_a);
        done += 1;
    }
    let rate = f64::from(done) / start.elapsed().as_secs_f64();
    let loaded = (scrape(&api_a), scrape(&api_b));
    println!("| window | scrapes/s | A: timer lag mean | A: timer lag p99 | B: probe RTT to A mean | B: probe RTT p99 | probes |");
    println!("|---|---|---|---|---|---|---|");
    for (what, scrapes, from, to) in [
        ("idle", 0.0, &before, &idle),
        ("scraped", rate, &idle, &loaded),
    ] {
        let lag = Hist::delta(&from.0, &to.0, "shoal_gossip_timer_lag_seconds");
        let rtt = Hist::delta(&from.1, &to.1, "shoal_probe_rtt_seconds");
        println!(
            "| {what} | {scrapes:.0} | {:.3} ms | ≤ {} | {:.3} ms | ≤ {} | {} |",
            lag.mean() * 1e3,
            lag.quantile_bound(0.99),
            rtt.mean() * 1e3,
            rtt.quantile_bound(0.99),
            rtt.count
        );
    }
    println!(
        "A's table at the end: {} alive of {members} (the simulated members do not answer probes)",
        alive(&api_a)
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average during the run (1, 5, 15 min): {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(", ")
    );
    drop(a);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The agents, stopped (SIGTERM, then SIGKILL) however main ends.
struct Agents(Vec<Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &mut self.0 {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start(bin: &PathBuf, name: &str, ip: &str, join: Option<&str>) -> Child {
    let mut cmd = Command::new(bin);
    cmd.args(["agent", "--node", name, "--profile", "lan"])
        .args([
            "--bind",
            &format!("{ip}:7946"),
            "--api",
            &format!("{ip}:7373"),
        ])
        .env("SHOAL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(seed) = join {
        cmd.args(["--join", seed]);
    }
    cmd.spawn().expect("spawn shoal agent")
}

fn wait(within: Duration, ok: impl FnMut() -> bool, what: &str) {
    assert!(wait_until(within, ok), "waited {within:?} for {what}");
}

fn wait_until(within: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !ok() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// One push-pull to `to` carrying N alive members at 127.1.x.y.
fn teach_members(to: &str) {
    let id = |name: String, i: usize| {
        let mut tags = Tags::new();
        tags.insert("service".into(), "web".into());
        tags.insert("port".into(), "3000".into());
        NodeId {
            name,
            addr: SocketAddr::from(([127, 1, (i >> 8) as u8, i as u8], 7946)),
            generation: 1,
            tags,
        }
    };
    let members: Vec<NodeId> = (1..=N).map(|i| id(format!("web-{i:04}"), i)).collect();
    let from = id("bench-seed".into(), 0xfffe);
    let frame = wire::encode_frame(&TcpMsg::Sync(converged(&from, &members)), None)
        .expect("encode push-pull");
    let mut s = TcpStream::connect(to).expect("connect to A's gossip port");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(&frame).expect("send push-pull");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(!answer.is_empty(), "A did not answer the push-pull");
}

fn scrape(api: &str) -> String {
    let mut s = TcpStream::connect(api).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The sum of `name`'s samples that carry every one of `labels`.
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text, name)
        .filter(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}

/// (labels, value) of every sample of `name` (exactly that name).
fn samples<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    text.lines().filter_map(move |line| {
        let rest = line.strip_prefix(name)?;
        let (labels, value) = rest.rsplit_once(' ')?;
        if !(labels.is_empty() || labels.starts_with('{')) {
            return None;
        }
        Some((labels, value.parse().ok()?))
    })
}

/// What a histogram gained between two scrapes.
struct Hist {
    sum: f64,
    count: f64,
    /// (upper bound, cumulative count), ascending.
    buckets: Vec<(f64, f64)>,
}

impl Hist {
    fn read(text: &str, name: &str) -> Hist {
        let bucket = format!("{name}_bucket");
        let buckets = samples(text, &bucket)
            .filter_map(|(labels, v)| {
                let le = labels.split("le=\"").nth(1)?.split('"').next()?;
                Some((
                    if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().ok()?
                    },
                    v,
                ))
            })
            .collect();
        Hist {
            sum: sum(text, &format!("{name}_sum"), &[]),
            count: sum(text, &format!("{name}_count"), &[]),
            buckets,
        }
    }

    fn delta(before: &str, after: &str, name: &str) -> Hist {
        let (b, a) = (Hist::read(before, name), Hist::read(after, name));
        Hist {
            sum: a.sum - b.sum,
            count: a.count - b.count,
            buckets: a
                .buckets
                .iter()
                .zip(&b.buckets)
                .map(|((le, x), (_, y))| (*le, x - y))
                .collect(),
        }
    }

    fn mean(&self) -> f64 {
        if self.count > 0.0 {
            self.sum / self.count
        } else {
            0.0
        }
    }

    /// The upper bound of the bucket holding quantile `q`.
    fn quantile_bound(&self, q: f64) -> String {
        let want = q * self.count;
        match self.buckets.iter().find(|(_, c)| *c >= want) {
            Some((le, _)) if le.is_finite() => format!("{:.2} ms", le * 1e3),
            Some(_) => "+Inf".into(),
            None => "-".into(),
        }
    }
}

/// utime + stime of process `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which may hold spaces), from field 3 on.
    let after = stat.rsplit_once(')').expect("stat format").1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}
