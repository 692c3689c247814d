//! shoal: a SWIM gossip membership agent (built on `foca`), a small PID 1
//! supervisor and an ops CLI, in one binary.
//!
//! Layout:
//! - protocol logic, pure and unit-tested: [`identity`], [`tags`], [`wire`]
//!   (packets, frames, foca codec), [`membership`] (the Serf-style member
//!   table), [`profile`] (timers), [`core`] (the sans-I/O node: foca + table,
//!   driven by explicit time; the agent and the simulator both run it);
//! - the lifecycle: [`lifecycle`] ([`run`]: start, wait for a reason to stop,
//!   drain, leave, stop the services; `main.rs` is glue around it);
//! - the runtime: [`agent`] (the one task that owns foca), [`pushpull`] (TCP
//!   state exchange), [`events`] (indexed event log), [`handlers`] (Serf-style
//!   event scripts), [`api`] (HTTP API), [`addr`] (advertise / join addresses),
//!   [`join`] (an explicit join, waited for), [`loglist`] (bounded lists in logs),
//!   [`limits`] (connection caps and warning rate limits for strangers);
//! - the CLI: [`cli`] (flags), [`client`] (talks to the API), [`commands`];
//! - the supervisor: [`process`] (spawning and reaping), [`supervisor`].
pub mod addr;
pub mod agent;
pub mod api;
pub mod atomic;
pub mod cli;
pub mod client;
pub mod commands;
pub mod core;
pub mod events;
pub mod freshness;
pub mod handlers;
pub mod identity;
pub mod join;
pub mod keyring;
pub mod lifecycle;
pub mod limits;
pub mod loglist;
pub mod membership;
pub mod process;
pub mod profile;
pub mod pushpull;
pub mod stats;
pub mod supervisor;
pub mod tags;
pub mod token;
pub mod wire;

pub use lifecycle::{run, Exit, Request};
