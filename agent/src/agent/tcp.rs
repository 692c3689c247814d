//! The TCP server on the gossip port: push-pull state exchanges and key
//! operations, one frame in and one out per connection, under a connection
//! cap and a per-source warning throttle.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::keys::{serve_key_op, KeyCtx};
use super::Command;
use crate::limits::{ConnLimiter, WarnLimiter};
use crate::metrics::Dir;
use crate::pushpull::{self, FrameError};
use crate::stats::Stats;
use crate::wire::{self, TcpMsg};

/// Inbound TCP connections on the gossip port open at once, in all and per
/// source address (so one source cannot take every slot).
pub const MAX_TCP_CONNS: usize = 64;
pub const MAX_TCP_CONNS_PER_SOURCE: usize = 8;

/// Whether a warning about `from` may be logged now.
pub(super) fn allow_warning(limiter: &Mutex<WarnLimiter>, from: SocketAddr) -> bool {
    limiter
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .allow(from.ip(), std::time::Instant::now())
}

/// Counts a failed frame under its reason.
pub(super) fn count_frame_error(stats: &Stats, e: &FrameError) {
    match e {
        FrameError::Timeout(_) => Stats::add(&stats.dropped_deadline, 1),
        FrameError::Busy => Stats::add(&stats.dropped_busy, 1),
        e if e.is_size() => Stats::add(&stats.dropped_size, 1),
        _ => {}
    }
}

/// Serves TCP on the gossip port (push-pull and key operations); each
/// connection in its own task, at most [`MAX_TCP_CONNS`] at once
/// ([`MAX_TCP_CONNS_PER_SOURCE`] per source address). A connection over the
/// cap is closed at once and counted (`dropped_conn_cap`).
pub(super) async fn accept_tcp(
    listener: TcpListener,
    commands: mpsc::Sender<Command>,
    stats: Arc<Stats>,
    keys: Arc<KeyCtx>,
    warned: Arc<Mutex<WarnLimiter>>,
) {
    let limiter = ConnLimiter::new(MAX_TCP_CONNS, MAX_TCP_CONNS_PER_SOURCE);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match limiter.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                Stats::add(&stats.dropped_conn_cap, 1);
                stats.metrics.dropped("conn_cap");
                if allow_warning(&warned, peer) {
                    warn!(%peer, "TCP connection on the gossip port closed at once: {why}");
                } else {
                    debug!(%peer, "TCP connection closed: {why}");
                }
                continue;
            }
        };
        let (commands, stats, keys, warned) = (
            commands.clone(),
            stats.clone(),
            keys.clone(),
            warned.clone(),
        );
        tokio::spawn(async move {
            let _slot = slot;
            serve_tcp(stream, peer, commands, &stats, &keys, &warned).await;
        });
    }
}

/// One inbound exchange: read a frame, answer it, all within `IO_TIMEOUT`.
async fn serve_tcp(
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    commands: mpsc::Sender<Command>,
    stats: &Stats,
    keys: &KeyCtx,
    warned: &Mutex<WarnLimiter>,
) {
    let started = std::time::Instant::now();
    // Whether the exchange was a key operation (not a push-pull), once known.
    let mut key_op = false;
    let run = async {
        let ring = pushpull::snapshot(&keys.ring);
        let msg = match pushpull::read_frame(
            &mut stream,
            ring.as_ref(),
            pushpull::HEADER_TIMEOUT,
            &stats.metrics,
        )
        .await
        {
            Ok(m) => m,
            Err(e) => {
                if e.is_auth() {
                    // Tell the peer why, in clear: it cannot read anything else from us.
                    let reason = format!("this node could not authenticate the frame: {e}");
                    let _ = stream.write_all(&wire::encode_refusal(&reason)).await;
                }
                return Err(e);
            }
        };
        let answer = match msg {
            TcpMsg::Sync(remote) => {
                let (tx, rx) = oneshot::channel();
                let stopped = || FrameError::Io("agent stopped".into());
                commands
                    .send(Command::PushPullIn { remote, reply: tx })
                    .await
                    .map_err(|_| stopped())?;
                TcpMsg::Sync(rx.await.map_err(|_| stopped())?)
            }
            TcpMsg::KeyOp(req) => {
                key_op = true;
                TcpMsg::KeyReply(serve_key_op(keys, stats, &req).await)
            }
            TcpMsg::QueryReply(reply) => {
                commands
                    .send(Command::ReplyIn(reply))
                    .await
                    .map_err(|_| FrameError::Io("agent stopped".into()))?;
                TcpMsg::Done
            }
            TcpMsg::FetchPayload { ltime, name, .. } => {
                let (tx, rx) = oneshot::channel();
                let stopped = || FrameError::Io("agent stopped".into());
                commands
                    .send(Command::FetchPayload {
                        ltime,
                        name,
                        reply: tx,
                    })
                    .await
                    .map_err(|_| stopped())?;
                TcpMsg::Payload(rx.await.map_err(|_| stopped())?)
            }
            TcpMsg::Clocks(theirs) => {
                let (tx, rx) = oneshot::channel();
                let stopped = || FrameError::Io("agent stopped".into());
                commands
                    .send(Command::Clocks {
                        theirs,
                        reply: Some(tx),
                    })
                    .await
                    .map_err(|_| stopped())?;
                TcpMsg::Clocks(rx.await.map_err(|_| stopped())?)
            }
            TcpMsg::KeyReply(_) | TcpMsg::Payload(_) | TcpMsg::Done => {
                return Err(FrameError::Io("unexpected answer frame".into()))
            }
        };
        // Answer with the keyring as it is now (a `use` just switched it).
        let ring = pushpull::snapshot(&keys.ring);
        pushpull::write_frame(&mut stream, &answer, ring.as_ref(), &stats.metrics).await
    };
    let result = tokio::time::timeout(pushpull::IO_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| {
            Err(FrameError::Timeout(format!(
                "the exchange ({:?})",
                pushpull::IO_TIMEOUT
            )))
        });
    if !key_op {
        stats
            .metrics
            .push_pull(Dir::In, result.is_ok(), started.elapsed());
    }
    match result {
        Ok(()) => Stats::add(&stats.push_pulls, 1),
        Err(e) => {
            Stats::add(&stats.push_pull_failures, 1);
            Stats::add(&stats.dropped_in, 1);
            stats.metrics.dropped_frame(&e);
            count_frame_error(stats, &e);
            if e.is_auth() {
                Stats::add(&stats.auth_failures, 1);
                if allow_warning(warned, peer) {
                    warn!(%peer, error = %e, "TCP exchange refused: every node needs the same --encrypt key");
                }
            } else if e.is_size() {
                if allow_warning(warned, peer) {
                    warn!(%peer, error = %e, "push-pull frame refused");
                }
            } else {
                debug!(%peer, error = %e, "inbound TCP exchange refused");
            }
        }
    }
}
