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

/// Polls HAProxy's stats page every 10 ms: (time since `started`, answered).
struct StatsProbe {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(Duration, bool)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StatsProbe {
    fn start(addr: SocketAddr, started: Instant, max_time: Duration) -> StatsProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) && started.elapsed() < max_time {
                let at = started.elapsed();
                let ok = http_get(addr, "/;csv", None, S).is_ok_and(|r| r.status == 200);
                v.lock().unwrap().push((at, ok));
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        StatsProbe {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// When HAProxy was up again after `since`: the first answer after the first miss.
    fn up_again_after(&self, since: Duration) -> Option<Duration> {
        let seen = self.seen.lock().unwrap();
        let mut after = seen.iter().filter(|(at, _)| *at >= since);
        after.find(|(_, ok)| !ok)?;
        after.find(|(_, ok)| *ok).map(|(at, _)| *at)
    }
}

impl Drop for StatsProbe {
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
    let probe = StatsProbe::start(stats_addr, load.started, 180 * S);
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
    drop(probe);
    let samples = load.stop();

    // The first request served (answered by a webapp) at or after HAProxy was up.
    let first_served = samples
        .iter()
        .filter(|s| s.result.is_ok())
        .map(|s| s.at + s.latency)
        .filter(|done| *done >= up)
        .min()
        .expect("a request served after HAProxy was up");
    let up_to_served = first_served - up;
    let failed_after_up = failures(&samples, up, Duration::MAX);
    let failed = failures(&samples, before, up);
    figure(
        "LB restart: HAProxy up -> first request served",
        format!("{} ms", up_to_served.as_millis()),
    );
    figure(
        "LB restart: docker restart returned -> first request served",
        format!("{} ms", first_served.saturating_sub(returned).as_millis()),
    );
    figure(
        "LB restart: failed requests while the LB was down",
        failed.len(),
    );
    assert!(
        failed_after_up.is_empty(),
        "{} requests sent after HAProxy was up failed: {}",
        failed_after_up.len(),
        describe_failures(&failed_after_up)
    );
    // Target 500 ms (issue 13); the bound leaves room for a loaded 2-core machine.
    assert!(
        up_to_served <= 2 * S,
        "first request served {up_to_served:?} after HAProxy was up"
    );
}
