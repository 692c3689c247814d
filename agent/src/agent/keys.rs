//! Key rotation, Serf's key manager: one operation applied here (on a copy,
//! saved, then swapped in), asked of every live member over TCP, and the
//! per-node results summed up for `shoal keys`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use crate::freshness::{NonceGuard, Refusal};
use crate::identity::now_millis;
use crate::keyring::{Key, Keyring};
use crate::pushpull::{self, SharedKeyring};
use crate::stats::Stats;
use crate::wire::{KeyOp, KeyReply, KeyRequest, TcpMsg};

/// The keyring and what key operations need besides it.
pub struct KeyCtx {
    pub ring: SharedKeyring,
    pub file: Option<std::path::PathBuf>,
    pub node: String,
    /// Serialises key operations (see [`apply_key_op`]).
    pub op_lock: tokio::sync::Mutex<()>,
    /// Nonces of the key operations taken from peers, so a replayed or stale
    /// one is refused.
    pub fresh: Mutex<NonceGuard>,
}

/// Cluster-wide result of a key operation.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct KeySummary {
    /// Members asked, this node included.
    pub nodes: usize,
    /// Members that applied it.
    pub ok: usize,
    /// Failures by node name.
    pub errors: BTreeMap<String, String>,
    /// Each key and on how many members it is installed.
    pub keys: BTreeMap<String, usize>,
    /// Each primary key and on how many members it is primary.
    pub primary: BTreeMap<String, usize>,
}

/// Applies a key operation to this node's keyring and its file. The change
/// is made on a copy, saved (fsync, off the runtime thread: the gossip loop
/// must keep answering probes while the disk is slow), and only then swapped
/// in, so a keyring that cannot be saved is left exactly as it was.
pub async fn apply_key_op(ctx: &KeyCtx, op: &KeyOp) -> KeyReply {
    // One operation at a time: two concurrent edits of copies would lose one.
    let _serial = ctx.op_lock.lock().await;
    let reply = |error: Option<String>, ring: Option<&Keyring>| KeyReply {
        node: ctx.node.clone(),
        error,
        keys: ring
            .map(|r| r.keys().map(|k| k.as_str().to_string()).collect())
            .unwrap_or_default(),
    };
    let Some(mut ring) = pushpull::snapshot(&ctx.ring) else {
        return reply(
            Some("encryption is not enabled on this node (start it with --encrypt)".into()),
            None,
        );
    };
    let before = ring.clone();
    let changed = match op {
        KeyOp::List => Ok(false),
        KeyOp::Install(k) => Key::parse(k).map(|key| ring.install(key)),
        KeyOp::Use(k) => ring.use_key(k).map_err(|e| e.to_string()),
        KeyOp::Remove(k) => ring.remove(k).map_err(|e| e.to_string()),
    };
    match changed {
        Err(e) => reply(Some(e), Some(&before)),
        Ok(false) => reply(None, Some(&ring)),
        Ok(true) => {
            if let Some(file) = ctx.file.clone() {
                let copy = ring.clone();
                let shown = file.display().to_string();
                let saved =
                    tokio::task::spawn_blocking(move || crate::persist::save_keyring(&copy, &file))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()));
                if let Err(e) = saved {
                    return reply(
                        Some(format!(
                            "keyring left unchanged: cannot save it to {shown}: {e}"
                        )),
                        Some(&before),
                    );
                }
            }
            *ctx.ring.write().unwrap_or_else(|p| p.into_inner()) = Some(ring.clone());
            info!(op = ?std::mem::discriminant(op), "keyring changed");
            reply(None, Some(&ring))
        }
    }
}

/// A key operation asked for by a peer: applied only if fresh (see
/// [`crate::freshness`]); a stale or replayed one is refused, counted
/// (`key_ops_stale`, `key_ops_replayed`, and `dropped_in`) and logged.
pub(super) async fn serve_key_op(ctx: &KeyCtx, stats: &Stats, req: &KeyRequest) -> KeyReply {
    let checked = ctx.fresh.lock().unwrap_or_else(|p| p.into_inner()).check(
        req.sent_ms,
        req.nonce,
        now_millis(),
    );
    match checked {
        Ok(()) => apply_key_op(ctx, &req.op).await,
        Err(why) => {
            let counter = match why {
                Refusal::Replayed => &stats.key_ops_replayed,
                Refusal::Stale { .. } | Refusal::Flood => &stats.key_ops_stale,
            };
            Stats::add(counter, 1);
            Stats::add(&stats.dropped_in, 1);
            warn!(error = %why, "key operation refused");
            KeyReply {
                node: ctx.node.clone(),
                error: Some(format!("refused: {why}")),
                keys: pushpull::snapshot(&ctx.ring)
                    .map(|r| r.keys().map(|k| k.as_str().to_string()).collect())
                    .unwrap_or_default(),
            }
        }
    }
}

/// Runs a key operation here, then on every live member in parallel.
pub(super) async fn cluster_key_op(
    ctx: Arc<KeyCtx>,
    op: KeyOp,
    peers: Vec<(String, SocketAddr)>,
    stats: Arc<Stats>,
) -> Result<KeySummary, String> {
    if let KeyOp::Install(k) | KeyOp::Use(k) | KeyOp::Remove(k) = &op {
        Key::parse(k)?;
    }
    let local = apply_key_op(&ctx, &op).await;
    if ctx.ring.read().unwrap_or_else(|p| p.into_inner()).is_none() {
        return Err(local.error.unwrap_or_default());
    }
    let ring = pushpull::snapshot(&ctx.ring);
    // One stamp for every peer: each remembers the nonce on its own.
    let request = KeyRequest::new(op, now_millis());
    let mut tasks = tokio::task::JoinSet::new();
    for (name, addr) in peers {
        let msg = TcpMsg::KeyOp(request.clone());
        let ring = ring.clone();
        let stats = stats.clone();
        tasks.spawn(async move {
            match pushpull::exchange(addr, msg, ring, &stats.metrics).await {
                Ok(TcpMsg::KeyReply(r)) => r,
                Ok(_) => KeyReply {
                    node: name,
                    error: Some("unexpected answer".into()),
                    keys: Vec::new(),
                },
                Err(e) => KeyReply {
                    node: name,
                    error: Some(e.to_string()),
                    keys: Vec::new(),
                },
            }
        });
    }
    let mut replies = vec![local];
    while let Some(r) = tasks.join_next().await {
        if let Ok(r) = r {
            replies.push(r);
        }
    }
    let mut summary = KeySummary {
        nodes: replies.len(),
        ..KeySummary::default()
    };
    for r in replies {
        match r.error {
            Some(e) => {
                summary.errors.insert(r.node, e);
            }
            None => summary.ok += 1,
        }
        for (i, k) in r.keys.iter().enumerate() {
            *summary.keys.entry(k.clone()).or_default() += 1;
            if i == 0 {
                *summary.primary.entry(k.clone()).or_default() += 1;
            }
        }
    }
    Ok(summary)
}
