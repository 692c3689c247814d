//! Serf compatibility of the command line: Serf's flag spellings
//! ([`argv`]), its JSON config files ([`config`]) and, when the binary is
//! invoked as `serf`, Serf's output formats ([`output`]). The gossip
//! protocol is shoal's own (no wire compatibility with memberlist).

pub mod apply;
pub mod argv;
pub mod config;
pub mod output;

use std::ffi::OsStr;
use std::path::Path;

/// Whether the program was started under the name `serf` (a link to
/// `shoal`): then it prints what Serf's CLI prints.
pub fn invoked_as_serf(argv0: &OsStr) -> bool {
    Path::new(argv0).file_name().is_some_and(|n| n == "serf")
}

/// A tracing level directive from Serf's `-log-level` name (`err` is
/// `error`; the rest are the same words).
pub fn level_directive(level: &str) -> String {
    match level.trim().to_ascii_lowercase().as_str() {
        "err" => "error".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serfs_log_level_names_are_tracing_directives() {
        assert_eq!(level_directive("ERR"), "error");
        assert_eq!(level_directive("debug"), "debug");
        assert!(invoked_as_serf(OsStr::new("/usr/local/bin/serf")));
        assert!(!invoked_as_serf(OsStr::new("shoal")));
    }
}
