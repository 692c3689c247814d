//! The status page at scale, for the test (generous bound) and `bench/status-page` (the
//! figures): `lbgen watch --http` follows a members file of N members in ten pools, and a
//! real headless chromium loads the page and swaps in its live fragment.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::browser::Browser;
use super::member;
use crate::source::SourceSpec;
use crate::watch::{Wait, WatchConfig};

/// What one run measured, in milliseconds.
#[derive(Debug, Default)]
pub struct PageFigures {
    /// Navigation start → load event end in chromium (server render, transfer, parse,
    /// style and layout of the whole page).
    pub load_ms: Vec<f64>,
    /// chromium's CPU time (all its processes) for one page load.
    pub load_cpu_ms: Vec<f64>,
    /// One live update with JS: fetch `status.html`, swap it in, lay it out.
    pub refresh_ms: Vec<f64>,
    /// `GET /` answered in full, seen from a client on 127.0.0.1.
    pub server_ms: Vec<f64>,
}

/// A members document of `n` alive members in ten pools (`web0` .. `web9`).
pub fn members(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut m = member(
                &format!("node-{i:04}"),
                1024 + i as u16,
                "alive",
                &[("zone", "eu-west-1a"), ("version", "1.4.2")],
            );
            m["tags"]["service"] = format!("web{}", i % 10).into();
            m
        })
        .collect()
}

fn get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to --http");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Loads the page `loads` times with `n` members; each load also times one live refresh.
pub fn measure(n: usize, loads: usize) -> PageFigures {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("members.json");
    super::write_members(&file, &members(n));
    let listener = crate::http::bind("127.0.0.1:0").expect("bind --http");
    let addr = listener.local_addr().expect("local addr").to_string();
    let cfg = WatchConfig {
        template: None,
        vars: crate::render::Vars::default(),
        out: dir.path().join("haproxy.cfg"),
        source: SourceSpec::File(file),
        master: None,
        check: None,
        wait: Wait::parse("10ms:100ms").expect("wait"),
        reload_timeout: Duration::from_secs(10),
        resync: None,
        reports: None,
        leaving_max: crate::watch::LEAVING_MAX,
        renders: Vec::new(),
        local: None,
        http: Some(listener),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(crate::watch::run(cfg, async {
        let _ = stop_rx.await;
    }));
    let rows = format!("\"members\":[{{\"name\":\"node-{:04}\"", 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get(&addr, "/status.json").contains(&rows) {
        assert!(Instant::now() < deadline, "lbgen never served the members");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut figures = PageFigures::default();
    for _ in 0..loads {
        let t = Instant::now();
        let page = get(&addr, "/");
        figures.server_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(page.matches("class=\"member\"").count(), n);
    }
    let mut b = Browser::start();
    for _ in 0..loads {
        let cpu0 = b.cpu_ticks();
        let tab = b.open(&format!("http://{addr}/"), 1200, 900);
        let loaded = "document.readyState === 'complete' && \
                      performance.getEntriesByType('navigation').length === 1 && \
                      performance.getEntriesByType('navigation')[0].loadEventEnd > 0";
        assert!(
            b.wait_for(&tab, loaded, Duration::from_secs(30)),
            "the page never loaded"
        );
        let rows = b.eval(&tab, "document.querySelectorAll('tr.member').length");
        assert_eq!(rows.as_u64(), Some(n as u64), "member rows");
        let load = b.eval(
            &tab,
            "performance.getEntriesByType('navigation')[0].loadEventEnd",
        );
        figures.load_ms.push(load.as_f64().expect("a load time"));
        // One frame after load: the page laid out and painted.
        b.eval(
            &tab,
            "new Promise(function (r) { requestAnimationFrame(function () { setTimeout(r, 0); }); })",
        );
        figures
            .load_cpu_ms
            .push(b.cpu_since(&cpu0).as_secs_f64() * 1000.0);
        let refresh = b.eval(
            &tab,
            "window.shoalStatus.refresh().then(function () { return window.shoalStatus.lastRefreshMs; })",
        );
        figures
            .refresh_ms
            .push(refresh.as_f64().expect("a refresh time"));
        b.call(
            None,
            "Target.closeTarget",
            serde_json::json!({"targetId": tab.target}),
        );
    }
    let _ = stop.send(());
    figures
}
