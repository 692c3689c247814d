//! A member as the agent reports it, and the members document.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A member's tags: key → value, sorted by key.
pub type Tags = BTreeMap<String, String>;

/// A member's state on the wire (`"alive"`, `"suspect"`, `"failed"`,
/// `"left"`). The agent keeps its own richer state; this is what it shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Answers probes.
    Alive,
    /// Missed probes; declared failed unless it refutes in time.
    Suspect,
    /// Declared dead by the cluster.
    Failed,
    /// Left gracefully (or was force-left).
    Left,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 4] = [Status::Alive, Status::Suspect, Status::Failed, Status::Left];

    /// Alive or suspect: still taking part (a suspect may yet refute).
    pub fn is_active(self) -> bool {
        matches!(self, Status::Alive | Status::Suspect)
    }

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Alive => "alive",
            Status::Suspect => "suspect",
            Status::Failed => "failed",
            Status::Left => "left",
        }
    }

    /// The status spelled `s` (exactly, as on the wire).
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Status, String> {
        Status::parse(s)
            .ok_or_else(|| format!("{s:?} is not a status: use alive, suspect, failed or left"))
    }
}

/// One member, as in `{"name":"web-1","addr":"172.20.0.5:7946","status":"alive","tags":{...}}`.
/// Unknown fields are ignored, so the agent can grow the member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node name (`--node`).
    pub name: String,
    /// The gossip address it advertises, `IP:PORT`.
    pub addr: String,
    pub status: Status,
    #[serde(default)]
    pub tags: Tags,
}

/// The members document of `GET /v1/members`: the table, and what a client
/// needs to trust it. `shoal members --format json` prints only `members`
/// (the other fields are then absent), and lbgen reads either form.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct MembersDoc {
    pub members: Vec<Member>,
    /// Members read with a status outside the four (a newer agent, or a
    /// hand-written file): kept out of `members` so that one odd member does
    /// not void the document; each client says what it does with them.
    #[serde(skip)]
    pub unrecognised: Vec<Unrecognised>,
    /// [`crate::API_VERSION`] of the agent that wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The agent's run: event indexes are only meaningful within one run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The last event index the table includes (resume `/v1/events` after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// `false` while a (re)started agent has not yet synced its table with
    /// the cluster (it knows itself and few others). Absent = synced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced: Option<bool>,
}

/// A member whose status this client does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unrecognised {
    pub name: String,
    pub addr: String,
    /// As written (untrusted: sanitise before printing).
    pub status: String,
}

impl<'de> Deserialize<'de> for MembersDoc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// The member as written: only the status is read leniently.
        #[derive(Deserialize)]
        struct RawMember {
            name: String,
            addr: String,
            status: String,
            #[serde(default)]
            tags: Tags,
        }
        #[derive(Deserialize)]
        struct RawDoc {
            members: Vec<RawMember>,
            #[serde(default)]
            version: Option<u32>,
            #[serde(default)]
            run: Option<String>,
            #[serde(default)]
            index: Option<u64>,
            #[serde(default)]
            synced: Option<bool>,
        }
        let raw = RawDoc::deserialize(d)?;
        let mut doc = MembersDoc {
            version: raw.version,
            run: raw.run,
            index: raw.index,
            synced: raw.synced,
            ..MembersDoc::default()
        };
        for m in raw.members {
            match Status::parse(&m.status) {
                Some(status) => doc.members.push(Member {
                    name: m.name,
                    addr: m.addr,
                    status,
                    tags: m.tags,
                }),
                None => doc.unrecognised.push(Unrecognised {
                    name: m.name,
                    addr: m.addr,
                    status: m.status,
                }),
            }
        }
        Ok(doc)
    }
}

impl MembersDoc {
    /// The bare list, `{"members":[...]}`, as `shoal members --format json` prints it.
    pub fn list(members: Vec<Member>) -> MembersDoc {
        MembersDoc {
            members,
            ..MembersDoc::default()
        }
    }

    /// Parses a members document; the error says what is wrong and where.
    pub fn from_json(text: &str) -> Result<MembersDoc, String> {
        serde_json::from_str(text).map_err(|e| format!("invalid members document: {e}"))
    }

    /// One line of JSON (no trailing newline).
    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and string maps always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether the agent says its table is synced with the cluster (an older
    /// agent says nothing: synced).
    pub fn is_synced(&self) -> bool {
        self.synced != Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const README_EXAMPLE: &str = r#"{"members":[{"name":"web-1","addr":"172.20.0.5:7946","status":"alive","tags":{"service":"web","port":"3000"}}]}"#;

    #[test]
    fn the_readme_example_round_trips_byte_for_byte() {
        let doc = MembersDoc::from_json(README_EXAMPLE).unwrap();
        assert_eq!(doc.members[0].status, Status::Alive);
        assert_eq!(doc.members[0].tags["port"], "3000");
        assert!(doc.is_synced(), "no synced field = an older agent = synced");
        // Tags are sorted by key on output; everything else keeps its place.
        let back = doc.to_json();
        assert_eq!(
            back,
            r#"{"members":[{"name":"web-1","addr":"172.20.0.5:7946","status":"alive","tags":{"port":"3000","service":"web"}}]}"#
        );
        assert_eq!(MembersDoc::from_json(&back).unwrap(), doc);
    }

    #[test]
    fn the_api_document_carries_version_run_index_and_synced() {
        let doc = MembersDoc {
            members: vec![],
            version: Some(crate::API_VERSION),
            run: Some("r1".into()),
            index: Some(7),
            synced: Some(false),
            unrecognised: vec![],
        };
        let text = doc.to_json();
        assert_eq!(
            text,
            r#"{"members":[],"version":1,"run":"r1","index":7,"synced":false}"#
        );
        let back = MembersDoc::from_json(&text).unwrap();
        assert_eq!(back, doc);
        assert!(!back.is_synced());
    }

    #[test]
    fn the_bare_list_prints_only_members() {
        assert_eq!(MembersDoc::list(vec![]).to_json(), r#"{"members":[]}"#);
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_tags_are_empty() {
        let doc = MembersDoc::from_json(
            r#"{"members":[{"name":"a","addr":"10.0.0.1:7946","status":"left","generation":3}],"future":true}"#,
        )
        .unwrap();
        assert_eq!(doc.members[0].status, Status::Left);
        assert!(doc.members[0].tags.is_empty());
    }

    #[test]
    fn a_status_outside_the_four_sets_only_that_member_aside() {
        let doc = MembersDoc::from_json(
            r#"{"members":[{"name":"a","addr":"x","status":"elive","tags":{}},{"name":"b","addr":"y","status":"alive"}]}"#,
        )
        .unwrap();
        assert_eq!(doc.members.len(), 1);
        assert_eq!(doc.members[0].name, "b");
        assert_eq!(
            doc.unrecognised,
            [Unrecognised {
                name: "a".into(),
                addr: "x".into(),
                status: "elive".into()
            }]
        );
        // Not written back: what is printed has only the four statuses.
        assert!(!doc.to_json().contains("elive"));
    }

    #[test]
    fn a_malformed_member_voids_the_document_with_a_reason() {
        let err =
            MembersDoc::from_json(r#"{"members":[{"name":"a","status":"alive"}]}"#).unwrap_err();
        assert!(
            err.starts_with("invalid members document") && err.contains("addr"),
            "{err}"
        );
        let err = MembersDoc::from_json(r#"{"members":[{"name":"a","addr":"x","status":1}]}"#)
            .unwrap_err();
        assert!(err.contains("invalid type"), "{err}");
        assert!(MembersDoc::from_json(r#"{"nodes":[]}"#).is_err());
    }

    #[test]
    fn a_single_member_reads_strictly() {
        // Inside an event a member is read as is: its status must be one of the four.
        let err = serde_json::from_str::<Member>(r#"{"name":"a","addr":"x","status":"elive"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("elive") && err.contains("suspect"), "{err}");
    }

    #[test]
    fn statuses_spell_as_on_the_wire() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
            assert_eq!(s.as_str().parse::<Status>(), Ok(s));
        }
        assert_eq!(Status::parse("Alive"), None);
        assert!("bogus"
            .parse::<Status>()
            .unwrap_err()
            .contains("alive, suspect"));
    }
}
