//! lbgen: renders an HAProxy config from shoal membership and hot-reloads HAProxy.
//!
//! Layout:
//! - [`model`]: members document → pools/servers/routes; validation (pure, no I/O).
//! - [`render`]: handlebars (strict, no escaping) with template variables.
//! - [`grammar`]: the strict line grammar of the builtin template's output (a test oracle).
//! - [`source`]: agent event stream / members file → change signals; snapshots.
//! - [`watch`]: the follow loop (debounce, apply, keep last good config).
//! - [`output`]: atomic write with `.bak`, `--check-cmd` validation.
//! - [`haproxy`]: master CLI client: verified reload, runtime API.
//! - [`plan`]: runtime-API commands vs reload for a model change (pure).
//! - [`status`]: `lbgen status`, pools, routes and conflicting members of a snapshot (pure).
pub mod grammar;
pub mod haproxy;
pub mod model;
pub mod output;
pub mod plan;
pub mod render;
pub mod source;
pub mod status;
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
