//! `lbgen status`: what lbgen makes of a members snapshot — each pool's settings and route,
//! which pool is the default, members outvoted on a pool setting, members skipped. Pure.

use serde::Serialize;

use crate::model::{Conflict, Model, Rejection, ServerState};

/// What `lbgen status` prints (named apart from the agent's member `Status`).
#[derive(Debug, Serialize)]
pub struct StatusReport<'a> {
    pub pools: Vec<PoolStatus<'a>>,
    /// The pool at `/`; None = requests no route matches get a 503.
    pub default_pool: Option<&'a str>,
    pub conflicts: &'a [Conflict],
    pub skipped: &'a [Rejection],
}

#[derive(Debug, Serialize)]
pub struct PoolStatus<'a> {
    pub name: &'a str,
    pub route: &'a str,
    /// false: another pool won this route (see `conflicts`).
    pub routed: bool,
    pub check: &'a str,
    pub sticky: bool,
    pub balance: &'a str,
    pub servers: usize,
    pub draining: usize,
}

impl<'a> StatusReport<'a> {
    pub fn of(m: &'a Model) -> StatusReport<'a> {
        let pools = m
            .pools
            .iter()
            .map(|p| PoolStatus {
                name: &p.name,
                route: &p.route,
                routed: m.default_pool.as_deref() == Some(p.name.as_str())
                    || m.routes.iter().any(|r| r.pool == p.name),
                check: &p.check,
                sticky: p.sticky,
                balance: &p.balance,
                servers: p.servers.len(),
                draining: p
                    .servers
                    .iter()
                    .filter(|s| s.state == ServerState::Drain)
                    .count(),
            })
            .collect();
        StatusReport {
            pools,
            default_pool: m.default_pool.as_deref(),
            conflicts: &m.conflicts,
            skipped: &m.rejected,
        }
    }

    /// Human-readable, one line per pool, conflict and skipped member.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for p in &self.pools {
            let route = if !p.routed {
                format!("{} (not routed: another pool holds it)", p.route)
            } else if self.default_pool == Some(p.name) {
                format!("{} (default)", p.route)
            } else {
                p.route.to_string()
            };
            out.push_str(&format!(
                "pool {}: route {route}, check {}, balance {}, sticky {}, {} server(s), {} draining\n",
                p.name, p.check, p.balance, p.sticky, p.servers, p.draining
            ));
        }
        if self.default_pool.is_none() {
            out.push_str("no pool serves /: requests no route matches get a 503\n");
        }
        for c in self.conflicts {
            out.push_str(&format!("conflict: {c}\n"));
        }
        for r in self.skipped {
            out.push_str(&format!("skipped: member {}: {}\n", r.member, r.reason));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MembersDoc;

    #[test]
    fn status_names_the_outvoted_member_and_the_pool_value_kept() {
        let doc = MembersDoc::from_json(
            r#"{"members":[
              {"name":"web-1","addr":"10.0.0.1:1","status":"alive","tags":{"service":"web","port":"80","check":"/health"}},
              {"name":"web-2","addr":"10.0.0.2:1","status":"alive","tags":{"service":"web","port":"80","check":"/health"}},
              {"name":"evil","addr":"10.0.0.3:1","status":"alive","tags":{"service":"web","port":"80","check":"/a"}}]}"#,
        )
        .unwrap();
        let m = Model::build(&doc);
        let t = StatusReport::of(&m).text();
        assert!(
            t.contains("pool web: route / (default), check /health,"),
            "{t}"
        );
        assert!(
            t.contains("conflict: member evil of pool web: check \"/a\" not used"),
            "{t}"
        );
        let j = serde_json::to_value(StatusReport::of(&m)).unwrap();
        assert_eq!(j["conflicts"][0]["member"], "evil");
        assert_eq!(j["pools"][0]["check"], "/health");
    }
}
