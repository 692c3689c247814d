//! The API's bearer token: what a token may be (checked at start, so a token
//! that could never authenticate is refused there, not at every request) and
//! how a request's `Authorization` header is checked against it.
//!
//! The comparison runs on keyed MACs of both strings (GMAC under a random
//! per-process key), so its time depends neither on how many leading bytes
//! match nor on the token's length.

use std::sync::OnceLock;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

/// Longest token accepted (the contract's limit).
pub use shoal_contract::token::MAX_TOKEN_LEN;

/// A token must survive a trip through an HTTP header unchanged: visible
/// ASCII only, 1-1024 bytes (the contract's rule, which lbgen checks too).
pub fn validate(token: &str) -> Result<(), String> {
    shoal_contract::token::validate_token(token)
}

/// Whether an `Authorization` header value carries `token`. The scheme is
/// case-insensitive (RFC 6750 / RFC 7235): `Bearer`, `bearer`, `BEARER`.
pub fn authorizes(header: &str, token: &str) -> bool {
    let header = header.trim();
    let Some((scheme, given)) = header.split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && same(given.trim(), token)
}

/// Constant-time equality that does not leak either length: compares two
/// 16-byte tags of a keyed MAC instead of the strings.
fn same(a: &str, b: &str) -> bool {
    let (x, y) = (mac(a.as_bytes()), mac(b.as_bytes()));
    x.iter().zip(&y).fold(0u8, |acc, (p, q)| acc | (p ^ q)) == 0
}

fn mac(data: &[u8]) -> [u8; 16] {
    static KEY: OnceLock<Aes256Gcm> = OnceLock::new();
    let cipher = KEY.get_or_init(|| {
        let mut raw = [0u8; 32];
        rand::fill(&mut raw[..]);
        Aes256Gcm::new(&raw.into())
    });
    // GMAC: an empty message with the data as associated data. The nonce is
    // fixed because the tag never leaves the process.
    let tag = cipher
        .encrypt(
            Nonce::from_slice(&[0u8; 12]),
            Payload {
                msg: &[],
                aad: data,
            },
        )
        .unwrap_or_default();
    let mut out = [0u8; 16];
    for (o, t) in out.iter_mut().zip(tag) {
        *o = t;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_that_could_never_match_a_header_is_refused() {
        assert!(validate("s3cret-Token_~+/=").is_ok());
        for bad in [" s3cret", "s3cret ", "s3 cret", "pässword", "tab\there", ""] {
            let e = validate(bad).unwrap_err();
            assert!(e.contains("--api-token"), "{bad:?}: {e}");
        }
        assert!(validate(&"x".repeat(MAX_TOKEN_LEN + 1)).is_err());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "Bearer  s3cret ",
        ] {
            assert!(authorizes(header, "s3cret"), "{header:?}");
        }
        for header in [
            "Bearer wrong",
            "Basic s3cret",
            "Bearers3cret",
            "s3cret",
            "Bearer s3cre",
        ] {
            assert!(!authorizes(header, "s3cret"), "{header:?}");
        }
    }

    #[test]
    fn tokens_of_other_lengths_compare_unequal() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abcd"));
        assert!(!same("", "abc"));
    }
}
