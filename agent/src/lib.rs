//! shoal: a SWIM gossip membership agent (built on `foca`), a small PID 1
//! supervisor and an ops CLI, in one binary.
pub mod process;
