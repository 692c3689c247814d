//! The lines of `GET /v1/events` (newline-delimited JSON): a member
//! [`Event`] each time the table changes, and [`Notice`]s about the stream
//! itself. A client renders from the members snapshot; events and notices
//! only tell it when (and from where) to refetch.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::member::Member;

/// What happened to a member (the Serf names, also `SERF_EVENT` of handlers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    MemberJoin,
    MemberLeave,
    MemberFailed,
    MemberUpdate,
    MemberReap,
}

impl EventKind {
    /// Every kind, in the order Serf lists them.
    pub const ALL: [EventKind; 5] = [
        EventKind::MemberJoin,
        EventKind::MemberLeave,
        EventKind::MemberFailed,
        EventKind::MemberUpdate,
        EventKind::MemberReap,
    ];

    /// The wire spelling, `member-join` ...
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::MemberJoin => "member-join",
            EventKind::MemberLeave => "member-leave",
            EventKind::MemberFailed => "member-failed",
            EventKind::MemberUpdate => "member-update",
            EventKind::MemberReap => "member-reap",
        }
    }

    /// The kind spelled `s` (exactly, as on the wire).
    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One member event: `{"index":5,"time":"2026-11-28T05:00:00.123Z","type":"member-join","member":{...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Monotonic within one run of the agent, from 1.
    pub index: u64,
    /// When the agent logged it, RFC 3339 UTC with milliseconds.
    pub time: String,
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The member as it is after the event.
    pub member: Member,
}

/// What a stream notice says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoticeKind {
    /// Nothing happened for a while (every 5 s); the stream is alive.
    Keepalive,
    /// The agent's table is now synced with the cluster: refetch it.
    Synced,
    /// Events were missed (dropped from the buffer, a slow client, another
    /// run of the agent): refetch the members snapshot; `reason` says why.
    Resync,
}

impl NoticeKind {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Keepalive => "keepalive",
            NoticeKind::Synced => "synced",
            NoticeKind::Resync => "resync",
        }
    }
}

/// A line about the stream, not a member: `{"type":"keepalive","index":5,"run":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    #[serde(rename = "type")]
    pub kind: NoticeKind,
    /// The last event index the stream has delivered (or, for a resync, the
    /// agent's last index).
    pub index: u64,
    /// The agent's run (see [`crate::MembersDoc::run`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Why a resync is needed, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Notice {
    pub fn new(kind: NoticeKind, index: u64, run: &str) -> Notice {
        Notice {
            kind,
            index,
            run: Some(run.to_string()),
            reason: None,
        }
    }

    /// A resync notice with its reason.
    pub fn resync(index: u64, run: &str, reason: impl Into<String>) -> Notice {
        Notice {
            reason: Some(reason.into()),
            ..Notice::new(NoticeKind::Resync, index, run)
        }
    }
}

/// One line of the event stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StreamLine {
    Notice(Notice),
    Event(Event),
}

impl StreamLine {
    /// Parses one line; the error names the line's `type` when it has one,
    /// so a newer agent's new kind reads as such, not as garbage.
    pub fn from_json(line: &str) -> Result<StreamLine, String> {
        #[derive(Deserialize)]
        struct Probe {
            #[serde(rename = "type")]
            kind: Option<String>,
        }
        let probe: Probe =
            serde_json::from_str(line).map_err(|e| format!("invalid event line: {e}"))?;
        let Some(kind) = probe.kind else {
            return Err("invalid event line: no \"type\"".into());
        };
        let parsed = if EventKind::parse(&kind).is_some() {
            serde_json::from_str(line).map(StreamLine::Event)
        } else {
            serde_json::from_str(line).map(StreamLine::Notice)
        };
        parsed.map_err(|e| format!("invalid {kind:?} line: {e}"))
    }

    /// The line as the agent writes it: JSON and a newline.
    pub fn to_line(&self) -> Vec<u8> {
        // Strings, numbers and string maps always serialise.
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }

    /// The index it carries.
    pub fn index(&self) -> u64 {
        match self {
            StreamLine::Notice(n) => n.index,
            StreamLine::Event(e) => e.index,
        }
    }

    /// The run it names (events do not: the stream's header does).
    pub fn run(&self) -> Option<&str> {
        match self {
            StreamLine::Notice(n) => n.run.as_deref(),
            StreamLine::Event(_) => None,
        }
    }

    /// The `type` as spelled on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            StreamLine::Notice(n) => n.kind.as_str(),
            StreamLine::Event(e) => e.kind.as_str(),
        }
    }
}

impl From<Event> for StreamLine {
    fn from(e: Event) -> StreamLine {
        StreamLine::Event(e)
    }
}

impl From<Notice> for StreamLine {
    fn from(n: Notice) -> StreamLine {
        StreamLine::Notice(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::{Status, Tags};

    fn member() -> Member {
        let mut tags = Tags::new();
        tags.insert("service".into(), "web".into());
        Member {
            name: "web-1".into(),
            addr: "10.0.0.5:7946".into(),
            status: Status::Alive,
            tags,
        }
    }

    #[test]
    fn an_event_line_round_trips() {
        let e = StreamLine::Event(Event {
            index: 5,
            time: "2026-11-28T05:00:00.123Z".into(),
            kind: EventKind::MemberJoin,
            member: member(),
        });
        let line = e.to_line();
        let text = std::str::from_utf8(&line).unwrap();
        assert_eq!(
            text,
            "{\"index\":5,\"time\":\"2026-11-28T05:00:00.123Z\",\"type\":\"member-join\",\"member\":{\"name\":\"web-1\",\"addr\":\"10.0.0.5:7946\",\"status\":\"alive\",\"tags\":{\"service\":\"web\"}}}\n"
        );
        assert_eq!(StreamLine::from_json(text.trim()).unwrap(), e);
        assert_eq!(e.kind(), "member-join");
        assert_eq!(e.index(), 5);
    }

    #[test]
    fn notices_round_trip_without_empty_fields() {
        let k = StreamLine::Notice(Notice::new(NoticeKind::Keepalive, 3, "r1"));
        assert_eq!(
            k.to_line(),
            b"{\"type\":\"keepalive\",\"index\":3,\"run\":\"r1\"}\n"
        );
        let r = StreamLine::Notice(Notice::resync(9, "r1", "events were dropped"));
        let text = String::from_utf8(r.to_line()).unwrap();
        assert!(
            text.contains("\"reason\":\"events were dropped\""),
            "{text}"
        );
        assert_eq!(StreamLine::from_json(&text).unwrap(), r);
        assert_eq!(r.run(), Some("r1"));
        // An older agent's notice without a run still reads.
        let old = StreamLine::from_json(r#"{"type":"resync","index":2,"reason":"slow"}"#).unwrap();
        assert_eq!(old.run(), None);
    }

    #[test]
    fn unknown_and_broken_lines_say_what_they_are() {
        let err = StreamLine::from_json(r#"{"type":"user","index":1}"#).unwrap_err();
        assert!(err.contains("\"user\""), "{err}");
        let err = StreamLine::from_json(r#"{"type":"member-join","index":1}"#).unwrap_err();
        assert!(
            err.contains("member-join") && err.contains("member"),
            "{err}"
        );
        assert!(StreamLine::from_json("not json").is_err());
        assert!(StreamLine::from_json(r#"{"index":1}"#)
            .unwrap_err()
            .contains("type"));
    }

    #[test]
    fn event_kinds_spell_as_serf() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
    }
}
