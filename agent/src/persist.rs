//! The agent's own files next to the protocol state: the tags file and the
//! keyring file. The formats and checks live in `shoal-core` (pure); this
//! module only reads and writes, atomically (see [`crate::atomic`]).

use std::path::Path;

use crate::keyring::{Key, Keyring};
use crate::tags::{self, Tags};

/// Reads a tags file (a JSON object of strings). A missing file is an empty set.
pub fn load_tags(path: &Path) -> Result<Tags, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tags::new()),
        Err(e) => return Err(format!("cannot read tags file {}: {e}", path.display())),
    };
    if text.trim().is_empty() {
        return Ok(Tags::new());
    }
    let tags: Tags = serde_json::from_str(&text).map_err(|e| {
        format!(
            "tags file {} is not a JSON object of strings: {e}",
            path.display()
        )
    })?;
    tags::validate(&tags).map_err(|e| format!("tags file {}: {e}", path.display()))?;
    Ok(tags)
}

/// Writes the tags file atomically, mode 0644, so a crash never leaves half a
/// file and nothing planted next to it is followed.
pub fn save_tags(path: &Path, tags: &Tags) -> std::io::Result<()> {
    let body = serde_json::to_vec_pretty(tags).map_err(std::io::Error::other)?;
    crate::atomic::write(path, &body, 0o644)
}

/// Loads a keyring file: a JSON array of base64 keys, primary first
/// (the format of Serf's keyring file). A missing file is `None`.
pub fn load_keyring(path: &Path) -> Result<Option<Keyring>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read keyring file {}: {e}", path.display())),
    };
    let texts: Vec<String> = serde_json::from_str(&text).map_err(|e| {
        format!(
            "keyring file {} is not a JSON array of base64 keys: {e}",
            path.display()
        )
    })?;
    let mut keys = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        keys.push(
            Key::parse(t).map_err(|e| format!("keyring file {}, key {i}: {e}", path.display()))?,
        );
    }
    match Keyring::from_keys(keys) {
        Some(ring) => Ok(Some(ring)),
        None => Err(format!("keyring file {} holds no key", path.display())),
    }
}

/// Writes the keyring file atomically, readable by its owner only.
pub fn save_keyring(ring: &Keyring, path: &Path) -> std::io::Result<()> {
    let texts: Vec<&str> = ring.keys().map(Key::as_str).collect();
    let body = serde_json::to_vec_pretty(&texts).map_err(std::io::Error::other)?;
    crate::atomic::write(path, &body, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::generate;

    #[test]
    fn tags_file_round_trips_and_reports_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tags.json");
        assert!(load_tags(&path).unwrap().is_empty());
        let mut tags = Tags::new();
        tags.insert("service".into(), "web".into());
        save_tags(&path, &tags).unwrap();
        assert_eq!(load_tags(&path).unwrap(), tags);
        std::fs::write(&path, "[1,2]").unwrap();
        assert!(load_tags(&path).unwrap_err().contains("tags.json"));
    }

    #[test]
    fn a_symlink_planted_next_to_the_tags_file_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tags.json");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, path.with_extension("tmp")).unwrap();
        let mut tags = Tags::new();
        tags.insert("service".into(), "web".into());
        save_tags(&path, &tags).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(load_tags(&path).unwrap(), tags);
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
    }

    #[test]
    fn keyring_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        assert!(load_keyring(&path).unwrap().is_none());
        let mut ring = Keyring::new(Key::parse(&generate()).unwrap());
        ring.install(Key::parse(&generate()).unwrap());
        save_keyring(&ring, &path).unwrap();
        let back = load_keyring(&path).unwrap().unwrap();
        assert_eq!(back.primary().as_str(), ring.primary().as_str());
        assert_eq!(back.keys().count(), 2);
        std::fs::write(&path, "[\"abc\"]").unwrap();
        assert!(load_keyring(&path).unwrap_err().contains("key 0"));
        std::fs::write(&path, "[]").unwrap();
        assert!(load_keyring(&path).unwrap_err().contains("no key"));
    }

    #[test]
    fn a_planted_temp_file_never_makes_the_keyring_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("keyring.json");
        // What an earlier run (or another user) may have left next to it.
        let planted = path.with_extension("tmp");
        std::fs::write(&planted, "[]").unwrap();
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o644)).unwrap();
        let ring = Keyring::new(Key::parse(&generate()).unwrap());
        save_keyring(&ring, &path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "keyring saved with mode {mode:o}");
        assert_eq!(std::fs::read_to_string(&planted).unwrap(), "[]");
        assert!(load_keyring(&path).unwrap().is_some());
    }
}
