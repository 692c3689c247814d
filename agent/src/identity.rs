//! A node's identity in the gossip protocol: name, advertised address,
//! generation and tags.
//!
//! foca keys members by `Identity::addr`, which we make the socket address,
//! so an announce to a seed known only by address is accepted. The generation
//! comes from the wall clock (milliseconds), so a restarted node always carries
//! a newer identity than the one the cluster remembers, and a tag change is a
//! new generation too. Replacing an old entry that has the same *name* but a
//! different address is done by the membership table, which is keyed by name.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::tags::{self, Tags};

/// Longest node name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// How far ahead of the receiver's clock a generation may be. Generations
/// are wall-clock milliseconds, so a real one is never much ahead (clock
/// skew); one beyond this is forged (e.g. `u64::MAX`, which no refutation
/// could ever beat) and is refused.
pub const MAX_GENERATION_AHEAD_MS: u64 = 10 * 60 * 1000;

/// Whether a peer's `generation` is believable at our wall clock `now_ms`.
pub fn plausible_generation(generation: u64, now_ms: u64) -> bool {
    generation <= now_ms.saturating_add(MAX_GENERATION_AHEAD_MS)
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    pub name: String,
    pub addr: SocketAddr,
    /// Milliseconds since the epoch at creation; strictly increases on renew.
    pub generation: u64,
    pub tags: Tags,
}

impl NodeId {
    pub fn new(name: String, addr: SocketAddr, tags: Tags) -> Self {
        NodeId {
            name,
            addr,
            generation: now_millis(),
            tags,
        }
    }

    /// A placeholder identity for a seed known only by its address: foca
    /// accepts an announce addressed to any identity with the right address.
    pub fn seed(addr: SocketAddr) -> Self {
        NodeId {
            name: String::new(),
            addr,
            generation: 0,
            tags: Tags::new(),
        }
    }

    /// The same node with new tags and a newer generation.
    pub fn with_tags(&self, tags: Tags) -> Self {
        NodeId {
            tags,
            generation: next_generation(self.generation),
            ..self.clone()
        }
    }

    /// The same node with a generation newer than both its own and `above`:
    /// how a live node refutes a leave or failure told about it.
    pub fn renewed_above(&self, above: u64) -> Self {
        NodeId {
            generation: next_generation(self.generation).max(above.saturating_add(1)),
            ..self.clone()
        }
    }

    /// Checks what a peer could have forged: name and tags limits.
    pub fn validate(&self) -> Result<(), String> {
        validate_name(&self.name)?;
        tags::validate(&self.tags).map_err(|e| e.to_string())
    }
}

/// Node names: 1-128 bytes of `A-Z a-z 0-9 . _ -` (hostnames fit), so a name is
/// safe in logs, handler environments and HAProxy server names.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "node name {name:?} must be 1-{MAX_NAME_LEN} bytes long"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "node name {name:?} may only contain A-Z a-z 0-9 . _ -"
        ));
    }
    Ok(())
}

pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The clock, but never behind the previous generation (clocks can step back).
fn next_generation(prev: u64) -> u64 {
    now_millis().max(prev + 1)
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(NodeId {
            generation: next_generation(self.generation),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn id() -> NodeId {
        NodeId::new(
            "web-1".into(),
            "127.0.0.1:7946".parse().unwrap(),
            Tags::new(),
        )
    }

    #[test]
    fn renewed_identity_wins_over_the_old_one() {
        let a = id();
        let b = a.renew().unwrap();
        assert!(b.generation > a.generation);
        assert!(b.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&b));
        assert_eq!(a.addr(), b.addr());
    }

    #[test]
    fn a_restart_carries_a_newer_generation() {
        let a = id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let restarted = id();
        assert!(restarted.win_addr_conflict(&a));
    }

    #[test]
    fn names_are_restricted() {
        assert!(validate_name("web-1.example_2").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name("a\nb").is_err());
        assert!(validate_name(&"x".repeat(129)).is_err());
    }
}
