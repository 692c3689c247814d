//! Freshness of key operations. A sealed key-operation frame proves who made
//! it, not when: someone on the path can capture "use K2" and resend it after
//! the operator moved on (making K2 primary again, or replaying a remove).
//! So each request carries the sender's wall clock and a random nonce, and a
//! receiver takes it only within [`KEY_OP_WINDOW_MS`] of its own clock and
//! only once. Pure: the caller passes the time.

use std::collections::{HashMap, VecDeque};

/// How far a key operation's time may be from the receiver's clock, either
/// way (so node clocks must agree within this).
pub const KEY_OP_WINDOW_MS: u64 = 30_000;
/// Most nonces remembered; only key holders can make fresh requests, so
/// this is never reached by an operator (it bounds memory, not rotations).
pub const MAX_KEY_OP_NONCES: usize = 4096;

/// Why a key operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Outside the window: too old (a late replay) or from the future.
    Stale { sent_ms: u64, now_ms: u64 },
    /// This nonce was used already: a replay within the window.
    Replayed,
    /// More fresh requests within the window than can be remembered.
    Flood,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Stale { sent_ms, now_ms } => {
                let (by, way) = if sent_ms > now_ms {
                    (sent_ms - now_ms, "ahead of")
                } else {
                    (now_ms - sent_ms, "behind")
                };
                write!(
                    f,
                    "stale key operation: sent {by} ms {way} this node's clock, more than \
                     the {KEY_OP_WINDOW_MS} ms allowed (a replay, or clocks that disagree)"
                )
            }
            Refusal::Replayed => write!(f, "replayed key operation: its nonce was used already"),
            Refusal::Flood => write!(
                f,
                "more than {MAX_KEY_OP_NONCES} key operations within {KEY_OP_WINDOW_MS} ms"
            ),
        }
    }
}

/// The nonces seen within the window, with their send times.
#[derive(Debug, Default)]
pub struct NonceGuard {
    seen: HashMap<[u8; 16], u64>,
    /// (sent_ms, nonce) in arrival order, for expiry.
    order: VecDeque<(u64, [u8; 16])>,
}

impl NonceGuard {
    /// Accepts a request made at `sent_ms` with `nonce` once, if fresh.
    pub fn check(&mut self, sent_ms: u64, nonce: [u8; 16], now_ms: u64) -> Result<(), Refusal> {
        if sent_ms.abs_diff(now_ms) > KEY_OP_WINDOW_MS {
            return Err(Refusal::Stale { sent_ms, now_ms });
        }
        self.expire(now_ms);
        if self.seen.contains_key(&nonce) {
            return Err(Refusal::Replayed);
        }
        if self.seen.len() >= MAX_KEY_OP_NONCES {
            return Err(Refusal::Flood);
        }
        self.seen.insert(nonce, sent_ms);
        self.order.push_back((sent_ms, nonce));
        Ok(())
    }

    /// Forgets nonces whose request would now be refused as stale anyway.
    fn expire(&mut self, now_ms: u64) {
        // Arrival order is not send order, so scan all (bounded by MAX_KEY_OP_NONCES).
        let before = self.order.len();
        self.order
            .retain(|(sent, _)| now_ms.saturating_sub(*sent) <= KEY_OP_WINDOW_MS);
        if self.order.len() != before {
            self.seen = self.order.iter().map(|(s, n)| (*n, *s)).collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_operation_is_taken_once_and_only_while_fresh() {
        let mut g = NonceGuard::default();
        let now = 1_000_000;
        assert_eq!(g.check(now, [1; 16], now), Ok(()));
        assert_eq!(g.check(now, [1; 16], now + 10), Err(Refusal::Replayed));
        assert_eq!(g.check(now + 5, [2; 16], now), Ok(()), "small skew is fine");
        let late = now + KEY_OP_WINDOW_MS + 1;
        assert!(matches!(
            g.check(now, [3; 16], late),
            Err(Refusal::Stale { .. })
        ));
        let early = now - KEY_OP_WINDOW_MS - 1;
        assert!(matches!(
            g.check(now, [4; 16], early),
            Err(Refusal::Stale { .. })
        ));
        // After the window the nonce is forgotten, and its request refused by time.
        assert!(matches!(
            g.check(now, [1; 16], late),
            Err(Refusal::Stale { .. })
        ));
        assert!(g.seen.is_empty() || g.check(late, [5; 16], late).is_ok());
        assert!(g.seen.len() <= 2);
    }

    #[test]
    fn remembered_nonces_are_bounded() {
        let mut g = NonceGuard::default();
        for i in 0..MAX_KEY_OP_NONCES {
            let mut n = [0u8; 16];
            n[..8].copy_from_slice(&(i as u64).to_le_bytes());
            assert!(g.check(0, n, 0).is_ok());
        }
        assert_eq!(g.check(0, [0xff; 16], 0), Err(Refusal::Flood));
        // Once they age out, room again.
        assert!(g
            .check(KEY_OP_WINDOW_MS + 1, [0xff; 16], KEY_OP_WINDOW_MS + 1)
            .is_ok());
        assert_eq!(g.seen.len(), 1);
    }
}
