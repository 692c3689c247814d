//! The event log behind `GET /v1/events` and the event handlers: every member
//! event gets a monotonic index; the last events are kept so a client that
//! reconnects with `?index=N` misses nothing that is still in the buffer.

use std::collections::VecDeque;
use std::sync::Arc;

use shoal_contract::{Event, Member};
use tokio::sync::broadcast;

use crate::membership::{MemberEvent, Record};

/// Events kept for clients that resume.
pub const EVENT_BUFFER: usize = 4096;

/// A member as the API shows it (the contract's [`Member`]). A function, not
/// a `From`: the record's type belongs to the membership, the member's to the
/// contract.
pub fn member_of(r: &Record) -> Member {
    Member {
        name: r.id.name.clone(),
        addr: r.id.addr.to_string(),
        status: r.status,
        tags: r.id.tags.clone(),
    }
}

/// The events of this run, numbered from 1, the last [`EVENT_BUFFER`] kept.
pub struct EventLog {
    next_index: u64,
    buffer: VecDeque<Arc<Event>>,
    tx: broadcast::Sender<Arc<Event>>,
}

impl Default for EventLog {
    fn default() -> Self {
        Self::new()
    }
}

impl EventLog {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(EVENT_BUFFER);
        EventLog {
            next_index: 1,
            buffer: VecDeque::new(),
            tx,
        }
    }

    pub fn push(&mut self, event: &MemberEvent, now_ms: u64) -> Arc<Event> {
        let record = Arc::new(Event {
            index: self.next_index,
            time: rfc3339_millis(now_ms),
            kind: event.kind,
            member: member_of(&event.record),
        });
        self.next_index += 1;
        if self.buffer.len() == EVENT_BUFFER {
            self.buffer.pop_front();
        }
        self.buffer.push_back(record.clone());
        // No subscriber is fine.
        let _ = self.tx.send(record.clone());
        record
    }

    /// The last index handed out (0 before any event).
    pub fn last_index(&self) -> u64 {
        self.next_index - 1
    }

    /// Buffered events after `index`, and a receiver for the ones to come.
    /// Taken together under the caller's lock, so nothing falls in between.
    pub fn subscribe_after(
        &self,
        index: u64,
    ) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        let backlog = self
            .buffer
            .iter()
            .filter(|e| e.index > index)
            .cloned()
            .collect();
        (backlog, self.tx.subscribe())
    }

    /// The oldest index still buffered; a client asking for less may have missed events.
    pub fn oldest_index(&self) -> Option<u64> {
        self.buffer.front().map(|e| e.index)
    }
}

/// `2026-11-28T05:00:00.123Z` from milliseconds since the epoch (UTC).
pub fn rfc3339_millis(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_795_842_000_123),
            "2026-11-28T05:00:00.123Z"
        );
        assert_eq!(rfc3339_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
