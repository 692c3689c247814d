//! Decides how to bring the running HAProxy to a new model: nothing, runtime-API commands
//! (pure server state changes: ready ↔ drain ↔ gone), or a reload. Pure code, no I/O.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::model::{Model, ServerState};

/// Admin state of a server in the running HAProxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    Ready,
    Drain,
    /// Still in the running config but no longer in the model (failed/left): set to maint.
    Maint,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LiveServer {
    ip: IpAddr,
    port: u16,
    weight: u16,
    admin: Admin,
}

/// What the running HAProxy has: the model of the last reload plus runtime changes since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    /// pool → (route, check, sticky, balance)
    pools: BTreeMap<String, (String, String, bool, String)>,
    servers: BTreeMap<(String, String), LiveServer>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The running HAProxy already matches.
    Nothing,
    /// Runtime-API commands (without the `@1` prefix), in order.
    Runtime(Vec<String>),
    /// Anything else needs the new config file and a reload.
    Reload,
}

fn admin_of(s: ServerState) -> Admin {
    match s {
        ServerState::Ready => Admin::Ready,
        ServerState::Drain => Admin::Drain,
    }
}

impl Live {
    /// The state right after HAProxy loaded the config rendered from `m`.
    pub fn from_model(m: &Model) -> Live {
        let mut live = Live {
            pools: BTreeMap::new(),
            servers: BTreeMap::new(),
        };
        for p in &m.pools {
            live.pools.insert(
                p.name.clone(),
                (
                    p.route.clone(),
                    p.check.clone(),
                    p.sticky,
                    p.balance.clone(),
                ),
            );
            for s in &p.servers {
                live.servers.insert(
                    (p.name.clone(), s.name.clone()),
                    LiveServer {
                        ip: s.ip,
                        port: s.port,
                        weight: s.weight,
                        admin: admin_of(s.state),
                    },
                );
            }
        }
        live
    }

    /// Plans the change to `new`. Runtime commands only when every pool and every server
    /// of `new` already exists with the same settings and only admin states differ.
    pub fn plan(&self, new: &Model) -> Plan {
        let mut cmds = Vec::new();
        if new.pools.len() != self.pools.len() {
            return Plan::Reload;
        }
        let mut wanted = BTreeMap::new();
        for p in &new.pools {
            let attrs = (
                p.route.clone(),
                p.check.clone(),
                p.sticky,
                p.balance.clone(),
            );
            if self.pools.get(&p.name) != Some(&attrs) {
                return Plan::Reload;
            }
            for s in &p.servers {
                let key = (p.name.clone(), s.name.clone());
                let Some(l) = self.servers.get(&key) else {
                    return Plan::Reload;
                };
                if (l.ip, l.port, l.weight) != (s.ip, s.port, s.weight) {
                    return Plan::Reload;
                }
                wanted.insert(key, admin_of(s.state));
            }
        }
        for (key, l) in &self.servers {
            let want = wanted.get(key).copied().unwrap_or(Admin::Maint);
            if want == l.admin {
                continue;
            }
            let id = format!("{}/{}", key.0, key.1);
            match want {
                Admin::Ready => {
                    // The config may carry weight 0 for a server rendered as drained.
                    cmds.push(format!("set server {id} weight {}", l.weight));
                    cmds.push(format!("set server {id} state ready"));
                }
                Admin::Drain => cmds.push(format!("set server {id} state drain")),
                Admin::Maint => cmds.push(format!("set server {id} state maint")),
            }
        }
        if cmds.is_empty() {
            Plan::Nothing
        } else {
            Plan::Runtime(cmds)
        }
    }

    /// Records that the runtime commands for `new` were applied.
    pub fn apply_runtime(&mut self, new: &Model) {
        let mut wanted = BTreeMap::new();
        for p in &new.pools {
            for s in &p.servers {
                wanted.insert((p.name.clone(), s.name.clone()), admin_of(s.state));
            }
        }
        for (key, l) in self.servers.iter_mut() {
            l.admin = wanted.get(key).copied().unwrap_or(Admin::Maint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MembersDoc;

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

    const A: &str = "10.0.0.1:1";
    const B: &str = "10.0.0.2:1";

    #[test]
    fn same_model_needs_nothing() {
        let m = model(&[("a", A, "alive", &[]), ("b", B, "alive", &[])]);
        assert_eq!(Live::from_model(&m).plan(&m), Plan::Nothing);
    }

    #[test]
    fn draining_and_suspect_are_runtime_changes() {
        let m0 = model(&[("a", A, "alive", &[]), ("b", B, "alive", &[])]);
        let m1 = model(&[
            ("a", A, "alive", &[("state", "draining")]),
            ("b", B, "suspect", &[]),
        ]);
        let live = Live::from_model(&m0);
        assert_eq!(
            live.plan(&m1),
            Plan::Runtime(vec![
                "set server web/a state drain".into(),
                "set server web/b state drain".into()
            ])
        );
    }

    #[test]
    fn failed_server_goes_to_maint_and_comes_back_without_reload() {
        let m0 = model(&[("a", A, "alive", &[]), ("b", B, "alive", &[])]);
        let m1 = model(&[("a", A, "alive", &[]), ("b", B, "failed", &[])]);
        let mut live = Live::from_model(&m0);
        assert_eq!(
            live.plan(&m1),
            Plan::Runtime(vec!["set server web/b state maint".into()])
        );
        live.apply_runtime(&m1);
        assert_eq!(live.plan(&m1), Plan::Nothing);
        assert_eq!(
            live.plan(&m0),
            Plan::Runtime(vec![
                "set server web/b weight 100".into(),
                "set server web/b state ready".into()
            ])
        );
    }

    #[test]
    fn new_server_new_address_weight_or_pool_settings_need_a_reload() {
        let m0 = model(&[("a", A, "alive", &[])]);
        let live = Live::from_model(&m0);
        assert_eq!(
            live.plan(&model(&[("a", A, "alive", &[]), ("b", B, "alive", &[])])),
            Plan::Reload
        );
        assert_eq!(live.plan(&model(&[("a", B, "alive", &[])])), Plan::Reload);
        assert_eq!(
            live.plan(&model(&[("a", A, "alive", &[("port", "81")])])),
            Plan::Reload
        );
        assert_eq!(
            live.plan(&model(&[("a", A, "alive", &[("weight", "5")])])),
            Plan::Reload
        );
        assert_eq!(
            live.plan(&model(&[("a", A, "alive", &[("check", "/h")])])),
            Plan::Reload
        );
        assert_eq!(
            live.plan(&model(&[("a", A, "alive", &[("sticky", "true")])])),
            Plan::Reload
        );
        // The last server of a pool leaving removes the pool (and its route): reload.
        assert_eq!(live.plan(&model(&[("a", A, "failed", &[])])), Plan::Reload);
    }
}
