//! Gossip encryption: a keyring of AES-GCM keys (16, 24 or 32 bytes, base64
//! on the command line and in the keyring file). Every UDP packet and TCP
//! frame is sealed with the primary key and a fresh random 96-bit nonce, and
//! opened with whichever installed key authenticates it, so keys can be
//! rotated across a live cluster: install everywhere, switch the primary,
//! remove the old one. Pure: the keyring file is read and written by the
//! agent (`shoal::persist`).

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes192;
use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

type Aes192Gcm = AesGcm<Aes192, U12>;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// What sealing adds to a message: nonce + authentication tag.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

#[derive(Clone)]
enum Cipher {
    A128(Box<Aes128Gcm>),
    A192(Box<Aes192Gcm>),
    A256(Box<Aes256Gcm>),
}

/// Why the keyring refused a change. The keyring is unchanged either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyringError {
    /// `use` names a key that is not installed.
    NotInstalled,
    /// `remove` names the primary key, which seals everything we send.
    RemovePrimary,
}

impl std::fmt::Display for KeyringError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyringError::NotInstalled => "key is not installed; install it first",
            KeyringError::RemovePrimary => {
                "refusing to remove the primary key; `use` another key first"
            }
        })
    }
}

impl std::error::Error for KeyringError {}

/// One key, kept with its base64 form (how operators name keys).
#[derive(Clone)]
pub struct Key {
    text: String,
    cipher: Cipher,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material in logs.
        write!(f, "Key({}…)", &self.text[..4.min(self.text.len())])
    }
}

impl Key {
    /// Parses a base64 key of 16, 24 or 32 bytes.
    pub fn parse(text: &str) -> Result<Key, String> {
        let text = text.trim();
        let raw = B64
            .decode(text)
            .map_err(|e| format!("encryption key is not valid base64: {e}"))?;
        let cipher = match raw.len() {
            16 => Aes128Gcm::new_from_slice(&raw).map(|c| Cipher::A128(Box::new(c))),
            24 => Aes192Gcm::new_from_slice(&raw).map(|c| Cipher::A192(Box::new(c))),
            32 => Aes256Gcm::new_from_slice(&raw).map(|c| Cipher::A256(Box::new(c))),
            n => {
                return Err(format!(
                    "encryption key is {n} bytes; it must be 16, 24 or 32 bytes (base64), \
                     e.g. from `shoal keygen`"
                ))
            }
        }
        .map_err(|e| format!("bad key: {e}"))?;
        Ok(Key {
            text: text.to_string(),
            cipher,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn seal(&self, nonce: &[u8; NONCE_LEN], msg: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        let nonce = Nonce::from_slice(nonce);
        let payload = Payload { msg, aad };
        match &self.cipher {
            Cipher::A128(c) => c.encrypt(nonce, payload).ok(),
            Cipher::A192(c) => c.encrypt(nonce, payload).ok(),
            Cipher::A256(c) => c.encrypt(nonce, payload).ok(),
        }
    }

    fn open(&self, nonce: &[u8], msg: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        let nonce = Nonce::from_slice(nonce);
        let payload = Payload { msg, aad };
        match &self.cipher {
            Cipher::A128(c) => c.decrypt(nonce, payload).ok(),
            Cipher::A192(c) => c.decrypt(nonce, payload).ok(),
            Cipher::A256(c) => c.decrypt(nonce, payload).ok(),
        }
    }
}

/// A new random 32-byte key, base64 (`shoal keygen`).
pub fn generate() -> String {
    let mut raw = [0u8; 32];
    rand::fill(&mut raw[..]);
    B64.encode(raw)
}

/// The installed keys; the first is the primary (Serf's keyring order).
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: Vec<Key>,
}

impl Keyring {
    pub fn new(primary: Key) -> Keyring {
        Keyring {
            keys: vec![primary],
        }
    }

    pub fn primary(&self) -> &Key {
        &self.keys[0]
    }

    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.keys.iter()
    }

    fn position(&self, text: &str) -> Option<usize> {
        self.keys.iter().position(|k| k.text == text.trim())
    }

    /// Adds a key (no-op if present). Returns whether it changed anything.
    pub fn install(&mut self, key: Key) -> bool {
        if self.position(&key.text).is_some() {
            return false;
        }
        self.keys.push(key);
        true
    }

    /// Makes an installed key the primary.
    pub fn use_key(&mut self, text: &str) -> Result<bool, KeyringError> {
        let i = self.position(text).ok_or(KeyringError::NotInstalled)?;
        if i == 0 {
            return Ok(false);
        }
        let key = self.keys.remove(i);
        self.keys.insert(0, key);
        Ok(true)
    }

    /// Removes a key; the primary cannot be removed.
    pub fn remove(&mut self, text: &str) -> Result<bool, KeyringError> {
        match self.position(text) {
            Some(0) => Err(KeyringError::RemovePrimary),
            Some(i) => {
                self.keys.remove(i);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// `aad` || nonce || ciphertext+tag; `aad` (the envelope header) is
    /// authenticated but sent in clear.
    pub fn seal(&self, aad: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce[..]);
        let sealed = self.primary().seal(&nonce, msg, aad).unwrap_or_default();
        let mut out = Vec::with_capacity(aad.len() + NONCE_LEN + sealed.len());
        out.extend_from_slice(aad);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens `nonce || ciphertext+tag` with any installed key.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < OVERHEAD {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        self.keys.iter().find_map(|k| k.open(nonce, body, aad))
    }

    /// A keyring of `keys`, the first one primary; `None` if there is none.
    pub fn from_keys(keys: Vec<Key>) -> Option<Keyring> {
        if keys.is_empty() {
            None
        } else {
            Some(Keyring { keys })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_with_any_installed_key() {
        let k1 = Key::parse(&generate()).unwrap();
        let k2 = Key::parse(&generate()).unwrap();
        let mut ring = Keyring::new(k1.clone());
        let sealed = ring.seal(b"hdr", b"hello");
        assert_eq!(sealed.len(), 3 + OVERHEAD + 5);
        assert_eq!(ring.open(b"hdr", &sealed[3..]).unwrap(), b"hello");
        assert!(
            ring.open(b"HDR", &sealed[3..]).is_none(),
            "header is authenticated"
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(ring.open(b"hdr", &tampered[3..]).is_none());
        // Rotation: install k2, switch, old packets still open, then remove k1.
        ring.install(k2.clone());
        ring.use_key(k2.as_str()).unwrap();
        assert_eq!(ring.open(b"hdr", &sealed[3..]).unwrap(), b"hello");
        let new = ring.seal(b"hdr", b"x");
        assert_eq!(
            ring.remove(k2.as_str()).unwrap_err(),
            KeyringError::RemovePrimary
        );
        assert!(ring
            .remove(k2.as_str())
            .unwrap_err()
            .to_string()
            .contains("primary"));
        assert!(ring.remove(k1.as_str()).unwrap());
        assert!(ring.open(b"hdr", &sealed[3..]).is_none());
        assert_eq!(ring.open(b"hdr", &new[3..]).unwrap(), b"x");
    }

    #[test]
    fn nonces_are_fresh() {
        let ring = Keyring::new(Key::parse(&generate()).unwrap());
        assert_ne!(ring.seal(b"", b"same"), ring.seal(b"", b"same"));
    }

    #[test]
    fn key_sizes_and_encoding_are_checked() {
        assert!(Key::parse(&B64.encode([0u8; 16])).is_ok());
        assert!(Key::parse(&B64.encode([0u8; 24])).is_ok());
        assert!(Key::parse(&B64.encode([0u8; 32])).is_ok());
        assert!(Key::parse(&B64.encode([0u8; 20]))
            .unwrap_err()
            .contains("16, 24 or 32"));
        assert!(Key::parse("not base64!").unwrap_err().contains("base64"));
        assert!(!format!("{:?}", Key::parse(&generate()).unwrap()).contains('='));
    }
}
