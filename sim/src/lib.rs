//! shoal-sim: a deterministic discrete-event simulator that runs N real
//! shoal membership cores ([`shoal_core::node::Core`], the code the agent runs)
//! over a simulated network on virtual time, and the benchmark report.
//!
//! Layout:
//! - [`net`]: the simulated cluster (virtual clock, one event queue, links
//!   with latency, jitter, loss and partitions; push-pull done in-process);
//! - [`scenario`]: join / failure / leave spread, steady state under loss
//!   (false failures, traffic), partition and heal;
//! - [`sweep`]: runs the scenarios over N and seeds on worker threads and
//!   writes the CSVs;
//! - [`plot`]: PNG plots from those CSVs;
//! - [`stats`], nearest-rank percentiles.
pub mod net;
pub mod plot;
pub mod scenario;
pub mod stats;
pub mod sweep;
