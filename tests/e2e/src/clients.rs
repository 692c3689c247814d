//! Long-lived clients a deploy scenario holds open across a rolling update, and a POST
//! client: each checks what it got back (length, bytes, checksum, echo), so a cut or a
//! mixed-up answer is a failure, not a success with a short body.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tungstenite::Message;

/// FNV-1a 64, the checksum the demo webapp's `POST /echo` reports.
pub fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `POST /echo` with `body` on a new connection; `Ok(hostname)` when the webapp reports
/// exactly this body's length and checksum.
pub fn post_echo(addr: SocketAddr, body: &[u8], timeout: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, answer) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {raw:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("POST: {}", head.lines().next().unwrap_or_default()));
    }
    let v: serde_json::Value =
        serde_json::from_str(answer).map_err(|e| format!("POST answer {answer:?}: {e}"))?;
    let want = format!("{:016x}", fnv1a64(body));
    if v["bytes"] != body.len() || v["checksum"] != want.as_str() {
        return Err(format!("POST echoed {v} for {} bytes {want}", body.len()));
    }
    v["hostname"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("POST answer without hostname: {v}"))
}

/// What a whole download delivered.
#[derive(Debug, Clone)]
pub struct Downloaded {
    pub bytes: u64,
    pub took: Duration,
}

/// `GET /download?seconds=S&rate=B` read to the end; an error unless the status is 200,
/// `Content-Length` is `S × B` and every byte is the webapp's pattern (`a`–`z` repeating).
pub fn download(addr: SocketAddr, seconds: u64, rate: u64) -> Result<Downloaded, String> {
    let t = Instant::now();
    let want = seconds * rate;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    // Bytes arrive ten times a second: a 10 s silence is a stall.
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET /download?seconds={seconds}&rate={rate} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read after {} bytes: {e}", raw.len()))?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no header end")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(format!(
            "download: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    if !head.contains(&format!("content-length: {want}")) {
        return Err(format!("download: no content-length {want} in {head:?}"));
    }
    let body = &raw[end + 4..];
    if body.len() as u64 != want {
        return Err(format!("download cut: {} of {want} bytes", body.len()));
    }
    if let Some(i) = body
        .iter()
        .enumerate()
        .position(|(i, b)| *b != b'a' + (i % 26) as u8)
    {
        return Err(format!("download: wrong byte at offset {i}"));
    }
    Ok(Downloaded {
        bytes: want,
        took: t.elapsed(),
    })
}

/// What a held WebSocket did.
#[derive(Debug, Clone)]
pub struct WsHeld {
    pub echoes: usize,
    pub took: Duration,
}

/// Opens `ws://addr/ws`, sends a numbered text message every `every` for `hold` and
/// checks each echo, then closes with the close handshake. An error names the first
/// message that did not come back.
pub fn hold_websocket(addr: SocketAddr, hold: Duration, every: Duration) -> Result<WsHeld, String> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let (mut ws, resp) = tungstenite::client::client(format!("ws://{addr}/ws"), tcp)
        .map_err(|e| format!("websocket handshake: {e}"))?;
    if resp.status() != 101 {
        return Err(format!("websocket handshake: status {}", resp.status()));
    }
    let t = Instant::now();
    let mut echoes = 0;
    while t.elapsed() < hold {
        let msg = format!("ping {echoes} at {:.1}s", t.elapsed().as_secs_f64());
        ws.send(Message::text(msg.clone()))
            .map_err(|e| format!("websocket send #{echoes}: {e}"))?;
        match ws.read() {
            Ok(Message::Text(t)) if t.as_str() == msg => echoes += 1,
            Ok(other) => return Err(format!("websocket #{echoes}: got {other:?}")),
            Err(e) => return Err(format!("websocket #{echoes} after {:?}: {e}", t.elapsed())),
        }
        std::thread::sleep(every);
    }
    ws.close(None)
        .map_err(|e| format!("websocket close: {e}"))?;
    // Read until the server's close reply (the handshake completes) or the stream ends.
    loop {
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => return Err(format!("websocket close reply: {e}")),
        }
    }
    Ok(WsHeld {
        echoes,
        took: t.elapsed(),
    })
}
