//! A node's identity in the gossip protocol: name, advertised address,
//! generation and tags.
//!
//! foca keys members by `Identity::addr`, which we make the socket address,
//! so an announce to a seed known only by address is accepted. The generation
//! comes from the wall clock (milliseconds), so a restarted node always carries
//! a newer identity than the one the cluster remembers, and a tag change is a
//! new generation too. The clock is never read here: callers pass the time
//! (see [`renewal_clock`] for the one foca call that cannot take it). Replacing an old entry that has the same *name* but a
//! different address is done by the membership table, which is keyed by name.

use std::cell::Cell;
use std::net::SocketAddr;

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
    /// A node started at wall clock `now_ms` (milliseconds since the epoch).
    pub fn new(name: String, addr: SocketAddr, tags: Tags, now_ms: u64) -> Self {
        NodeId {
            name,
            addr,
            generation: now_ms,
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

    /// The same node with new tags and a newer generation, at wall clock `now_ms`.
    pub fn with_tags(&self, tags: Tags, now_ms: u64) -> Self {
        NodeId {
            tags,
            generation: next_generation(self.generation, now_ms),
            ..self.clone()
        }
    }

    /// The same node with a generation newer than both its own and `above`:
    /// how a live node refutes a leave or failure told about it.
    pub fn renewed_above(&self, above: u64, now_ms: u64) -> Self {
        NodeId {
            generation: next_generation(self.generation, now_ms).max(above.saturating_add(1)),
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

/// The clock, but never behind the previous generation (clocks can step back).
fn next_generation(prev: u64, now_ms: u64) -> u64 {
    now_ms.max(prev + 1)
}

thread_local! {
    static RENEWAL_CLOCK_MS: Cell<u64> = const { Cell::new(0) };
}

/// Sets the wall clock that [`foca::Identity::renew`] uses on this thread.
///
/// foca renews our identity by itself (when it hears that it was declared
/// down) through a trait method that takes no time, so the node
/// ([`crate::node::Core`]) sets the time it was called with here before it
/// calls foca. Without it, a renewal is just the next generation.
pub fn renewal_clock(now_ms: u64) {
    RENEWAL_CLOCK_MS.with(|c| c.set(now_ms));
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        let now_ms = RENEWAL_CLOCK_MS.with(Cell::get);
        Some(NodeId {
            generation: next_generation(self.generation, now_ms),
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

    const NOW_MS: u64 = 1_800_000_000_000;

    fn id(now_ms: u64) -> NodeId {
        NodeId::new(
            "web-1".into(),
            "127.0.0.1:7946".parse().unwrap(),
            Tags::new(),
            now_ms,
        )
    }

    #[test]
    fn renewed_identity_wins_over_the_old_one() {
        let a = id(NOW_MS);
        let b = a.renew().unwrap();
        assert!(b.generation > a.generation);
        assert!(b.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&b));
        assert_eq!(a.addr(), b.addr());
    }

    #[test]
    fn a_restart_carries_a_newer_generation() {
        let a = id(NOW_MS);
        let restarted = id(NOW_MS + 2);
        assert!(restarted.win_addr_conflict(&a));
    }

    #[test]
    fn a_renewal_follows_the_given_clock_but_never_goes_back() {
        let a = id(NOW_MS);
        renewal_clock(NOW_MS + 500);
        assert_eq!(a.renew().unwrap().generation, NOW_MS + 500);
        renewal_clock(NOW_MS - 500);
        assert_eq!(a.renew().unwrap().generation, NOW_MS + 1);
        assert_eq!(a.with_tags(Tags::new(), NOW_MS + 7).generation, NOW_MS + 7);
        assert_eq!(a.renewed_above(NOW_MS + 90, NOW_MS).generation, NOW_MS + 91);
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
