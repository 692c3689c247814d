//! shoal: a SWIM gossip membership agent (built on `foca`), a small PID 1
//! supervisor and an ops CLI, in one binary.
//!
//! Layout:
//! - protocol logic, pure and unit-tested, lives in the `shoal-core` crate and
//!   is re-exported here under its old paths: [`identity`], [`tags`], [`wire`]
//!   (packets, frames, foca codec), [`keyring`], [`freshness`], [`membership`]
//!   (the Serf-style member table), [`profile`] (timers), [`core`] (the
//!   sans-I/O node, `shoal_core::node`: foca + table, driven by explicit
//!   time; the agent and the simulator both run it);
//! - the agent's files and clock: [`persist`] (tags and keyring files),
//!   [`clock`] (the wall clock the core is given);
//! - the lifecycle: [`lifecycle`] ([`run`]: start, wait for a reason to stop,
//!   drain, leave, stop the services; `main.rs` is glue around it);
//! - observability: [`stats`] (`/v1/info` counters), [`metrics`]
//!   (`GET /metrics`, Prometheus);
//! - the runtime: [`agent`] (the one task that owns foca), [`pushpull`] (TCP
//!   state exchange), [`events`] (indexed event log), [`handlers`] (Serf-style
//!   event scripts), [`api`] (HTTP API), [`addr`] (advertise / join addresses),
//!   [`join`] (an explicit join, waited for), [`loglist`] (bounded lists in logs),
//!   [`limits`] (connection caps and warning rate limits for strangers);
//! - the CLI: [`cli`] (flags), [`client`] (talks to the API), [`commands`];
//!   [`serf`] (Serf's flag spellings, config files and, as `serf`, output);
//!   [`snapshot`] (Serf's `-snapshot`: the members last known, rejoined);
//!   [`logstream`] (the agent's log as a stream, `GET /v1/logs`);
//! - the supervisor: [`process`] (spawning and reaping), [`supervisor`].
pub mod addr;
pub mod agent;
pub mod api;
pub mod atomic;
pub mod cli;
pub mod client;
pub mod clock;
pub mod command_error;
pub mod commands;
pub mod events;
pub mod handlers;
pub mod join;
pub mod lifecycle;
pub mod limits;
pub mod logstream;
pub mod metrics;
pub mod persist;
pub mod process;
pub mod pushpull;
pub mod serf;
pub mod snapshot;
pub mod stats;
pub mod supervisor;
pub mod token;

/// The sans-I/O node, under its old path (`shoal_core::node`).
pub use shoal_core::node as core;
pub use shoal_core::{
    counters, freshness, keyring, loglist, membership, profile, tags, userev, wire,
};

/// A node's identity (`shoal_core::identity`), with the agent's wall clock
/// beside it where it always was.
pub mod identity {
    pub use crate::clock::now_millis;
    pub use shoal_core::identity::*;
}

pub use lifecycle::{run, Exit, Request};
