//! Decides how to bring the running HAProxy to a new rendered config: nothing, runtime-API
//! commands, or a reload. Pure code, no I/O.
//!
//! The frame of the config (everything but the backends' `server` lines, see
//! [`crate::layout`]) can only change by a reload. Inside it, every membership change is a
//! runtime change: a new server line → `add server` with that line's keywords, its health
//! check enabled, its dynamic cookie computed (sticky pools), then its state set; a changed
//! address → `set server addr`; a changed weight → `set server weight`; a state change →
//! `set server state`; a server line gone → `maint`, and deleted by the applier's reaper
//! once it holds no connection (a failed member's sessions are shut down at once).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::layout::{Layout, ServerLine};
use crate::model::{Model, ServerState};

/// Admin state of a server in the running HAProxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    Ready,
    Drain,
    /// No longer in the config: takes nothing new, waits to be deleted.
    Maint,
}

/// (backend, server name)
pub use crate::layout::ServerKey as Key;

#[derive(Debug, Clone, PartialEq, Eq)]
struct LiveServer {
    /// Its line in the config last written.
    line: ServerLine,
    /// The weight HAProxy uses (a drained server keeps its weight; the file renders 0).
    weight: u16,
    admin: Admin,
    /// Gone from the config, still in HAProxy until the reaper deletes it.
    leaving: bool,
}

/// What the running HAProxy has: the config of the last reload plus runtime changes since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    frame: Vec<String>,
    /// The frame has a `default-server` line, which `add server` would not apply.
    default_server: bool,
    /// Backends with dynamic cookies (see [`Layout::dynamic_cookies`]).
    dynamic_cookies: BTreeSet<String>,
    servers: BTreeMap<Key, LiveServer>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The running HAProxy already matches.
    Nothing,
    /// Runtime-API commands (without the `@1` prefix), in order, and what runs after them.
    /// The commands may be empty when only the file's text changes (a drained server's line).
    Runtime { commands: Vec<String>, next: Live },
    /// Needs the new config file and a reload; why, in words.
    Reload(String),
}

fn admin_of(s: ServerState) -> Admin {
    match s {
        ServerState::Ready => Admin::Ready,
        ServerState::Drain => Admin::Drain,
    }
}

/// The state `model` wants for `key`; a server line no member backs (a custom template's
/// fixed server) is ready.
fn wanted(model: &Model, key: &Key) -> Admin {
    model
        .server(&key.0, &key.1)
        .map_or(Admin::Ready, |(_, s)| admin_of(s.state))
}

/// Keywords HAProxy 2.6's `add server` refuses ("'cookie' option is not accepted for
/// dynamic server"): a server line with one of them can only arrive by a reload.
pub const NOT_DYNAMIC: &[&str] = &["cookie"];

impl Live {
    /// The state right after HAProxy loaded `text` (rendered from `model`).
    pub fn from_text(text: &str, model: &Model) -> Live {
        Live::parsed(text, |key, _| wanted(model, key))
    }

    /// The state of an HAProxy that loaded `text` before lbgen started (proven by
    /// [`crate::adopt`]), when the model `text` was rendered from is not known: a server the
    /// file renders with weight 0 is drained (the default template's drain), any other ready.
    pub fn loaded(text: &str) -> Live {
        Live::parsed(text, |_, line| {
            if line.weight == 0 {
                Admin::Drain
            } else {
                Admin::Ready
            }
        })
    }

    fn parsed(text: &str, admin_of: impl Fn(&Key, &ServerLine) -> Admin) -> Live {
        let layout = Layout::parse(text);
        let default_server = layout.has_default_server();
        let dynamic_cookies = layout.dynamic_cookies;
        let servers = layout
            .servers
            .into_iter()
            .map(|(key, line)| {
                let admin = admin_of(&key, &line);
                let weight = line.weight;
                let s = LiveServer {
                    line,
                    weight,
                    admin,
                    leaving: false,
                };
                (key, s)
            })
            .collect();
        Live {
            frame: layout.frame,
            default_server,
            dynamic_cookies,
            servers,
        }
    }

    /// Plans the change to `text`, rendered from `model`.
    pub fn plan(&self, text: &str, model: &Model) -> Plan {
        let new = Layout::parse(text);
        if new.frame != self.frame {
            return Plan::Reload(
                "the config outside the server lines changed (a pool, route, pool setting, listener, global setting or the template)".into(),
            );
        }
        let mut cmds = Vec::new();
        let mut next = self.clone();
        for (key, line) in &new.servers {
            let id = format!("{}/{}", key.0, key.1);
            let want = wanted(model, key);
            let Some(l) = self.servers.get(key) else {
                if let Some(k) = line
                    .keywords
                    .iter()
                    .find(|k| NOT_DYNAMIC.contains(&k.as_str()))
                {
                    return Plan::Reload(format!(
                        "new server {id} has `{k}`, which HAProxy 2.6 refuses on `add server`"
                    ));
                }
                if self.default_server {
                    return Plan::Reload(format!(
                        "new server {id}: the config has a default-server line, which `add server` would not apply"
                    ));
                }
                cmds.push(format!("add server {id} {}", line.add_args()));
                if line.has_check() {
                    cmds.push(format!("enable health {id}"));
                }
                // Before it is ready: a client it answers must get its cookie.
                if self.dynamic_cookies.contains(&key.0) {
                    cmds.push(format!("enable dynamic-cookie backend {}", key.0));
                }
                cmds.push(match want {
                    Admin::Drain => format!("set server {id} state drain"),
                    _ => format!("set server {id} state ready"),
                });
                next.servers.insert(
                    key.clone(),
                    LiveServer {
                        line: line.clone(),
                        weight: line.weight,
                        admin: want,
                        leaving: false,
                    },
                );
                continue;
            };
            if l.line.keywords != line.keywords {
                return Plan::Reload(format!(
                    "server {id}: its line changed beyond address and weight"
                ));
            }
            if l.line.addr != line.addr {
                let Some(sa) = line.socket_addr() else {
                    return Plan::Reload(format!(
                        "server {id}: new address {} is not IP:PORT",
                        line.addr
                    ));
                };
                cmds.push(format!(
                    "set server {id} addr {} port {}",
                    plain_ip(sa.ip()),
                    sa.port()
                ));
            }
            let mut weight = l.weight;
            match want {
                Admin::Ready => {
                    // From drain or maint the running weight may be the file's 0.
                    if l.weight != line.weight || l.admin != Admin::Ready {
                        cmds.push(format!("set server {id} weight {}", line.weight));
                        weight = line.weight;
                    }
                    if l.admin != Admin::Ready {
                        cmds.push(format!("set server {id} state ready"));
                    }
                }
                Admin::Drain if l.admin != Admin::Drain => {
                    cmds.push(format!("set server {id} state drain"))
                }
                Admin::Drain | Admin::Maint => {}
            }
            next.servers.insert(
                key.clone(),
                LiveServer {
                    line: line.clone(),
                    weight,
                    admin: want,
                    leaving: false,
                },
            );
        }
        for (key, l) in &self.servers {
            if new.servers.contains_key(key) || l.leaving {
                continue;
            }
            cmds.extend(out_of_rotation(key, model.is_failed(&key.1)));
            if let Some(s) = next.servers.get_mut(key) {
                s.admin = Admin::Maint;
                s.leaving = true;
            }
        }
        if cmds.is_empty() && next == *self {
            Plan::Nothing
        } else {
            Plan::Runtime {
                commands: cmds,
                next,
            }
        }
    }

    /// Servers gone from the config that HAProxy still has (in maint, maybe serving the
    /// requests they had).
    pub fn leaving(&self) -> Vec<Key> {
        self.servers
            .iter()
            .filter(|(_, s)| s.leaving)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Servers of the config that are drained (their member is draining or suspect).
    pub fn drained(&self) -> Vec<Key> {
        self.servers
            .iter()
            .filter(|(_, s)| !s.leaving && s.admin == Admin::Drain)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// What to run in the current worker before a reload to `text` (rendered from `model`):
    /// a server `text` drops whose member is `failed` goes to maint and its sessions are shut
    /// down. Left alone, its requests in flight, which a dead host never answers, would stay
    /// with the old worker until `timeout server`; cut, a GET is retried on another server.
    pub fn cut_failed_before_reload(&self, text: &str, model: &Model) -> Vec<String> {
        let kept = Layout::parse(text).servers;
        self.servers
            .keys()
            .filter(|k| !kept.contains_key(*k) && model.is_failed(&k.1))
            .flat_map(|k| out_of_rotation(k, true))
            .collect()
    }

    /// `key` was deleted from HAProxy (or is not there any more).
    pub fn deleted(&mut self, key: &Key) {
        if self.servers.get(key).is_some_and(|s| s.leaving) {
            self.servers.remove(key);
        }
    }
}

/// Takes a server its member no longer backs out of rotation: maint rather than drain, so no
/// new request and no sticky client either (it is redispatched); requests in flight finish,
/// and it is deleted once it holds no connection. A `failed` member's requests will not
/// finish (its host is gone or cut off; they would hang until `timeout server`), so its
/// sessions are shut down too: a cut GET is retried on another server (`retry-on`), as
/// HAProxy's own `on-marked-down shutdown-sessions` does for a failed health check.
fn out_of_rotation((pool, name): &Key, failed: bool) -> Vec<String> {
    let mut cmds = vec![format!("set server {pool}/{name} state maint")];
    if failed {
        cmds.push(format!("shutdown sessions server {pool}/{name}"));
    }
    cmds
}

/// An IP as `set server addr` takes it: no brackets.
fn plain_ip(ip: IpAddr) -> String {
    ip.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MembersDoc;
    use crate::render::{Renderer, Vars};

    type Spec<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)]);

    fn model(members: &[Spec]) -> Model {
        let doc = MembersDoc::list(
            members
                .iter()
                .map(|(n, a, st, extra)| {
                    let mut tags: BTreeMap<String, String> = [("service", "web"), ("port", "80")]
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    for (k, v) in extra.iter() {
                        tags.insert(k.to_string(), v.to_string());
                    }
                    crate::model::Member {
                        name: n.to_string(),
                        addr: a.to_string(),
                        status: st.parse().expect("a status"),
                        tags,
                    }
                })
                .collect(),
        );
        Model::build(&doc)
    }

    /// (rendered text, model) with the default template.
    fn rendered(members: &[Spec]) -> (String, Model) {
        let m = model(members);
        let text = Renderer::builtin()
            .render(&m, &Vars::default())
            .expect("renders");
        (text, m)
    }

    fn live(members: &[Spec]) -> Live {
        let (t, m) = rendered(members);
        Live::from_text(&t, &m)
    }

    fn plan(live: &Live, members: &[Spec]) -> Plan {
        let (t, m) = rendered(members);
        live.plan(&t, &m)
    }

    fn commands(p: &Plan) -> Vec<String> {
        match p {
            Plan::Runtime { commands, .. } => commands.clone(),
            other => panic!("expected a runtime plan, got {other:?}"),
        }
    }

    /// Applies a runtime plan.
    fn after(p: Plan) -> Live {
        match p {
            Plan::Runtime { next, .. } => next,
            other => panic!("expected a runtime plan, got {other:?}"),
        }
    }

    const A: &str = "10.0.0.1:1";
    const B: &str = "10.0.0.2:1";
    const C: &str = "10.0.0.3:1";

    #[test]
    fn same_config_needs_nothing() {
        let m = [("a", A, "alive", &[][..]), ("b", B, "alive", &[])];
        assert_eq!(plan(&live(&m), &m), Plan::Nothing);
    }

    #[test]
    fn draining_and_suspect_are_runtime_changes() {
        let l = live(&[("a", A, "alive", &[]), ("b", B, "alive", &[])]);
        let p = plan(
            &l,
            &[
                ("a", A, "alive", &[("state", "draining")]),
                ("b", B, "suspect", &[]),
            ],
        );
        assert_eq!(
            commands(&p),
            [
                "set server web/a state drain",
                "set server web/b state drain"
            ]
        );
    }

    #[test]
    fn a_joining_member_is_added_with_its_lines_keywords_then_enabled() {
        let l = live(&[("a", A, "alive", &[])]);
        let (t, m) = rendered(&[("a", A, "alive", &[]), ("b", B, "alive", &[])]);
        let line = t
            .lines()
            .find(|l| l.trim_start().starts_with("server b "))
            .expect("a line for b")
            .trim()
            .to_string();
        let p = l.plan(&t, &m);
        let c = commands(&p);
        assert_eq!(
            c[0],
            format!(
                "add server web/b {}",
                line.strip_prefix("server b ").unwrap()
            )
        );
        assert!(c[0].contains(" check inter 2s fall 3 rise 2"), "{}", c[0]);
        assert_eq!(
            c[1..],
            ["enable health web/b", "set server web/b state ready"]
        );
        // Applied, the same config needs nothing more.
        assert_eq!(after(p).plan(&t, &m), Plan::Nothing);
    }

    #[test]
    fn a_failed_member_goes_to_maint_with_its_sessions_cut_and_waits_for_the_reaper() {
        let l = live(&[("a", A, "alive", &[]), ("b", B, "alive", &[])]);
        // One that left (or stopped serving) keeps its requests in flight until they end.
        for (status, extra) in [("left", &[][..]), ("suspect", &[("state", "starting")])] {
            assert_eq!(
                commands(&plan(
                    &l,
                    &[("a", A, "alive", &[]), ("b", B, status, extra)]
                )),
                ["set server web/b state maint"],
                "{status}"
            );
        }
        let gone = [("a", A, "alive", &[][..]), ("b", B, "failed", &[])];
        let p = plan(&l, &gone);
        assert_eq!(
            commands(&p),
            [
                "set server web/b state maint",
                "shutdown sessions server web/b"
            ]
        );
        let mut l = after(p);
        assert_eq!(l.leaving(), [("web".to_string(), "b".to_string())]);
        assert_eq!(plan(&l, &gone), Plan::Nothing);
        // Back before it was deleted: the same server is made ready again, not added.
        let back = [("a", A, "alive", &[][..]), ("b", B, "alive", &[])];
        assert_eq!(
            commands(&plan(&l, &back)),
            [
                "set server web/b weight 100",
                "set server web/b state ready"
            ]
        );
        // Deleted: it comes back with `add server`.
        l.deleted(&("web".into(), "b".into()));
        assert!(l.leaving().is_empty());
        assert!(commands(&plan(&l, &back))[0].starts_with("add server web/b "));
    }

    #[test]
    fn before_a_reload_only_a_dropped_failed_members_server_is_cut() {
        let l = live(&[
            ("a", A, "alive", &[]),
            ("b", B, "alive", &[]),
            ("c", C, "alive", &[]),
        ]);
        // b failed, c left, and a new pool makes it a reload.
        let (t, m) = rendered(&[
            ("a", A, "alive", &[]),
            ("b", B, "failed", &[]),
            ("c", C, "left", &[]),
            ("d", "10.0.0.4:1", "alive", &[("service", "api")]),
        ]);
        assert!(matches!(l.plan(&t, &m), Plan::Reload(_)));
        assert_eq!(
            l.cut_failed_before_reload(&t, &m),
            [
                "set server web/b state maint",
                "shutdown sessions server web/b"
            ]
        );
        // A template that still renders the failed member keeps it: nothing is cut.
        let (t, m) = rendered(&[("a", A, "alive", &[]), ("b", B, "alive", &[])]);
        let mut m_failed = m.clone();
        m_failed.members.iter_mut().for_each(|n| {
            if n.name == "b" {
                n.status = "failed".into()
            }
        });
        assert!(l.cut_failed_before_reload(&t, &m_failed).is_empty());
    }

    #[test]
    fn address_and_weight_changes_are_runtime_changes() {
        let l = live(&[("a", A, "alive", &[])]);
        assert_eq!(
            commands(&plan(&l, &[("a", C, "alive", &[("weight", "5")])])),
            [
                "set server web/a addr 10.0.0.3 port 80",
                "set server web/a weight 5"
            ]
        );
        assert_eq!(
            commands(&plan(&l, &[("a", "[fd00::1]:1", "alive", &[])])),
            ["set server web/a addr fd00::1 port 80"]
        );
    }

    #[test]
    fn a_drained_server_keeps_its_weight_and_returns_with_it() {
        let l = live(&[("a", A, "alive", &[]), ("b", B, "alive", &[])]);
        let drained = [
            ("a", A, "alive", &[][..]),
            ("b", B, "alive", &[("state", "draining")]),
        ];
        let l = after(plan(&l, &drained));
        assert_eq!(l.drained(), [("web".to_string(), "b".to_string())]);
        assert_eq!(
            commands(&plan(&l, &[("a", A, "alive", &[]), ("b", B, "alive", &[])])),
            [
                "set server web/b weight 100",
                "set server web/b state ready"
            ]
        );
    }

    #[test]
    fn a_sticky_pool_adds_and_removes_at_runtime_with_dynamic_cookies() {
        let s = &[("sticky", "true")][..];
        let l = live(&[("a", A, "alive", s), ("b", B, "alive", s)]);
        let c = commands(&plan(
            &l,
            &[
                ("a", A, "alive", s),
                ("b", B, "alive", s),
                ("c", C, "alive", s),
            ],
        ));
        assert!(c[0].starts_with("add server web/c ") && !c[0].contains("cookie"));
        assert_eq!(
            c[1..],
            [
                "enable health web/c",
                "enable dynamic-cookie backend web",
                "set server web/c state ready"
            ]
        );
        assert_eq!(
            commands(&plan(&l, &[("a", A, "alive", s), ("b", B, "left", s)])),
            ["set server web/b state maint"]
        );
    }

    #[test]
    fn structural_changes_need_a_reload() {
        let l = live(&[("a", A, "alive", &[])]);
        for change in [
            &[("check", "/h")][..],
            &[("sticky", "true")],
            &[("balance", "leastconn")],
            &[("route", "/api")],
            &[("slowstart", "10s")],
        ] {
            assert!(
                matches!(plan(&l, &[("a", A, "alive", change)]), Plan::Reload(_)),
                "{change:?}"
            );
        }
        // A new pool.
        let mut two = vec![("a", A, "alive", &[][..])];
        let other = [("service", "api")];
        two.push(("z", B, "alive", &other));
        assert!(matches!(plan(&l, &two), Plan::Reload(_)));
        // The last server of a pool leaving keeps the pool and its route (answering 503):
        // a runtime change. Its last member reaped removes them: a reload.
        assert!(matches!(
            plan(&l, &[("a", A, "failed", &[])]),
            Plan::Runtime { .. }
        ));
        assert!(matches!(plan(&l, &[]), Plan::Reload(_)));
    }

    #[test]
    fn a_server_line_with_its_own_cookie_adds_by_reload() {
        let m = model(&[("a", A, "alive", &[])]);
        let t0 = "backend web\n    cookie S insert\n    server a 10.0.0.1:80 cookie a\n";
        let t1 = format!("{t0}    server b 10.0.0.2:80 cookie b\n");
        assert!(matches!(
            Live::from_text(t0, &m).plan(&t1, &m),
            Plan::Reload(why) if why.contains("cookie")
        ));
    }

    #[test]
    fn a_template_with_default_server_adds_by_reload() {
        let m = model(&[("a", A, "alive", &[])]);
        let t0 =
            "defaults\n    default-server inter 1s\nbackend web\n    server a 10.0.0.1:80 check\n";
        let t1 = format!("{t0}    server b 10.0.0.2:80 check\n");
        assert!(matches!(
            Live::from_text(t0, &m).plan(&t1, &m),
            Plan::Reload(why) if why.contains("default-server")
        ));
    }
}
