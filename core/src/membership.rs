//! The member table as users see it: one record per node *name*, with the
//! Serf states alive / suspect / failed / left. Pure logic, no I/O, no clock.
//!
//! foca only knows alive, suspect and down, and keys members by address. This
//! table is reconciled from foca's full state (never from its notifications
//! alone, which can be missed), adds what foca cannot tell apart (a graceful
//! leave vs a failure), replaces a node that restarted under the same name
//! with a new address, and decides when records are reaped.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::identity::NodeId;
use crate::wire::{SyncEntry, SyncState};

/// A member's state (Serf's), as the contract spells it on the wire: one
/// enum for the table, the API and every client.
pub use shoal_contract::Status;

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: NodeId,
    pub status: Status,
    /// foca's incarnation (refutation counter) for this identity.
    pub incarnation: u16,
    /// When the status last changed, in milliseconds since the epoch.
    pub changed_at: u64,
}

/// Serf's event names, so existing handler scripts keep working (the
/// contract's enum: `member-join`, ...).
pub use shoal_contract::EventKind;

#[derive(Debug, Clone, PartialEq)]
pub struct MemberEvent {
    pub kind: EventKind,
    pub record: Record,
}

/// What a table change asks of the runtime.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub events: Vec<MemberEvent>,
    /// Stale identities foca should consider down (a node's old address).
    pub declare_down: Vec<NodeId>,
    /// Problems to log loudly (duplicate names).
    pub conflicts: Vec<Conflict>,
}

/// A duplicate-name report, logged at most once a minute per name (the
/// message changes with every flap, so it cannot be the key).
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub name: String,
    pub message: String,
}

impl Outcome {
    fn event(&mut self, kind: EventKind, record: &Record) {
        self.events.push(MemberEvent {
            kind,
            record: record.clone(),
        });
    }

    pub fn merge(&mut self, other: Outcome) {
        self.events.extend(other.events);
        self.declare_down.extend(other.declare_down);
        self.conflicts.extend(other.conflicts);
    }
}

/// foca's view of one member, as fed to [`Table::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FocaState {
    Alive,
    Suspect,
    Down,
}

impl From<foca::State> for FocaState {
    fn from(s: foca::State) -> Self {
        match s {
            foca::State::Alive => FocaState::Alive,
            foca::State::Suspect => FocaState::Suspect,
            foca::State::Down => FocaState::Down,
        }
    }
}

/// Address changes of one name within this window that mean two live nodes
/// share it, not a restart.
const DUPLICATE_WINDOW_MS: u64 = 60_000;
const DUPLICATE_MOVES: usize = 3;

/// Most members (names) a table holds, ourselves included: one push-pull
/// frame must carry the whole table. A new name beyond it is refused and
/// counted ([`Table::refused`]); members already known keep updating.
pub const MAX_MEMBERS: usize = crate::wire::MAX_SYNC_ENTRIES;

/// Why a force-leave was refused. The table is unchanged either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForceLeaveError {
    /// No member has this name.
    NoMember(String),
    /// The member is alive or suspect: only a failed member can be marked
    /// left by someone else (a live one must leave by itself).
    NotFailed { name: String, status: Status },
}

impl std::fmt::Display for ForceLeaveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForceLeaveError::NoMember(name) => write!(f, "no member named {name:?}"),
            ForceLeaveError::NotFailed { name, status } => write!(
                f,
                "member {name:?} is {}; force-leave only applies to failed members \
                 (stop the node, or run `shoal leave` on it)",
                status.as_str()
            ),
        }
    }
}

impl std::error::Error for ForceLeaveError {}

pub struct Table {
    local: String,
    /// Our first generation: identities with our name and an older
    /// generation are our own past (a restart), newer ones are a twin.
    local_born: u64,
    members: BTreeMap<String, Record>,
    reap_after_ms: u64,
    moves: HashMap<String, VecDeque<u64>>,
    /// New names refused because the table was full.
    refused: u64,
    /// Members this table holds only because a peer's state listed them
    /// as gone ([`Table::learn_gone`]): name → the generation learned.
    /// Kept out of our own state ([`Table::sync_entries`]), so a record
    /// with a fresh reap time is never passed on: otherwise two nodes that
    /// reap at different times would hand it back and forth for ever.
    learned: HashMap<String, u64>,
}

impl Table {
    /// A table holding only ourselves, alive; returns our own join event.
    pub fn new(local: &NodeId, reap_after_ms: u64, now: u64) -> (Table, Outcome) {
        let mut table = Table {
            local: local.name.clone(),
            local_born: local.generation,
            members: BTreeMap::new(),
            reap_after_ms,
            moves: HashMap::new(),
            refused: 0,
            learned: HashMap::new(),
        };
        let record = Record {
            id: local.clone(),
            status: Status::Alive,
            incarnation: 0,
            changed_at: now,
        };
        let mut out = Outcome::default();
        out.event(EventKind::MemberJoin, &record);
        table.members.insert(local.name.clone(), record);
        (table, out)
    }

    pub fn get(&self, name: &str) -> Option<&Record> {
        self.members.get(name)
    }

    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.members.values()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn count(&self, status: Status) -> usize {
        self.members.values().filter(|r| r.status == status).count()
    }

    /// New names refused so far because the table held [`MAX_MEMBERS`].
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Room for one more name?
    fn has_room(&self) -> bool {
        self.members.len() < MAX_MEMBERS
    }

    /// Our own identity changed (tags): an update event.
    pub fn set_local(&mut self, id: &NodeId, now: u64) -> Outcome {
        let mut out = Outcome::default();
        if let Some(rec) = self.members.get_mut(&self.local) {
            rec.id = id.clone();
            rec.changed_at = now;
            out.event(EventKind::MemberUpdate, rec);
        }
        out
    }

    /// We are leaving gracefully.
    pub fn set_local_left(&mut self, now: u64) -> Outcome {
        let mut out = Outcome::default();
        if let Some(rec) = self.members.get_mut(&self.local) {
            if rec.status != Status::Left {
                rec.status = Status::Left;
                rec.changed_at = now;
                out.event(EventKind::MemberLeave, rec);
            }
        }
        out
    }

    /// Folds in foca's state for one identity. Called for every identity in
    /// foca's full membership on each reconcile; idempotent.
    pub fn observe(
        &mut self,
        id: &NodeId,
        state: FocaState,
        incarnation: u16,
        now: u64,
    ) -> Outcome {
        let mut out = Outcome::default();
        if id.name == self.local {
            let other_addr = self
                .members
                .get(&self.local)
                .is_some_and(|r| r.id.addr != id.addr);
            if other_addr && (state != FocaState::Down || id.generation > self.local_born) {
                out.conflicts.push(Conflict {
                    name: id.name.clone(),
                    message: format!(
                        "duplicate node name {:?}: another live node at {} uses this node's \
                         name; the one with the newer generation keeps it, the other stops; \
                         give every node a unique --node",
                        id.name, id.addr
                    ),
                });
            }
            return out;
        }
        let Some(rec) = self.members.get_mut(&id.name) else {
            // Beyond MAX_MEMBERS foca may know more (the reconcile of every
            // tick would count it again and again: not counted here).
            if state != FocaState::Down && self.has_room() {
                let record = Record {
                    id: id.clone(),
                    status: active_status(state),
                    incarnation,
                    changed_at: now,
                };
                out.event(EventKind::MemberJoin, &record);
                self.members.insert(id.name.clone(), record);
            }
            return out;
        };

        if rec.id == *id {
            rec.incarnation = rec.incarnation.max(incarnation);
            let next = match (rec.status, state) {
                // A leave notice outranks foca still catching up.
                (Status::Left, _) => Status::Left,
                (_, FocaState::Down) => Status::Failed,
                (_, s) => active_status(s),
            };
            if next != rec.status {
                let kind = match (rec.status, next) {
                    (_, Status::Failed) => EventKind::MemberFailed,
                    (_, Status::Left) => EventKind::MemberLeave,
                    (Status::Failed, _) => EventKind::MemberJoin,
                    _ => EventKind::MemberUpdate,
                };
                rec.status = next;
                rec.changed_at = now;
                out.event(kind, rec);
            }
            return out;
        }

        if id.generation > rec.id.generation {
            // A newer identity for this name: a restart, a new address, new tags.
            let was_active = rec.status.is_active();
            let moved = rec.id.addr != id.addr;
            if was_active && moved {
                out.declare_down.push(rec.id.clone());
                let moves = self.moves.entry(id.name.clone()).or_default();
                moves.push_back(now);
                while moves
                    .front()
                    .is_some_and(|t| now.saturating_sub(*t) > DUPLICATE_WINDOW_MS)
                {
                    moves.pop_front();
                }
                if moves.len() >= DUPLICATE_MOVES {
                    out.conflicts.push(Conflict {
                        name: id.name.clone(),
                        message: format!(
                            "duplicate node name {:?}: it moved between addresses {} times in \
                             a minute (now {}, before {}); two live nodes share this name",
                            id.name,
                            moves.len(),
                            id.addr,
                            rec.id.addr
                        ),
                    });
                }
            }
            let status = match state {
                FocaState::Down => Status::Failed,
                s => active_status(s),
            };
            rec.id = id.clone();
            rec.incarnation = incarnation;
            let kind = match (was_active, status.is_active()) {
                (true, true) => Some(EventKind::MemberUpdate),
                (false, true) => Some(EventKind::MemberJoin),
                (true, false) => Some(EventKind::MemberFailed),
                (false, false) => None,
            };
            if rec.status != status || kind == Some(EventKind::MemberUpdate) {
                rec.changed_at = now;
            }
            rec.status = status;
            if let Some(kind) = kind {
                out.event(kind, rec);
            }
        } else if state != FocaState::Down && rec.id.addr != id.addr {
            // An older identity still thought alive somewhere: the address a
            // restarted node had before. It will not answer again.
            out.declare_down.push(id.clone());
        }
        out
    }

    /// A node told us it is leaving (directly or through push-pull).
    pub fn leave_notice(&mut self, id: &NodeId, now: u64) -> Outcome {
        let mut out = Outcome::default();
        if id.name == self.local {
            return out;
        }
        let room = self.has_room();
        match self.members.get_mut(&id.name) {
            Some(rec) if rec.id.generation <= id.generation => {
                out.declare_down.push(id.clone());
                if rec.id.generation < id.generation {
                    rec.id = id.clone();
                }
                if rec.status != Status::Left {
                    rec.status = Status::Left;
                    rec.changed_at = now;
                    out.event(EventKind::MemberLeave, rec);
                }
            }
            Some(_) => {} // news about an older identity
            None if !room => self.refused += 1,
            None => {
                out.declare_down.push(id.clone());
                self.members.insert(
                    id.name.clone(),
                    Record {
                        id: id.clone(),
                        status: Status::Left,
                        incarnation: 0,
                        changed_at: now,
                    },
                );
            }
        }
        out
    }

    /// A member we never knew, listed as failed or left in a peer's
    /// push-pull state: recorded as the peer holds it (identity, tags,
    /// incarnation), so a node that joins after a member went has the same
    /// table as every other node until the record is reaped. Serf's
    /// push-pull carries its left members for the same reason.
    ///
    /// `announce` says whether it is worth an event: not in a joiner's
    /// first state (it never saw the member, and a handler would run once
    /// for every member gone in the last `--reap-after`), yes after the
    /// join (a healed partition), so the table's readers refetch. A name
    /// already in the table, ourselves, an active status or a full table:
    /// nothing changes.
    pub fn learn_gone(
        &mut self,
        id: &NodeId,
        incarnation: u16,
        status: Status,
        now: u64,
        announce: bool,
    ) -> Outcome {
        let mut out = Outcome::default();
        if id.name == self.local
            || status.is_active()
            || self.members.contains_key(&id.name)
            || !self.has_room()
        {
            return out;
        }
        let record = Record {
            id: id.clone(),
            status,
            incarnation,
            changed_at: now,
        };
        if announce {
            let kind = match status {
                Status::Left => EventKind::MemberLeave,
                _ => EventKind::MemberFailed,
            };
            out.event(kind, &record);
        }
        self.members.insert(id.name.clone(), record);
        self.learned.insert(id.name.clone(), id.generation);
        out
    }

    /// `shoal force-leave NAME`: a failed node is marked left at once.
    pub fn force_leave(&mut self, name: &str, now: u64) -> Result<Outcome, ForceLeaveError> {
        let mut out = Outcome::default();
        let rec = self
            .members
            .get_mut(name)
            .ok_or_else(|| ForceLeaveError::NoMember(name.to_string()))?;
        match rec.status {
            Status::Left => Ok(out),
            Status::Failed => {
                rec.status = Status::Left;
                rec.changed_at = now;
                out.event(EventKind::MemberLeave, rec);
                Ok(out)
            }
            status => Err(ForceLeaveError::NotFailed {
                name: name.to_string(),
                status,
            }),
        }
    }

    /// Forgets failed and left members after the reap timeout.
    pub fn reap(&mut self, now: u64) -> Outcome {
        let mut out = Outcome::default();
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|r| {
                r.id.name != self.local
                    && !r.status.is_active()
                    && now.saturating_sub(r.changed_at) >= self.reap_after_ms
            })
            .map(|r| r.id.name.clone())
            .collect();
        for name in expired {
            if let Some(rec) = self.members.remove(&name) {
                self.moves.remove(&name);
                self.learned.remove(&name);
                out.event(EventKind::MemberReap, &rec);
            }
        }
        out
    }

    /// Our table in push-pull form: every member we saw ourselves, alive or
    /// gone; not those we only learned were gone from a peer (that peer,
    /// and every member that saw it go, pass them on).
    pub fn sync_entries(&self) -> Vec<SyncEntry> {
        self.members
            .values()
            .filter(|r| {
                r.status.is_active() || self.learned.get(&r.id.name) != Some(&r.id.generation)
            })
            .map(|r| SyncEntry {
                id: r.id.clone(),
                incarnation: r.incarnation,
                state: match r.status {
                    Status::Alive => SyncState::Alive,
                    Status::Suspect => SyncState::Suspect,
                    Status::Failed => SyncState::Failed,
                    Status::Left => SyncState::Left,
                },
            })
            .collect()
    }
}

fn active_status(state: FocaState) -> Status {
    match state {
        FocaState::Suspect => Status::Suspect,
        _ => Status::Alive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tags::Tags;

    fn id(name: &str, addr: &str, generation: u64) -> NodeId {
        NodeId {
            name: name.into(),
            addr: addr.parse().unwrap(),
            generation,
            tags: Tags::new(),
        }
    }

    fn kinds(out: &Outcome) -> Vec<EventKind> {
        out.events.iter().map(|e| e.kind).collect()
    }

    fn table() -> Table {
        Table::new(&id("me", "10.0.0.1:7946", 1), 1000, 0).0
    }

    #[test]
    fn a_new_member_joins_then_is_suspected_then_fails() {
        let mut t = table();
        let b = id("b", "10.0.0.2:7946", 1);
        assert_eq!(
            kinds(&t.observe(&b, FocaState::Alive, 0, 1)),
            [EventKind::MemberJoin]
        );
        assert!(
            t.observe(&b, FocaState::Alive, 0, 2).events.is_empty(),
            "idempotent"
        );
        assert_eq!(
            kinds(&t.observe(&b, FocaState::Suspect, 0, 3)),
            [EventKind::MemberUpdate]
        );
        assert_eq!(t.get("b").unwrap().status, Status::Suspect);
        assert_eq!(
            kinds(&t.observe(&b, FocaState::Down, 0, 4)),
            [EventKind::MemberFailed]
        );
        assert_eq!(t.get("b").unwrap().status, Status::Failed);
    }

    #[test]
    fn a_leave_notice_makes_the_member_left_not_failed() {
        let mut t = table();
        let b = id("b", "10.0.0.2:7946", 1);
        t.observe(&b, FocaState::Alive, 0, 1);
        let out = t.leave_notice(&b, 2);
        assert_eq!(kinds(&out), [EventKind::MemberLeave]);
        assert_eq!(out.declare_down, std::slice::from_ref(&b));
        assert!(t.observe(&b, FocaState::Down, 0, 3).events.is_empty());
        assert_eq!(t.get("b").unwrap().status, Status::Left);
    }

    #[test]
    fn a_restart_with_a_new_address_replaces_the_old_entry_at_once() {
        let mut t = table();
        let old = id("b", "10.0.0.2:7946", 1);
        let new = id("b", "10.0.0.9:7946", 5);
        t.observe(&old, FocaState::Alive, 0, 1);
        let out = t.observe(&new, FocaState::Alive, 0, 2);
        assert_eq!(kinds(&out), [EventKind::MemberUpdate]);
        assert_eq!(out.declare_down, std::slice::from_ref(&old));
        assert_eq!(t.get("b").unwrap().id.addr, new.addr);
        // foca still lists the old identity for a while: it is stale, not news.
        let out = t.observe(&old, FocaState::Alive, 0, 3);
        assert!(out.events.is_empty());
        assert_eq!(out.declare_down, [old]);
    }

    #[test]
    fn a_failed_member_that_comes_back_rejoins() {
        let mut t = table();
        let b1 = id("b", "10.0.0.2:7946", 1);
        t.observe(&b1, FocaState::Alive, 0, 1);
        t.observe(&b1, FocaState::Down, 0, 2);
        let b2 = id("b", "10.0.0.2:7946", 2);
        assert_eq!(
            kinds(&t.observe(&b2, FocaState::Alive, 0, 3)),
            [EventKind::MemberJoin]
        );
        assert_eq!(t.get("b").unwrap().status, Status::Alive);
    }

    #[test]
    fn force_leave_only_applies_to_failed_members() {
        let mut t = table();
        let b = id("b", "10.0.0.2:7946", 1);
        t.observe(&b, FocaState::Alive, 0, 1);
        assert!(t
            .force_leave("b", 2)
            .unwrap_err()
            .to_string()
            .contains("alive"));
        assert!(matches!(
            t.force_leave("b", 2),
            Err(ForceLeaveError::NotFailed {
                status: Status::Alive,
                ..
            })
        ));
        t.observe(&b, FocaState::Down, 0, 3);
        assert_eq!(
            kinds(&t.force_leave("b", 4).unwrap()),
            [EventKind::MemberLeave]
        );
        assert_eq!(
            t.force_leave("nobody", 5).unwrap_err(),
            ForceLeaveError::NoMember("nobody".into())
        );
        assert_eq!(
            t.force_leave("nobody", 5).unwrap_err().to_string(),
            "no member named \"nobody\""
        );
    }

    #[test]
    fn failed_and_left_members_are_reaped_after_the_timeout() {
        let mut t = table();
        let b = id("b", "10.0.0.2:7946", 1);
        t.observe(&b, FocaState::Alive, 0, 1);
        t.observe(&b, FocaState::Down, 0, 10);
        assert!(t.reap(500).events.is_empty());
        assert_eq!(kinds(&t.reap(1010)), [EventKind::MemberReap]);
        assert!(t.get("b").is_none());
        assert!(t.get("me").is_some(), "never reaps itself");
    }

    #[test]
    fn a_member_gone_before_we_knew_it_is_kept_as_the_peer_holds_it_until_the_reap() {
        let mut t = table();
        let mut b = id("b", "10.0.0.2:7946", 1);
        b.tags.insert("service".into(), "api".into());
        // A joiner's first state: no event, the record as the peer holds it.
        assert!(t
            .learn_gone(&b, 3, Status::Left, 10, false)
            .events
            .is_empty());
        let rec = t.get("b").unwrap();
        assert_eq!((rec.status, rec.incarnation), (Status::Left, 3));
        assert_eq!(rec.id, b, "tags and generation kept");
        // After the join it is an event, so the table's readers refetch.
        let c = id("c", "10.0.0.3:7946", 1);
        assert_eq!(
            kinds(&t.learn_gone(&c, 0, Status::Failed, 10, true)),
            [EventKind::MemberFailed]
        );
        // Never over what the table knows, never ourselves, never a live status.
        let b2 = id("b", "10.0.0.2:7946", 2);
        assert!(t
            .learn_gone(&b2, 0, Status::Failed, 11, true)
            .events
            .is_empty());
        assert_eq!(t.get("b").unwrap().id.generation, 1);
        let me = id("me", "10.0.0.1:7946", 1);
        assert!(t
            .learn_gone(&me, 0, Status::Left, 11, true)
            .events
            .is_empty());
        assert_eq!(t.get("me").unwrap().status, Status::Alive);
        let d = id("d", "10.0.0.4:7946", 1);
        assert!(t
            .learn_gone(&d, 0, Status::Alive, 11, true)
            .events
            .is_empty());
        assert!(t.get("d").is_none());
        // What was only learned is not passed on; what we saw go is.
        let shared = |t: &Table| -> Vec<String> {
            t.sync_entries().into_iter().map(|e| e.id.name).collect()
        };
        assert_eq!(shared(&t), ["me"]);
        let e = id("e", "10.0.0.5:7946", 1);
        t.observe(&e, FocaState::Alive, 0, 11);
        t.leave_notice(&e, 11);
        assert_eq!(shared(&t), ["e", "me"]);
        // The old identity, alive in a stale view, does not bring it back...
        assert!(t.observe(&b, FocaState::Down, 3, 12).events.is_empty());
        assert_eq!(t.get("b").unwrap().status, Status::Left);
        // ...a newer one with the same name does: it rejoined.
        assert_eq!(
            kinds(&t.observe(&b2, FocaState::Alive, 0, 13)),
            [EventKind::MemberJoin]
        );
        assert_eq!(t.get("b").unwrap().status, Status::Alive);
        assert_eq!(shared(&t), ["b", "e", "me"], "its new life is shared");
        // Reaped like any failed or left member: reap_after after it was learned.
        assert!(t.reap(1009).events.is_empty());
        assert_eq!(kinds(&t.reap(1010)), [EventKind::MemberReap]);
        assert!(t.get("c").is_none());
    }

    #[test]
    fn another_live_node_with_our_name_is_reported() {
        let mut t = table();
        // Our own past identity (older generation, old address) is no twin.
        let past = id("me", "10.0.0.8:7946", 0);
        assert!(t.observe(&past, FocaState::Down, 0, 1).conflicts.is_empty());
        // A newer one, even if foca holds it as down right now, is.
        let twin_down = id("me", "10.0.0.7:7946", 5);
        assert!(!t
            .observe(&twin_down, FocaState::Down, 0, 1)
            .conflicts
            .is_empty());
        let twin = id("me", "10.0.0.7:7946", 9);
        let out = t.observe(&twin, FocaState::Alive, 0, 1);
        assert!(out.conflicts[0].message.contains("duplicate node name"));
        assert_eq!(
            t.get("me").unwrap().id.addr,
            "10.0.0.1:7946".parse().unwrap()
        );
    }

    #[test]
    fn a_name_flapping_between_addresses_is_reported_as_duplicate() {
        let mut t = table();
        let mut conflicts = 0;
        for i in 1..=4u64 {
            let addr = if i % 2 == 0 {
                "10.0.0.2:7946"
            } else {
                "10.0.0.3:7946"
            };
            conflicts += t
                .observe(&id("b", addr, i), FocaState::Alive, 0, i)
                .conflicts
                .len();
        }
        assert!(conflicts >= 1);
    }

    #[test]
    fn tag_change_is_an_update() {
        let mut t = table();
        let b1 = id("b", "10.0.0.2:7946", 1);
        t.observe(&b1, FocaState::Alive, 0, 1);
        let mut b2 = id("b", "10.0.0.2:7946", 2);
        b2.tags.insert("state".into(), "ready".into());
        let out = t.observe(&b2, FocaState::Alive, 0, 2);
        assert_eq!(kinds(&out), [EventKind::MemberUpdate]);
        assert!(
            out.declare_down.is_empty(),
            "same address: foca resolves it"
        );
        // The old identity's down, gossiped by foca, is old news.
        assert!(t.observe(&b1, FocaState::Down, 0, 3).events.is_empty());
        assert_eq!(t.get("b").unwrap().status, Status::Alive);
    }

    #[test]
    fn a_full_table_refuses_new_names_but_keeps_updating_known_ones() {
        let mut t = table();
        for i in 1..MAX_MEMBERS {
            t.observe(
                &id(&format!("m{i}"), "10.0.0.2:7946", 1),
                FocaState::Alive,
                0,
                1,
            );
        }
        assert_eq!(t.len(), MAX_MEMBERS);
        let extra = id("extra", "10.0.0.3:7946", 1);
        assert!(t.observe(&extra, FocaState::Alive, 0, 2).events.is_empty());
        assert!(t.get("extra").is_none());
        assert!(t.leave_notice(&extra, 2).events.is_empty());
        assert!(t.get("extra").is_none());
        assert_eq!(
            t.refused(),
            1,
            "the leave notice counts; foca's view is not recounted"
        );
        let known = id("m1", "10.0.0.2:7946", 1);
        assert_eq!(
            kinds(&t.observe(&known, FocaState::Down, 0, 3)),
            [EventKind::MemberFailed]
        );
        // Once a member is reaped there is room again.
        t.reap(10_000);
        assert_eq!(
            kinds(&t.observe(&extra, FocaState::Alive, 0, 10_001)),
            [EventKind::MemberJoin]
        );
    }
}
