//! `--event-handler [FILTER=]CMD`: which events a handler takes, parsed as Serf
//! does (`member-join,member-leave=/path/cmd`, or every event).

use crate::membership::EventKind;

#[derive(Debug, Clone, PartialEq)]
pub struct HandlerSpec {
    /// None: every event.
    pub filter: Option<Vec<EventKind>>,
    pub command: String,
}

impl HandlerSpec {
    /// `member-join,member-leave=/path/cmd` or just `/path/cmd`.
    pub fn parse(s: &str) -> Result<HandlerSpec, String> {
        if let Some((head, cmd)) = s.split_once('=') {
            let kinds: Option<Vec<EventKind>> = head.split(',').map(EventKind::parse).collect();
            match kinds {
                Some(kinds) if !kinds.is_empty() => {
                    if cmd.trim().is_empty() {
                        return Err(format!("{s:?}: no command after the filter"));
                    }
                    return Ok(HandlerSpec {
                        filter: Some(kinds),
                        command: cmd.to_string(),
                    });
                }
                _ if head.starts_with("member-") || head.starts_with("user") || head == "query" => {
                    return Err(format!(
                        "{s:?}: unknown event in filter {head:?}; use member-join, member-leave, \
                         member-failed, member-update, member-reap"
                    ));
                }
                _ => {}
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

    pub fn matches(&self, kind: &str) -> bool {
        match &self.filter {
            None => true,
            Some(kinds) => kinds.iter().any(|k| k.as_str() == kind),
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
        let all = HandlerSpec::parse("echo a=b").unwrap();
        assert!(all.filter.is_none() && all.matches("member-reap"));
        assert!(HandlerSpec::parse("member-jion=/x")
            .unwrap_err()
            .contains("unknown event"));
        assert!(HandlerSpec::parse("member-join=").is_err());
    }
}
