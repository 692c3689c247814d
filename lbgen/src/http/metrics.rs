//! `/metrics`: lbgen's Prometheus metrics (prometheus-client, Prometheus text format 0.0.4).
//! Every label value comes from a fixed list here, never from the network: a member's tag
//! cannot mint a new series.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::apply::ApplyOutcome;
use crate::model::{Model, Rejection, ServerState, Status};

/// `kind` and `result` of one apply.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApplyLabels {
    /// `runtime`, `reload`, `written`, or `none` (unchanged or failed).
    pub kind: &'static str,
    /// `applied`, `unchanged` or `failed`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    /// See [`ERROR_CLASSES`].
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Every (kind, result) of `lbgen_applies_total` ([`apply_labels`]).
pub const APPLY_SERIES: [(&str, &str); 5] = [
    ("reload", "applied"),
    ("runtime", "applied"),
    ("written", "applied"),
    ("none", "unchanged"),
    ("none", "failed"),
];

/// Why an apply failed, as the `class` label of `lbgen_apply_errors_total`:
/// `template` (an edited template rejected), `permanent` (render error, failed check,
/// unwritable file), `refused` (HAProxy refused the reload), `transient` (agent or master
/// socket unreachable, reload unconfirmed).
pub const ERROR_CLASSES: [&str; 4] = ["template", "permanent", "refused", "transient"];

/// The `reason` label of `lbgen_members_skipped`: which check a skipped member failed.
pub const SKIP_REASONS: [&str; 14] = [
    "name",
    "duplicate",
    "status",
    "addr",
    "tag_service",
    "tag_port",
    "tag_weight",
    "tag_route",
    "tag_check",
    "tag_sticky",
    "tag_balance",
    "tag_state",
    "tag_other",
    "other",
];

/// The members' event kinds and stream notices counted by `lbgen_events_received_total`.
pub const EVENT_KINDS: [&str; 8] = [
    "member-join",
    "member-leave",
    "member-failed",
    "member-update",
    "member-reap",
    "keepalive",
    "synced",
    "resync",
];

/// The lbgen model's server states (`lbgen_servers{state}`).
pub const SERVER_STATES: [&str; 2] = ["ready", "drain"];

/// The registry and a handle on every metric in it.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    applies: Family<ApplyLabels, Counter>,
    apply_seconds: Histogram,
    apply_errors: Family<ErrorLabels, Counter>,
    last_success: Gauge<f64, AtomicU64>,
    generation: Gauge,
    members: Family<StatusLabels, Gauge>,
    pools: Gauge,
    servers: Family<StateLabels, Gauge>,
    skipped: Family<ReasonLabels, Gauge>,
    conflicts: Gauge,
    events: Family<KindLabels, Counter>,
    certificates: Family<StateLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("lbgen");
        let applies = Family::<ApplyLabels, Counter>::default();
        registry.register(
            "applies",
            "Applies of a members snapshot, by kind (runtime, reload, written, none) and result (applied, unchanged, failed)",
            applies.clone(),
        );
        // 1 ms .. ~33 s: runtime commands take milliseconds, a reload up to its timeout.
        let apply_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register_with_unit(
            "apply_duration",
            "Time from snapshot to live (or to failure) of one apply",
            Unit::Seconds,
            apply_seconds.clone(),
        );
        let apply_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "apply_errors",
            "Failed applies by class: template (edited template rejected), permanent (render error, failed check, unwritable file), refused (HAProxy refused the reload), transient (agent or HAProxy unreachable, reload unconfirmed)",
            apply_errors.clone(),
        );
        let last_success = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "last_successful_apply_timestamp_seconds",
            "Unix time of the last apply that made a change live (0 = none yet)",
            last_success.clone(),
        );
        let generation = Gauge::default();
        registry.register(
            "config_generation",
            "Configs made live since lbgen started (each reload, runtime change or write)",
            generation.clone(),
        );
        let members = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "members",
            "Members in the last snapshot, by status",
            members.clone(),
        );
        let pools = Gauge::default();
        registry.register("pools", "Pools in the last snapshot", pools.clone());
        let servers = Family::<StateLabels, Gauge>::default();
        registry.register(
            "servers",
            "Servers in the last snapshot's pools, by state (ready, drain)",
            servers.clone(),
        );
        let skipped = Family::<ReasonLabels, Gauge>::default();
        registry.register(
            "members_skipped",
            "Members of the last snapshot skipped by validation (a rejected tag value, name or address), by reason",
            skipped.clone(),
        );
        let conflicts = Gauge::default();
        registry.register(
            "member_conflicts",
            "Members of the last snapshot outvoted on a pool setting or route",
            conflicts.clone(),
        );
        let events = Family::<KindLabels, Counter>::default();
        registry.register(
            "events_received",
            "Lines received on the agent's event stream, by kind (member events and notices)",
            events.clone(),
        );
        let certificates = Family::<StateLabels, Gauge>::default();
        registry.register(
            "certificates",
            "Files of the certificate directory (tls_certs), by state: served, refused (the last good copy of that name keeps serving)",
            certificates.clone(),
        );
        let m = Metrics {
            certificates,
            registry,
            applies,
            apply_seconds,
            apply_errors,
            last_success,
            generation,
            members,
            pools,
            servers,
            skipped,
            conflicts,
            events,
        };
        // Every fixed series exists from the start, so a rate() has a zero to start from.
        for (kind, result) in APPLY_SERIES {
            let _ = m.applies.get_or_create(&ApplyLabels { kind, result });
        }
        for class in ERROR_CLASSES {
            let _ = m.apply_errors.get_or_create(&ErrorLabels { class });
        }
        for kind in EVENT_KINDS {
            let _ = m.events.get_or_create(&KindLabels { kind });
        }
        m.snapshot(&Model::default(), &[]);
        m.certificates(0, 0);
        m
    }

    /// What the certificate directory gives after a refresh.
    pub fn certificates(&self, served: usize, refused: usize) {
        for (state, n) in [("served", served), ("refused", refused)] {
            self.certificates
                .get_or_create(&StateLabels { state })
                .set(n as i64);
        }
    }

    /// One apply ended (a silent periodic resync is not counted).
    pub fn apply(&self, outcome: &ApplyOutcome, error_class: Option<&'static str>, took: Duration) {
        self.applies.get_or_create(&apply_labels(outcome)).inc();
        self.apply_seconds.observe(took.as_secs_f64());
        if let Some(class) = error_class {
            self.apply_errors
                .get_or_create(&ErrorLabels { class })
                .inc();
        }
        if went_live(outcome) {
            self.generation.inc();
            self.last_success.set(unix_now());
        }
    }

    /// The gauges of a new snapshot.
    pub fn snapshot(&self, model: &Model, members: &[Status]) {
        for st in Status::ALL {
            let n = members.iter().filter(|s| **s == st).count();
            self.members
                .get_or_create(&StatusLabels {
                    status: st.as_str(),
                })
                .set(n as i64);
        }
        self.pools.set(model.pools.len() as i64);
        for (state, label) in [(ServerState::Ready, "ready"), (ServerState::Drain, "drain")] {
            let n = model
                .pools
                .iter()
                .flat_map(|p| &p.servers)
                .filter(|s| s.state == state)
                .count();
            self.servers
                .get_or_create(&StateLabels { state: label })
                .set(n as i64);
        }
        for reason in SKIP_REASONS {
            let n = model
                .rejected
                .iter()
                .filter(|r| skip_reason(r) == reason)
                .count();
            self.skipped
                .get_or_create(&ReasonLabels { reason })
                .set(n as i64);
        }
        self.conflicts.set(model.conflicts.len() as i64);
    }

    /// One line of the agent's event stream, by its kind (one of [`EVENT_KINDS`]).
    pub fn event(&self, kind: &str) {
        if let Some(kind) = EVENT_KINDS.into_iter().find(|k| *k == kind) {
            self.events.get_or_create(&KindLabels { kind }).inc();
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The `Content-Type` of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// `kind`/`result` of an outcome.
pub fn apply_labels(outcome: &ApplyOutcome) -> ApplyLabels {
    let (kind, result) = match outcome {
        ApplyOutcome::Reloaded { .. } => ("reload", "applied"),
        ApplyOutcome::Runtime { .. } => ("runtime", "applied"),
        ApplyOutcome::Written => ("written", "applied"),
        ApplyOutcome::Unchanged => ("none", "unchanged"),
        ApplyOutcome::Failed(_) => ("none", "failed"),
    };
    ApplyLabels { kind, result }
}

/// Whether the outcome made a new config live.
pub fn went_live(outcome: &ApplyOutcome) -> bool {
    apply_labels(outcome).result == "applied"
}

/// Which check a skipped member failed (one of [`SKIP_REASONS`]), from the reason
/// [`Model::build`] wrote: `tag port=... must be ...` → `tag_port`.
pub fn skip_reason(r: &Rejection) -> &'static str {
    let reason = r.reason.as_str();
    if reason == "duplicate member name" {
        return "duplicate";
    }
    if reason.starts_with("name ") {
        return "name";
    }
    if reason.starts_with("unknown status") {
        return "status";
    }
    if reason.starts_with("addr ") {
        return "addr";
    }
    if let Some(rest) = reason.strip_prefix("tag ") {
        let key = rest.split(['=', ' ']).next().unwrap_or_default();
        return SKIP_REASONS
            .into_iter()
            .find(|r| r.strip_prefix("tag_") == Some(key) && *r != "tag_other")
            .unwrap_or("tag_other");
    }
    "other"
}

/// Seconds since the Unix epoch, as a float.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MembersDoc;

    fn rejection(reason: &str) -> Rejection {
        Rejection {
            member: "m".into(),
            reason: reason.into(),
        }
    }

    #[test]
    fn skip_reasons_come_from_a_fixed_list() {
        assert_eq!(
            skip_reason(&rejection("tag port=\"x\" must be 1-65535")),
            "tag_port"
        );
        assert_eq!(skip_reason(&rejection("tag port is missing")), "tag_port");
        assert_eq!(
            skip_reason(&rejection("tag service=\"stats\" is reserved")),
            "tag_service"
        );
        assert_eq!(skip_reason(&rejection("tag evil=1 odd")), "tag_other");
        assert_eq!(skip_reason(&rejection("addr \"x\" is not IP:PORT")), "addr");
        assert_eq!(
            skip_reason(&rejection("duplicate member name")),
            "duplicate"
        );
        assert_eq!(skip_reason(&rejection("something new")), "other");
    }

    #[test]
    fn a_snapshot_sets_the_gauges_and_an_apply_counts_by_kind() {
        let doc = MembersDoc::from_json(
            r#"{"members":[
              {"name":"web-1","addr":"10.0.0.1:1","status":"alive","tags":{"service":"web","port":"80"}},
              {"name":"web-2","addr":"10.0.0.2:1","status":"alive","tags":{"service":"web","port":"80","state":"draining"}},
              {"name":"bad","addr":"10.0.0.3:1","status":"alive","tags":{"service":"web","port":"http"}},
              {"name":"gone","addr":"10.0.0.4:1","status":"failed","tags":{"service":"web","port":"80"}}]}"#,
        )
        .unwrap();
        let m = Metrics::new();
        let model = Model::build(&doc);
        let statuses: Vec<Status> = doc.members.iter().map(|m| m.status).collect();
        m.snapshot(&model, &statuses);
        m.apply(
            &ApplyOutcome::Reloaded { worker: 7 },
            None,
            Duration::from_millis(30),
        );
        m.apply(
            &ApplyOutcome::Failed("x".into()),
            Some("transient"),
            Duration::from_millis(1),
        );
        m.event("member-join");
        m.event("not-a-kind");
        let t = m.encode();
        for line in [
            "lbgen_members{status=\"alive\"} 3",
            "lbgen_members{status=\"failed\"} 1",
            "lbgen_pools 1",
            "lbgen_servers{state=\"ready\"} 1",
            "lbgen_servers{state=\"drain\"} 1",
            "lbgen_members_skipped{reason=\"tag_port\"} 1",
            "lbgen_applies_total{kind=\"reload\",result=\"applied\"} 1",
            "lbgen_applies_total{kind=\"none\",result=\"failed\"} 1",
            "lbgen_apply_errors_total{class=\"transient\"} 1",
            "lbgen_config_generation 1",
            "lbgen_apply_duration_seconds_count 2",
            "lbgen_events_received_total{kind=\"member-join\"} 1",
        ] {
            assert!(t.lines().any(|l| l == line), "no {line:?} in\n{t}");
        }
        assert!(!t.contains("not-a-kind"));
    }
}
