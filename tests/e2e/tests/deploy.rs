//! End-to-end: scale 1 → 30 → 1 and a rolling deploy (`./demo deploy`) under load on a
//! real Docker engine. What issue 14 asks of them: no HAProxy reload for membership changes
//! in an existing pool, sticky clients keep their server, and a deploy that replaces every
//! webapp fails no request — GETs, POSTs, a 30 s download and a WebSocket held across it.
//! Load goes only to the LB's 127.0.0.1-published port and is bounded in time and count.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use shoal_e2e::*;

const S: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(200);

/// Waits until HAProxy has exactly `expected` UP in pool `web`; returns how long it took.
fn wait_web(
    stats_addr: std::net::SocketAddr,
    expected: &BTreeSet<String>,
    timeout: Duration,
) -> Duration {
    let t = Instant::now();
    wait_for(
        &format!("HAProxy pool web = {} servers", expected.len()),
        timeout,
        POLL,
        || (up_servers(&stats(stats_addr)?, "web") == *expected).then_some(()),
    );
    t.elapsed()
}

/// `"N of M"` failed, with the first few reasons.
fn failed_summary(samples: &[Sample]) -> (usize, String) {
    let failed = failures(samples, Duration::ZERO, Duration::MAX);
    (
        failed.len(),
        format!(
            "{} of {} failed{}{}",
            failed.len(),
            samples.len(),
            if failed.is_empty() { "" } else { ": " },
            describe_failures(&failed)
        ),
    )
}

fn slow(samples: &[Sample], over: Duration) -> usize {
    samples.iter().filter(|s| s.latency > over).count()
}

#[test]
fn scale_1_to_30_to_1_under_load_reloads_haproxy_zero_times_and_fails_no_request() {
    let Some(_serial) = setup() else { return };
    let p = Project::new(
        "scale30",
        &[],
        &[(
            "WEBAPP_SHOAL_TAG",
            "service=web,port=3000,check=/health,sticky=true",
        )],
    );
    p.up(&["--scale", "webapp=1"]);
    let (http, stats_addr) = (p.lb_addr(80), p.lb_addr(1936));
    let first = p.hostnames("webapp");
    wait_web(stats_addr, &first, 60 * S);
    let pinned = first.iter().next().cloned().expect("one webapp");
    // lbgen's first apply after start may reload (when it cannot prove what HAProxy
    // loaded); count from a settled cluster on.
    std::thread::sleep(3 * S);
    let (pid0, reloads0) = p
        .haproxy_master()
        .expect("HAProxy master answers show proc");

    let gets = Load::start(http, 3, Duration::from_millis(10), 200 * S, 200_000);
    let posts = Load::start_posts(http, 1, Duration::from_millis(20), 200 * S, 50_000);
    // Sticky clients: they carry the SERVERID of the first webapp, which stays throughout
    // (a dynamic cookie: a hash of its address and the pool's key, handed out by HAProxy).
    let first_answer = http_get(http, "/", None, 5 * S).expect("a first answer");
    assert_eq!(first_answer.hostname().as_deref(), Some(pinned.as_str()));
    let server = first_answer
        .cookie("SERVERID")
        .filter(|c| !c.is_empty())
        .expect("SERVERID from a sticky pool");
    let cookie = format!("SERVERID={server}");
    let sticky = Load::start_with(2, Duration::from_millis(20), 200 * S, 50_000, move || {
        let r = http_get(http, "/", Some(&cookie), Duration::from_secs(20))?;
        match r.hostname() {
            Some(h) if r.status == 200 && h == pinned => Ok(h),
            other => Err(format!(
                "sticky client got status {} from {other:?}",
                r.status
            )),
        }
    });
    std::thread::sleep(2 * S);

    let t = Instant::now();
    p.up(&["--scale", "webapp=30"]);
    let thirty = p.hostnames("webapp");
    assert_eq!(thirty.len(), 30);
    wait_web(stats_addr, &thirty, 150 * S);
    let up30 = t.elapsed();
    let (_, reloads_at_30) = p.haproxy_master().unwrap_or((0, 0));
    std::thread::sleep(2 * S);

    let t = Instant::now();
    p.up(&["--scale", "webapp=1"]);
    let left = p.hostnames("webapp");
    assert_eq!(left, first, "compose kept another webapp than the first");
    wait_web(stats_addr, &first, 60 * S);
    let down1 = t.elapsed();
    std::thread::sleep(2 * S);

    let (pid1, reloads1) = p
        .haproxy_master()
        .expect("HAProxy master answers show proc");
    let (g, p_, st) = (gets.stop(), posts.stop(), sticky.stop());
    let reloads = reloads1.saturating_sub(reloads0);
    figure(
        "scale 1->30->1 under load: HAProxy reloads",
        format!(
            "{reloads} ({} during 1->30, master pid {pid0} -> {pid1})",
            reloads_at_30.saturating_sub(reloads0)
        ),
    );
    figure(
        "scale 1->30: up --scale to all 30 UP in HAProxy",
        format!("{:.1} s", up30.as_secs_f64()),
    );
    figure(
        "scale 30->1: up --scale to 1 UP in HAProxy",
        format!("{:.1} s", down1.as_secs_f64()),
    );
    let (gf, gs) = failed_summary(&g);
    let (pf, ps) = failed_summary(&p_);
    let (sf, ss) = failed_summary(&st);
    figure(
        "scale 1->30->1 under load: failed requests",
        format!(
            "GET {gs}; POST {ps}; sticky {ss}; over 500 ms: {}",
            slow(&g, S / 2) + slow(&p_, S / 2) + slow(&st, S / 2)
        ),
    );
    let mut problems = Vec::new();
    if gf + pf + sf > 0 {
        problems.push(format!("failed requests: GET {gs}; POST {ps}; sticky {ss}"));
        // Why: HAProxy's access log has the termination state and the server (or <NOSRV>)
        // of every answer that was not a 2xx; lbgen says which change it made when.
        let why = p.lb_log_lines(
            &[
                "\"status\":5",
                "\"status\":4",
                "servers changed",
                "config live",
                "is DOWN",
                "is UP",
            ],
            60,
        );
        problems.push(format!("the LB's log around them:\n{}", why.join("\n")));
    }
    if pid1 != pid0 {
        problems.push(format!("HAProxy's master restarted ({pid0} -> {pid1})"));
    }
    if reloads != 0 {
        problems.push(format!(
            "{reloads} HAProxy reloads for membership changes (want 0)"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Generous: 30 containers started on 2 shared cores.
    assert!(up30 <= 150 * S && down1 <= 60 * S, "{up30:?} / {down1:?}");
}

#[test]
fn a_rolling_deploy_under_load_fails_no_request() {
    let Some(_serial) = setup() else { return };
    // The drain (a maximum once it follows connections) and the stop grace cover the 30 s
    // download and the WebSocket held open on an old webapp.
    let p = Project::new(
        "deploy",
        &[],
        &[("WEBAPP_DRAIN", "35s"), ("WEBAPP_STOP_GRACE", "60s")],
    );
    p.up(&["--scale", "webapp=5"]);
    let (http, stats_addr) = (p.lb_addr(80), p.lb_addr(1936));
    let old = p.hostnames("webapp");
    wait_web(stats_addr, &old, 60 * S);

    let gets = Load::start(http, 3, Duration::from_millis(10), 220 * S, 200_000);
    let posts = Load::start_posts(http, 1, Duration::from_millis(20), 220 * S, 50_000);
    let download = std::thread::spawn(move || clients::download(http, 30, 10_240));
    let websocket = std::thread::spawn(move || {
        clients::hold_websocket(http, 30 * S, Duration::from_millis(500))
    });
    std::thread::sleep(2 * S);

    let t_deploy = gets.now();
    let t = Instant::now();
    let out = p.demo(&["deploy", "--batch", "3", "--stop-timeout", "60"], 200 * S);
    let deploy_took = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "./demo deploy failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let new = p.hostnames("webapp");
    assert_eq!(new.len(), 5, "5 webapps after the deploy: {new:?}");
    assert!(
        new.is_disjoint(&old),
        "an old webapp is still running: {new:?}"
    );
    wait_web(stats_addr, &new, 30 * S);
    let t_after = gets.now();
    std::thread::sleep(2 * S);
    let answering = gets.hosts_since(t_after);

    let downloaded = download.join().expect("download thread");
    let held = websocket.join().expect("websocket thread");
    let (g, p_) = (gets.stop(), posts.stop());
    let (gf, gs) = failed_summary(&g);
    let (pf, ps) = failed_summary(&p_);
    let during = g.iter().chain(&p_).filter(|s| s.at >= t_deploy).count();
    figure(
        "rolling deploy of 5 webapps under load (./demo deploy --batch 3)",
        format!(
            "{:.1} s; GET {gs}; POST {ps}; {during} requests during the deploy, {} over 500 ms; download {}; websocket {}",
            deploy_took.as_secs_f64(),
            slow(&g, S / 2) + slow(&p_, S / 2),
            match &downloaded {
                Ok(d) => format!("{} bytes complete in {:.1} s", d.bytes, d.took.as_secs_f64()),
                Err(e) => format!("FAILED: {e}"),
            },
            match &held {
                Ok(w) => format!("{} echoes over {:.1} s, closed cleanly", w.echoes, w.took.as_secs_f64()),
                Err(e) => format!("FAILED: {e}"),
            },
        ),
    );
    let mut problems = Vec::new();
    if gf + pf > 0 {
        problems.push(format!("GET {gs}; POST {ps}"));
    }
    if let Err(e) = &downloaded {
        problems.push(format!("the 30 s download: {e}"));
    }
    if let Err(e) = &held {
        problems.push(format!("the WebSocket: {e}"));
    }
    if !answering.is_subset(&new) || answering.is_empty() {
        problems.push(format!(
            "answering after the deploy: {answering:?}, new: {new:?}"
        ));
    }
    assert!(problems.is_empty(), "{}\n{stdout}", problems.join("\n"));
}
