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
    /// Host rule (`host` tag), if any.
    pub host: Option<&'a str>,
    /// Extra listener port (`listen` tag); None = the main listener.
    pub listen: Option<u16>,
    /// Its share of a route split with other pools (`route_weight`).
    pub route_weight: Option<u32>,
    /// false: another pool won this route (see `conflicts`).
    pub routed: bool,
    pub check: &'a str,
    pub sticky: bool,
    pub balance: &'a str,
    pub servers: usize,
    pub draining: usize,
    /// Serves what no route of its listener matches.
    pub default: bool,
}

impl<'a> StatusReport<'a> {
    pub fn of(m: &'a Model) -> StatusReport<'a> {
        let pools = m
            .pools
            .iter()
            .map(|p| PoolStatus {
                name: &p.name,
                route: &p.route,
                host: p.host.as_deref(),
                listen: p.listen,
                route_weight: p.route_weight,
                routed: m.is_routed(&p.name),
                default: m.is_default(&p.name),
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
            let mut what = crate::routes::route_name(p.listen, p.host, p.route);
            if let Some(w) = p.route_weight {
                what.push_str(&format!(" (route_weight {w})"));
            }
            let route = if !p.routed {
                format!("{what} (not routed: another pool holds it)")
            } else if p.default {
                format!("{what} (default)")
            } else {
                what
            };
            out.push_str(&format!(
                "pool {}: route {route}, check {}, balance {}, sticky {}, {} server(s), {} draining\n",
                p.name, p.check, p.balance, p.sticky, p.servers, p.draining
            ));
            if p.servers == 0 && p.routed {
                out.push_str(&format!(
                    "pool {}: no server: its route answers 503 until a member serves or every member is reaped\n",
                    p.name
                ));
            }
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
