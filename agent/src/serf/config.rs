//! Serf's JSON config files (`-config-file`, `-config-dir`), read into
//! shoal's agent flags.
//!
//! Merged as Serf merges them: files in the order given, a directory's
//! `*.json` files in lexical order; a later file's value wins, except
//! `tags` (merged key by key) and `event_handlers`, `start_join`,
//! `retry_join` (appended). A value from the command line or a `SHOAL_*`
//! variable wins over every file. Each key's fate is in [`KEYS`]: applied,
//! ignored with a warning, or refused; an unknown key is an error naming
//! the key and the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// What shoal does with one Serf config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRule {
    /// Read into the shoal flag named.
    Apply(&'static str),
    /// Accepted and ignored with a warning, for the reason given.
    Ignored(&'static str),
    /// Refused unless it has Serf's default value (the text says what to
    /// do instead).
    Unsupported(&'static str),
}

/// Serf 0.8's config keys (its docs' key reference and `config.go`).
pub const KEYS: &[(&str, KeyRule)] = &[
    ("node_name", KeyRule::Apply("--node")),
    ("role", KeyRule::Apply("--tag role=V")),
    ("tags", KeyRule::Apply("--tag")),
    ("tags_file", KeyRule::Apply("--tags-file")),
    ("bind", KeyRule::Apply("--bind")),
    ("interface", KeyRule::Apply("--iface")),
    ("advertise", KeyRule::Apply("--advertise")),
    ("encrypt_key", KeyRule::Apply("--encrypt")),
    ("keyring_file", KeyRule::Apply("--keyring-file")),
    ("log_level", KeyRule::Apply("--log-level")),
    ("profile", KeyRule::Apply("--profile")),
    ("rpc_addr", KeyRule::Apply("--api")),
    ("rpc_auth", KeyRule::Apply("--api-token")),
    ("event_handlers", KeyRule::Apply("--event-handler")),
    ("start_join", KeyRule::Apply("--join")),
    ("retry_join", KeyRule::Apply("--join")),
    ("retry_interval", KeyRule::Apply("--retry-interval")),
    ("snapshot_path", KeyRule::Apply("--snapshot")),
    ("rejoin_after_leave", KeyRule::Apply("--rejoin")),
    ("leave_on_terminate", KeyRule::Apply("SIGTERM: leave, or stop without leaving")),
    ("skip_leave_on_interrupt", KeyRule::Apply("SIGINT: stop without leaving")),
    ("reconnect_timeout", KeyRule::Apply("--reap-after")),
    ("tombstone_timeout", KeyRule::Apply("--reap-after")),
    ("broadcast_timeout", KeyRule::Apply("--leave-timeout")),
    ("replay_on_join", KeyRule::Apply("--replay")),
    ("protocol", KeyRule::Ignored("shoal speaks one wire protocol")),

    ("reconnect_interval", KeyRule::Ignored("the --profile sets how often failed members are retried")),
    ("disable_coordinates", KeyRule::Ignored("shoal keeps no network coordinates")),
    ("disable_name_resolution", KeyRule::Ignored("shoal resolves duplicate names by generation")),
    ("enable_compression", KeyRule::Ignored("shoal does not compress broadcasts")),
    ("enable_syslog", KeyRule::Ignored("shoal logs to stderr only")),
    ("syslog_facility", KeyRule::Ignored("shoal logs to stderr only")),
    ("statsite_addr", KeyRule::Ignored("shoal sends no telemetry; read GET /v1/info")),
    ("statsd_addr", KeyRule::Ignored("shoal sends no telemetry; read GET /v1/info")),
    ("query_response_size_limit", KeyRule::Ignored("shoal's limit is fixed: answers up to 1 KiB come back by UDP, larger ones (up to 64 KiB) over TCP")),
    ("query_size_limit", KeyRule::Ignored("shoal's limit is fixed: query payloads up to 512 bytes")),
    ("user_event_size_limit", KeyRule::Ignored("shoal's limit is fixed: event payloads up to 8 KiB (512 bytes gossiped inline, larger fetched over TCP)")),
    ("discover", KeyRule::Unsupported("shoal has no multicast discovery; use start_join or retry_join (a DNS name means all its A records)")),
    ("retry_max_attempts", KeyRule::Unsupported("shoal retries its join targets until one answers; remove the key or set it to 0")),
];

/// One key's rule.
pub fn key_rule(key: &str) -> Option<KeyRule> {
    KEYS.iter().find(|(k, _)| *k == key).map(|(_, r)| *r)
}

/// The merged config: only the keys that were set.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SerfConfig {
    pub node_name: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub tags_file: Option<PathBuf>,
    pub bind: Option<String>,
    pub interface: Option<String>,
    pub advertise: Option<String>,
    pub encrypt_key: Option<String>,
    pub keyring_file: Option<PathBuf>,
    pub log_level: Option<String>,
    pub profile: Option<String>,
    pub rpc_addr: Option<String>,
    pub rpc_auth: Option<String>,
    pub event_handlers: Vec<String>,
    /// `start_join` and `retry_join` (shoal retries every join target).
    pub join: Vec<String>,
    pub retry_interval: Option<String>,
    pub snapshot_path: Option<PathBuf>,
    pub rejoin_after_leave: Option<bool>,
    pub leave_on_terminate: Option<bool>,
    pub skip_leave_on_interrupt: Option<bool>,
    pub reconnect_timeout: Option<String>,
    pub tombstone_timeout: Option<String>,
    pub broadcast_timeout: Option<String>,
    pub replay_on_join: Option<bool>,
    /// Why each ignored key was ignored, to log once logging is up.
    pub warnings: Vec<String>,
}

/// Reads `files` then every `*.json` of each of `dirs` (lexical order), in
/// Serf's order: files first, then directories, as `serf agent` does.
pub fn load(files: &[PathBuf], dirs: &[PathBuf]) -> Result<SerfConfig, String> {
    let mut paths: Vec<PathBuf> = files.to_vec();
    for dir in dirs {
        paths.extend(dir_files(dir)?);
    }
    let mut cfg = SerfConfig::default();
    for path in &paths {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        merge_text(&mut cfg, &text, path)?;
    }
    Ok(cfg)
}

/// A directory's `*.json` files, sorted by name (sub-directories skipped).
fn dir_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read config dir {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read config dir {}: {e}", dir.display()))?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Merges one file's text into `cfg` (later wins; lists append, tags merge).
pub fn merge_text(cfg: &mut SerfConfig, text: &str, path: &Path) -> Result<(), String> {
    let file = path.display();
    let doc: Value = serde_json::from_str(text)
        .map_err(|e| format!("config file {file}: not valid JSON: {e}"))?;
    let Value::Object(map) = doc else {
        return Err(format!("config file {file}: must be one JSON object"));
    };
    for (key, value) in &map {
        let at = |what: &str| format!("config file {file}: {key:?} {what}");
        match key_rule(key) {
            None => {
                return Err(format!(
                    "config file {file}: unknown key {key:?} (not a Serf config key shoal knows; see docs/serf.md)"
                ))
            }
            Some(KeyRule::Ignored(why)) => {
                cfg.warnings
                    .push(format!("config file {file}: {key:?} ignored: {why}"));
                continue;
            }
            Some(KeyRule::Unsupported(why)) => {
                if !is_default(value) {
                    return Err(format!("config file {file}: {key:?} is not supported: {why}"));
                }
                continue;
            }
            Some(KeyRule::Apply(_)) => {}
        }
        apply_key(cfg, key, value).map_err(|e| at(&e))?;
    }
    Ok(())
}

/// Serf's zero values: an unsupported key set to one asks for nothing.
fn is_default(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

fn apply_key(cfg: &mut SerfConfig, key: &str, value: &Value) -> Result<(), String> {
    match key {
        "node_name" => cfg.node_name = Some(string(value)?),
        "role" => {
            cfg.tags.insert("role".into(), string(value)?);
        }
        "tags" => {
            let Value::Object(tags) = value else {
                return Err("must be an object of strings".into());
            };
            for (k, v) in tags {
                let v = v
                    .as_str()
                    .ok_or_else(|| format!("tag {k:?} must be a string"))?;
                cfg.tags.insert(k.clone(), v.to_string());
            }
        }
        "tags_file" => cfg.tags_file = Some(string(value)?.into()),
        "bind" => cfg.bind = Some(string(value)?),
        "interface" => cfg.interface = Some(string(value)?),
        "advertise" => cfg.advertise = Some(string(value)?),
        "encrypt_key" => cfg.encrypt_key = Some(string(value)?),
        "keyring_file" => cfg.keyring_file = Some(string(value)?.into()),
        "log_level" => cfg.log_level = Some(string(value)?),
        "profile" => cfg.profile = Some(string(value)?),
        "rpc_addr" => cfg.rpc_addr = Some(string(value)?),
        "rpc_auth" => cfg.rpc_auth = Some(string(value)?),
        "event_handlers" => cfg.event_handlers.extend(strings(value)?),
        "start_join" | "retry_join" => cfg.join.extend(strings(value)?),
        "retry_interval" => cfg.retry_interval = Some(string(value)?),
        "snapshot_path" => cfg.snapshot_path = Some(string(value)?.into()),
        "rejoin_after_leave" => cfg.rejoin_after_leave = Some(boolean(value)?),
        "leave_on_terminate" => cfg.leave_on_terminate = Some(boolean(value)?),
        "skip_leave_on_interrupt" => cfg.skip_leave_on_interrupt = Some(boolean(value)?),
        "reconnect_timeout" => cfg.reconnect_timeout = Some(string(value)?),
        "tombstone_timeout" => cfg.tombstone_timeout = Some(string(value)?),
        "broadcast_timeout" => cfg.broadcast_timeout = Some(string(value)?),
        "replay_on_join" => cfg.replay_on_join = Some(boolean(value)?),
        other => return Err(format!("has no reader ({other}); this is a bug")),
    }
    Ok(())
}

fn string(v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("must be a string, not {v}"))
}

fn strings(v: &Value) -> Result<Vec<String>, String> {
    let Value::Array(items) = v else {
        return Err(format!("must be an array of strings, not {v}"));
    };
    items.iter().map(string).collect()
}

fn boolean(v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("must be true or false, not {v}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(files: &[&str]) -> Result<SerfConfig, String> {
        let mut cfg = SerfConfig::default();
        for (i, text) in files.iter().enumerate() {
            merge_text(&mut cfg, text, Path::new(&format!("f{i}.json")))?;
        }
        Ok(cfg)
    }

    #[test]
    fn later_files_win_lists_append_and_tags_merge() {
        let cfg = merged(&[
            r#"{"node_name":"a","tags":{"role":"web","dc":"east"},"start_join":["x"],"event_handlers":["h1"]}"#,
            r#"{"node_name":"b","tags":{"dc":"west"},"retry_join":["y"],"event_handlers":["h2"]}"#,
        ])
        .unwrap();
        assert_eq!(cfg.node_name.as_deref(), Some("b"));
        assert_eq!(cfg.tags["role"], "web");
        assert_eq!(cfg.tags["dc"], "west");
        assert_eq!(cfg.join, ["x", "y"]);
        assert_eq!(cfg.event_handlers, ["h1", "h2"]);
    }

    #[test]
    fn an_unknown_key_is_named_with_its_file() {
        let e = merged(&[r#"{"node_name":"a","bogus_key":1}"#]).unwrap_err();
        assert!(e.contains("f0.json") && e.contains("\"bogus_key\""), "{e}");
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let e = merged(&[r#"{"start_join":"lb"}"#]).unwrap_err();
        assert!(e.contains("\"start_join\" must be an array"), "{e}");
        let e = merged(&[r#"{"tags":{"port":3000}}"#]).unwrap_err();
        assert!(e.contains("\"port\" must be a string"), "{e}");
        assert!(merged(&["[]"]).unwrap_err().contains("one JSON object"));
    }

    #[test]
    fn unsupported_keys_error_unless_default_and_harmless_ones_warn() {
        let e = merged(&[r#"{"discover":"cluster"}"#]).unwrap_err();
        assert!(e.contains("\"discover\" is not supported"), "{e}");
        let cfg = merged(&[r#"{"discover":"","retry_max_attempts":0,"protocol":4}"#]).unwrap();
        assert_eq!(cfg.warnings.len(), 1);
        assert!(cfg.warnings[0].contains("\"protocol\" ignored"));
    }

    #[test]
    fn a_directory_is_read_in_lexical_order_json_files_only() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("b.json"), r#"{"node_name":"second"}"#).unwrap();
        std::fs::write(
            d.path().join("a.json"),
            r#"{"node_name":"first","bind":"127.0.0.1"}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("c.txt"), "not json").unwrap();
        let cfg = load(&[], &[d.path().to_path_buf()]).unwrap();
        assert_eq!(cfg.node_name.as_deref(), Some("second"));
        assert_eq!(cfg.bind.as_deref(), Some("127.0.0.1"));
        let e = load(&[d.path().join("missing.json")], &[]).unwrap_err();
        assert!(e.contains("missing.json"), "{e}");
    }

    #[test]
    fn every_key_has_a_reader() {
        for (key, rule) in KEYS {
            if let KeyRule::Apply(_) = rule {
                let mut cfg = SerfConfig::default();
                let value = match *key {
                    "tags" => serde_json::json!({}),
                    "event_handlers" | "start_join" | "retry_join" => serde_json::json!([]),
                    "rejoin_after_leave"
                    | "leave_on_terminate"
                    | "skip_leave_on_interrupt"
                    | "replay_on_join" => {
                        serde_json::json!(true)
                    }
                    _ => serde_json::json!("x"),
                };
                apply_key(&mut cfg, key, &value).unwrap();
            }
        }
    }
}
