//! The tag vocabulary: the keys that describe a backend, read by lbgen and
//! its default template, and the values of `state` that the supervisor sets.
//! A member without [`SERVICE`] is not a backend; any other tag is free for
//! the operator's own use (handlers see every tag).

/// Pool name (the HAProxy backend); required for a member to be a backend.
pub const SERVICE: &str = "service";
/// The port the backend serves on (1-65535); required with `service`.
pub const PORT: &str = "port";
/// HTTP health-check path of the pool (default `/`).
pub const CHECK: &str = "check";
/// Path prefix routed to the pool, e.g. `/api/v2` (default `/`).
pub const ROUTE: &str = "route";
/// Server weight, 0-256 (default 100; 0 takes no new requests).
pub const WEIGHT: &str = "weight";
/// `true` turns on cookie stickiness for the pool (default `false`).
pub const STICKY: &str = "sticky";
/// HAProxy balance algorithm of the pool (default `roundrobin`).
pub const BALANCE: &str = "balance";
/// Slow start of the pool's servers, a duration (`30s`): a server that joins or comes
/// back ramps its weight up over it (HAProxy `slowstart`). Default none.
pub const SLOWSTART: &str = "slowstart";
/// `true`: the pool's plain-HTTP requests are redirected to HTTPS (when the LB has a
/// certificate). Default `false`.
pub const HTTPS_REDIRECT: &str = "https_redirect";
/// The supervised service's state, see [`state`]; absent means ready.
pub const STATE: &str = "state";
/// The node's role: `SERF_SELF_ROLE` and the third column of a handler's stdin.
pub const ROLE: &str = "role";

/// The port of this member's agent API, when it listens on the member's gossip IP (`--api
/// 0.0.0.0:PORT` with a token): Prometheus scrapes its `/metrics` there.
pub const METRICS_AGENT: &str = "metrics_agent";
/// The port of `lbgen watch --http` on this member (its `/metrics`).
pub const METRICS_LBGEN: &str = "metrics_lbgen";
/// The port of HAProxy's stats listener on this member (the exporter at `/metrics`).
pub const METRICS_HAPROXY: &str = "metrics_haproxy";

/// Values of the [`STATE`] tag. Only `ready` (or no tag) takes traffic;
/// `draining` keeps existing connections but takes no new ones; `starting`
/// and `unhealthy` are not servers at all.
pub mod state {
    /// Passed its health check: serves.
    pub const READY: &str = "ready";
    /// Stopping: finish what is in flight, take nothing new.
    pub const DRAINING: &str = "draining";
    /// Supervised child started, health check not yet passed.
    pub const STARTING: &str = "starting";
    /// Failed its health check: out of the pool until it passes again.
    pub const UNHEALTHY: &str = "unhealthy";
}
