//! What `watch --http` knows, shared between the watch loop (which records) and the HTTP
//! server (which reads): the last snapshot, the last apply, recent agent events, the metrics,
//! and a broadcast of each new event and apply to the page's `/events` stream.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use shoal_contract::{Member, StreamLine};
use tokio::sync::broadcast;

use crate::apply::{ApplyError, ApplyOutcome};
use crate::haproxy::Master;
use crate::http::live::{self, LiveStates};
use crate::http::metrics::{apply_labels, unix_now, Metrics};
use crate::model::{Conflict, MembersDoc, Model, Rejection, ServerState};

/// Recent events kept for the page and `/status.json`.
pub const EVENT_RING: usize = 100;
/// Member names longer than this are cut in the event ring (they come from the network).
const MAX_NAME: usize = 128;

/// The last apply, as `/status.json` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastApply {
    /// Unix seconds.
    pub at: f64,
    /// `reload`, `runtime`, `written` or `none`.
    pub kind: &'static str,
    /// `applied`, `unchanged` or `failed`.
    pub result: &'static str,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// One agent event as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    /// The agent's event index (within its run).
    pub index: u64,
    /// When the agent logged it (RFC 3339, the agent's clock).
    pub time: String,
    /// `member-join`, `member-failed` ...
    pub kind: &'static str,
    pub member: String,
    /// The member's status after the event.
    pub status: &'static str,
}

/// What is pushed to `/events` listeners.
#[derive(Debug, Clone)]
pub enum Push {
    Event(EventRecord),
    Apply(LastApply),
}

#[derive(Default)]
struct State {
    members: Vec<Member>,
    model: Model,
    snapshot_at: Option<f64>,
    last_apply: Option<LastApply>,
    /// Newest last.
    events: VecDeque<EventRecord>,
    /// The certificate directory, when TLS is on.
    tls: Option<TlsView>,
}

struct Inner {
    source: String,
    master: Option<Master>,
    metrics: Metrics,
    state: Mutex<State>,
    push: broadcast::Sender<Push>,
}

/// A cheap handle; clones share one state.
#[derive(Clone)]
pub struct StatusHub(Arc<Inner>);

impl std::fmt::Debug for StatusHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusHub")
            .field("source", &self.0.source)
            .finish_non_exhaustive()
    }
}

/// The class of a failed apply (`lbgen_apply_errors_total{class}`).
pub fn error_class(e: &ApplyError) -> &'static str {
    match e {
        ApplyError::Logged(_) => "template",
        ApplyError::Permanent(_) => "permanent",
        ApplyError::Refused(_) => "refused",
        ApplyError::Transient(_) => "transient",
    }
}

impl StatusHub {
    /// `source` describes where membership comes from; `master` is asked for HAProxy's live
    /// server states (None: they are "unknown").
    pub fn new(source: String, master: Option<Master>) -> StatusHub {
        let (push, _) = broadcast::channel(256);
        StatusHub(Arc::new(Inner {
            source,
            master,
            metrics: Metrics::new(),
            state: Mutex::new(State::default()),
            push,
        }))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: still readable.
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// A listener for new events and applies.
    pub fn subscribe(&self) -> broadcast::Receiver<Push> {
        self.0.push.subscribe()
    }

    /// A new members snapshot (before it is applied).
    pub fn snapshot(&self, doc: &MembersDoc) {
        self.snapshot_with(doc, &crate::pool_tags::ListenPolicy::default())
    }

    /// [`StatusHub::snapshot`] with the listener ports `watch`'s variables allow.
    pub fn snapshot_with(&self, doc: &MembersDoc, policy: &crate::pool_tags::ListenPolicy) {
        let model = Model::build_with(doc, policy);
        let statuses: Vec<_> = doc.members.iter().map(|m| m.status).collect();
        self.0.metrics.snapshot(&model, &statuses);
        let mut members = doc.members.clone();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let mut st = self.state();
        st.members = members;
        st.model = model;
        st.snapshot_at = Some(unix_now());
    }

    /// One apply ended (not called for a silent periodic resync).
    pub fn applied(
        &self,
        outcome: &ApplyOutcome,
        error_class: Option<&'static str>,
        took: Duration,
    ) {
        self.0.metrics.apply(outcome, error_class, took);
        let labels = apply_labels(outcome);
        let last = LastApply {
            at: unix_now(),
            kind: labels.kind,
            result: labels.result,
            error: match outcome {
                ApplyOutcome::Failed(e) => Some(e.clone()),
                _ => None,
            },
            duration_ms: took.as_millis() as u64,
        };
        self.state().last_apply = Some(last.clone());
        let _ = self.0.push.send(Push::Apply(last));
    }

    /// One line of the agent's event stream.
    pub fn stream_line(&self, line: &StreamLine) {
        match line {
            StreamLine::Notice(n) => self.0.metrics.event(n.kind.as_str()),
            StreamLine::Event(e) => {
                self.0.metrics.event(e.kind.as_str());
                let rec = EventRecord {
                    index: e.index,
                    time: e.time.chars().take(40).collect(),
                    kind: e.kind.as_str(),
                    member: e.member.name.chars().take(MAX_NAME).collect(),
                    status: e.member.status.as_str(),
                };
                {
                    let mut st = self.state();
                    if st.events.len() >= EVENT_RING {
                        st.events.pop_front();
                    }
                    st.events.push_back(rec.clone());
                }
                let _ = self.0.push.send(Push::Event(rec));
            }
        }
    }

    /// Everything `/status.json` and the page show, HAProxy's live states included (asked
    /// now, when lbgen has a master socket).
    pub async fn view(&self) -> StatusView {
        let live = match &self.0.master {
            None => Err("no --haproxy-master: lbgen does not ask HAProxy".to_string()),
            Some(m) => live::fetch(m).await.map_err(|e| e.0),
        };
        self.view_with(live)
    }

    /// Records what the certificate directory gives now (after each refresh).
    pub fn tls(&self, view: TlsView) {
        self.0
            .metrics
            .certificates(view.served.len(), view.refused.len());
        self.state().tls = Some(view);
    }

    /// [`StatusHub::view`] with HAProxy's answer given (or why there is none).
    pub fn view_with(&self, live: Result<LiveStates, String>) -> StatusView {
        let st = self.state();
        let (haproxy, states) = match live {
            Ok(s) => (
                HaproxyView {
                    state: "live",
                    detail: "server states from HAProxy's runtime API (show stat)".into(),
                },
                Some(s),
            ),
            Err(e) => (
                HaproxyView {
                    state: if self.0.master.is_some() {
                        "error"
                    } else {
                        "unknown"
                    },
                    detail: e,
                },
                None,
            ),
        };
        let pools = st
            .model
            .pools
            .iter()
            .map(|p| PoolView {
                name: p.name.clone(),
                route: p.route.clone(),
                check: p.check.clone(),
                balance: p.balance.clone(),
                sticky: p.sticky,
                default: st.model.is_default(&p.name),
                servers: p
                    .servers
                    .iter()
                    .map(|s| {
                        let l = states
                            .as_ref()
                            .and_then(|m| m.get(&(p.name.clone(), s.name.clone())));
                        ServerView {
                            name: s.name.clone(),
                            addr: s.addr.clone(),
                            weight: s.weight,
                            state: s.state,
                            haproxy: match (l, &states) {
                                (Some(l), _) => l.status.clone(),
                                // HAProxy answered but has no such server (yet).
                                (None, Some(_)) => "absent".into(),
                                (None, None) => "unknown".into(),
                            },
                            haproxy_weight: l.map(|l| l.weight.clone()),
                            check: l.map(|l| l.check.clone()),
                        }
                    })
                    .collect(),
            })
            .collect();
        StatusView {
            source: self.0.source.clone(),
            generated_at: unix_now(),
            snapshot_at: st.snapshot_at,
            haproxy,
            members: st.members.clone(),
            pools,
            skipped: st.model.rejected.clone(),
            conflicts: st.model.conflicts.clone(),
            last_apply: st.last_apply.clone(),
            events: st.events.iter().rev().cloned().collect(),
            tls: st.tls.clone(),
        }
    }
}

/// The `/status.json` document.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// Where membership comes from (`agent http://...`, `file ...`).
    pub source: String,
    /// Unix seconds.
    pub generated_at: f64,
    /// When the last snapshot was fetched (unix seconds); null before the first.
    pub snapshot_at: Option<f64>,
    pub haproxy: HaproxyView,
    /// Every member of the last snapshot, by name.
    pub members: Vec<Member>,
    pub pools: Vec<PoolView>,
    /// Members skipped by validation, and why.
    pub skipped: Vec<Rejection>,
    /// Members outvoted on a pool setting.
    pub conflicts: Vec<Conflict>,
    pub last_apply: Option<LastApply>,
    /// Recent agent events, newest first (at most [`EVENT_RING`]).
    pub events: Vec<EventRecord>,
    /// The certificates served and refused; null while TLS is off.
    pub tls: Option<TlsView>,
}

/// `status.json`'s `tls`: what the certificate directory gave.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TlsView {
    /// The directory lbgen reads (`tls_certs`).
    pub dir: String,
    /// Served now, default first.
    pub served: Vec<crate::certs::Served>,
    /// Files refused, with the reason (the last good copy of that name keeps serving).
    pub refused: Vec<crate::certs::Refused>,
}

/// Whether HAProxy's live states are shown.
#[derive(Debug, Clone, Serialize)]
pub struct HaproxyView {
    /// `live` (asked just now), `unknown` (no master socket) or `error` (it did not answer).
    pub state: &'static str,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolView {
    pub name: String,
    pub route: String,
    pub check: String,
    pub balance: String,
    pub sticky: bool,
    /// The pool serving requests no route matches.
    pub default: bool,
    pub servers: Vec<ServerView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerView {
    pub name: String,
    pub addr: String,
    pub weight: u16,
    /// What lbgen renders: `ready` or `drain`.
    pub state: ServerState,
    /// HAProxy's status (`UP`, `DOWN`, `DRAIN`, `MAINT`, `no check` ...), `absent` (HAProxy
    /// has no such server yet), or `unknown` (HAProxy not asked / not answering).
    pub haproxy: String,
    pub haproxy_weight: Option<String>,
    /// HAProxy's last check result.
    pub check: Option<String>,
}
