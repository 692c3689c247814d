//! The files of `lbgen acme`: `CERT_DIR/NAME.pem` (the chain, then the key: what HAProxy
//! loads), and under `CERT_DIR/.acme/` the account, the challenge tokens and the lock that
//! several LBs sharing the directory take before ordering.
//!
//! Every file is written to a temp file in `.acme/` and renamed into place, so HAProxy, the
//! TLS watcher and the other LBs never see half a file (`.acme/` is inside the cert dir:
//! the same file system, so the rename is atomic; HAProxy skips directories in a `crt` dir).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::Error;

/// What the certificate on disk says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnDisk {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Its DNS names (subject alternative names), sorted.
    pub domains: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Store {
    cert_dir: PathBuf,
    state_dir: PathBuf,
}

impl Store {
    /// Creates `CERT_DIR/.acme/challenges` if missing; the error names the directory.
    pub fn open(cert_dir: &Path) -> Result<Store, Error> {
        let state_dir = cert_dir.join(".acme");
        let challenges = state_dir.join("challenges");
        std::fs::create_dir_all(&challenges).map_err(|e| {
            Error::new(format!(
                "--cert-dir: creating {}: {e}",
                challenges.display()
            ))
        })?;
        Ok(Store {
            cert_dir: cert_dir.to_path_buf(),
            state_dir,
        })
    }

    pub fn cert_path(&self, name: &str) -> PathBuf {
        self.cert_dir.join(format!("{name}.pem"))
    }

    /// The default account file: `CERT_DIR/.acme/account.json`.
    pub fn default_account(&self) -> PathBuf {
        self.state_dir.join("account.json")
    }

    /// The certificate of `NAME.pem`, or None when there is none yet. A file that does not
    /// parse is an error (logged; a new certificate replaces it).
    pub fn read_cert(&self, name: &str) -> Result<Option<OnDisk>, Error> {
        let path = self.cert_path(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::new(format!("{}: {e}", path.display()))),
        };
        parse_leaf(&bytes)
            .map(Some)
            .map_err(|e| Error::new(format!("{}: {e}", path.display())))
    }

    /// Writes `NAME.pem` = chain + key (mode 600: it holds the key), atomically.
    pub fn write_cert(&self, name: &str, chain_pem: &str, key_pem: &str) -> Result<(), Error> {
        let mut text = chain_pem.trim_end().to_string();
        text.push('\n');
        text.push_str(key_pem.trim_end());
        text.push('\n');
        self.write_atomic(&self.cert_path(name), text.as_bytes())
    }

    /// A temp file (mode 600) in `.acme/`, synced, renamed to `path`.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), Error> {
        let named = |e: std::io::Error| Error::new(format!("writing {}: {e}", path.display()));
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(&self.state_dir)
            .map_err(named)?;
        tmp.write_all(bytes).map_err(named)?;
        tmp.as_file().sync_all().map_err(named)?;
        tmp.persist(path).map_err(|e| named(e.error))?;
        Ok(())
    }

    fn challenge_path(&self, token: &str) -> Result<PathBuf, Error> {
        if !token_ok(token) {
            return Err(Error::new(format!(
                "challenge token {token:?} is not base64url"
            )));
        }
        Ok(self.state_dir.join("challenges").join(token))
    }

    /// Publishes a key authorization for every LB sharing the directory to answer.
    pub fn put_challenge(&self, token: &str, key_authorization: &str) -> Result<(), Error> {
        self.write_atomic(&self.challenge_path(token)?, key_authorization.as_bytes())
    }

    pub fn remove_challenge(&self, token: &str) {
        if let Ok(p) = self.challenge_path(token) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// The key authorization for `token`, if an order of any LB published one.
    pub fn challenge(&self, token: &str) -> Option<String> {
        std::fs::read_to_string(self.challenge_path(token).ok()?).ok()
    }

    /// Takes the order lock (`.acme/lock`, `flock`) without waiting: None while another
    /// process (another LB on the shared directory) holds it. Released when dropped.
    pub fn try_lock(&self) -> Result<Option<File>, Error> {
        let path = self.state_dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::new(format!("{}: {e}", path.display())))?;
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(f)),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(Error::new(format!("locking {}: {e}", path.display()))),
        }
    }
}

/// Tokens are base64url (RFC 8555 §8.3); anything else never becomes a path.
pub fn token_ok(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The first certificate of a PEM file: its validity and DNS names.
pub fn parse_leaf(pem_bytes: &[u8]) -> Result<OnDisk, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_bytes)
        .map_err(|e| format!("no PEM certificate: {e}"))?;
    let (_, cert) = X509Certificate::from_der(&pem.contents)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let at = |t: i64| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64);
    let validity = cert.validity();
    let mut domains: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    domains.sort();
    Ok(OnDisk {
        not_before: at(validity.not_before.timestamp()),
        not_after: at(validity.not_after.timestamp()),
        domains,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_tokens_never_leave_the_challenge_directory() {
        for bad in ["", "../account.json", "a/b", "a.b", "x y"] {
            assert!(!token_ok(bad), "{bad:?}");
        }
        assert!(token_ok("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
    }

    #[test]
    fn a_file_without_a_certificate_is_named_as_such() {
        let e = parse_leaf(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        assert!(e.is_err());
        assert!(parse_leaf(b"hello")
            .unwrap_err()
            .contains("no PEM certificate"));
    }
}
