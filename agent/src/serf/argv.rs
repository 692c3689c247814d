//! Serf's flag spellings, translated to shoal's before clap sees them.
//!
//! Serf's CLI (Go's `flag` package) takes single-dash flags, `-node=a` or
//! `-node a`. shoal's parser stays the one clap parser; this step only
//! rewrites each Serf spelling into shoal's, by [`TABLE`], so the
//! translation can be tested and documented row by row. A single-dash word
//! that is not in the table is an error naming it, not a guess.

use std::ffi::OsString;

/// What one Serf flag becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The same meaning under shoal's long flag, taking a value.
    Value(&'static str),
    /// A boolean: `-x`, `-x=true` become the shoal flag, `-x=false` nothing.
    Switch(&'static str),
    /// A boolean whose shoal flag takes the value (its default is true):
    /// `-x` is `--x=true`, `-x=false` is `--x=false`.
    Bool(&'static str),
    /// `-role V` is `--tag role=V` (Serf deprecated `-role` for `-tag`).
    Role,
    /// Accepted and ignored with a warning: ignoring it changes nothing a
    /// script or an operator relies on. The text says why.
    Ignored {
        takes_value: bool,
        why: &'static str,
    },
    /// Refused: shoal cannot do what it asks, and running without it would
    /// surprise. The text says what to do instead.
    Unsupported(&'static str),
}

/// Serf's flags (agent and CLI commands alike; clap then refuses a flag the
/// subcommand does not have) and what shoal makes of them.
pub const TABLE: &[(&str, Rule)] = &[
    ("node", Rule::Value("node")),
    ("bind", Rule::Value("bind")),
    ("advertise", Rule::Value("advertise")),
    ("iface", Rule::Value("iface")),
    ("join", Rule::Value("join")),
    ("retry-join", Rule::Value("join")),
    ("retry-interval", Rule::Value("retry-interval")),
    ("tag", Rule::Value("tag")),
    ("role", Rule::Role),
    ("event-handler", Rule::Value("event-handler")),
    ("rpc-addr", Rule::Value("api")),
    ("rpc-auth", Rule::Value("api-token")),
    ("encrypt", Rule::Value("encrypt")),
    ("keyring-file", Rule::Value("keyring-file")),
    ("tags-file", Rule::Value("tags-file")),
    ("profile", Rule::Value("profile")),
    ("log-level", Rule::Value("log-level")),
    ("config-file", Rule::Value("config-file")),
    ("config-dir", Rule::Value("config-dir")),
    ("snapshot", Rule::Value("snapshot")),
    ("rejoin", Rule::Switch("rejoin")),
    ("broadcast-timeout", Rule::Value("leave-timeout")),
    ("format", Rule::Value("format")),
    ("status", Rule::Value("status")),
    ("name", Rule::Value("name")),
    ("detailed", Rule::Switch("detailed")),
    ("set", Rule::Value("set")),
    ("delete", Rule::Value("delete")),
    ("list", Rule::Switch("list")),
    ("install", Rule::Value("install")),
    ("use", Rule::Value("use")),
    ("remove", Rule::Value("remove")),
    ("replay", Rule::Switch("replay")),
    ("coalesce", Rule::Bool("coalesce")),
    ("timeout", Rule::Value("timeout")),
    ("no-ack", Rule::Switch("no-ack")),
    (
        "relay-factor",
        Rule::Ignored {
            takes_value: true,
            why: "shoal sends each answer straight to the asker (over TCP when large), not through relays",
        },
    ),
    (
        "protocol",
        Rule::Ignored {
            takes_value: true,
            why: "shoal speaks one wire protocol",
        },
    ),
    (
        "disable-compression",
        Rule::Ignored {
            takes_value: false,
            why: "shoal does not compress broadcasts",
        },
    ),
    (
        "syslog",
        Rule::Ignored {
            takes_value: false,
            why: "shoal logs to stderr only (--log-format json for a collector)",
        },
    ),
    (
        "retry-max",
        Rule::Unsupported("shoal retries its --join targets until one answers; drop -retry-max"),
    ),
    (
        "discover",
        Rule::Unsupported("shoal has no multicast discovery; give -join HOST (a DNS name means all its A records)"),
    ),
    (
        "prune",
        Rule::Unsupported("shoal force-leave marks the member left; it is reaped after --reap-after"),
    ),
];

/// The translated arguments and the warnings for ignored flags (logged once
/// logging is up).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Translated {
    pub args: Vec<OsString>,
    pub warnings: Vec<String>,
}

/// Looks a Serf flag up in [`TABLE`].
pub fn rule(name: &str) -> Option<Rule> {
    TABLE.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
}

/// Rewrites Serf spellings in `args` (without the program name) into
/// shoal's. Untouched: `--long` flags, one-letter flags (`-h`, `-V`),
/// positional words, a value that follows a flag, and everything after
/// `--` (the supervised command's own argv).
/// `is_switch("--flag")` says whether a shoal flag takes no value.
pub fn translate(
    args: impl IntoIterator<Item = OsString>,
    is_switch: &dyn Fn(&str) -> bool,
) -> Result<Translated, String> {
    let mut out = Translated::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else {
            out.args.push(arg);
            continue;
        };
        if text == "--" {
            out.args.push(arg);
            out.args.extend(args.by_ref());
            break;
        }
        let Some(word) = serf_flag(text) else {
            let takes_value = text.starts_with("--") && !text.contains('=') && !is_switch(text);
            out.args.push(arg);
            if takes_value {
                out.args.extend(args.next());
            }
            continue;
        };
        let (name, inline) = match word.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (word, None),
        };
        let Some(rule) = rule(name) else {
            return Err(format!(
                "-{name}: not a flag shoal knows (nor a Serf flag it translates); see `shoal --help` and docs/serf.md"
            ));
        };
        match rule {
            Rule::Value(to) => {
                let value = match inline {
                    Some(v) => v,
                    None => args
                        .next()
                        .ok_or_else(|| format!("-{name}: needs a value"))?
                        .into_string()
                        .map_err(|_| format!("-{name}: the value is not UTF-8"))?,
                };
                out.args.push(format!("--{to}={value}").into());
            }
            Rule::Switch(to) => {
                if switch_on(name, inline.as_deref())? {
                    out.args.push(format!("--{to}").into());
                }
            }
            Rule::Bool(to) => {
                let on = switch_on(name, inline.as_deref())?;
                out.args.push(format!("--{to}={on}").into());
            }
            Rule::Role => {
                let value = match inline {
                    Some(v) => v,
                    None => args
                        .next()
                        .ok_or_else(|| "-role: needs a value".to_string())?
                        .into_string()
                        .map_err(|_| "-role: the value is not UTF-8".to_string())?,
                };
                out.args.push(format!("--tag=role={value}").into());
            }
            Rule::Ignored { takes_value, why } => {
                if takes_value && inline.is_none() {
                    args.next();
                }
                out.warnings.push(format!("-{name} ignored: {why}"));
            }
            Rule::Unsupported(why) => return Err(format!("-{name}: not supported: {why}")),
        }
    }
    Ok(out)
}

/// `-word...` with a word of two letters or more: Serf's spelling.
fn serf_flag(arg: &str) -> Option<&str> {
    let rest = arg.strip_prefix('-')?;
    if rest.starts_with('-') {
        return None;
    }
    let name_len = rest.find('=').unwrap_or(rest.len());
    let name = &rest[..name_len];
    (name.len() >= 2 && name.chars().all(|c| c.is_ascii_lowercase() || c == '-')).then_some(rest)
}

/// Go's boolean flag values.
fn switch_on(name: &str, value: Option<&str>) -> Result<bool, String> {
    match value {
        None => Ok(true),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(v) => Err(format!("-{name}={v}: use true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(args: &[&str]) -> Result<Translated, String> {
        translate(args.iter().map(OsString::from), &|f| {
            ["--help", "--detailed", "--rejoin", "--no-ack", "--replay"].contains(&f)
        })
    }

    fn out(args: &[&str]) -> Vec<String> {
        tr(args)
            .unwrap()
            .args
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn serf_spellings_become_shoal_flags_in_both_forms() {
        assert_eq!(
            out(&[
                "agent",
                "-node=a",
                "-bind",
                "127.0.0.1:7946",
                "-tag",
                "role=web"
            ]),
            [
                "agent",
                "--node=a",
                "--bind=127.0.0.1:7946",
                "--tag=role=web"
            ]
        );
        assert_eq!(
            out(&[
                "members",
                "-rpc-addr",
                "127.0.0.1:1",
                "-status",
                "alive",
                "-format=json"
            ]),
            [
                "members",
                "--api=127.0.0.1:1",
                "--status=alive",
                "--format=json"
            ]
        );
        assert_eq!(out(&["agent", "-retry-join", "lb"]), ["agent", "--join=lb"]);
        assert_eq!(out(&["agent", "-role", "db"]), ["agent", "--tag=role=db"]);
    }

    #[test]
    fn switches_take_go_boolean_values() {
        assert_eq!(out(&["agent", "-rejoin"]), ["agent", "--rejoin"]);
        assert_eq!(out(&["agent", "-rejoin=true"]), ["agent", "--rejoin"]);
        assert_eq!(out(&["agent", "-rejoin=false"]), ["agent"]);
        assert!(tr(&["agent", "-rejoin=maybe"])
            .unwrap_err()
            .contains("-rejoin=maybe"));
    }

    #[test]
    fn serf_event_and_query_flags_become_shoal_flags() {
        assert_eq!(
            out(&["event", "-coalesce=false", "deploy", "v1"]),
            ["event", "--coalesce=false", "deploy", "v1"]
        );
        // Go's boolean flags take no separate value: `false` is the name.
        assert_eq!(
            out(&["event", "-coalesce", "false"]),
            ["event", "--coalesce=true", "false"]
        );
        assert_eq!(
            out(&[
                "query",
                "-node",
                "a",
                "-node=b",
                "-tag",
                "role=^web",
                "-timeout",
                "5s",
                "-no-ack",
                "-format",
                "json",
                "uptime"
            ]),
            [
                "query",
                "--node=a",
                "--node=b",
                "--tag=role=^web",
                "--timeout=5s",
                "--no-ack",
                "--format=json",
                "uptime"
            ]
        );
        let t = tr(&["query", "-relay-factor", "2", "uptime"]).unwrap();
        assert_eq!(t.args, ["query", "uptime"].map(OsString::from));
        assert!(t.warnings[0].starts_with("-relay-factor ignored"), "{t:?}");
        assert_eq!(out(&["agent", "-replay"]), ["agent", "--replay"]);
    }

    #[test]
    fn shoal_flags_positionals_values_and_the_supervised_command_are_left_alone() {
        let args = ["agent", "--node", "-odd", "-h", "--", "app", "-config", "x"];
        assert_eq!(out(&args), args);
        assert_eq!(
            out(&["join", "10.0.0.1", "lb:7946"]),
            ["join", "10.0.0.1", "lb:7946"]
        );
        assert_eq!(out(&["agent", "--drain=1s"]), ["agent", "--drain=1s"]);
    }

    #[test]
    fn an_unknown_or_unsupported_serf_flag_is_named() {
        let e = tr(&["agent", "-nodes=a"]).unwrap_err();
        assert!(e.starts_with("-nodes:"), "{e}");
        let e = tr(&["agent", "-discover", "c"]).unwrap_err();
        assert!(e.starts_with("-discover: not supported"), "{e}");
        let e = tr(&["agent", "-node"]).unwrap_err();
        assert!(e.contains("needs a value"), "{e}");
    }

    #[test]
    fn a_harmless_serf_flag_is_dropped_with_a_warning() {
        let t = tr(&["agent", "-protocol", "4", "-node", "a", "-syslog"]).unwrap();
        assert_eq!(t.args, ["agent", "--node=a"].map(OsString::from));
        assert_eq!(t.warnings.len(), 2);
        assert!(t.warnings[0].starts_with("-protocol ignored"));
    }

    #[test]
    fn every_table_row_names_a_flag_once() {
        let mut names: Vec<&str> = TABLE.iter().map(|(n, _)| *n).collect();
        names.sort();
        let len = names.len();
        names.dedup();
        assert_eq!(names.len(), len);
    }
}
