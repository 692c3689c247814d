//! End-to-end: `docker restart` of the demo's only LB under load. One LB cannot serve while
//! its container is down, but once its HAProxy is up again it must serve at once: it starts
//! from lbgen's last config, which holds the last known webapps (docker/lb-services.toml),
//! and no start-up step (the agent's sync, lbgen's first apply) may hold requests up.
//!
//! The LB's ports are fixed for the project (a free port picked here), since a restart with
//! port 0 may publish on another one. Load goes only to 127.0.0.1; every loop is bounded.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_e2e::*;

const S: Duration = Duration::from_secs(1);

/// A port free on 127.0.0.1 now, for a mapping that must survive the container's restart.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A probe's request: when it was sent, and when its answer came (none: no 200 in time).
type ProbeSample = (Duration, Option<Duration>);

/// Polls one path every 10 ms (a 200 is an answer): (sent, answered at), times since
/// `started`.
///
/// An answer's own time is what tells that the LB is up, not when its request was sent:
/// while the container starts again, Docker's port proxy already accepts and its dial to
/// the container waits for a SYN retransmit (~1 s), which the restarted container answers.
/// Such a request was sent before HAProxy was up; the closed-loop load's workers all sit in
/// such requests, so their first answers tell Docker's retransmit, not the LB. The probes'
/// short timeout re-sends soon, so their first answers come soon after HAProxy listens.
struct Probe {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<ProbeSample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    fn start(addr: SocketAddr, path: &'static str, started: Instant, max_time: Duration) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) && started.elapsed() < max_time {
                let sent = started.elapsed();
                let ok = http_get(addr, path, None, Duration::from_millis(250))
                    .is_ok_and(|r| r.status == 200);
                v.lock()
                    .unwrap()
                    .push((sent, ok.then(|| started.elapsed())));
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Probe {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// The probe's changes after `since` (a miss by when it was sent, an answer by when it
    /// came): what a failure shows of when HAProxy went away and came back, and whether it
    /// went away twice.
    fn transitions_after(&self, since: Duration) -> String {
        let seen = self.seen.lock().unwrap();
        let mut last = None;
        let mut out = Vec::new();
        for (sent, answered) in seen.iter().filter(|(sent, _)| *sent >= since) {
            if last != Some(answered.is_some()) {
                out.push(match answered {
                    Some(at) => format!(
                        "{:.2}s up (sent {:.2}s)",
                        at.as_secs_f64(),
                        sent.as_secs_f64()
                    ),
                    None => format!("{:.2}s down", sent.as_secs_f64()),
                });
                last = Some(answered.is_some());
            }
        }
        out.join(", ")
    }

    /// When the path answered again after `since`: the first answer to a request sent
    /// after the first miss.
    fn up_again_after(&self, since: Duration) -> Option<Duration> {
        let seen = self.seen.lock().unwrap();
        let mut after = seen.iter().filter(|(sent, _)| *sent >= since);
        after.find(|(_, answered)| answered.is_none())?;
        after.filter_map(|(_, answered)| *answered).min()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn the_only_lb_restarted_under_load_serves_at_once_when_its_haproxy_is_up() {
    let Some(_serial) = setup() else { return };
    let (http, stats_port) = (free_port().to_string(), free_port().to_string());
    let p = Project::new(
        "lbrestart",
        &[],
        &[("LB_HTTP_PORT", &http), ("LB_STATS_PORT", &stats_port)],
    );
    p.up(&["--scale", "webapp=2"]);
    let all = p.hostnames("webapp");
    let (lb_addr, stats_addr) = (p.lb_addr(80), p.lb_addr(1936));
    wait_for("both webapps UP in HAProxy", 60 * S, S / 5, || {
        (up_servers(&stats(stats_addr)?, "web") == all).then_some(())
    });

    let load = Load::start(lb_addr, 4, Duration::from_millis(10), 180 * S, 200_000);
    // The stats page: HAProxy is up; `/`: a webapp answers through it.
    let probe = Probe::start(stats_addr, "/;csv", load.started, 180 * S);
    let served_probe = Probe::start(lb_addr, "/", load.started, 180 * S);
    wait_for("load served", 30 * S, S / 10, || {
        (load.hosts_since(Duration::ZERO) == all).then_some(())
    });
    let lb = p.containers("lb")[0].clone();
    let before = load.now();
    run_ok(
        std::process::Command::new("docker").args(["restart", "-t", "25", &lb]),
        120 * S,
    );
    let returned = load.now();
    wait_for("served again after the restart", 60 * S, S / 20, || {
        (load.hosts_since(returned) == all).then_some(())
    });
    std::thread::sleep(S);
    let up = probe
        .up_again_after(before)
        .expect("HAProxy's stats page went away and came back");
    let served_again = served_probe
        .up_again_after(before)
        .expect("the LB's `/` stopped answering and answered again");
    let stats_timeline = probe.transitions_after(before);
    eprintln!(
        "after the restart was sent: stats page {stats_timeline}; `/` {}",
        served_probe.transitions_after(before)
    );
    drop((probe, served_probe));
    // The load's requests: none sent after HAProxy was up may fail. (Its first answers
    // after the restart tell Docker's proxy, not the LB: see `Probe`.)
    let samples = load.stop();

    let up_to_served = served_again.saturating_sub(up);
    let failed_after_up = failures(&samples, up, Duration::MAX);
    let failed = failures(&samples, before, up);
    figure(
        "LB restart: HAProxy up -> first request served",
        format!("{} ms", up_to_served.as_millis()),
    );
    figure(
        "LB restart: docker restart returned -> first request served",
        format!("{} ms", served_again.saturating_sub(returned).as_millis()),
    );
    figure(
        "LB restart: failed requests while the LB was down",
        failed.len(),
    );
    assert!(
        failed_after_up.is_empty(),
        "{} requests sent after HAProxy was up ({:.2}s) failed: {}\n\
         restart sent {:.2}s, returned {:.2}s; stats page: {stats_timeline}; \
         LB container (restarts, started at): {}",
        failed_after_up.len(),
        up.as_secs_f64(),
        describe_failures(&failed_after_up),
        before.as_secs_f64(),
        returned.as_secs_f64(),
        docker(&[
            "inspect",
            "-f",
            "{{.RestartCount}} {{.State.StartedAt}}",
            &lb
        ])
        .trim()
    );
    // Target 500 ms (issue 13); the bound leaves room for a loaded 2-core machine.
    assert!(
        up_to_served <= 2 * S,
        "first request served {up_to_served:?} after HAProxy was up"
    );
}
