//! Pools → the routes of each listener: who serves each (listener, host, path prefix), the
//! default pool of each listener, and weighted splits of one route between pools. Pure.
//!
//! A pool declares one route: its `listen` (None = the main listener), `host` and `route`.
//! Pools claiming the same one: those with a `route_weight` share it by weight (canary,
//! blue/green), and any without one lose it; with no weights, the pool with more servers
//! wins and a tie goes to the name that sorts first. Losers keep their backend (runtime API,
//! stats) but get no route; their members are reported as conflicts.

use std::collections::BTreeMap;

use crate::model::{Conflict, Draw, DrawRange, Listener, Pool, Route};

/// The routes of one listener.
#[derive(Debug, Default)]
pub struct Routes {
    pub routes: Vec<Route>,
    pub draws: Vec<Draw>,
    pub default_pool: Option<String>,
}

/// The main listener's routes and the extra listeners.
#[derive(Debug, Default)]
pub struct Routing {
    pub main: Routes,
    pub listeners: Vec<Listener>,
}

/// (listener port, host, prefix)
type Key<'a> = (Option<u16>, Option<&'a str>, &'a str);

pub fn assign(pools: &[Pool], conflicts: &mut Vec<Conflict>) -> Routing {
    let mut claims: BTreeMap<Key, Vec<&Pool>> = BTreeMap::new();
    for p in pools {
        claims
            .entry((p.listen, p.host.as_deref(), p.route.as_str()))
            .or_default()
            .push(p);
    }
    let mut by_listener: BTreeMap<Option<u16>, Routes> = BTreeMap::new();
    let mut tls: BTreeMap<u16, bool> = BTreeMap::new();
    let mut draws = 0;
    for ((listen, host, prefix), pools) in claims {
        if let Some(port) = listen {
            let t = tls.entry(port).or_default();
            *t |= pools.iter().any(|p| p.tls);
        }
        let owners = owners(&pools, listen, host, prefix, conflicts);
        let routes = by_listener.entry(listen).or_default();
        let shares: Vec<(&Pool, u32)> = match owners.as_slice() {
            [one] => vec![(one, 0)],
            _ => owners
                .iter()
                .map(|p| (*p, p.route_weight.unwrap_or(0)))
                .collect(),
        };
        let total: u32 = shares.iter().map(|(_, w)| w).sum();
        if shares.len() == 1 {
            let pool = shares[0].0.name.clone();
            if host.is_none() && prefix == "/" {
                routes.default_pool = Some(pool);
            } else {
                routes.routes.push(Route {
                    prefix: prefix.to_string(),
                    pool,
                    host: host.map(str::to_string),
                    draw: None,
                });
            }
            continue;
        }
        // A split: one draw of rand(total) per request; each pool takes its range. All
        // weights 0 splits evenly (nothing would serve the route otherwise).
        draws += 1;
        let var = format!("txn.draw{draws}");
        let even = total == 0;
        let total = if even { shares.len() as u32 } else { total };
        routes.draws.push(Draw {
            var: var.clone(),
            total,
        });
        let mut lo = 0;
        for (p, w) in shares {
            let w = if even { 1 } else { w };
            if w == 0 {
                continue;
            }
            routes.routes.push(Route {
                prefix: prefix.to_string(),
                pool: p.name.clone(),
                host: host.map(str::to_string),
                draw: Some(DrawRange {
                    var: var.clone(),
                    lo,
                    hi: lo + w,
                }),
            });
            lo += w;
        }
    }
    for r in by_listener.values_mut() {
        // Host rules first, then the longest prefix; a split keeps its ranges in order.
        r.routes.sort_by(|a, b| {
            (
                a.host.is_none(),
                std::cmp::Reverse(a.prefix.len()),
                &a.prefix,
                &a.host,
            )
                .cmp(&(
                    b.host.is_none(),
                    std::cmp::Reverse(b.prefix.len()),
                    &b.prefix,
                    &b.host,
                ))
                .then(
                    a.draw
                        .as_ref()
                        .map(|d| d.lo)
                        .cmp(&b.draw.as_ref().map(|d| d.lo)),
                )
        });
    }
    let main = by_listener.remove(&None).unwrap_or_default();
    let listeners = by_listener
        .into_iter()
        .filter_map(|(port, r)| {
            let port = port?;
            Some(Listener {
                name: format!("listen-{port}"),
                port,
                tls: tls.get(&port).copied().unwrap_or(false),
                routes: r.routes,
                draws: r.draws,
                default_pool: r.default_pool,
            })
        })
        .collect();
    Routing { main, listeners }
}

/// Who serves one route, in name order; the members of the others are reported.
fn owners<'a>(
    pools: &[&'a Pool],
    listen: Option<u16>,
    host: Option<&str>,
    prefix: &str,
    conflicts: &mut Vec<Conflict>,
) -> Vec<&'a Pool> {
    let weighted: Vec<&Pool> = pools
        .iter()
        .copied()
        .filter(|p| p.route_weight.is_some())
        .collect();
    let owners: Vec<&Pool> = if weighted.is_empty() {
        // Pools are in name order; max_by_key keeps the last maximum, so search reversed.
        pools
            .iter()
            .rev()
            .max_by_key(|p| p.servers.len())
            .map(|p| vec![*p])
            .unwrap_or_default()
    } else {
        weighted
    };
    let what = route_name(listen, host, prefix);
    let held_by = match owners.as_slice() {
        [one] => format!(
            "pool {} ({} servers) serves it",
            one.name,
            one.servers.len()
        ),
        _ => format!(
            "pools {} split it by route_weight",
            owners
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    for p in pools
        .iter()
        .filter(|p| !owners.iter().any(|o| o.name == p.name))
    {
        for s in &p.servers {
            conflicts.push(Conflict {
                pool: p.name.clone(),
                member: s.name.clone(),
                setting: "route".into(),
                value: what.clone(),
                used: format!(
                    "{held_by}; pool {} ({}) gets no route",
                    p.name,
                    p.servers.len()
                ),
            });
        }
    }
    owners
}

/// A route in words: `/api`, `api.example.com/api`, `/api on listener 8100`.
pub fn route_name(listen: Option<u16>, host: Option<&str>, prefix: &str) -> String {
    let mut s = format!("{}{prefix}", host.unwrap_or(""));
    if let Some(port) = listen {
        s.push_str(&format!(" on listener {port}"));
    }
    s
}
