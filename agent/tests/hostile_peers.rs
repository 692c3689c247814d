//! Resource bounds against hostile clients, with real agents: the gossip
//! port's TCP side (connection caps, deadlines, memory, oversize push-pull)
//! and the HTTP API (timeouts, connection cap). The hostile clients are
//! written here, each from its own 127.x.y.z source address.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{converged, ip, wait_for, Agent};
use shoal::identity::NodeId;
use shoal::tags::Tags;
use shoal::wire::{self, SyncEntry, SyncMsg, SyncState, TcpMsg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn stat(a: &Agent, name: &str) -> u64 {
    common::stat(a, name)
}

/// The agent's resident memory, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A TCP connection to `to` from the source address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse().expect("source ip"), 0))?;
    socket.connect(to).await
}

/// Waits until the peer closes `s` (EOF or reset); how long that took.
async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + limit),
            s.read(&mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The header of a clear frame announcing the largest body allowed.
fn huge_clear_header() -> Vec<u8> {
    let mut h = vec![wire::MAGIC, wire::VERSION];
    h.extend_from_slice(&(wire::MAX_FRAME as u32).to_be_bytes());
    h.push(0); // clear
    h
}

#[test]
fn a_hostile_tcp_client_cannot_grow_the_agents_memory_and_a_real_peer_still_syncs() {
    let seed = vec![format!("{}:7946", ip(44, 1))];
    let a = Agent::start("h1", &ip(44, 1), &seed, &[]);
    let target: SocketAddr = a.gossip().parse().unwrap();
    let rt = runtime();

    // Deadlines: silence is cut at the header deadline, a stalled body at
    // the exchange deadline; each from its own source.
    let (silent, stalled) = rt.block_on(async {
        let mut quiet = connect_from(&ip(44, 50), target).await.unwrap();
        let mut stall = connect_from(&ip(44, 51), target).await.unwrap();
        stall.write_all(&huge_clear_header()).await.unwrap();
        stall.write_all(&[0u8; 1000]).await.unwrap();
        let limit = Duration::from_secs(10);
        tokio::join!(
            closed_within(&mut quiet, limit),
            closed_within(&mut stall, limit)
        )
    });
    let silent = silent.expect("a silent connection was never closed");
    let stalled = stalled.expect("a stalled frame was never closed");
    assert!(silent < Duration::from_millis(3_500), "silent: {silent:?}");
    assert!(
        stalled < Duration::from_millis(7_000),
        "stalled: {stalled:?}"
    );
    assert!(stat(&a, "dropped_deadline") >= 2);

    // The flood: 6 sources x 10 connections, each announcing the largest
    // frame and sending it as fast as it can.
    let base = rss_kib(a.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(base));
    let sampler = {
        let (stop, peak, pid) = (stop.clone(), peak.clone(), a.pid());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(rss_kib(pid), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let flood = {
        rt.spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for src in 0..6u8 {
                for _ in 0..10 {
                    let from = ip(44, 100 + src);
                    tasks.spawn(async move {
                        let Ok(mut s) = connect_from(&from, target).await else {
                            return;
                        };
                        let started = Instant::now();
                        let _ = s.write_all(&huge_clear_header()).await;
                        let chunk = vec![0x55u8; 64 * 1024];
                        let mut sent = 0;
                        while sent < wire::MAX_FRAME && started.elapsed() < Duration::from_secs(8) {
                            match s.write(&chunk).await {
                                Ok(n) if n > 0 => sent += n,
                                _ => break,
                            }
                        }
                    });
                }
            }
            while tasks.join_next().await.is_some() {}
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // Meanwhile a real peer joins (a push-pull to h1) and the CLI answers.
    let pulls_before = stat(&a, "push_pulls");
    let b = Agent::start("h2", &ip(44, 2), &seed, &[]);
    assert!(
        wait_for(Duration::from_secs(15), || converged(
            &[&a, &b],
            &["h1", "h2"]
        )),
        "the real peer did not join during the flood"
    );
    assert!(
        stat(&a, "push_pulls") > pulls_before,
        "no push-pull got through"
    );
    assert!(a.cli(&["members"]).status.success());
    rt.block_on(flood).unwrap();
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();

    let grew_mib = peak.load(Ordering::SeqCst).saturating_sub(base) / 1024;
    eprintln!(
        "RSS {} MiB before the flood, +{grew_mib} MiB at its peak",
        base / 1024
    );
    // 32 MiB of read budget plus a first chunk per connection; the flood
    // offers 60 x 8 MB.
    assert!(grew_mib < 80, "RSS grew by {grew_mib} MiB");
    // 2 of each source's 10 connections are over the per-source cap.
    assert!(stat(&a, "dropped_conn_cap") >= 12);
    assert!(converged(&[&a, &b], &["h1", "h2"]));
}

fn invented(n: usize) -> Vec<SyncEntry> {
    (0..n)
        .map(|i| SyncEntry {
            id: NodeId {
                name: format!("invented-{i}"),
                addr: SocketAddr::from(([127, 254, (i >> 8) as u8, i as u8], 7946)),
                generation: 1,
                tags: Tags::new(),
            },
            incarnation: 0,
            state: SyncState::Alive,
        })
        .collect()
}

#[test]
fn an_oversize_push_pull_is_refused_with_a_counted_reason_and_its_members_appear_nowhere() {
    let seed = vec![format!("{}:7946", ip(45, 1))];
    let a = Agent::start("o1", &ip(45, 1), &seed, &[]);
    let b = Agent::start("o2", &ip(45, 2), &seed, &[]);
    assert!(wait_for(Duration::from_secs(15), || converged(
        &[&a, &b],
        &["o1", "o2"]
    )));
    let from = NodeId {
        name: "intruder".into(),
        addr: format!("{}:7946", ip(45, 9)).parse().unwrap(),
        generation: 1,
        tags: Tags::new(),
    };
    let frame = wire::encode_frame(
        &TcpMsg::Sync(SyncMsg {
            from,
            entries: invented(100_000),
        }),
        None,
    )
    .unwrap();
    let target: SocketAddr = a.gossip().parse().unwrap();
    let refused_after = runtime().block_on(async {
        let mut s = connect_from(&ip(45, 9), target).await.unwrap();
        s.write_all(&frame).await.unwrap();
        closed_within(&mut s, Duration::from_secs(10)).await
    });
    let refused_after = refused_after.expect("the agent never answered the frame");
    eprintln!(
        "a {}-byte frame of 100,000 members refused {refused_after:?} after it was sent",
        frame.len()
    );
    assert!(refused_after < Duration::from_secs(1), "{refused_after:?}");
    assert_eq!(stat(&a, "dropped_size"), 1);
    // Nothing of it anywhere, and the cluster is as it was.
    for _ in 0..10 {
        for x in [&a, &b] {
            let names: Vec<String> = x
                .members()
                .iter()
                .map(|m| m["name"].as_str().unwrap_or("").to_string())
                .collect();
            assert_eq!(names, ["o1", "o2"], "at {}", x.name);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(converged(&[&a, &b], &["o1", "o2"]));
}

/// Opens `n` connections to the API that send nothing (or `partial`).
fn open_many(addr: &str, n: usize, partial: &[u8]) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| {
            let mut s = TcpStream::connect(addr).ok()?;
            if !partial.is_empty() {
                s.write_all(partial).ok()?;
            }
            Some(s)
        })
        .collect()
}

/// Whether the agent has closed `s` (EOF or reset) within `within`.
fn is_closed(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).ok();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // e.g. a 408 response before the close
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

#[test]
fn idle_and_half_sent_http_requests_are_closed_and_the_cli_works_with_the_cap_exhausted() {
    let seed = vec![format!("{}:7946", ip(46, 1))];
    let a = Agent::start("i1", &ip(46, 1), &seed, &[]);
    let api = a.api();
    // An event stream outlives every timeout: a request is in flight.
    let mut events = TcpStream::connect(&api).unwrap();
    events
        .write_all(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // A keep-alive connection that finished a request, then went idle; half
    // a request's headers; half a request's body.
    let opened = Instant::now();
    let mut keepalive = TcpStream::connect(&api).unwrap();
    keepalive
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = keepalive.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let half = open_many(&api, 10, b"GET /v1/members HTTP/1.1\r\nHost: x\r\n");
    let body_half = open_many(
        &api,
        5,
        b"PUT /v1/tags HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"set\":",
    );
    let timeout = shoal::api::HEADER_TIMEOUT.max(shoal::api::BODY_TIMEOUT);
    for mut s in [keepalive].into_iter().chain(half).chain(body_half) {
        let left = (timeout + Duration::from_secs(4)).saturating_sub(opened.elapsed());
        assert!(
            is_closed(&mut s, left.max(Duration::from_millis(10))),
            "still open {:?} after it was opened",
            opened.elapsed()
        );
    }
    let took = opened.elapsed();
    assert!(
        took >= shoal::api::HEADER_TIMEOUT - Duration::from_secs(1),
        "closed after {took:?}, before the timeout"
    );

    // Far over the cap: the CLI still gets in, at once, again and again.
    let idle = open_many(&api, 300, b"");
    assert_eq!(idle.len(), 300);
    for _ in 0..3 {
        let started = Instant::now();
        let out = a.cli(&["members"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    let evicted = 300 - shoal::api::MAX_CONNS as u64;
    assert!(
        wait_for(Duration::from_secs(5), || stat(&a, "api_conns_closed")
            >= evicted),
        "{} API connections closed at the cap, expected {evicted}",
        stat(&a, "api_conns_closed")
    );

    // The event stream lived through all of it: keepalive lines still come.
    events
        .set_read_timeout(Some(shoal::api::KEEPALIVE + Duration::from_secs(3)))
        .unwrap();
    let mut seen = String::new();
    while seen.matches("keepalive").count() < 3 {
        let n = events.read(&mut buf).unwrap_or(0);
        assert!(n > 0, "the event stream was closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[test]
fn api_abuse_under_a_low_fd_limit_leaves_the_gossip_port_working() {
    let seed = vec![format!("{}:7946", ip(47, 1))];
    let a = Agent::start("f1", &ip(47, 1), &seed, &[]);
    // 256 descriptors, as in a tight container.
    let limit = libc::rlimit {
        rlim_cur: 256,
        rlim_max: 256,
    };
    // SAFETY: prlimit on a child we own, with a valid struct and no old-limit out pointer.
    let rc = unsafe { libc::prlimit(a.pid(), libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let _flood = open_many(&a.api(), 300, b"");
    let started = Instant::now();
    assert!(a.cli(&["members"]).status.success());
    assert!(started.elapsed() < Duration::from_secs(3));
    let pulls_before = stat(&a, "push_pulls");
    let b = Agent::start("f2", &ip(47, 2), &seed, &[]);
    assert!(wait_for(Duration::from_secs(15), || converged(
        &[&a, &b],
        &["f1", "f2"]
    )));
    assert!(
        stat(&a, "push_pulls") > pulls_before,
        "the gossip port took no push-pull"
    );
}

#[test]
fn tcp_authentication_failures_are_warned_once_per_source() {
    let key = {
        let out = common::output_within(
            std::process::Command::new(common::shoal_bin()).arg("keygen"),
            common::CLI_TIMEOUT,
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let seed = vec![format!("{}:7946", ip(48, 1))];
    let a = Agent::start("w1", &ip(48, 1), &seed, &["--encrypt", &key]);
    let frame = wire::encode_frame(
        &TcpMsg::KeyOp(wire::KeyRequest::new(wire::KeyOp::List, 0)),
        None,
    )
    .unwrap();
    let target: SocketAddr = a.gossip().parse().unwrap();
    runtime().block_on(async {
        for _ in 0..200 {
            let mut s = connect_from(&ip(48, 9), target).await.unwrap();
            s.write_all(&frame).await.unwrap();
            closed_within(&mut s, Duration::from_secs(5)).await;
        }
    });
    assert!(wait_for(Duration::from_secs(5), || stat(
        &a,
        "auth_failures"
    ) >= 200));
    let lines = a
        .log_text()
        .lines()
        .filter(|l| l.contains("TCP exchange refused"))
        .count();
    assert_eq!(lines, 1, "{}", a.log_text());
}
