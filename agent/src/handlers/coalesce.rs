//! Serf's member-event coalescing, pure: events are held until no new one
//! came for a quiet period, or the first held one is `max` old; only the
//! latest event per member is kept. A burst (a scale-up, a partition) thus
//! becomes one handler run with the members' final states, not one run per
//! intermediate step. With [`Coalescer::leading_edge`], an event that comes
//! after a quiet spell (no event for the quiet period) is due at once: a lone
//! join or leave reaches the handler without waiting, and only what follows it
//! within the window is coalesced. No clock of its own: callers pass `now`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The latest event per member, waiting for its window to close.
#[derive(Debug)]
pub struct Coalescer<E> {
    quiet: Duration,
    max: Duration,
    /// member -> (arrival order, latest event)
    held: BTreeMap<String, (u64, E)>,
    seq: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    /// Due at once when the first held event came after a quiet spell.
    leading: bool,
    first_is_lone: bool,
    /// The latest event ever pushed (not reset by a flush).
    previous: Option<Instant>,
}

impl<E> Coalescer<E> {
    /// `quiet`: flush once no event came for this long; `max`: flush at the
    /// latest this long after the first held event (a steady trickle of
    /// events must not hold them forever). `quiet == 0` flushes at once.
    pub fn new(quiet: Duration, max: Duration) -> Self {
        Coalescer {
            quiet,
            max: max.max(quiet),
            held: BTreeMap::new(),
            seq: 0,
            first: None,
            last: None,
            leading: false,
            first_is_lone: false,
            previous: None,
        }
    }

    /// An event after a quiet spell is due at once (see the module doc).
    pub fn leading_edge(mut self) -> Self {
        self.leading = true;
        self
    }

    /// Holds `event` about `member`, replacing an older one about it.
    pub fn push(&mut self, member: &str, event: E, now: Instant) {
        self.seq += 1;
        let after_quiet = self
            .previous
            .is_none_or(|p| now.saturating_duration_since(p) >= self.quiet);
        if self.held.is_empty() {
            self.first_is_lone = self.leading && after_quiet;
        }
        self.held.insert(member.to_string(), (self.seq, event));
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.previous = Some(now);
    }

    /// Members with an event held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// When the held events are due; None when nothing is held.
    pub fn deadline(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        if self.first_is_lone {
            return Some(first);
        }
        Some((last + self.quiet).min(first + self.max))
    }

    /// Everything held, in arrival order of each member's latest event,
    /// if the window closed at `now`; else nothing.
    pub fn flush_due(&mut self, now: Instant) -> Vec<E> {
        match self.deadline() {
            Some(d) if d <= now => self.flush(),
            _ => Vec::new(),
        }
    }

    /// Everything held, now (e.g. when too many members are held).
    pub fn flush(&mut self) -> Vec<E> {
        self.first = None;
        self.last = None;
        self.first_is_lone = false;
        let mut out: Vec<(u64, E)> = std::mem::take(&mut self.held).into_values().collect();
        out.sort_by_key(|(seq, _)| *seq);
        out.into_iter().map(|(_, e)| e).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn events_wait_for_the_quiet_period() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(ms(100), ms(1000));
        assert_eq!(c.deadline(), None);
        c.push("a", "join a", t0);
        assert_eq!(c.deadline(), Some(t0 + ms(100)));
        assert!(c.flush_due(t0 + ms(99)).is_empty());
        c.push("b", "join b", t0 + ms(50));
        assert_eq!(
            c.deadline(),
            Some(t0 + ms(150)),
            "a new event extends the quiet period"
        );
        assert!(c.flush_due(t0 + ms(120)).is_empty());
        assert_eq!(c.flush_due(t0 + ms(150)), ["join a", "join b"]);
        assert!(c.is_empty() && c.deadline().is_none());
    }

    #[test]
    fn a_steady_trickle_is_flushed_at_the_max_window() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(ms(100), ms(300));
        for i in 0..10u64 {
            c.push(&format!("m{i}"), i, t0 + ms(i * 50));
            if i * 50 + 100 > 300 {
                assert_eq!(c.deadline(), Some(t0 + ms(300)));
            }
        }
        let out = c.flush_due(t0 + ms(300));
        assert_eq!(out, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn only_the_latest_event_per_member_is_kept_in_its_latest_place() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(ms(10), ms(100));
        c.push("x", "join x", t0);
        c.push("y", "join y", t0);
        c.push("x", "failed x", t0 + ms(1));
        assert_eq!(c.len(), 2);
        assert_eq!(c.flush_due(t0 + ms(11)), ["join y", "failed x"]);
    }

    #[test]
    fn with_a_leading_edge_a_lone_event_is_due_at_once_and_a_burst_after_it_coalesces() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(ms(100), ms(1000)).leading_edge();
        c.push("a", "join a", t0);
        assert_eq!(c.deadline(), Some(t0), "nothing came before: no wait");
        assert_eq!(c.flush_due(t0), ["join a"]);
        // The rest of the burst, within the quiet period: coalesced.
        c.push("b", "join b", t0 + ms(5));
        c.push("c", "join c", t0 + ms(10));
        c.push("b", "failed b", t0 + ms(20));
        assert_eq!(c.deadline(), Some(t0 + ms(120)));
        assert!(c.flush_due(t0 + ms(119)).is_empty());
        assert_eq!(c.flush_due(t0 + ms(120)), ["join c", "failed b"]);
        // A quiet spell again: the next lone event goes at once.
        c.push("d", "leave d", t0 + ms(400));
        assert_eq!(c.flush_due(t0 + ms(400)), ["leave d"]);
    }

    #[test]
    fn without_a_leading_edge_even_a_lone_event_waits_for_the_quiet_period() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(ms(100), ms(1000));
        c.push("a", "join a", t0);
        assert_eq!(c.deadline(), Some(t0 + ms(100)));
    }

    #[test]
    fn a_zero_quiet_period_flushes_at_once() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::ZERO, Duration::ZERO);
        c.push("a", 1, t0);
        assert_eq!(c.flush_due(t0), [1]);
    }
}
