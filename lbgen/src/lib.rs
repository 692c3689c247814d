//! lbgen: renders an HAProxy config from shoal membership and hot-reloads HAProxy.
//!
//! Layout:
//! - [`model`]: members document → pools/servers/routes; validation (pure, no I/O).
pub mod model;
