//! Traffic counters shown by `shoal info` and `GET /v1/info`, and the
//! Prometheus metrics of `GET /metrics` ([`crate::metrics`]) beside them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

#[derive(Debug, Default)]
pub struct Stats {
    pub packets_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Packets refused: foreign, malformed, oversize, wrong version or rejected by foca.
    pub dropped_in: AtomicU64,
    /// Packets we could not send (socket buffer full, unreachable).
    pub dropped_out: AtomicU64,
    /// Packets and frames that failed decryption/authentication (part of `dropped_in`).
    pub auth_failures: AtomicU64,
    pub push_pulls: AtomicU64,
    pub push_pull_failures: AtomicU64,
    /// TCP frames refused for their declared size or member count (part of `dropped_in`).
    pub dropped_size: AtomicU64,
    /// TCP connections closed at once: the connection cap was reached.
    pub dropped_conn_cap: AtomicU64,
    /// TCP exchanges cut at their deadline (header or whole frame).
    pub dropped_deadline: AtomicU64,
    /// Frames refused because the read budget or the merge queue was full.
    pub dropped_busy: AtomicU64,
    /// New members refused because the member table was full.
    pub members_refused: AtomicU64,
    /// API connections closed: idle ones evicted at the cap, or refused.
    pub api_conns_closed: AtomicU64,
    /// Key operations refused as outside the time window (or a nonce flood).
    pub key_ops_stale: AtomicU64,
    /// Key operations refused because their nonce was used already.
    pub key_ops_replayed: AtomicU64,
    /// What `GET /metrics` shows (counted at the same places).
    pub metrics: crate::metrics::Metrics,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct StatsView {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub dropped_in: u64,
    pub dropped_out: u64,
    pub auth_failures: u64,
    pub push_pulls: u64,
    pub push_pull_failures: u64,
    pub dropped_size: u64,
    pub dropped_conn_cap: u64,
    pub dropped_deadline: u64,
    pub dropped_busy: u64,
    pub members_refused: u64,
    pub api_conns_closed: u64,
    #[serde(default)]
    pub key_ops_stale: u64,
    #[serde(default)]
    pub key_ops_replayed: u64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn view(&self) -> StatsView {
        StatsView {
            packets_in: self.packets_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            packets_out: self.packets_out.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            dropped_in: self.dropped_in.load(Relaxed),
            dropped_out: self.dropped_out.load(Relaxed),
            auth_failures: self.auth_failures.load(Relaxed),
            push_pulls: self.push_pulls.load(Relaxed),
            push_pull_failures: self.push_pull_failures.load(Relaxed),
            dropped_size: self.dropped_size.load(Relaxed),
            dropped_conn_cap: self.dropped_conn_cap.load(Relaxed),
            dropped_deadline: self.dropped_deadline.load(Relaxed),
            dropped_busy: self.dropped_busy.load(Relaxed),
            members_refused: self.members_refused.load(Relaxed),
            api_conns_closed: self.api_conns_closed.load(Relaxed),
            key_ops_stale: self.key_ops_stale.load(Relaxed),
            key_ops_replayed: self.key_ops_replayed.load(Relaxed),
        }
    }
}
