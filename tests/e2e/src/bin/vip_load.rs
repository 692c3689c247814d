//! A bounded HTTP load generator that runs *inside* a container on a compose network (the
//! host binary bind-mounted into the webapp image: same Debian glibc), so its traffic goes
//! to the VIP only between the test's own containers (tests/e2e/tests/ha.rs, bench/vip.sh).
//!
//! `vip_load ADDR THREADS INTERVAL_MS SECONDS`: each thread sends `GET /` on a new
//! connection (`Connection: close`), then waits INTERVAL_MS; at most SECONDS and 200,000
//! requests in all. One line per request on stdout: `START_MS END_MS ok|err WHY`, wall-clock
//! milliseconds since the epoch (the host's clock: a container shares it), so the test can
//! line them up with the `docker kill` it did.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MAX_REQUESTS: u64 = 200_000;
const TIMEOUT: Duration = Duration::from_secs(5);

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn one(addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect:{e}"))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write:{e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read:{e}"))?;
    // The demo webapp's JSON answer names the backend that served it.
    let body_ok = raw.windows(10).any(|w| w == b"\"hostname\"");
    if raw.starts_with(b"HTTP/1.1 200") && body_ok {
        Ok(())
    } else {
        let line = String::from_utf8_lossy(&raw);
        Err(format!(
            "answer:{}",
            line.lines().next().unwrap_or("(empty)")
        ))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: vip_load ADDR THREADS INTERVAL_MS SECONDS";
    let (Some(addr), Some(threads), Some(interval), Some(secs)) = (
        args.get(1).and_then(|a| a.parse::<SocketAddr>().ok()),
        args.get(2).and_then(|a| a.parse::<u64>().ok()),
        args.get(3).and_then(|a| a.parse::<u64>().ok()),
        args.get(4).and_then(|a| a.parse::<u64>().ok()),
    ) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let deadline = Instant::now() + Duration::from_secs(secs.min(600));
    let sent = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads.clamp(1, 64))
        .map(|_| {
            let sent = sent.clone();
            std::thread::spawn(move || {
                let mut lines = String::new();
                while Instant::now() < deadline
                    && sent.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS
                {
                    let start = now_ms();
                    let r = one(addr);
                    let end = now_ms();
                    match r {
                        Ok(()) => lines.push_str(&format!("{start:.1} {end:.1} ok -\n")),
                        Err(e) => lines.push_str(&format!(
                            "{start:.1} {end:.1} err {}\n",
                            e.replace(' ', "_")
                        )),
                    }
                    std::thread::sleep(Duration::from_millis(interval));
                }
                lines
            })
        })
        .collect();
    let mut out = std::io::stdout().lock();
    for h in handles {
        if let Ok(lines) = h.join() {
            let _ = out.write_all(lines.as_bytes());
        }
    }
}
