//! TCP push-pull: both sides send their whole member table, as memberlist
//! does on join and periodically, so a joining node learns everyone at once
//! and nodes that missed gossip (or a healed partition) converge.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wire::{self, SyncMsg, FRAME_HEADER};

pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn read_frame(stream: &mut TcpStream) -> Result<SyncMsg, String> {
    let mut header = [0u8; FRAME_HEADER];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| format!("reading frame header: {e}"))?;
    let len = wire::frame_len(&header).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("reading {len}-byte frame: {e}"))?;
    wire::decode_frame_body(&body).map_err(|e| e.to_string())
}

pub async fn write_frame(stream: &mut TcpStream, msg: &SyncMsg) -> Result<(), String> {
    let bytes = wire::encode_frame(msg)?;
    stream
        .write_all(&bytes)
        .await
        .map_err(|e| format!("writing frame: {e}"))?;
    stream.flush().await.map_err(|e| e.to_string())
}

/// Initiates an exchange: send ours, read theirs.
pub async fn exchange(addr: SocketAddr, ours: SyncMsg) -> Result<SyncMsg, String> {
    let run = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        write_frame(&mut stream, &ours).await?;
        read_frame(&mut stream).await
    };
    tokio::time::timeout(IO_TIMEOUT, run)
        .await
        .map_err(|_| format!("timed out after {IO_TIMEOUT:?}"))?
}
