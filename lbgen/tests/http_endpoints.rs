//! `lbgen watch --http` on a members file (no HAProxy): the endpoints' answers, the
//! `/events` stream pushing each apply, and untrusted tags escaped on the page.

use lbgen::testing as common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{member, write_members};
use lbgen::source::SourceSpec;
use lbgen::watch::{Wait, WatchConfig};

/// One request with `Connection: close`: (status code, headers, body).
fn request(addr: &str, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_ascii_lowercase(), body.to_string())
}

struct Watch {
    addr: String,
    members: std::path::PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn start(members: &[serde_json::Value]) -> Watch {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("members.json");
    write_members(&file, members);
    let listener = lbgen::http::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cfg = WatchConfig {
        template: None,
        vars: lbgen::render::Vars::default(),
        out: dir.path().join("haproxy.cfg"),
        source: SourceSpec::File(file.clone()),
        master: None,
        check: None,
        wait: Wait::parse("10ms:100ms").unwrap(),
        reload_timeout: Duration::from_secs(5),
        resync: None,
        reports: None,
        leaving_max: lbgen::watch::LEAVING_MAX,
        renders: Vec::new(),
        local: None,
        http: Some(listener),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(lbgen::watch::run(cfg, async {
        let _ = stop_rx.await;
    }));
    let w = Watch {
        addr,
        members: file,
        _stop: stop,
        _rt: rt,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !request(&w.addr, "GET", "/status.json")
        .2
        .contains("\"result\":\"applied\"")
    {
        assert!(Instant::now() < deadline, "no first apply");
        std::thread::sleep(Duration::from_millis(20));
    }
    w
}

#[test]
fn the_endpoints_answer_and_refuse_plainly() {
    let w = start(&[member("web-1", 8001, "alive", &[])]);
    let (code, head, body) = request(&w.addr, "GET", "/status.json");
    assert_eq!(code, 200);
    assert!(head.contains("content-type: application/json"), "{head}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["haproxy"]["state"], "unknown");
    assert_eq!(j["members"][0]["name"], "web-1");
    assert_eq!(j["pools"][0]["servers"][0]["haproxy"], "unknown");
    assert_eq!(j["last_apply"]["kind"], "written");
    assert!(j["source"].as_str().unwrap().starts_with("file "));

    let (code, head, body) = request(&w.addr, "GET", "/");
    assert_eq!(code, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(body.contains("<noscript><meta http-equiv=\"refresh\""));
    assert!(body.contains("data-server=\"web-1\""));

    let (code, head, body) = request(&w.addr, "GET", "/metrics");
    assert_eq!(code, 200);
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        body.contains("lbgen_applies_total{kind=\"written\",result=\"applied\"} 1"),
        "{body}"
    );

    let (code, _, body) = request(&w.addr, "HEAD", "/");
    assert_eq!((code, body.as_str()), (200, ""));
    let (code, _, body) = request(&w.addr, "GET", "/nope");
    assert_eq!(code, 404);
    assert!(body.contains("/status.json"), "{body}");
    let (code, head, _) = request(&w.addr, "POST", "/");
    assert_eq!(code, 405);
    assert!(head.contains("allow: get, head"), "{head}");
}

#[test]
fn untrusted_tags_reach_the_page_escaped() {
    let w = start(&[member(
        "web-1",
        8001,
        "alive",
        &[("note", "<img src=x onerror=alert(1)>\"'&")],
    )]);
    for path in ["/", "/status.html"] {
        let (_, _, body) = request(&w.addr, "GET", path);
        assert!(!body.contains("<img"), "{path}: {body}");
        assert!(
            body.contains("note=&lt;img src=x onerror=alert(1)&gt;&quot;&#39;&amp;"),
            "{path}: {body}"
        );
    }
}

#[test]
fn the_events_stream_pushes_each_apply() {
    let w = start(&[member("web-1", 8001, "alive", &[])]);
    let mut s = TcpStream::connect(&w.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write!(s, "GET /events HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let read_until = |s: &mut TcpStream, got: &mut Vec<u8>, needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(got).contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in {}",
                String::from_utf8_lossy(got)
            );
            if let Ok(n) = s.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
        }
    };
    read_until(&mut s, &mut got, "retry: 2000");
    assert!(String::from_utf8_lossy(&got)
        .to_ascii_lowercase()
        .contains("content-type: text/event-stream"));
    write_members(
        &w.members,
        &[
            member("web-1", 8001, "alive", &[]),
            member("web-2", 8002, "alive", &[]),
        ],
    );
    read_until(&mut s, &mut got, "event: apply\ndata: {\"at\":");
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(
        text.contains("\"kind\":\"written\",\"result\":\"applied\""),
        "{text}"
    );
}
