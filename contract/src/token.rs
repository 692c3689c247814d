//! The API's bearer token as both sides see it: what a token may be (so one
//! that could never pass through an HTTP header is refused at start, not at
//! every request) and the header a client sends.

/// Longest token accepted (HTTP header lines are capped by servers anyway).
pub const MAX_TOKEN_LEN: usize = 1024;

/// A token must survive a trip through an HTTP header unchanged: visible
/// ASCII only (no spaces, no control or non-ASCII characters), 1-1024 bytes.
pub fn validate_token(token: &str) -> Result<(), String> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(format!(
            "--api-token must be 1-{MAX_TOKEN_LEN} bytes long (it is {})",
            token.len()
        ));
    }
    if let Some(c) = token.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "--api-token contains {c:?}: only visible ASCII characters are allowed \
             (no spaces, no control or non-ASCII characters), or it could never match \
             an Authorization header"
        ));
    }
    Ok(())
}

/// The `Authorization` header value that carries `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_fit_a_header() {
        assert!(validate_token("s3cr3t-T0ken_~").is_ok());
        assert!(validate_token("").is_err());
        assert!(validate_token("with space").unwrap_err().contains("' '"));
        assert!(validate_token("é").is_err());
        assert!(validate_token(&"x".repeat(MAX_TOKEN_LEN + 1)).is_err());
        assert_eq!(bearer("T"), "Bearer T");
    }
}
