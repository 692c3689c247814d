//! User events and queries over the API: `POST /v1/event` and
//! `POST /v1/query` (Serf's `event` and `query`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

fn yes() -> bool {
    true
}

/// `POST /v1/event`: send a user event to every member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    pub name: String,
    /// Handed to the handlers on stdin.
    #[serde(default)]
    pub payload: String,
    /// Whether handlers may see only the latest of several events with this
    /// name that arrive close together (Serf's `-coalesce`, default true).
    #[serde(default = "yes")]
    pub coalesce: bool,
}

/// The answer to `POST /v1/event`: the event's Lamport time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSent {
    pub name: String,
    pub ltime: u64,
}

/// `POST /v1/query`: ask the addressed members' handlers, stream their answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub name: String,
    #[serde(default)]
    pub payload: String,
    /// Only these nodes answer (empty: all).
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Only nodes whose tag matches the regex answer (Serf: unanchored).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// In the duration syntax (`500ms`, `5s`); default: Serf's formula.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Do not ask for acknowledgements.
    #[serde(default)]
    pub no_ack: bool,
}

/// One line of the `POST /v1/query` stream (`type` names the variant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum QueryLine {
    /// First: the query is out.
    Started {
        name: String,
        ltime: u64,
        timeout_ms: u64,
        /// Live members its filters addressed when it was sent.
        addressed: Vec<String>,
    },
    Ack {
        from: String,
    },
    Response {
        from: String,
        /// The handler's stdout (as UTF-8, invalid bytes replaced).
        payload: String,
    },
    /// Last: every addressed member answered (`complete`), or the timeout passed.
    Done {
        complete: bool,
        acks: usize,
        responses: usize,
        /// Addressed members that did not answer.
        missing: Vec<String>,
        took_ms: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_take_serfs_defaults_and_refuse_unknown_fields() {
        let e: EventRequest = serde_json::from_str(r#"{"name":"deploy"}"#).unwrap();
        assert!(e.coalesce && e.payload.is_empty());
        assert!(serde_json::from_str::<EventRequest>(r#"{"name":"x","colesce":false}"#).is_err());
        let q: QueryRequest = serde_json::from_str(r#"{"name":"uptime"}"#).unwrap();
        assert!(!q.no_ack && q.timeout.is_none());
        let line = serde_json::to_string(&QueryLine::Ack { from: "n1".into() }).unwrap();
        assert_eq!(line, r#"{"type":"ack","from":"n1"}"#);
    }
}
