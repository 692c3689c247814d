//! Which handler runs which events next, pure (no processes, no clock).
//!
//! Rules (docs/handlers.md states them for users):
//! - one run at a time per handler; what queued meanwhile is kept as the
//!   latest event per member (a newer event about a member replaces the
//!   older one in *every* handler's queue, also in a handler whose filter
//!   does not take the newer kind: its older event is stale);
//! - events about one member are run in the order they happened, across
//!   handlers: a run waits while another handler still runs an *older*
//!   event about one of its members. So a `member-join` script that is slow
//!   finishes before the `member-failed` script about the same member starts;
//! - nothing else waits: other members, other handlers and the same event in
//!   several handlers run in parallel;
//! - one run carries one event kind (`SERF_EVENT`), the oldest ready first,
//!   with every ready member of that kind (one stdin line each).

use std::collections::BTreeMap;

use super::HandlerSpec;

/// What the schedule needs to know about an event.
pub trait Keyed {
    fn member(&self) -> &str;
    /// Position in the agent's event log: higher is newer.
    fn index(&self) -> u64;
    fn kind(&self) -> &str;
}

#[derive(Debug)]
struct Slot<E> {
    spec: HandlerSpec,
    /// member -> its latest event not yet run by this handler.
    pending: BTreeMap<String, E>,
    /// (member, index) of the run in flight, if any.
    running: Option<Vec<(String, u64)>>,
}

/// The queues of every handler. See the module docs.
#[derive(Debug)]
pub struct Schedule<E> {
    slots: Vec<Slot<E>>,
    max_pending: usize,
}

impl<E: Keyed + Clone> Schedule<E> {
    /// One queue per handler, each holding at most `max_pending` members.
    pub fn new(specs: &[HandlerSpec], max_pending: usize) -> Self {
        Schedule {
            slots: specs
                .iter()
                .map(|spec| Slot {
                    spec: spec.clone(),
                    pending: BTreeMap::new(),
                    running: None,
                })
                .collect(),
            max_pending: max_pending.max(1),
        }
    }

    /// Queues `e` for every handler that takes its kind, replacing older
    /// events about its member everywhere. Returns the handlers that had to
    /// drop their oldest event because their queue was full.
    pub fn offer(&mut self, e: E) -> Vec<usize> {
        let mut dropped = Vec::new();
        for (h, slot) in self.slots.iter_mut().enumerate() {
            slot.pending.remove(e.member());
            if !slot.spec.matches(e.kind()) {
                continue;
            }
            slot.pending.insert(e.member().to_string(), e.clone());
            if slot.pending.len() > self.max_pending {
                let oldest = slot
                    .pending
                    .iter()
                    .min_by_key(|(_, x)| x.index())
                    .map(|(m, _)| m.clone());
                if let Some(m) = oldest {
                    slot.pending.remove(&m);
                    dropped.push(h);
                }
            }
        }
        dropped
    }

    /// True while another handler than `h` runs an event about `member`
    /// older than `index`.
    fn held_back(&self, h: usize, member: &str, index: u64) -> bool {
        self.slots.iter().enumerate().any(|(j, s)| {
            j != h
                && s.running
                    .as_ref()
                    .is_some_and(|r| r.iter().any(|(m, i)| m == member && *i < index))
        })
    }

    /// The runs that may start now: (handler, events of one kind, oldest
    /// first). Each handler returned is running until [`Schedule::finished`].
    pub fn next_runs(&mut self) -> Vec<(usize, Vec<E>)> {
        let mut runs = Vec::new();
        for h in 0..self.slots.len() {
            if self.slots[h].running.is_some() {
                continue;
            }
            let mut ready: Vec<&E> = self.slots[h]
                .pending
                .values()
                .filter(|e| !self.held_back(h, e.member(), e.index()))
                .collect();
            ready.sort_by_key(|e| e.index());
            let Some(kind) = ready.first().map(|e| e.kind().to_string()) else {
                continue;
            };
            let batch: Vec<E> = ready
                .into_iter()
                .filter(|e| e.kind() == kind)
                .cloned()
                .collect();
            let slot = &mut self.slots[h];
            for e in &batch {
                slot.pending.remove(e.member());
            }
            slot.running = Some(
                batch
                    .iter()
                    .map(|e| (e.member().to_string(), e.index()))
                    .collect(),
            );
            runs.push((h, batch));
        }
        runs
    }

    /// Handler `h`'s run ended (whatever its outcome).
    pub fn finished(&mut self, h: usize) {
        if let Some(slot) = self.slots.get_mut(h) {
            slot.running = None;
        }
    }

    /// Nothing queued and nothing running.
    pub fn is_idle(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.pending.is_empty() && s.running.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Ev(u64, &'static str, &'static str);

    impl Keyed for Ev {
        fn member(&self) -> &str {
            self.2
        }
        fn index(&self) -> u64 {
            self.0
        }
        fn kind(&self) -> &str {
            self.1
        }
    }

    fn join(i: u64, m: &'static str) -> Ev {
        Ev(i, "member-join", m)
    }
    fn failed(i: u64, m: &'static str) -> Ev {
        Ev(i, "member-failed", m)
    }

    /// The lab's registration: one join script, one leave/failed script.
    fn lab() -> Schedule<Ev> {
        let specs = [
            HandlerSpec::parse("member-join=join.sh").unwrap(),
            HandlerSpec::parse("member-leave,member-failed=leave.sh").unwrap(),
        ];
        Schedule::new(&specs, 16)
    }

    #[test]
    fn a_failure_waits_for_the_slow_join_run_of_the_same_member() {
        let mut s = lab();
        s.offer(join(1, "x"));
        assert_eq!(s.next_runs(), [(0, vec![join(1, "x")])]);
        s.offer(failed(2, "x"));
        assert!(s.next_runs().is_empty(), "the join of x is still running");
        s.finished(0);
        assert_eq!(s.next_runs(), [(1, vec![failed(2, "x")])]);
        s.finished(1);
        assert!(s.is_idle());
    }

    #[test]
    fn a_join_not_yet_run_is_dropped_when_the_member_fails() {
        let mut s = lab();
        s.offer(join(1, "busy"));
        assert_eq!(s.next_runs().len(), 1);
        s.offer(join(2, "x"));
        s.offer(failed(3, "x"));
        // The leave script may run at once: nothing older about x runs.
        assert_eq!(s.next_runs(), [(1, vec![failed(3, "x")])]);
        s.finished(0);
        s.finished(1);
        assert!(s.next_runs().is_empty(), "the stale join of x never runs");
        assert!(s.is_idle());
    }

    #[test]
    fn other_members_and_other_handlers_do_not_wait() {
        let mut s = lab();
        s.offer(join(1, "x"));
        assert_eq!(s.next_runs().len(), 1);
        s.offer(failed(2, "y"));
        assert_eq!(s.next_runs(), [(1, vec![failed(2, "y")])]);
    }

    #[test]
    fn the_same_event_runs_in_every_handler_at_once() {
        let specs = [
            HandlerSpec::parse("slow.sh").unwrap(),
            HandlerSpec::parse("member-join=fast.sh").unwrap(),
        ];
        let mut s = Schedule::new(&specs, 16);
        s.offer(join(1, "x"));
        assert_eq!(
            s.next_runs(),
            [(0, vec![join(1, "x")]), (1, vec![join(1, "x")])]
        );
    }

    #[test]
    fn what_queued_during_a_run_is_one_run_per_kind_with_the_latest_state() {
        let specs = [HandlerSpec::parse("all.sh").unwrap()];
        let mut s = Schedule::new(&specs, 16);
        s.offer(join(1, "a"));
        assert_eq!(s.next_runs().len(), 1);
        s.offer(join(2, "b"));
        s.offer(join(3, "c"));
        s.offer(failed(4, "b"));
        s.offer(Ev(5, "member-update", "c"));
        s.offer(join(6, "d"));
        assert!(s.next_runs().is_empty(), "one run at a time");
        s.finished(0);
        // Oldest ready first: b failed (4), then c's update (5), then d (6).
        assert_eq!(s.next_runs(), [(0, vec![failed(4, "b")])]);
        s.finished(0);
        assert_eq!(s.next_runs(), [(0, vec![Ev(5, "member-update", "c")])]);
        s.finished(0);
        assert_eq!(s.next_runs(), [(0, vec![join(6, "d")])]);
    }

    #[test]
    fn a_batch_holds_every_ready_member_of_its_kind() {
        let specs = [HandlerSpec::parse("member-join=join.sh").unwrap()];
        let mut s = Schedule::new(&specs, 16);
        for (i, m) in [(1, "a"), (2, "b"), (3, "c")] {
            s.offer(join(i, m));
        }
        assert_eq!(
            s.next_runs(),
            [(0, vec![join(1, "a"), join(2, "b"), join(3, "c")])]
        );
    }

    #[test]
    fn a_full_queue_drops_its_oldest_member_and_says_which_handler() {
        let specs = [HandlerSpec::parse("member-join=join.sh").unwrap()];
        let mut s = Schedule::new(&specs, 2);
        assert!(s.offer(join(1, "a")).is_empty());
        assert!(s.offer(join(2, "b")).is_empty());
        assert_eq!(s.offer(join(3, "c")), [0]);
        assert_eq!(s.next_runs(), [(0, vec![join(2, "b"), join(3, "c")])]);
    }
}
