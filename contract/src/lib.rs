//! The contract between a shoal agent and its clients (the `shoal` CLI,
//! lbgen, scripts): the documents of the HTTP API, as typed values, and the
//! small syntaxes both sides must read the same way.
//!
//! Layout:
//! - [`member`]: [`Member`], its [`Status`] and the members document
//!   ([`MembersDoc`]) of `GET /v1/members` and `shoal members --format json`.
//! - [`event`]: the lines of `GET /v1/events`: member [`Event`]s and stream
//!   [`Notice`]s (`keepalive`, `synced`, `resync`).
//! - [`tags`]: the tag vocabulary that describes a backend (`service`,
//!   `port`, `check`, `state`, ...).
//! - [`duration`]: the one duration syntax of every flag and file.
//! - [`token`]: what an API token may be, and how it is sent.
//!
//! Compatibility: within one [`API_VERSION`] documents only gain fields, so
//! readers ignore fields they do not know. A change that removes or
//! reinterprets a field raises the version.

pub mod duration;
pub mod event;
pub mod member;
pub mod tags;
pub mod token;
pub mod user;

pub use duration::parse_duration;
pub use event::{Event, EventKind, Notice, NoticeKind, StreamLine};
pub use member::{Member, MembersDoc, Status, Tags, Unrecognised};
pub use user::{EventRequest, EventSent, QueryLine, QueryRequest};

/// The version of the API documents this crate describes. The agent puts it
/// in the members document (`"version"`), in `/v1/info`
/// (`protocol.api_version`) and in the [`VERSION_HEADER`] of every answer.
pub const API_VERSION: u32 = 1;

/// The response header that carries [`API_VERSION`].
pub const VERSION_HEADER: &str = "x-shoal-api-version";

/// The response header of `GET /v1/events` that names the agent's run.
pub const RUN_HEADER: &str = "x-shoal-run";

/// Whether a client built for [`API_VERSION`] can read a document of
/// `version`. `None` is an agent from before versioning: version 1.
pub fn check_version(version: Option<u32>) -> Result<(), String> {
    match version.unwrap_or(1) {
        API_VERSION => Ok(()),
        v => Err(format!(
            "the agent speaks API version {v}, this client knows version {API_VERSION}; \
             use a client of the agent's release"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_before_versioning_and_equal_ones_are_readable() {
        assert!(check_version(None).is_ok());
        assert!(check_version(Some(API_VERSION)).is_ok());
        let err = check_version(Some(API_VERSION + 1)).unwrap_err();
        assert!(err.contains("API version 2"), "{err}");
    }
}
