//! `--event-handler [FILTER=]CMD`: which events a handler takes, parsed as Serf
//! does: a comma list of `member-join`, `member-leave`, `member-failed`,
//! `member-update`, `member-reap`, `user`, `user:NAME`, `query`,
//! `query:NAME` and `*`, then `=` and the command; no filter means `*`.
//!
//! A head that looks like a filter list (see `looks_like_filters`) must be
//! one: an item shoal does not know is an error naming it, never a command
//! that fails on every event. Other text before `=` is part of the command
//! (`FOO=bar /path/cmd`, `now=$(date); ...`), as shoal always took it.

use crate::membership::EventKind;

/// One item of a filter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Member(EventKind),
    /// `user` (None) or `user:NAME`.
    User(Option<String>),
    /// `query` (None) or `query:NAME`.
    Query(Option<String>),
    /// `*`: every event, user events and queries included.
    All,
}

impl Filter {
    fn parse(item: &str) -> Option<Filter> {
        let named = |rest: &str| (!rest.is_empty()).then(|| rest.to_string());
        match item {
            "*" => Some(Filter::All),
            "user" => Some(Filter::User(None)),
            "query" => Some(Filter::Query(None)),
            _ => {
                if let Some(rest) = item.strip_prefix("user:") {
                    named(rest).map(|n| Filter::User(Some(n)))
                } else if let Some(rest) = item.strip_prefix("query:") {
                    named(rest).map(|n| Filter::Query(Some(n)))
                } else {
                    EventKind::parse(item).map(Filter::Member)
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HandlerSpec {
    /// None: every event (`*`).
    pub filter: Option<Vec<Filter>>,
    pub command: String,
}

/// Whether the text before `=` is meant as a filter list: no whitespace,
/// `/` or `$`, and a `,`, `:` or `*` in it or an item that starts like an
/// event (`member-`, `user`, `query`). Anything else is a command that
/// starts with a shell assignment (`now=$(date); ...`), as before.
fn looks_like_filters(head: &str) -> bool {
    if head.is_empty() || head.contains(|c: char| c.is_whitespace() || c == '/' || c == '$') {
        return false;
    }
    head.contains([',', ':', '*'])
        || head
            .split(',')
            .any(|i| i.starts_with("member-") || i.starts_with("user") || i.starts_with("query"))
}

impl HandlerSpec {
    /// `member-join,user:deploy=/path/cmd` or just `/path/cmd`.
    pub fn parse(s: &str) -> Result<HandlerSpec, String> {
        if let Some((head, cmd)) = s.split_once('=') {
            if looks_like_filters(head) {
                let mut filters = Vec::new();
                for item in head.split(',') {
                    match Filter::parse(item) {
                        Some(f) => filters.push(f),
                        None => {
                            return Err(format!(
                                "{s:?}: unknown event filter {item:?}; use member-join, \
                                 member-leave, member-failed, member-update, member-reap, \
                                 user, user:NAME, query, query:NAME or *"
                            ))
                        }
                    }
                }
                if cmd.trim().is_empty() {
                    return Err(format!("{s:?}: no command after the filter"));
                }
                let filter = (!filters.contains(&Filter::All)).then_some(filters);
                return Ok(HandlerSpec {
                    filter,
                    command: cmd.to_string(),
                });
            }
        }
        if s.trim().is_empty() {
            return Err("empty handler command".into());
        }
        Ok(HandlerSpec {
            filter: None,
            command: s.to_string(),
        })
    }

    /// Takes member events of `kind` (`member-join`, ...).
    pub fn matches(&self, kind: &str) -> bool {
        self.any(|f| matches!(f, Filter::Member(k) if k.as_str() == kind))
    }

    /// Takes the user event `name`.
    pub fn matches_user(&self, name: &str) -> bool {
        self.any(|f| matches!(f, Filter::User(n) if n.as_deref().is_none_or(|n| n == name)))
    }

    /// Takes the query `name`.
    pub fn matches_query(&self, name: &str) -> bool {
        self.any(|f| matches!(f, Filter::Query(n) if n.as_deref().is_none_or(|n| n == name)))
    }

    fn any(&self, test: impl Fn(&Filter) -> bool) -> bool {
        match &self.filter {
            None => true,
            Some(filters) => filters.iter().any(test),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_filters_like_serf() {
        let h = HandlerSpec::parse("member-join,member-leave=/bin/handler arg").unwrap();
        assert_eq!(h.filter.as_ref().unwrap().len(), 2);
        assert_eq!(h.command, "/bin/handler arg");
        assert!(h.matches("member-join") && !h.matches("member-failed"));
        assert!(!h.matches_user("deploy") && !h.matches_query("uptime"));
        let all = HandlerSpec::parse("echo a=b").unwrap();
        assert!(all.filter.is_none() && all.matches("member-reap"));
        assert!(all.matches_user("x") && all.matches_query("y"));
        assert!(HandlerSpec::parse("member-jion=/x")
            .unwrap_err()
            .contains("unknown event filter \"member-jion\""));
        assert!(HandlerSpec::parse("member-join=").is_err());
    }

    #[test]
    fn user_and_query_filters_take_their_names() {
        let h = HandlerSpec::parse("user:deploy,query=/bin/h").unwrap();
        assert!(h.matches_user("deploy") && !h.matches_user("restart"));
        assert!(h.matches_query("anything") && !h.matches("member-join"));
        let h = HandlerSpec::parse("query:uptime=uptime").unwrap();
        assert!(h.matches_query("uptime") && !h.matches_query("load"));
        assert_eq!(h.command, "uptime");
        let h = HandlerSpec::parse("user=/bin/h").unwrap();
        assert!(h.matches_user("a") && !h.matches_query("a"));
        let star = HandlerSpec::parse("*=/bin/h").unwrap();
        assert!(star.filter.is_none() && star.command == "/bin/h");
        let star = HandlerSpec::parse("member-join,*=/bin/h").unwrap();
        assert!(star.matches_query("q"));
    }

    #[test]
    fn a_filter_shoal_does_not_know_is_an_error_naming_it() {
        for (spec, item) in [
            ("usr:deploy=/bin/h", "usr:deploy"),
            ("query:=/bin/h", "query:"),
            ("user:=/bin/h", "user:"),
            ("member-join,bogus=/bin/h", "bogus"),
            ("**=/bin/h", "**"),
        ] {
            let err = HandlerSpec::parse(spec).unwrap_err();
            assert!(err.contains(&format!("{item:?}")), "{spec}: {err}");
        }
        // A command that starts with a shell assignment stays a command.
        let h = HandlerSpec::parse("now=$(date +%s); echo $now").unwrap();
        assert!(h.filter.is_none() && h.command.starts_with("now="));
        let h = HandlerSpec::parse("FOO=bar /bin/h").unwrap();
        assert!(h.filter.is_none() && h.command == "FOO=bar /bin/h");
        let h = HandlerSpec::parse("*=FOO=bar /bin/h").unwrap();
        assert!(h.filter.is_none() && h.command == "FOO=bar /bin/h");
        // A head with a space or a path is a command.
        let h = HandlerSpec::parse("env FOO=bar /bin/h").unwrap();
        assert!(h.filter.is_none());
    }
}
