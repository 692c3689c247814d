//! `lbgen watch --api`: a fake agent (raw HTTP/1.1 on 127.0.0.1) serves `/v1/members` and a
//! chunked NDJSON `/v1/events` stream. Events trigger a re-render from the snapshot; a dropped
//! stream is reconnected (with the last index) and resynced even if events were missed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lbgen::source::SourceSpec;
use lbgen::watch::{Outcome, Report, Wait, WatchConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc::UnboundedReceiver};

#[derive(Clone, Debug)]
enum Push {
    Line(String),
    Close,
}

struct FakeAgent {
    addr: String,
    doc: Arc<Mutex<String>>,
    push: broadcast::Sender<Push>,
    event_urls: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn doc(names: &[&str]) -> String {
    let ms: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                r#"{{"name":"{n}","addr":"10.0.0.{}:7946","status":"alive","tags":{{"service":"web","port":"3000"}}}}"#,
                i + 1
            )
        })
        .collect();
    format!(r#"{{"members":[{}]}}"#, ms.join(","))
}

async fn fake_agent(initial: String) -> FakeAgent {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let doc = Arc::new(Mutex::new(initial));
    let (push, _) = broadcast::channel(64);
    let event_urls = Arc::new(Mutex::new(Vec::new()));
    let (d, p, u) = (doc.clone(), push.clone(), event_urls.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let (d, p, u) = (d.clone(), p.clone(), u.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                if path == "/v1/members" {
                    let body = d.lock().unwrap().clone();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                } else if path.starts_with("/v1/events") {
                    u.lock().unwrap().push(path);
                    let mut rx = p.subscribe();
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
                        .await;
                    loop {
                        let line = tokio::select! {
                            m = rx.recv() => match m {
                                Ok(Push::Line(l)) => l,
                                Ok(Push::Close) | Err(_) => return,
                            },
                            _ = tokio::time::sleep(Duration::from_secs(1)) => r#"{"type":"keepalive","index":7}"#.to_string(),
                        };
                        let chunk = format!("{:x}\r\n{line}\n\r\n", line.len() + 1);
                        if s.write_all(chunk.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                } else {
                    let _ = s
                        .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                        .await;
                }
            });
        }
    });
    FakeAgent {
        addr,
        doc,
        push,
        event_urls,
        task,
    }
}

async fn next_report(rx: &mut UnboundedReceiver<Report>) -> Report {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no report within 10 s")
        .expect("watch stopped")
}

#[tokio::test]
async fn events_trigger_snapshot_renders_and_reconnects_resync() {
    let agent = fake_agent(doc(&["web-1"])).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("haproxy.cfg");
    let (rtx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = WatchConfig {
        template: None,
        vars: lbgen::render::Vars::default(),
        out: out.clone(),
        source: SourceSpec::Api(agent.addr.clone()),
        master: None,
        check: None,
        wait: Wait::parse("20ms:200ms").unwrap(),
        reload_timeout: Duration::from_secs(5),
        resync: None,
        reports: Some(rtx),
    };
    let w = tokio::spawn(lbgen::watch::run(cfg, async {
        let _ = stop_rx.await;
    }));
    let r = next_report(&mut reports).await;
    assert_eq!(r.outcome, Outcome::Written);
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .contains("server web-1 "));

    // Wait for the stream, then a join event: re-rendered from the full snapshot.
    while agent.event_urls.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    *agent.doc.lock().unwrap() = doc(&["web-1", "web-2"]);
    agent
        .push
        .send(Push::Line(
            r#"{"index":7,"time":"2026-11-28T05:00:00.123Z","type":"member-join","member":{"name":"web-2","addr":"10.0.0.2:7946","status":"alive","tags":{"service":"web","port":"3000"}}}"#.into(),
        ))
        .unwrap();
    let r = next_report(&mut reports).await;
    assert_eq!(r.outcome, Outcome::Written);
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .contains("server web-2 "));

    // Membership changes while the stream is down (no event ever arrives): the reconnect
    // resyncs from /v1/members, and asks for events after the last index seen.
    *agent.doc.lock().unwrap() = doc(&["web-2"]);
    agent.push.send(Push::Close).unwrap();
    let r = next_report(&mut reports).await;
    assert_eq!(r.outcome, Outcome::Written);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains("server web-1 "), "{text}");
    assert_eq!(
        agent.event_urls.lock().unwrap().last().unwrap(),
        "/v1/events?index=7"
    );

    // Keepalives alone change nothing.
    let quiet = tokio::time::timeout(Duration::from_millis(2500), reports.recv()).await;
    assert!(quiet.is_err(), "keepalive caused an apply: {quiet:?}");

    let _ = stop_tx.send(());
    w.await.unwrap().unwrap();
}
