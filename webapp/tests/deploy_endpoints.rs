//! The endpoints a deploy test holds across a rolling update, over real HTTP on 127.0.0.1:
//! `POST /echo` (length and checksum of the body), the steady `/download` and the `/ws`
//! WebSocket echo, and a graceful stop that waits for an open download and WebSocket.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

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

/// One raw HTTP/1.1 exchange (`Connection: close`): status, head, body bytes.
fn exchange(addr: SocketAddr, request: Vec<u8>) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&request).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head[9..12].parse().unwrap();
    (status, head, raw[end + 4..].to_vec())
}

fn post(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    exchange(addr, req)
}

fn get(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes(),
    )
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn post_echo_reports_the_length_and_checksum_of_the_body_and_counts_posts() {
    let (addr, stop, task) = start().await;
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let expected = format!("{:016x}", webapp::fnv1a64(&body));
    for n in 1..=2 {
        let b = body.clone();
        let (status, _, answer) = blocking(move || post(addr, "/echo", &b)).await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(v["hostname"], "web-test");
        assert_eq!(v["bytes"], 5000);
        assert_eq!(v["checksum"], expected.as_str());
        assert_eq!(v["posts"], n);
    }
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_body_over_the_limit_is_413_and_other_methods_are_405() {
    let (addr, stop, task) = start().await;
    let big = vec![b'x'; webapp::MAX_POST_BODY + 1];
    let (status, _, body) = blocking(move || post(addr, "/echo", &big)).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = blocking(move || post(addr, "/", b"x")).await;
    assert_eq!(status, 405);
    let (status, _, _) = blocking(move || get(addr, "/echo")).await;
    assert_eq!(status, 405);
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn download_sends_exactly_seconds_times_rate_bytes_at_a_steady_pace() {
    let (addr, stop, task) = start().await;
    let t = Instant::now();
    let (status, head, body) = blocking(move || get(addr, "/download?seconds=2&rate=1000")).await;
    let took = t.elapsed();
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains("content-length: 2000"),
        "{head}"
    );
    assert_eq!(body.len(), 2000);
    assert!(body
        .iter()
        .enumerate()
        .all(|(i, b)| *b == webapp::download::download_byte(i as u64)));
    // Twenty slices 100 ms apart (the first at once): ~1.9 s, not a burst.
    assert!(
        took >= Duration::from_millis(1700) && took < Duration::from_secs(6),
        "{took:?}"
    );
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_download_query_is_a_400_naming_the_parameter() {
    let (addr, stop, task) = start().await;
    let (status, _, body) = blocking(move || get(addr, "/download?seconds=-1")).await;
    assert_eq!(status, 400);
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains("seconds=\"-1\""), "{body}");
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_echoes_text_and_binary_completes_the_close_handshake_and_a_plain_get_is_a_400() {
    let (addr, stop, task) = start().await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );
    ws.close(None).await.unwrap();
    // The server answers the close, then the stream ends cleanly (None), not with a reset.
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert!(
        matches!(reply, Some(Ok(Message::Close(_)))),
        "close reply: {reply:?}"
    );
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert!(end.is_none(), "after the close handshake: {end:?}");
    let (status, _, body) = blocking(move || get(addr, "/ws")).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("Upgrade: websocket"));
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_waits_for_an_open_download_and_an_open_websocket() {
    let (addr, stop, task) = start().await;
    let download = tokio::task::spawn_blocking(move || get(addr, "/download?seconds=2&rate=500"));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(()).unwrap();
    // Stopping: new connections are refused, the open ones carry on.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    for i in 0..5 {
        let m = Message::text(format!("still here {i}"));
        ws.send(m.clone()).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), m);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _, body) = download.await.unwrap();
    assert_eq!((status, body.len()), (200, 1000));
    assert!(!task.is_finished(), "stopped while a websocket was open");
    ws.close(None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}
