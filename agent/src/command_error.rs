//! Typed refusals of the commands the API sends to the gossip loop, so the
//! API picks its status code from the variant (not from the message text)
//! while users keep seeing the same messages.

use std::fmt;

use crate::core::SetTagsError;
use crate::tags::TagError;

/// The gossip loop is gone (the agent is shutting down), so the command
/// may not have been carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShuttingDown;

impl fmt::Display for ShuttingDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the agent is shutting down")
    }
}

impl std::error::Error for ShuttingDown {}

/// Why a command sent through [`crate::agent::Handle`] did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError<E> {
    /// The node refused it; `E`'s variants say whether state changed.
    Refused(E),
    /// See [`ShuttingDown`].
    ShuttingDown,
}

impl<E> From<ShuttingDown> for CommandError<E> {
    fn from(_: ShuttingDown) -> Self {
        CommandError::ShuttingDown
    }
}

impl<E: fmt::Display> fmt::Display for CommandError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Refused(e) => e.fmt(f),
            CommandError::ShuttingDown => ShuttingDown.fmt(f),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for CommandError<E> {}

/// Why the agent refused a tag change (`PUT /v1/tags`, health states).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagsError {
    /// The merged tags break a limit; nothing changed.
    Invalid(TagError),
    /// The tags file could not be written; nothing changed (the file is
    /// written first, so a change that cannot be kept is refused whole).
    Save(String),
    /// The node refused the change (see [`SetTagsError`]'s variants); the
    /// tags file already holds the new tags.
    Node(SetTagsError),
}

impl fmt::Display for TagsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagsError::Invalid(e) => e.fmt(f),
            TagsError::Save(e) => f.write_str(e),
            TagsError::Node(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for TagsError {}
