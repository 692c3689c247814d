//! TCP on the gossip port: push-pull (both sides send their whole member
//! table, as memberlist does on join and periodically, so a joining node
//! learns everyone at once and a healed partition converges) and keyring
//! operations. Frames are sealed when a keyring is set.
//!
//! Reading is bounded three ways, because the port is open to anyone: the
//! first bytes must arrive within [`HEADER_TIMEOUT`] and are judged before
//! the body is read ([`wire::check_prefix`]); the body grows with the bytes
//! actually received, never to the length a header claims; and all bodies
//! being read at once share [`READ_BUDGET`] bytes.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::keyring::Keyring;
use crate::metrics::{Dir, Metrics};
use crate::wire::{self, DecodeError, TcpMsg, FRAME_HEADER, FRAME_PREFIX};

/// A whole exchange (connect, write, read) must finish within this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// A frame's first bytes (header and flag) must arrive within this after
/// the read starts: a peer that connects and says nothing is cut early.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes of frame bodies beyond their first [`READ_CHUNK`] being read at
/// once, over every connection (four full frames). A body that would pass it
/// is refused ([`FrameError::Busy`]). First chunks are not charged (the
/// connection cap bounds them), so a small table always gets through.
pub const READ_BUDGET: usize = 32 * 1024 * 1024;
/// A body is read, and charged to the budget, this much at a time.
pub const READ_CHUNK: usize = 64 * 1024;

/// The budget in [`READ_CHUNK`] units, process-wide: memory is.
static BUDGET: Semaphore = Semaphore::const_new(READ_BUDGET / READ_CHUNK);

/// The keyring shared by the gossip loop and the TCP tasks (None: clear text).
pub type SharedKeyring = Arc<RwLock<Option<Keyring>>>;

pub fn snapshot(ring: &SharedKeyring) -> Option<Keyring> {
    ring.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Why a TCP exchange failed; `Auth` is worth a loud log (wrong key).
#[derive(Debug)]
pub enum FrameError {
    Decode(DecodeError),
    Io(String),
    /// The peer was too slow: what was awaited.
    Timeout(String),
    /// Frames being read hold the whole [`READ_BUDGET`].
    Busy,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Decode(e) => write!(f, "{e}"),
            FrameError::Io(e) => f.write_str(e),
            FrameError::Timeout(what) => write!(f, "timed out waiting for {what}"),
            FrameError::Busy => write!(
                f,
                "{READ_BUDGET} bytes of frames are being read already; try again"
            ),
        }
    }
}

impl FrameError {
    /// A refusal about the key (worth telling the peer, and a warning).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            FrameError::Decode(
                DecodeError::Auth | DecodeError::Encrypted | DecodeError::Unencrypted
            )
        )
    }

    /// A frame refused for what it declares: too long, too many members.
    pub fn is_size(&self) -> bool {
        matches!(
            self,
            FrameError::Decode(DecodeError::FrameTooLarge(_) | DecodeError::TooManyEntries(_))
        )
    }
}

/// Reads one frame: its first bytes within `first_bytes` (a stranger's
/// frame: [`HEADER_TIMEOUT`]; an answer we wait for: the exchange's own
/// deadline, as the peer may save a keyring first), judged before the body
/// is read; then the body, charged to [`READ_BUDGET`] as it arrives. The
/// caller bounds the whole read in time.
pub async fn read_frame(
    stream: &mut (impl AsyncRead + Unpin),
    ring: Option<&Keyring>,
    first_bytes: Duration,
    metrics: &Metrics,
) -> Result<TcpMsg, FrameError> {
    let mut prefix = [0u8; FRAME_PREFIX];
    tokio::time::timeout(first_bytes, stream.read_exact(&mut prefix))
        .await
        .map_err(|_| FrameError::Timeout(format!("the frame header ({first_bytes:?})")))?
        .map_err(|e| FrameError::Io(format!("reading frame header: {e}")))?;
    let len = wire::check_prefix(&prefix, ring.is_some()).map_err(FrameError::Decode)?;
    let (body, _charged) = read_body(stream, prefix[FRAME_HEADER], len).await?;
    metrics.tcp(Dir::In, FRAME_HEADER + body.len());
    wire::decode_frame_body(&body, ring).map_err(FrameError::Decode)
}

/// Reads a `len`-byte body whose first byte (`flag`) is already in. The
/// buffer grows a chunk at a time as bytes come, each chunk charged to the
/// budget first; the charge is held until the caller drops it.
async fn read_body(
    stream: &mut (impl AsyncRead + Unpin),
    flag: u8,
    len: usize,
) -> Result<(Vec<u8>, Vec<SemaphorePermit<'static>>), FrameError> {
    let mut body = vec![flag];
    let mut charged = Vec::new();
    while body.len() < len {
        let start = body.len();
        let want = (len - start).min(READ_CHUNK);
        if start >= READ_CHUNK {
            charged.push(BUDGET.try_acquire().map_err(|_| FrameError::Busy)?);
        }
        body.resize(start + want, 0);
        stream
            .read_exact(&mut body[start..])
            .await
            .map_err(|e| FrameError::Io(format!("reading a {len}-byte frame: {e}")))?;
    }
    Ok((body, charged))
}

pub async fn write_frame(
    stream: &mut TcpStream,
    msg: &TcpMsg,
    ring: Option<&Keyring>,
    metrics: &Metrics,
) -> Result<(), FrameError> {
    let bytes = wire::encode_frame(msg, ring).map_err(FrameError::Io)?;
    stream
        .write_all(&bytes)
        .await
        .map_err(|e| FrameError::Io(format!("writing frame: {e}")))?;
    stream
        .flush()
        .await
        .map_err(|e| FrameError::Io(e.to_string()))?;
    metrics.tcp(Dir::Out, bytes.len());
    Ok(())
}

/// Initiates an exchange: send ours, read theirs.
pub async fn exchange(
    addr: SocketAddr,
    ours: TcpMsg,
    ring: Option<Keyring>,
    metrics: &Metrics,
) -> Result<TcpMsg, FrameError> {
    let run = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| FrameError::Io(format!("connect: {e}")))?;
        write_frame(&mut stream, &ours, ring.as_ref(), metrics).await?;
        read_frame(&mut stream, ring.as_ref(), IO_TIMEOUT, metrics).await
    };
    tokio::time::timeout(IO_TIMEOUT, run)
        .await
        .map_err(|_| FrameError::Timeout(format!("the exchange ({IO_TIMEOUT:?})")))?
}
