//! shoal-core: the gossip protocol of shoal, pure. No sockets, no files, no
//! clock, no tasks: callers pass the time ([`node::Now`]) and carry out what
//! the node asks for ([`node::Output`]). The agent (`shoal`) and the
//! simulator (`sim`) both run this code.
//!
//! Layout:
//! - [`identity`]: a node's name, address, generation and tags;
//! - [`tags`]: tag syntax and limits;
//! - [`keyring`]: AES-GCM keys and sealing (the file is the agent's);
//! - [`wire`]: packets, frames and the foca codec;
//! - [`freshness`]: the time window and nonce check for key operations;
//! - [`membership`]: the Serf-style member table;
//! - [`profile`]: timing profiles;
//! - [`node`]: the sans-I/O node ([`node::Core`]): foca and the member
//!   table, driven by explicit time;
//! - [`counters`]: probes, acks and suspicions counted for the agent's
//!   metrics;
//! - [`userev`]: user events and queries (Serf's `event` and `query`):
//!   broadcasts, Lamport clocks, de-duplication, query completion;
//! - [`loglist`]: bounded lists in log lines;
//! - `testing` (tests, or the `testing` feature): the in-memory test
//!   network shared by these tests, the simulator and the benches.
pub mod counters;
pub mod freshness;
pub mod identity;
pub mod keyring;
pub mod loglist;
pub mod membership;
pub mod node;
pub mod profile;
pub mod tags;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod userev;
#[cfg(test)]
mod userev_net_tests;
pub mod wire;
