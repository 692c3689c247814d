//! TCP on the gossip port: push-pull (both sides send their whole member
//! table, as memberlist does on join and periodically, so a joining node
//! learns everyone at once and a healed partition converges) and keyring
//! operations. Frames are sealed when a keyring is set.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::keyring::Keyring;
use crate::wire::{self, DecodeError, TcpMsg, FRAME_HEADER};

pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

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
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Decode(e) => write!(f, "{e}"),
            FrameError::Io(e) => f.write_str(e),
        }
    }
}

pub async fn read_frame(
    stream: &mut TcpStream,
    ring: Option<&Keyring>,
) -> Result<TcpMsg, FrameError> {
    let mut header = [0u8; FRAME_HEADER];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| FrameError::Io(format!("reading frame header: {e}")))?;
    let len = wire::frame_len(&header).map_err(FrameError::Decode)?;
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| FrameError::Io(format!("reading {len}-byte frame: {e}")))?;
    wire::decode_frame_body(&body, ring).map_err(FrameError::Decode)
}

pub async fn write_frame(
    stream: &mut TcpStream,
    msg: &TcpMsg,
    ring: Option<&Keyring>,
) -> Result<(), FrameError> {
    let bytes = wire::encode_frame(msg, ring).map_err(FrameError::Io)?;
    stream
        .write_all(&bytes)
        .await
        .map_err(|e| FrameError::Io(format!("writing frame: {e}")))?;
    stream
        .flush()
        .await
        .map_err(|e| FrameError::Io(e.to_string()))
}

/// Initiates an exchange: send ours, read theirs.
pub async fn exchange(
    addr: SocketAddr,
    ours: TcpMsg,
    ring: Option<Keyring>,
) -> Result<TcpMsg, FrameError> {
    let run = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| FrameError::Io(format!("connect: {e}")))?;
        write_frame(&mut stream, &ours, ring.as_ref()).await?;
        read_frame(&mut stream, ring.as_ref()).await
    };
    tokio::time::timeout(IO_TIMEOUT, run)
        .await
        .map_err(|_| FrameError::Io(format!("timed out after {IO_TIMEOUT:?}")))?
}
