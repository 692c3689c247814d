//! Node tags: small key/value metadata gossiped with the node's identity.
//!
//! Tags travel inside every gossip packet (they are part of the identity), so
//! their size is capped; the caps are checked both when the operator sets tags
//! and when a packet is decoded, so hostile peers cannot smuggle in more.

use std::collections::BTreeMap;
use std::fmt;

/// Tags as a sorted map so that encoding (and thus identity equality) is stable.
pub type Tags = BTreeMap<String, String>;

/// Most tags a node may carry.
pub const MAX_TAGS: usize = 32;
/// Longest tag key, in bytes.
pub const MAX_KEY_LEN: usize = 64;
/// Longest tag value, in bytes.
pub const MAX_VALUE_LEN: usize = 256;
/// Total of all keys and values, in bytes. Keeps an identity well inside one UDP packet.
pub const MAX_TOTAL_LEN: usize = 512;

/// Why a set of tags was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagError {
    Syntax(String),
    BadKey(String),
    BadValue(String),
    TooMany(usize),
    KeyTooLong(String),
    ValueTooLong(String),
    TooLarge(usize),
}

impl fmt::Display for TagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagError::Syntax(s) => write!(f, "tag {s:?} is not of the form KEY=VALUE"),
            TagError::BadKey(k) => write!(
                f,
                "tag key {k:?} is invalid: use 1-{MAX_KEY_LEN} characters of A-Z a-z 0-9 _ . -"
            ),
            TagError::BadValue(k) => write!(
                f,
                "tag {k:?} has a value with control characters; values must be printable UTF-8"
            ),
            TagError::TooMany(n) => write!(f, "{n} tags given; the limit is {MAX_TAGS}"),
            TagError::KeyTooLong(k) => {
                write!(f, "tag key {k:?} is longer than {MAX_KEY_LEN} bytes")
            }
            TagError::ValueTooLong(k) => {
                write!(f, "tag {k:?} has a value longer than {MAX_VALUE_LEN} bytes")
            }
            TagError::TooLarge(n) => write!(
                f,
                "tags take {n} bytes in all; the limit is {MAX_TOTAL_LEN} bytes (keys + values)"
            ),
        }
    }
}

impl std::error::Error for TagError {}

/// Parses one `KEY=VALUE` argument.
pub fn parse_tag(arg: &str) -> Result<(String, String), TagError> {
    let (k, v) = arg
        .split_once('=')
        .ok_or_else(|| TagError::Syntax(arg.to_string()))?;
    check_key(k)?;
    check_value(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

fn check_key(k: &str) -> Result<(), TagError> {
    if k.len() > MAX_KEY_LEN {
        return Err(TagError::KeyTooLong(k.to_string()));
    }
    if k.is_empty()
        || !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(TagError::BadKey(k.to_string()));
    }
    Ok(())
}

fn check_value(k: &str, v: &str) -> Result<(), TagError> {
    if v.len() > MAX_VALUE_LEN {
        return Err(TagError::ValueTooLong(k.to_string()));
    }
    if v.chars().any(char::is_control) {
        return Err(TagError::BadValue(k.to_string()));
    }
    Ok(())
}

/// `current` with `delete` removed and `set` applied, checked against every limit.
pub fn merged(current: &Tags, set: Tags, delete: &[String]) -> Result<Tags, TagError> {
    let mut next = current.clone();
    for k in delete {
        next.remove(k);
    }
    next.extend(set);
    validate(&next)?;
    Ok(next)
}

/// Checks every limit on a whole tag set.
pub fn validate(tags: &Tags) -> Result<(), TagError> {
    if tags.len() > MAX_TAGS {
        return Err(TagError::TooMany(tags.len()));
    }
    let mut total = 0;
    for (k, v) in tags {
        check_key(k)?;
        check_value(k, v)?;
        total += k.len() + v.len();
    }
    if total > MAX_TOTAL_LEN {
        return Err(TagError::TooLarge(total));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_value() {
        assert_eq!(
            parse_tag("service=web").unwrap(),
            ("service".into(), "web".into())
        );
        assert_eq!(parse_tag("route=/a=b").unwrap().1, "/a=b");
    }

    #[test]
    fn rejects_bad_tags_with_a_reason() {
        assert!(matches!(parse_tag("novalue"), Err(TagError::Syntax(_))));
        assert!(matches!(parse_tag("bad key=1"), Err(TagError::BadKey(_))));
        assert!(matches!(parse_tag("=1"), Err(TagError::BadKey(_))));
        assert!(matches!(parse_tag("k=a\nb"), Err(TagError::BadValue(_))));
        let long = format!("k={}", "x".repeat(MAX_VALUE_LEN + 1));
        let err = parse_tag(&long).unwrap_err();
        assert!(err.to_string().contains("256"), "{err}");
    }

    #[test]
    fn total_size_is_capped() {
        let mut tags = Tags::new();
        for i in 0..4 {
            tags.insert(format!("k{i}"), "v".repeat(200));
        }
        let err = validate(&tags).unwrap_err();
        assert!(err.to_string().contains("limit is 512"), "{err}");
    }
}
