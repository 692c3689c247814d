//! Health checks flipping `starting` → `ready` → `unhealthy` → `ready`,
//! over HTTP (a tiny server in the test) and with a command.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shoal::supervisor::health::check_once;
use shoal::supervisor::{CheckSpec, CheckTarget, Health, Supervisor, SupervisorSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const BOUND: Duration = Duration::from_secs(15);

/// Serves every request with the status code currently in `code`.
async fn serve(code: Arc<AtomicU16>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let code = code.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

async fn expect_state(rx: &mut watch::Receiver<Health>, want: Health) {
    tokio::time::timeout(BOUND, rx.wait_for(|h| *h == want))
        .await
        .unwrap_or_else(|_| panic!("health never became {want}"))
        .expect("checker alive");
}

fn main_sleeping() -> SupervisorSpec {
    SupervisorSpec::from_command(&["/bin/sh".into(), "-c".into(), "exec sleep 30".into()])
        .expect("spec")
}

#[tokio::test]
async fn an_http_check_flips_ready_unhealthy_ready() {
    let code = Arc::new(AtomicU16::new(503));
    let port = serve(code.clone()).await;
    let mut spec = main_sleeping();
    spec.check = Some(CheckSpec {
        target: CheckTarget::parse_http(&format!("http://127.0.0.1:{port}/health")).expect("url"),
        interval: Duration::from_millis(50),
        start_interval: Duration::from_millis(50),
        timeout: Duration::from_millis(50),
        rise: 2,
        fall: 2,
    });
    let sup = Supervisor::start(spec).await.expect("start");
    let mut rx = sup.health().expect("health");
    assert_eq!(*rx.borrow(), Health::Starting);
    // Failing before the first pass stays `starting`.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*rx.borrow(), Health::Starting);
    code.store(200, Ordering::SeqCst);
    expect_state(&mut rx, Health::Ready).await;
    code.store(500, Ordering::SeqCst);
    expect_state(&mut rx, Health::Unhealthy).await;
    code.store(302, Ordering::SeqCst);
    expect_state(&mut rx, Health::Ready).await;
    tokio::time::timeout(BOUND, sup.shutdown())
        .await
        .expect("shutdown");
}

/// Counts the requests it answers (200), from the moment it is started.
async fn serve_counting(listener: tokio::net::TcpListener, count: Arc<AtomicU16>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        count.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

#[tokio::test]
async fn checks_run_fast_until_the_first_pass_then_at_the_interval() {
    // A port that nothing listens on yet; the "app" opens it 700 ms in.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let mut spec = main_sleeping();
    spec.check = Some(CheckSpec {
        target: CheckTarget::parse_http(&format!("http://{addr}/health")).expect("url"),
        interval: Duration::from_secs(30),
        start_interval: Duration::from_millis(100),
        timeout: Duration::from_secs(1),
        rise: 1,
        fall: 3,
    });
    let sup = Supervisor::start(spec).await.expect("start");
    let mut rx = sup.health().expect("health");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(*rx.borrow(), Health::Starting);
    let count = Arc::new(AtomicU16::new(0));
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    let opened = std::time::Instant::now();
    tokio::spawn(serve_counting(listener, count.clone()));
    expect_state(&mut rx, Health::Ready).await;
    let took = opened.elapsed();
    eprintln!("port open -> ready in {took:?} (start_interval 100ms, interval 30s)");
    // One start interval plus scheduling; the 30 s interval would fail this.
    assert!(
        took < Duration::from_secs(2),
        "ready {took:?} after the port opened"
    );
    // From the first pass on, the 30 s interval: no further check in 1 s.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "checks after the first pass"
    );
    tokio::time::timeout(BOUND, sup.shutdown())
        .await
        .expect("shutdown");
}

#[tokio::test]
async fn a_command_check_follows_its_exit_status() {
    let dir = tempfile::tempdir().expect("tmp");
    let flag = dir.path().join("healthy");
    let mut spec = main_sleeping();
    spec.apply_check_flags(
        None,
        Some(&format!("test -e {}", flag.display())),
        Some(Duration::from_millis(50)),
    )
    .expect("flags");
    if let Some(c) = spec.check.as_mut() {
        c.fall = 1;
    }
    let sup = Supervisor::start(spec).await.expect("start");
    let mut rx = sup.health().expect("health");
    std::fs::write(&flag, "").expect("touch");
    expect_state(&mut rx, Health::Ready).await;
    std::fs::remove_file(&flag).expect("rm");
    expect_state(&mut rx, Health::Unhealthy).await;
    tokio::time::timeout(BOUND, sup.shutdown())
        .await
        .expect("shutdown");
}

#[tokio::test]
async fn a_closed_port_or_a_slow_command_fails_within_the_timeout() {
    // Bind then drop: nothing listens on that port any more.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let t = CheckTarget::parse_http(&format!("http://127.0.0.1:{port}/")).expect("url");
    assert!(check_once(&t, Duration::from_millis(500)).await.is_err());

    let start = std::time::Instant::now();
    let slow = CheckTarget::Command("sleep 5".into());
    let err = check_once(&slow, Duration::from_millis(200))
        .await
        .expect_err("too slow");
    assert!(err.contains("timed out"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn no_check_means_no_health_channel() {
    let sup = Supervisor::start(main_sleeping()).await.expect("start");
    assert!(sup.health().is_none());
    tokio::time::timeout(BOUND, sup.shutdown())
        .await
        .expect("shutdown");
}

/// The first checks of a starting service come fast (5, 10, 20, 40, 80 ms apart), so an app
/// that answers a few ms after its spawn is `ready` that soon, not one `start_interval` later;
/// then they slow to `start_interval`: a slow-starting app is not hammered.
#[tokio::test]
async fn a_starting_service_is_checked_at_a_pace_ramping_up_to_the_start_interval() {
    let dir = tempfile::tempdir().expect("tmp");
    let runs = dir.path().join("runs");
    let mut spec = main_sleeping();
    // A check that records each run and never passes.
    spec.apply_check_flags(
        None,
        Some(&format!("echo x >> {}; false", runs.display())),
        Some(Duration::from_secs(30)),
    )
    .expect("flags");
    if let Some(c) = spec.check.as_mut() {
        c.start_interval = Duration::from_secs(1);
    }
    let sup = Supervisor::start(spec).await.expect("start");
    let count = || {
        std::fs::read_to_string(&runs)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let early = count();
    // The ramp: checks at ~0, 5, 15, 35, 75, 155, 315 ms; a flat 1 s start interval would
    // have run one. Generous: 4, whatever the machine's load delays each shell.
    assert!(early >= 4, "{early} checks in the first 500 ms");
    // The ramp stops at the start interval: 1.5 s later at most two or three more.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = count() - early;
    assert!(
        later <= 3,
        "{later} checks in 1.5 s at a 1 s start interval"
    );
    tokio::time::timeout(BOUND, sup.shutdown())
        .await
        .expect("shutdown");
}
