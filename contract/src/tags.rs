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
/// `true` turns on cookie stickiness for the pool, a duration (`1d`) also limits how long a
/// client stays on its server (default `false`).
pub const STICKY: &str = "sticky";
/// HAProxy balance algorithm of the pool (default `roundrobin`).
pub const BALANCE: &str = "balance";
/// Slow start of the pool's servers, a duration (`30s`): a server that joins or comes
/// back ramps its weight up over it (HAProxy `slowstart`). Default none.
pub const SLOWSTART: &str = "slowstart";
/// Host rule of the pool (`api.example.com`): with `route`, requests for that host and path.
pub const HOST: &str = "host";
/// An extra listener of the LB for the pool, `8100` or `8100/tls` (default: the main one).
pub const LISTEN: &str = "listen";
/// The port health checks go to, when not the one the pool serves on.
pub const CHECK_PORT: &str = "check_port";
/// Health-check interval of the pool, a duration (default: lbgen's `check_inter` var).
pub const CHECK_INTER: &str = "check_inter";
/// Consecutive passed checks that bring a server up (default 2).
pub const CHECK_RISE: &str = "check_rise";
/// Consecutive failed checks that take a server down (default 3).
pub const CHECK_FALL: &str = "check_fall";
/// How long a health check may take, a duration (default: the interval).
pub const CHECK_TIMEOUT: &str = "check_timeout";
/// The statuses a health check must answer (`200`, `200-399`, `200,302`; default 200-399).
pub const CHECK_STATUS: &str = "check_status";
/// The pool's share of a route it splits with other pools (canary, blue/green), 0-1000.
pub const ROUTE_WEIGHT: &str = "route_weight";
/// How long the LB waits for the pool's servers to answer, a duration (uploads: `1h`).
pub const TIMEOUT_SERVER: &str = "timeout_server";
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
