//! A rendered HAProxy config split into what only a reload can change (the *frame*: every
//! line but the `server` lines of backends) and the `server` lines themselves, which the
//! runtime API can add, change and delete. Pure code, no I/O.
//!
//! Planning from the rendered text rather than from the model keeps the file the truth: a
//! server is added at runtime with exactly the keywords its line in the file has, so a later
//! reload or restart of HAProxy starts from the same servers. A custom template is handled the
//! same way; a line this parser cannot take apart safely stays in the frame (any change of it
//! reloads).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

/// (backend, server name)
pub type ServerKey = (String, String);

/// One `server NAME ADDR [keywords]` line of a `backend` or `listen` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLine {
    pub name: String,
    /// As written (`ip:port`, `[v6]:port`, or whatever a custom template wrote).
    pub addr: String,
    /// The `weight` keyword's value; HAProxy's default (1) when absent.
    pub weight: u16,
    /// Every keyword but `weight N`, in order (`check`, `inter 2s`, `cookie x`, ...).
    pub keywords: Vec<String>,
}

impl ServerLine {
    /// The line has `check`: its health check must be enabled after `add server`.
    pub fn has_check(&self) -> bool {
        self.keywords.iter().any(|k| k == "check")
    }

    /// `addr` as a socket address, when it is one (a custom template may render host names).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.addr.parse().ok()
    }

    /// The arguments of `add server BE/NAME ...`: the address, the weight and the keywords,
    /// as the line has them.
    pub fn add_args(&self) -> String {
        let mut s = format!("{} weight {}", self.addr, self.weight);
        for k in &self.keywords {
            s.push(' ');
            s.push_str(k);
        }
        s
    }
}

/// A parsed config.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layout {
    /// Every line that is not a parsed server line, in order.
    pub frame: Vec<String>,
    /// (backend, server name) → line. A name twice in one backend is refused by HAProxy
    /// itself; here both lines stay in the frame so any change reloads.
    pub servers: BTreeMap<ServerKey, ServerLine>,
    /// Backends whose `cookie` line has `dynamic`: a server's cookie is a hash of its address
    /// and the backend's key. HAProxy 2.6 computes it for servers of the file and on
    /// `set server addr`, but not on `add server` (`enable dynamic-cookie backend` does).
    pub dynamic_cookies: BTreeSet<String>,
    /// `server-state-file` of the `global` section, as written.
    pub server_state_file: Option<String>,
    /// `server-state-base` of the `global` section, as written.
    pub server_state_base: Option<String>,
}

/// Section keywords that start a new section (HAProxy's own list, those a config uses).
const SECTIONS: &[&str] = &[
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "resolvers",
    "peers",
    "userlist",
    "mailers",
    "program",
    "http-errors",
    "ring",
    "cache",
];

impl Layout {
    pub fn parse(text: &str) -> Layout {
        let mut layout = Layout::default();
        // The proxy a server line belongs to (backend/listen), None elsewhere.
        let mut proxy: Option<String> = None;
        let mut in_global = false;
        let mut lines: Vec<(&str, Option<(ServerKey, ServerLine)>)> = Vec::new();
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some(&first) = words.first() else {
                lines.push((line, None));
                continue;
            };
            if SECTIONS.contains(&first) {
                in_global = first == "global";
                proxy = match (first, words.get(1)) {
                    ("backend" | "listen", Some(n)) => Some(n.to_string()),
                    _ => None,
                };
            } else if in_global && words.len() == 2 {
                match first {
                    "server-state-file" => layout.server_state_file = Some(words[1].into()),
                    "server-state-base" => layout.server_state_base = Some(words[1].into()),
                    _ => {}
                }
            }
            if let Some(p) = &proxy {
                if first == "cookie" && words.contains(&"dynamic") {
                    layout.dynamic_cookies.insert(p.clone());
                }
            }
            let server = match &proxy {
                Some(p) if first == "server" => {
                    parse_server(&words).map(|s| ((p.clone(), s.name.clone()), s))
                }
                _ => None,
            };
            lines.push((line, server));
        }
        // A name twice in one proxy: both lines stay in the frame.
        let mut count: BTreeMap<&ServerKey, usize> = BTreeMap::new();
        for (_, s) in &lines {
            if let Some((k, _)) = s {
                *count.entry(k).or_default() += 1;
            }
        }
        let twice: Vec<ServerKey> = count
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(k, _)| k.clone())
            .collect();
        for (line, server) in lines {
            match server {
                Some((k, s)) if !twice.contains(&k) => {
                    layout.servers.insert(k, s);
                }
                _ => layout.frame.push(line.to_string()),
            }
        }
        layout
    }

    /// Whether a `default-server` line is anywhere in the frame. HAProxy 2.6 does not apply
    /// `default-server` settings to servers added with `add server`, so such a config could
    /// not add servers at runtime that match its file.
    pub fn has_default_server(&self) -> bool {
        self.frame
            .iter()
            .any(|l| l.split_whitespace().next() == Some("default-server"))
    }

    /// The server-state file HAProxy reads at start, when the config names an absolute one
    /// (a relative path resolves against HAProxy's own working directory, unknown here).
    pub fn server_state_path(&self) -> Option<std::path::PathBuf> {
        let file = std::path::Path::new(self.server_state_file.as_deref()?);
        let path = match &self.server_state_base {
            Some(base) if file.is_relative() => std::path::Path::new(base).join(file),
            _ => file.to_path_buf(),
        };
        path.is_absolute().then_some(path)
    }
}

/// `server NAME ADDR [kw...]`, or None when the line is not plain words (quotes, escapes,
/// comments, a `weight` without a number): such a line stays in the frame.
fn parse_server(words: &[&str]) -> Option<ServerLine> {
    let [_, name, addr, rest @ ..] = words else {
        return None;
    };
    if words
        .iter()
        .any(|w| w.contains(['"', '\'', '\\', '#', '$']))
    {
        return None;
    }
    let mut weight = 1;
    let mut keywords = Vec::new();
    let mut it = rest.iter();
    while let Some(&w) = it.next() {
        if w == "weight" {
            weight = it.next()?.parse().ok()?;
        } else {
            keywords.push(w.to_string());
        }
    }
    Some(ServerLine {
        name: name.to_string(),
        addr: addr.to_string(),
        weight,
        keywords,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "global\n    server-state-file /run/haproxy/state\n\
defaults\n    mode http\n\
frontend f\n    bind *:80\n    server-template x 3 1.2.3.4:80\n\
backend web\n    balance roundrobin\n\
    server a 10.0.0.1:80 weight 100 check inter 2s cookie a\n\
    server b 10.0.0.2:80 check\n\
    server q 10.0.0.3:80 check \"quoted\"\n\
listen stats\n    bind *:1936\n";

    #[test]
    fn server_lines_of_backends_are_taken_out_of_the_frame() {
        let l = Layout::parse(CFG);
        let a = &l.servers[&("web".to_string(), "a".to_string())];
        assert_eq!(a.addr, "10.0.0.1:80");
        assert_eq!(a.weight, 100);
        assert_eq!(a.keywords, ["check", "inter", "2s", "cookie", "a"]);
        assert_eq!(
            a.add_args(),
            "10.0.0.1:80 weight 100 check inter 2s cookie a"
        );
        assert!(a.has_check());
        assert_eq!(l.servers[&("web".into(), "b".into())].weight, 1);
        // Quoted: left in the frame, like everything outside backends.
        assert_eq!(l.servers.len(), 2);
        assert!(l.frame.iter().any(|f| f.contains("\"quoted\"")));
        assert!(l.frame.iter().any(|f| f.contains("server-template")));
        assert_eq!(
            l.server_state_path(),
            Some(std::path::PathBuf::from("/run/haproxy/state"))
        );
        assert!(!l.has_default_server());
    }

    #[test]
    fn backends_with_dynamic_cookies_are_known() {
        let l = Layout::parse(
            "backend web\n    cookie SERVERID insert indirect nocache dynamic\n\
             backend api\n    cookie SERVERID insert\n\
             frontend f\n    cookie X dynamic\n",
        );
        assert_eq!(l.dynamic_cookies, BTreeSet::from(["web".to_string()]));
    }

    #[test]
    fn a_name_twice_in_one_backend_stays_in_the_frame() {
        let l = Layout::parse("backend web\n    server a 1.1.1.1:1\n    server a 1.1.1.2:1\n");
        assert!(l.servers.is_empty());
        assert_eq!(l.frame.len(), 3);
    }

    #[test]
    fn only_the_server_lines_differ_between_two_member_sets() {
        let one = Layout::parse(CFG);
        let two = Layout::parse(&CFG.replace("server b 10.0.0.2:80 check\n", ""));
        assert_eq!(one.frame, two.frame);
        assert_ne!(one.servers, two.servers);
    }

    #[test]
    fn a_relative_state_file_without_base_is_unknown() {
        let l = Layout::parse("global\n    server-state-file state\n");
        assert_eq!(l.server_state_path(), None);
        let l = Layout::parse(
            "global\n    server-state-base /var/lib/haproxy\n    server-state-file state\n",
        );
        assert_eq!(
            l.server_state_path(),
            Some(std::path::PathBuf::from("/var/lib/haproxy/state"))
        );
    }
}
