//! lbgen: renders an HAProxy config from shoal membership and hot-reloads HAProxy.
//!
//! Layout:
//! - [`acme`]: `lbgen acme`, certificates from an ACME CA for HAProxy's cert dir.
//! - [`model`]: members document → pools/servers/routes; validation (pure, no I/O).
//! - [`pool_tags`]: the routing and health-check tags of a pool, parsed and validated (pure).
//! - [`routes`]: pools → each listener's routes, default pool and weighted splits (pure).
//! - [`nodes`]: every member and the `/metrics` endpoints they advertise (pure).
//! - [`render`]: handlebars (strict, no escaping) with template variables.
//! - [`grammar`]: the strict line grammar of the builtin template's output (a test oracle).
//! - [`source`]: agent event stream / members file → change signals; snapshots.
//! - [`watch`]: the follow loop: decides *when* to apply (debounce, retry, resync).
//! - [`apply`]: the [`apply::Applier`] decides *how*: owns what is live (file text, what
//!   HAProxy runs, its master PID, the last good and the rejected template); runtime API vs
//!   reload, restore of the last good config.
//! - [`adopt`]: the proof that the running HAProxy loaded the file lbgen finds at start
//!   (the first apply then needs no reload).
//! - [`extras`]: `watch --render TEMPLATE:OUT[:COMMAND]`, more files from the same snapshot.
//! - [`output`]: atomic write with `.bak`, `--check-cmd` validation.
//! - [`haproxy`]: master CLI client: verified reload, runtime API.
//! - [`layout`]: a rendered config split into its frame and its server lines (pure).
//! - [`plan`]: runtime-API commands vs reload for a config change (pure).
//! - [`http`]: `watch --http`: the status page, `/status.json`, `/metrics`, `/events`.
//! - [`tls`]: certificate file names → SNI, PEM shape, the crt-list (pure).
//! - [`certs`]: the certificate directory → lbgen's copies, the crt-list and HAProxy's
//!   runtime API (`set ssl cert`, no reload).
//! - [`status`]: `lbgen status`, pools, routes and conflicting members of a snapshot (pure).
//! - `testing` (feature `testing`): the HAProxy test harness shared by tests and the bench.
pub mod acme;
pub mod adopt;
pub mod apply;
pub mod certs;
pub mod extras;
pub mod grammar;
pub mod haproxy;
pub mod http;
pub mod layout;
pub mod model;
pub mod nodes;
pub mod output;
pub mod plan;
pub mod pool_tags;
pub mod render;
pub mod routes;
pub mod source;
pub mod status;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod watch;

/// One clear, one-line error; `main` prints it and exits 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl Error {
    pub fn new(msg: impl Into<String>) -> Error {
        Error(msg.into())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}
