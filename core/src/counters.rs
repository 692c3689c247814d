//! What the SWIM layer did, counted for the agent's metrics: plain numbers
//! (this crate has no metrics library), read by the agent at scrape time.
//!
//! foca does not report probes or acks, so the codec it encodes and decodes
//! every SWIM header with ([`crate::wire::ClockedCodec`]) notes each one
//! ([`Seen`]), and the node records them with its monotonic clock after each
//! call into foca (no packet is decoded twice): a direct probe is a `Ping`
//! out, its answer an `Ack` in with the same probe number from the same
//! member, and the time between the two is a round trip.
//! Suspicions are the ones this node's own probes raised (foca scheduled the
//! suspect-to-down timer); one is refuted when the member is seen alive
//! under the same identity before that timer ends it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use foca::{Header, Message};

use crate::identity::NodeId;

/// The SWIM message kinds, in the order of [`ProtocolCounts::messages`].
pub const MESSAGE_KINDS: [&str; 11] = [
    "ping",
    "ack",
    "ping_req",
    "indirect_ping",
    "indirect_ack",
    "forwarded_ack",
    "announce",
    "feed",
    "gossip",
    "broadcast",
    "turn_undead",
];

/// Direct probes awaiting their ack, at most; the oldest is forgotten
/// beyond it (a probe unanswered that long is foca's to give up on).
const MAX_PENDING_PROBES: usize = 64;
/// A probe older than this no longer matches an ack (probe numbers wrap at 256).
const PROBE_MATCH_WINDOW: Duration = Duration::from_secs(30);
/// Round trips kept between two reads by the agent ([`ProtocolCounters::take_rtts`]).
const MAX_RTT_SAMPLES: usize = 1024;

/// Which way a SWIM message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

/// Counts of one node's SWIM traffic and suspicions since it started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolCounts {
    /// Messages by [`MESSAGE_KINDS`] index: `[in, out]`.
    pub messages: [[u64; 2]; MESSAGE_KINDS.len()],
    /// Direct probes (`Ping`) this node sent.
    pub probes_sent: u64,
    /// Acks that answered one of this node's direct probes.
    pub probe_acks: u64,
    /// Indirect probes this node asked others for (`PingReq`s sent).
    pub indirect_probes_sent: u64,
    /// Acks to this node's indirect probes, forwarded back (`ForwardedAck`s in).
    pub indirect_acks: u64,
    /// Members this node's own probes failed (a suspicion started here).
    pub suspicions_raised: u64,
    /// Of those, members heard alive again before the suspicion ran out.
    pub suspicions_refuted: u64,
    /// Times a peer told this node it suspects it, and this node refuted.
    pub self_refutations: u64,
}

/// One SWIM header foca decoded (in) or encoded (out), as its codec saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub direction: Direction,
    /// Index in [`MESSAGE_KINDS`].
    pub kind: usize,
    /// For a `Ping` out, its target; for an `Ack` in, its sender; with the
    /// probe number (what a round trip is matched on).
    pub probe: Option<(String, u8)>,
    /// A `PingReq` out or a `ForwardedAck` in.
    indirect: bool,
}

impl Seen {
    pub fn of(direction: Direction, header: &Header<NodeId>) -> Seen {
        let probe = match (direction, &header.message) {
            (Direction::Out, Message::Ping(n)) => Some((header.dst.name.clone(), *n)),
            (Direction::In, Message::Ack(n)) => Some((header.src.name.clone(), *n)),
            _ => None,
        };
        let indirect = matches!(
            (direction, &header.message),
            (Direction::Out, Message::PingReq { .. })
                | (Direction::In, Message::ForwardedAck { .. })
        );
        Seen {
            direction,
            kind: kind_index(&header.message),
            probe,
            indirect,
        }
    }
}

/// [`ProtocolCounts`] and what it takes to measure probe round trips.
#[derive(Debug, Default)]
pub struct ProtocolCounters {
    pub counts: ProtocolCounts,
    /// (member, probe number, sent at) of direct probes not yet acked.
    pending: VecDeque<(String, u8, Instant)>,
    /// Round trips of acked direct probes, not yet taken by the agent.
    rtts: Vec<Duration>,
}

impl ProtocolCounters {
    /// One header foca read or wrote; `now` is the node's monotonic clock.
    pub fn record(&mut self, seen: Seen, now: Instant) {
        self.counts.messages[seen.kind][seen.direction as usize] += 1;
        match (seen.direction, seen.probe) {
            (Direction::Out, Some((to, n))) => {
                self.counts.probes_sent += 1;
                if self.pending.len() >= MAX_PENDING_PROBES {
                    self.pending.pop_front();
                }
                self.pending.push_back((to, n, now));
            }
            (Direction::In, Some((from, n))) => self.match_ack(&from, n, now),
            (Direction::Out, None) if seen.indirect => self.counts.indirect_probes_sent += 1,
            (Direction::In, None) if seen.indirect => self.counts.indirect_acks += 1,
            _ => {}
        }
    }

    fn match_ack(&mut self, from: &str, n: u8, now: Instant) {
        self.pending
            .retain(|(_, _, sent)| now.saturating_duration_since(*sent) < PROBE_MATCH_WINDOW);
        let Some(i) = self
            .pending
            .iter()
            .position(|(name, probe, _)| *probe == n && name == from)
        else {
            return;
        };
        if let Some((_, _, sent)) = self.pending.remove(i) {
            self.counts.probe_acks += 1;
            if self.rtts.len() < MAX_RTT_SAMPLES {
                self.rtts.push(now.saturating_duration_since(sent));
            }
        }
    }

    /// The round trips measured since the last call.
    pub fn take_rtts(&mut self) -> Vec<Duration> {
        std::mem::take(&mut self.rtts)
    }
}

fn kind_index(m: &Message<NodeId>) -> usize {
    match m {
        Message::Ping(_) => 0,
        Message::Ack(_) => 1,
        Message::PingReq { .. } => 2,
        Message::IndirectPing { .. } => 3,
        Message::IndirectAck { .. } => 4,
        Message::ForwardedAck { .. } => 5,
        Message::Announce => 6,
        Message::Feed => 7,
        Message::Gossip => 8,
        Message::Broadcast => 9,
        Message::TurnUndead => 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tags::Tags;

    fn id(name: &str) -> NodeId {
        NodeId {
            name: name.into(),
            addr: "127.0.0.1:7946".parse().unwrap(),
            generation: 1,
            tags: Tags::new(),
        }
    }

    fn packet(src: &str, dst: &str, message: Message<NodeId>) -> Header<NodeId> {
        Header {
            src: id(src),
            src_incarnation: 0,
            dst: id(dst),
            message,
        }
    }

    fn observe(c: &mut ProtocolCounters, dir: Direction, h: &Header<NodeId>, now: Instant) {
        c.record(Seen::of(dir, h), now);
    }

    #[test]
    fn an_ack_from_the_probed_member_gives_one_round_trip() {
        let mut c = ProtocolCounters::default();
        let t0 = Instant::now();
        observe(
            &mut c,
            Direction::Out,
            &packet("a", "b", Message::Ping(7)),
            t0,
        );
        // An ack with another probe number, or from someone else, is not it.
        observe(
            &mut c,
            Direction::In,
            &packet("b", "a", Message::Ack(8)),
            t0,
        );
        observe(
            &mut c,
            Direction::In,
            &packet("c", "a", Message::Ack(7)),
            t0,
        );
        let t1 = t0 + Duration::from_millis(3);
        observe(
            &mut c,
            Direction::In,
            &packet("b", "a", Message::Ack(7)),
            t1,
        );
        // A duplicate ack is not a second round trip.
        observe(
            &mut c,
            Direction::In,
            &packet("b", "a", Message::Ack(7)),
            t1,
        );
        assert_eq!((c.counts.probes_sent, c.counts.probe_acks), (1, 1));
        assert_eq!(c.take_rtts(), vec![Duration::from_millis(3)]);
        assert!(c.take_rtts().is_empty());
        assert_eq!(c.counts.messages[1][Direction::In as usize], 4);
        assert_eq!(c.counts.messages[0][Direction::Out as usize], 1);
    }

    #[test]
    fn indirect_probes_and_their_acks_are_counted() {
        let mut c = ProtocolCounters::default();
        let now = Instant::now();
        let req = Message::PingReq {
            target: id("b"),
            probe_number: 1,
        };
        observe(&mut c, Direction::Out, &packet("a", "c", req), now);
        let fwd = Message::ForwardedAck {
            origin: id("a"),
            probe_number: 1,
        };
        observe(&mut c, Direction::In, &packet("c", "a", fwd), now);
        assert_eq!(
            (c.counts.indirect_probes_sent, c.counts.indirect_acks),
            (1, 1)
        );
    }

    #[test]
    fn a_cluster_counts_probes_round_trips_and_the_suspicion_of_a_dead_member() {
        let mut net = crate::testing::Net::joined(3);
        for _ in 0..300 {
            net.step();
        }
        let c = net.cores[0].counters();
        assert!(c.counts.probes_sent > 0 && c.counts.probe_acks > 0, "{c:?}");
        assert!(c.counts.probe_acks <= c.counts.probes_sent, "{c:?}");
        assert_eq!(c.counts.suspicions_raised, 0, "{c:?}");
        assert!(!net.cores[0].take_probe_rtts().is_empty());
        // n2 dies: whoever probes it next suspects it, and nobody refutes.
        net.dead.push(2);
        let failed = Some(crate::membership::Status::Failed);
        for _ in 0..1000 {
            if net.status(0, "n2") == failed {
                break;
            }
            net.step();
        }
        assert_eq!(net.status(0, "n2"), failed, "not failed after 1,000 steps");
        let raised: u64 = (0..2)
            .map(|i| net.cores[i].counters().counts.suspicions_raised)
            .sum();
        let refuted: u64 = (0..2)
            .map(|i| net.cores[i].counters().counts.suspicions_refuted)
            .sum();
        assert!(raised >= 1, "no suspicion raised");
        assert_eq!(refuted, 0);
        let sent: u64 = (0..2)
            .map(|i| net.cores[i].counters().counts.indirect_probes_sent)
            .sum();
        assert!(sent >= 1, "no indirect probe of the dead member");
    }
}
