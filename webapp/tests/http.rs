//! The demo app over real HTTP on 127.0.0.1: JSON answer, cookie session counter,
//! health, and graceful shutdown finishing an in-flight connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tokio::sync::oneshot;

fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> (u16, Vec<String>, String) {
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    get_with(addr, path, &cookie)
}

/// A GET with extra header lines (each ending in `\r\n`).
fn get_with(addr: SocketAddr, path: &str, headers: &str) -> (u16, Vec<String>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    (
        status,
        lines.map(str::to_string).collect(),
        body.to_string(),
    )
}

async fn start() -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let info = webapp::AppInfo {
        hostname: "web-test".into(),
        tag: "blue".into(),
    };
    let task = tokio::spawn(webapp::run(listener, info, async {
        let _ = rx.await;
    }));
    (addr, tx, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn root_answers_json_with_hostname_ip_tag_and_a_cookie_counted_session() {
    let (addr, stop, task) = start().await;
    let (status, headers, body) = tokio::task::spawn_blocking(move || get(addr, "/", None))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["hostname"], "web-test");
    assert_eq!(v["ip"], "127.0.0.1");
    assert_eq!(v["tag"], "blue");
    assert_eq!(v["session"], 1);
    assert!(headers.iter().any(|h| h
        .to_ascii_lowercase()
        .starts_with("set-cookie: webapp_session=1")));

    let (_, headers, body) = tokio::task::spawn_blocking(move || {
        get(addr, "/api/x", Some("SERVERID=a; webapp_session=7"))
    })
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["session"], 8);
    assert_eq!(v["path"], "/api/x");
    assert!(headers.iter().any(|h| h
        .to_ascii_lowercase()
        .starts_with("set-cookie: webapp_session=8")));
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_answer_echoes_the_forwarding_headers_and_request_id_the_lb_sent() {
    let (addr, stop, task) = start().await;
    let (_, _, body) = tokio::task::spawn_blocking(move || {
        get_with(
            addr,
            "/",
            "X-Forwarded-For: 10.9.8.7\r\nX-Forwarded-Proto: http\r\nX-Request-ID: AB:12_3\r\n",
        )
    })
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["forwarded_for"], "10.9.8.7", "{v}");
    assert_eq!(v["forwarded_proto"], "http", "{v}");
    assert_eq!(v["request_id"], "AB:12_3", "{v}");
    let (_, _, body) = tokio::task::spawn_blocking(move || get(addr, "/", None))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["forwarded_for"].is_null() && v["request_id"].is_null(),
        "{v}"
    );
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_200_and_probe_agrees() {
    let (addr, stop, task) = start().await;
    let (status, _, body) = tokio::task::spawn_blocking(move || get(addr, "/health", None))
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let port = addr.port();
    assert!(
        tokio::task::spawn_blocking(move || webapp::probe(port, Duration::from_secs(2)))
            .await
            .unwrap()
    );
    stop.send(()).unwrap();
    task.await.unwrap();
    // Stopped: the listener is closed, so the probe fails.
    assert!(
        !tokio::task::spawn_blocking(move || webapp::probe(port, Duration::from_millis(500)))
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lets_an_in_flight_request_finish_and_refuses_new_connections() {
    let (addr, stop, task) = start().await;
    // Open a connection and send half a request, then ask for shutdown.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let raw = tokio::task::spawn_blocking(move || {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"Connection: close\r\n\r\n").unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        raw
    })
    .await
    .unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).is_err());
}
