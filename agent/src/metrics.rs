//! The agent's Prometheus metrics, served by `GET /metrics` (see
//! `docs/metrics.md` for the table): every metric family lives here, in one
//! place.
//!
//! Two kinds of value:
//! - counted where it happens: [`Metrics`] (in [`crate::stats::Stats`], so
//!   every place that counts traffic reaches it) holds prometheus-client
//!   counters and histograms; the hooks across the agent are one call each;
//! - read at scrape time ([`Scrape`]): members by status from the published
//!   snapshot, the SWIM counters the core keeps (mirrored by the gossip loop
//!   after each turn), supervised services and health checks. A scrape never
//!   goes through the gossip loop, so it cannot delay it.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::agent::Handle;
use crate::counters::{ProtocolCounts, MESSAGE_KINDS};
use crate::membership::Status;
use crate::pushpull::FrameError;
use crate::supervisor::{ServiceState, StatusReader};
use crate::wire::DecodeError;

/// One label.
type Label1 = [(&'static str, &'static str); 1];
/// Two labels.
type Label2 = [(&'static str, &'static str); 2];

/// `Accept` value that asks for OpenMetrics instead of Prometheus text.
const OPENMETRICS: &str = "application/openmetrics-text";

/// Which way traffic went (label `direction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    In,
    Out,
}

impl Dir {
    fn as_str(self) -> &'static str {
        match self {
            Dir::In => "in",
            Dir::Out => "out",
        }
    }
}

/// How a handler run ended (label `result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunResult {
    /// Exit status 0.
    Ok,
    /// A non-zero exit or a signal.
    Failed,
    /// Killed at `--handler-timeout`.
    Timeout,
    /// `/bin/sh` could not be started.
    Error,
}

/// Counters and histograms updated where things happen.
pub struct Metrics {
    member_events: Family<Label1, Counter>,
    probe_rtt: Histogram,
    timer_lag: Histogram,
    push_pulls: Family<Label2, Counter>,
    push_pull_duration: Family<Label1, Histogram>,
    packets: Family<Label2, Counter>,
    bytes: Family<Label2, Counter>,
    dropped: Family<Label1, Counter>,
    send_errors: Counter,
    handler_runs: Family<Label1, Counter>,
    handler_duration: Histogram,
    /// The core's SWIM counters as of the gossip loop's last turn.
    protocol: Mutex<ProtocolCounts>,
}

/// Every `reason` a drop is counted under (see [`Metrics::dropped_frame`]).
pub const DROP_REASONS: [&str; 9] = [
    "decode", "auth", "size", "foreign", "version", "conn_cap", "deadline", "busy", "io",
];
/// Every member event kind.
const EVENT_KINDS: [&str; 5] = [
    "member-join",
    "member-leave",
    "member-failed",
    "member-update",
    "member-reap",
];
const RUN_RESULTS: [RunResult; 4] = [
    RunResult::Ok,
    RunResult::Failed,
    RunResult::Timeout,
    RunResult::Error,
];

impl Default for Metrics {
    /// Every series whose labels are known up front starts at 0, so a
    /// dashboard sees it (and `rate()` works) before the first event.
    fn default() -> Self {
        let m = Metrics::empty();
        for kind in EVENT_KINDS {
            let _ = m.member_events.get_or_create(&[("kind", kind)]);
        }
        for dir in [Dir::In, Dir::Out] {
            for result in ["ok", "failed"] {
                let _ = m
                    .push_pulls
                    .get_or_create(&[("direction", dir.as_str()), ("result", result)]);
            }
            let _ = m
                .push_pull_duration
                .get_or_create(&[("direction", dir.as_str())]);
            for transport in ["udp", "tcp"] {
                let labels = [("transport", transport), ("direction", dir.as_str())];
                let _ = m.packets.get_or_create(&labels);
                let _ = m.bytes.get_or_create(&labels);
            }
        }
        for reason in DROP_REASONS {
            let _ = m.dropped.get_or_create(&[("reason", reason)]);
        }
        for result in RUN_RESULTS {
            let _ = m.handler_runs.get_or_create(&[("result", result.as_str())]);
        }
        m
    }
}

impl Metrics {
    fn empty() -> Self {
        Metrics {
            member_events: Family::default(),
            // 100 µs (loopback) to 1.6 s (past every profile's probe timeout).
            probe_rtt: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
            timer_lag: Histogram::new(exponential_buckets(0.0001, 2.0, 14)),
            push_pulls: Family::default(),
            // 1 ms to 8 s (an exchange is cut at 5 s).
            push_pull_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
            packets: Family::default(),
            bytes: Family::default(),
            dropped: Family::default(),
            send_errors: Counter::default(),
            handler_runs: Family::default(),
            // 5 ms to 41 s (the default timeout is 30 s).
            handler_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            protocol: Mutex::new(ProtocolCounts::default()),
        }
    }
}

impl RunResult {
    fn as_str(self) -> &'static str {
        match self {
            RunResult::Ok => "ok",
            RunResult::Failed => "failed",
            RunResult::Timeout => "timeout",
            RunResult::Error => "error",
        }
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A member event of `kind` (`member-join`, ...) entered the event log.
    pub fn member_event(&self, kind: &'static str) {
        self.member_events.get_or_create(&[("kind", kind)]).inc();
    }

    /// After a turn of the gossip loop: the core's counters and the round
    /// trips it measured since the last turn.
    pub fn protocol(&self, counts: &ProtocolCounts, rtts: &[Duration]) {
        *self.protocol.lock().unwrap_or_else(|p| p.into_inner()) = *counts;
        for rtt in rtts {
            self.probe_rtt.observe(rtt.as_secs_f64());
        }
    }

    /// How late the gossip loop ran a protocol timer that was due.
    pub fn timer_lag(&self, lag: Duration) {
        self.timer_lag.observe(lag.as_secs_f64());
    }

    /// A push-pull (state exchange over TCP) ended.
    pub fn push_pull(&self, dir: Dir, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "failed" };
        self.push_pulls
            .get_or_create(&[("direction", dir.as_str()), ("result", result)])
            .inc();
        self.push_pull_duration
            .get_or_create(&[("direction", dir.as_str())])
            .observe(took.as_secs_f64());
    }

    /// A UDP packet of `len` bytes went in or out.
    pub fn udp(&self, dir: Dir, len: usize) {
        self.traffic("udp", dir, len);
    }

    /// A TCP frame of `len` bytes went in or out.
    pub fn tcp(&self, dir: Dir, len: usize) {
        self.traffic("tcp", dir, len);
    }

    fn traffic(&self, transport: &'static str, dir: Dir, len: usize) {
        let labels = [("transport", transport), ("direction", dir.as_str())];
        self.packets.get_or_create(&labels).inc();
        self.bytes.get_or_create(&labels).inc_by(len as u64);
    }

    /// An inbound UDP packet was dropped (decode, auth, ...).
    pub fn dropped_packet(&self, e: &DecodeError) {
        self.dropped(decode_reason(e));
    }

    /// An inbound TCP exchange was refused or cut.
    pub fn dropped_frame(&self, e: &FrameError) {
        self.dropped(match e {
            FrameError::Decode(d) => decode_reason(d),
            FrameError::Timeout(_) => "deadline",
            FrameError::Busy => "busy",
            FrameError::Io(_) => "io",
        });
    }

    /// Something inbound was dropped for `reason`, one of [`DROP_REASONS`].
    pub fn dropped(&self, reason: &'static str) {
        self.dropped.get_or_create(&[("reason", reason)]).inc();
    }

    /// A UDP packet could not be sent.
    pub fn send_error(&self) {
        self.send_errors.inc();
    }

    /// An event handler run ended.
    pub fn handler_run(&self, result: RunResult, took: Duration) {
        self.handler_runs
            .get_or_create(&[("result", result.as_str())])
            .inc();
        self.handler_duration.observe(took.as_secs_f64());
    }
}

/// The `reason` label of a packet or frame that could not be read.
fn decode_reason(e: &DecodeError) -> &'static str {
    match e {
        DecodeError::Auth
        | DecodeError::Encrypted
        | DecodeError::Unencrypted
        | DecodeError::Refused(_) => "auth",
        DecodeError::Oversize(_)
        | DecodeError::TooManyEntries(_)
        | DecodeError::FrameTooLarge(_) => "size",
        DecodeError::Foreign => "foreign",
        DecodeError::Version(_) | DecodeError::UnknownKind(_) => "version",
        DecodeError::Empty | DecodeError::Malformed(_) => "decode",
    }
}

/// Everything `GET /metrics` shows, built once when the API starts.
pub struct Scrape {
    registry: Registry,
}

impl Scrape {
    /// The registry over `agent`'s metrics, and its services when it
    /// supervises any.
    pub fn new(agent: &Handle, services: Option<StatusReader>) -> Scrape {
        let m = &agent.stats().metrics;
        let mut r = Registry::default();
        r.register(
            "shoal_member_events",
            "Member events entered in the event log, by kind",
            m.member_events.clone(),
        );
        r.register(
            "shoal_probe_rtt_seconds",
            "Round trip of direct probes this node sent that were acked (ping to ack)",
            m.probe_rtt.clone(),
        );
        r.register(
            "shoal_gossip_timer_lag_seconds",
            "How late the gossip loop ran a protocol timer after it was due",
            m.timer_lag.clone(),
        );
        r.register(
            "shoal_push_pulls",
            "Push-pulls (full state exchanges over TCP), by direction and result",
            m.push_pulls.clone(),
        );
        r.register(
            "shoal_push_pull_duration_seconds",
            "Time a push-pull took, connect to answer (out) or first byte to answer sent (in)",
            m.push_pull_duration.clone(),
        );
        r.register(
            "shoal_packets",
            "Gossip packets by transport (udp: datagrams, tcp: frames) and direction",
            m.packets.clone(),
        );
        r.register(
            "shoal_bytes",
            "Gossip bytes on the wire by transport and direction",
            m.bytes.clone(),
        );
        r.register(
            "shoal_packets_dropped",
            "Inbound packets and TCP exchanges dropped, by reason",
            m.dropped.clone(),
        );
        r.register(
            "shoal_send_errors",
            "UDP packets that could not be sent (socket buffer full, unreachable)",
            m.send_errors.clone(),
        );
        r.register(
            "shoal_handler_runs",
            "Event handler runs by result",
            m.handler_runs.clone(),
        );
        r.register(
            "shoal_handler_duration_seconds",
            "Time an event handler run took",
            m.handler_duration.clone(),
        );
        r.register_collector(Box::new(Live {
            agent: agent.clone(),
            services,
        }));
        Scrape { registry: r }
    }

    /// The exposition and its content type: OpenMetrics when `accept` asks
    /// for it, else Prometheus text 0.0.4 (what every scraper reads).
    pub fn render(&self, accept: Option<&str>) -> (String, &'static str) {
        let mut out = String::with_capacity(16 * 1024);
        let openmetrics = accept.is_some_and(|a| a.contains(OPENMETRICS));
        // Writing to a String cannot fail; an encoder error would be a bug
        // in a collector, and the partial text is still what we have.
        if openmetrics {
            let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
            (
                out,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        } else {
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
            (
                out,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )
        }
    }
}

/// The values read at scrape time.
struct Live {
    agent: Handle,
    services: Option<StatusReader>,
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

const SERVICE_STATES: [(ServiceState, &str); 6] = [
    (ServiceState::Running, "running"),
    (ServiceState::Backoff, "backoff"),
    (ServiceState::Stopping, "stopping"),
    (ServiceState::Stopped, "stopped"),
    (ServiceState::Exited, "exited"),
    (ServiceState::Failed, "failed"),
];

impl Collector for Live {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let snapshot = self.agent.snapshot();
        let mut family = enc.encode_descriptor(
            "shoal_members",
            "Members in this node's table by status, itself included",
            None,
            MetricType::Gauge,
        )?;
        for status in [Status::Alive, Status::Suspect, Status::Failed, Status::Left] {
            let n = snapshot.counts.get(status.as_str()).copied().unwrap_or(0);
            ConstGauge::new(n as i64)
                .encode(family.encode_family(&[("status", status.as_str())])?)?;
        }
        let stats = self.agent.stats();
        counter(
            &mut enc,
            "shoal_members_refused",
            "New members a push-pull could not add: the member table was full",
            stats
                .members_refused
                .load(std::sync::atomic::Ordering::Relaxed),
        )?;
        let c = *stats
            .metrics
            .protocol
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        encode_protocol(&mut enc, &c)?;
        if let Some(services) = &self.services {
            encode_services(&mut enc, services)?;
        }
        Ok(())
    }
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), fmt::Error> {
    let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}

fn encode_protocol(enc: &mut DescriptorEncoder, c: &ProtocolCounts) -> Result<(), fmt::Error> {
    let mut family = enc.encode_descriptor(
        "shoal_swim_messages",
        "SWIM messages this node received (in) and sent (out), by kind",
        None,
        MetricType::Counter,
    )?;
    for (kind, [inbound, outbound]) in MESSAGE_KINDS.iter().zip(c.messages) {
        for (dir, v) in [("in", inbound), ("out", outbound)] {
            let labels = [("kind", *kind), ("direction", dir)];
            ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
        }
    }
    let plain: [(&str, &str, u64); 7] = [
        (
            "shoal_probes_sent",
            "Direct probes (ping) this node sent",
            c.probes_sent,
        ),
        (
            "shoal_probe_acks_received",
            "Acks that answered this node's direct probes",
            c.probe_acks,
        ),
        (
            "shoal_indirect_probes_sent",
            "Indirect probes (ping-req) this node asked other members for",
            c.indirect_probes_sent,
        ),
        (
            "shoal_indirect_acks_received",
            "Acks to this node's indirect probes, forwarded back to it",
            c.indirect_acks,
        ),
        (
            "shoal_suspicions_raised",
            "Members this node suspected: its own probe of them failed",
            c.suspicions_raised,
        ),
        (
            "shoal_suspicions_refuted",
            "Members this node suspected that were heard alive again before the suspicion ran out",
            c.suspicions_refuted,
        ),
        (
            "shoal_self_refutations",
            "Times a member told this node it suspects it and this node refuted",
            c.self_refutations,
        ),
    ];
    for (name, help, v) in plain {
        counter(enc, name, help, v)?;
    }
    Ok(())
}

fn encode_services(enc: &mut DescriptorEncoder, services: &StatusReader) -> Result<(), fmt::Error> {
    let all = services.status();
    let mut family = enc.encode_descriptor(
        "shoal_service_state",
        "Supervised services: 1 for the state each is in, 0 for the others",
        None,
        MetricType::Gauge,
    )?;
    for s in &all {
        for (state, name) in SERVICE_STATES {
            let labels = [("service", s.name.as_str()), ("state", name)];
            ConstGauge::new(i64::from(s.state == state)).encode(family.encode_family(&labels)?)?;
        }
    }
    let mut family = enc.encode_descriptor(
        "shoal_service_restarts",
        "Times the supervisor restarted each service",
        None,
        MetricType::Counter,
    )?;
    for s in &all {
        let labels = [("service", s.name.as_str())];
        ConstCounter::new(u64::from(s.restarts)).encode(family.encode_family(&labels)?)?;
    }
    let checks = crate::supervisor::health::CHECK_RESULTS.counts();
    let mut family = enc.encode_descriptor(
        "shoal_health_checks",
        "Health checks (--check / --check-cmd) run, by result",
        None,
        MetricType::Counter,
    )?;
    for (result, v) in [("pass", checks.0), ("fail", checks.1)] {
        ConstCounter::new(v).encode(family.encode_family(&[("result", result)])?)?;
    }
    Ok(())
}
