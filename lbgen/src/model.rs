//! The members document → load-balancer model.
//!
//! Pure code, no I/O. Everything that comes from the network (member names, addresses, tag
//! values) is validated here, so the template only ever sees values that cannot inject HAProxy
//! configuration. A member that fails validation is skipped (and reported in
//! [`Model::rejected`]); the rest still render.
//!
//! Determinism: pools are sorted by name, servers by name, routes by descending prefix length,
//! so identical membership always gives byte-identical output.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::pool_tags::{self, q, ListenPolicy};
use serde::Serialize;
use shoal_contract::tags::{self, state};
pub use shoal_contract::{Member, MembersDoc, Status};

/// Whether a server takes new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// alive and `state` tag absent or `ready`.
    Ready,
    /// alive with `state=draining`, or `suspect`: no new requests, existing ones finish.
    Drain,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Server {
    /// The member name; HAProxy's server name inside the backend.
    pub name: String,
    pub ip: IpAddr,
    pub port: u16,
    /// `ip:port`, with brackets for IPv6, ready to put on a `server` line.
    pub addr: String,
    pub weight: u16,
    pub state: ServerState,
    /// `state == Drain`, for templates (`{{#if drain}}`).
    pub drain: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pool {
    /// The `service` tag; also the HAProxy backend name.
    pub name: String,
    /// Path prefix routed to this pool (`/` = default backend).
    pub route: String,
    /// HTTP health-check path.
    pub check: String,
    pub sticky: bool,
    pub balance: String,
    /// HAProxy `slowstart` of the pool's servers (`30s`, `1500ms`), from the `slowstart` tag.
    pub slowstart: Option<String>,
    /// Host rule (`host` tag), lower-case; None = any host.
    pub host: Option<String>,
    /// The extra listener the pool is routed on (`listen` tag); None = the main one.
    pub listen: Option<u16>,
    /// `listen=PORT/tls`: that listener is asked to terminate TLS.
    pub tls: bool,
    /// Health checks go to this port instead of the server's (`check_port`).
    pub check_port: Option<u16>,
    /// Health-check interval as an HAProxy time (`check_inter`); None = `vars.check_inter`.
    pub check_inter: Option<String>,
    pub check_rise: u32,
    pub check_fall: u32,
    /// `timeout check` of the backend (`check_timeout`); None = HAProxy's (the interval).
    pub check_timeout: Option<String>,
    /// `http-check expect status` (`check_status`, default `200-399`).
    pub check_status: String,
    /// `sticky=1d`: the cookie's `maxlife`; None with plain `sticky=true`.
    pub sticky_maxlife: Option<String>,
    /// Share of a route split with other pools (`route_weight`); None = not split.
    pub route_weight: Option<u32>,
    /// `timeout server` of the backend (`timeout_server`); None = the defaults' one.
    pub timeout_server: Option<String>,
    /// The `https_redirect` tag: plain-HTTP requests to this pool go to HTTPS.
    pub https_redirect: bool,
    /// Servers: alive members. Empty when every member failed, left or is not ready: the
    /// pool (and its route, answering 503) stays while any member declares it.
    pub servers: Vec<Server>,
}

/// A route of a listener; the frontend tests them in this order (host rules first, then
/// the longest prefix).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// Path prefix; `/` only with a host or a weighted split (else it is the default pool).
    pub prefix: String,
    pub pool: String,
    /// Only requests for this host (lower-case DNS name); None = any.
    pub host: Option<String>,
    /// A weighted split: this pool takes the requests whose draw is in `lo..hi`.
    pub draw: Option<DrawRange>,
}

/// One pool's part of a weighted route: `var` holds `rand(total)` for each request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrawRange {
    /// HAProxy variable name (`txn.draw1`).
    pub var: String,
    pub lo: u32,
    pub hi: u32,
}

/// A random draw per request, for one weighted route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Draw {
    pub var: String,
    pub total: u32,
}

/// An extra listener (`listen` tags): its own frontend, routes and default pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listener {
    /// Frontend name, `listen-PORT`.
    pub name: String,
    pub port: u16,
    /// A pool asked for `listen=PORT/tls`: the TLS settings put `ssl` on its bind line.
    pub tls: bool,
    pub routes: Vec<Route>,
    pub draws: Vec<Draw>,
    /// The pool at `/` of this listener; None = the 503 `no-backend`.
    pub default_pool: Option<String>,
}

/// A member whose pool-wide setting (or whose pool's route) lost the vote described at
/// [`Model::build`]. It stays a server of its pool, served with the pool's settings; its own
/// value reconfigures nothing and is reported instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub pool: String,
    pub member: String,
    /// `route`, `check`, `sticky` or `balance`.
    pub setting: String,
    /// The member's value (validated, so safe to print).
    pub value: String,
    /// What is used instead, in words (the pool's value, or who serves the route).
    pub used: String,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "member {} of pool {}: {} {:?} not used; {}",
            self.member, self.pool, self.setting, self.value, self.used
        )
    }
}

/// A member that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub member: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Model {
    pub pools: Vec<Pool>,
    /// Non-`/` routes, longest prefix first.
    pub routes: Vec<Route>,
    /// The pool that serves `/` (the default backend), if any.
    pub default_pool: Option<String>,
    /// Random draws of the main listener's weighted routes.
    pub draws: Vec<Draw>,
    /// Extra listeners, by port.
    pub listeners: Vec<Listener>,
    /// Some extra listener has no default pool: the template's 503 `no-backend` is needed
    /// even when the main listener has one.
    pub listener_without_default: bool,
    /// Every member with a valid name and address, backend or not (for templates other than
    /// HAProxy's: Prometheus targets, keepalived peers).
    pub members: Vec<crate::nodes::Node>,
    /// The `/metrics` endpoints alive members advertise in `metrics_*` tags.
    pub scrape_targets: Vec<crate::nodes::ScrapeTarget>,
    /// The VIP group (`role=lb` members) for keepalived's template ([`Model::with_local`]).
    pub lbs: Vec<crate::nodes::LbPeer>,
    /// This node, set only by [`Model::with_local`]: the HAProxy config is rendered without
    /// it, so every LB renders the same bytes from the same membership.
    pub local: Option<crate::nodes::Local>,
    /// Members skipped by validation (logged by the caller).
    #[serde(skip)]
    pub rejected: Vec<Rejection>,
    /// Members outvoted on a pool-wide setting or route (logged by the caller, shown by
    /// `lbgen status`).
    #[serde(skip)]
    pub conflicts: Vec<Conflict>,
}

pub const DEFAULT_WEIGHT: u16 = 100;
pub const MAX_WEIGHT: u16 = 256;
const MAX_NAME_LEN: usize = 64;
const MAX_PATH_LEN: usize = 200;
/// Section names the default template uses itself; a pool may not shadow them.
/// `no-backend` answers 503 to requests that no route matches when no pool serves `/`;
/// `listen-*` names the extra listeners' frontends; `acme-challenge` sends the CA's HTTP-01
/// requests to `lbgen acme`.
pub const RESERVED_POOLS: &[&str] = &["http-in", "stats", "no-backend", "acme-challenge"];
pub const BALANCES: &[&str] = &["roundrobin", "leastconn", "source", "first", "random"];

/// Names (members, services): ASCII letters, digits, `.`, `_`, `-`; 1–64 chars; no leading
/// `.`/`-`. HAProxy identifiers allow these and they cannot break a config line.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && !s.starts_with(['.', '-'])
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// URL paths (routes, health checks): start with `/`, then letters, digits and `/ . _ ~ -`
/// (plus `? = & %` for checks). No spaces, quotes, `#`, backslashes or control characters.
fn valid_path(s: &str, allow_query: bool) -> bool {
    s.starts_with('/')
        && s.len() <= MAX_PATH_LEN
        && !s.contains("//")
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'/' | b'.' | b'_' | b'~' | b'-')
                || (allow_query && matches!(b, b'?' | b'=' | b'&' | b'%'))
        })
}

/// Per-member settings before grouping.
struct Backend {
    service: String,
    route: String,
    check: String,
    /// `false`, `true` or the lifetime (`1d`).
    sticky: String,
    balance: String,
    /// HAProxy time, validated; "" = none.
    slowstart: String,
    /// The routing and check tags, each as the text the vote compares ("" = not set).
    host: String,
    listen: String,
    check_port: String,
    check_inter: String,
    check_rise: String,
    check_fall: String,
    check_timeout: String,
    check_status: String,
    route_weight: String,
    timeout_server: String,
    https_redirect: bool,
    /// None: the member declares the pool but is not a server (failed, left, starting,
    /// unhealthy), so the pool and its route stay, answering 503 when no server is left.
    server: Option<Server>,
}

/// What a member's tags set, in the vote's terms; "" where the tag is absent.
fn opt_tag<T>(
    m: &Member,
    tag: &str,
    parse: impl Fn(&str) -> Result<T, String>,
    show: impl Fn(T) -> String,
) -> Result<String, String> {
    match m.tags.get(tag) {
        None => Ok(String::new()),
        Some(v) => parse(v).map(show),
    }
}

/// Validates one member. `Ok(None)` = not a backend (no `service` tag, or a member that is
/// not a server and whose tags do not validate: a dead member is not reported).
fn backend_of(m: &Member, policy: &ListenPolicy) -> Result<Option<Backend>, String> {
    if !valid_name(&m.name) {
        return Err("name must be 1-64 of [A-Za-z0-9._-]".into());
    }
    let Some(service) = m.tags.get(tags::SERVICE) else {
        return Ok(None);
    };
    let serving = matches!(m.status, Status::Alive | Status::Suspect)
        && !matches!(
            m.tags.get(tags::STATE).map(String::as_str),
            Some(state::STARTING) | Some(state::UNHEALTHY)
        );
    match validate(m, service, policy) {
        Ok(mut b) => {
            if !serving {
                b.server = None;
            }
            Ok(Some(b))
        }
        Err(_) if !serving => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every tag of a backend member; `server` is set as if it serves.
fn validate(m: &Member, service: &str, policy: &ListenPolicy) -> Result<Backend, String> {
    let alive_state = match m.status {
        Status::Suspect => ServerState::Drain,
        _ => ServerState::Ready,
    };
    if !valid_name(service) {
        return Err(format!(
            "tag service={} must be 1-64 of [A-Za-z0-9._-]",
            q(service)
        ));
    }
    if RESERVED_POOLS.contains(&service) || service.starts_with("listen-") {
        return Err(format!(
            "tag service={} is reserved (the default template's own sections)",
            q(service)
        ));
    }
    if let Some((_, scope)) = m.addr.split_once('%') {
        // HAProxy 2.6 refuses every scoped form on a server line ("could not resolve
        // address"), and the scope names an interface of the member's host, not the LB's:
        // dropping it would render an address that cannot be reached.
        let scope = scope.split(']').next().unwrap_or_default();
        return Err(format!(
            "addr {} carries an IPv6 scope id (%{}), which an HAProxy server address cannot; advertise a global or unique-local address",
            q(&m.addr),
            sanitize_for_log(scope)
        ));
    }
    let sa: SocketAddr = m
        .addr
        .parse()
        .map_err(|_| format!("addr {} is not IP:PORT", q(&m.addr)))?;
    let ip = sa.ip();
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(format!("addr {} is not a usable host address", q(&m.addr)));
    }
    let port = match m.tags.get(tags::PORT) {
        None => return Err("tag port is missing".into()),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("tag port={} must be 1-65535", q(p))),
        },
    };
    let weight = match m.tags.get(tags::WEIGHT) {
        None => DEFAULT_WEIGHT,
        Some(w) => match w.parse::<u16>() {
            Ok(n) if n <= MAX_WEIGHT && w.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("tag weight={} must be 0-{MAX_WEIGHT}", q(w))),
        },
    };
    let route = match m.tags.get(tags::ROUTE) {
        None => "/".to_string(),
        Some(r) => {
            if !valid_path(r, false) {
                return Err(format!(
                    "tag route={} must be a path of [A-Za-z0-9/._~-] starting with /",
                    q(r)
                ));
            }
            // `/api/v2/` and `/api/v2` are the same prefix.
            let t = r.trim_end_matches('/');
            if t.is_empty() { "/" } else { t }.to_string()
        }
    };
    let check = match m.tags.get(tags::CHECK) {
        None => "/".to_string(),
        Some(c) if valid_path(c, true) => c.clone(),
        Some(c) => {
            return Err(format!(
                "tag check={} must be a path of [A-Za-z0-9/._~?=&%-] starting with /",
                q(c)
            ))
        }
    };
    // "false", "true" or the lifetime as an HAProxy time.
    let sticky = match m.tags.get(tags::STICKY) {
        None => "false".to_string(),
        Some(v) => match pool_tags::sticky(v)? {
            (false, _) => "false".to_string(),
            (true, None) => "true".to_string(),
            (true, Some(life)) => life,
        },
    };
    let host = opt_tag(m, tags::HOST, pool_tags::host, |h| h)?;
    let listen = opt_tag(m, tags::LISTEN, |v| policy.listen(v), |l| l.to_string())?;
    let port_of = |v: &str| pool_tags::number_tag(tags::CHECK_PORT, v, 1, 65535);
    let check_port = opt_tag(m, tags::CHECK_PORT, port_of, |n| n.to_string())?;
    let check_time = |tag: &'static str| {
        move |v: &str| {
            pool_tags::time_tag(tag, v, pool_tags::CHECK_TIME_MIN, pool_tags::CHECK_TIME_MAX)
        }
    };
    let check_inter = opt_tag(m, tags::CHECK_INTER, check_time(tags::CHECK_INTER), |t| t)?;
    let check_timeout = opt_tag(
        m,
        tags::CHECK_TIMEOUT,
        check_time(tags::CHECK_TIMEOUT),
        |t| t,
    )?;
    let rise_fall = |tag: &'static str| {
        move |v: &str| pool_tags::number_tag(tag, v, 1, pool_tags::MAX_RISE_FALL)
    };
    let check_rise = opt_tag(m, tags::CHECK_RISE, rise_fall(tags::CHECK_RISE), |n| {
        n.to_string()
    })?;
    let check_fall = opt_tag(m, tags::CHECK_FALL, rise_fall(tags::CHECK_FALL), |n| {
        n.to_string()
    })?;
    let check_status = opt_tag(m, tags::CHECK_STATUS, pool_tags::check_status, |s| s)?;
    let route_weight = opt_tag(
        m,
        tags::ROUTE_WEIGHT,
        |v| pool_tags::number_tag(tags::ROUTE_WEIGHT, v, 0, pool_tags::MAX_ROUTE_WEIGHT),
        |n| n.to_string(),
    )?;
    let timeout_server = opt_tag(
        m,
        tags::TIMEOUT_SERVER,
        |v| {
            pool_tags::time_tag(
                tags::TIMEOUT_SERVER,
                v,
                pool_tags::TIMEOUT_SERVER_MIN,
                pool_tags::TIMEOUT_SERVER_MAX,
            )
        },
        |t| t,
    )?;
    let balance = match m.tags.get(tags::BALANCE) {
        None => "roundrobin".to_string(),
        Some(b) if BALANCES.contains(&b.as_str()) => b.clone(),
        Some(b) => return Err(format!("tag balance={} must be one of {BALANCES:?}", q(b))),
    };
    let slowstart = match m.tags.get(tags::SLOWSTART) {
        None => String::new(),
        Some(v) => slowstart_of(v)?,
    };
    let https_redirect = match m.tags.get(tags::HTTPS_REDIRECT).map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(s) => return Err(format!("tag https_redirect={} must be true or false", q(s))),
    };
    let state = match m.tags.get(tags::STATE).map(String::as_str) {
        None | Some(state::READY) => alive_state,
        Some(state::DRAINING) => ServerState::Drain,
        // The supervisor's other health states: not (or no longer) serving, so not a
        // server (see `backend_of`); normal life-cycle states, not rejections.
        Some(state::STARTING) | Some(state::UNHEALTHY) => alive_state,
        Some(s) => return Err(format!("tag state={} must be ready or draining", q(s))),
    };
    let addr = match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    };
    Ok(Backend {
        service: service.to_string(),
        route,
        check,
        sticky,
        balance,
        slowstart,
        host,
        listen,
        check_port,
        check_inter,
        check_rise,
        check_fall,
        check_timeout,
        check_status,
        route_weight,
        timeout_server,
        https_redirect,
        server: Some(Server {
            name: m.name.clone(),
            ip,
            port,
            addr,
            weight,
            state,
            drain: state == ServerState::Drain,
        }),
    })
}

/// The longest slow start a tag may ask for.
pub const MAX_SLOWSTART: std::time::Duration = std::time::Duration::from_secs(3600);

/// `slowstart=` (the contract's duration syntax, 1 ms to [`MAX_SLOWSTART`]) → HAProxy time:
/// whole seconds as `30s`, anything else in milliseconds (`1500ms`).
fn slowstart_of(v: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "tag slowstart={} must be a duration from 1ms to {}s (e.g. 30s)",
            q(v),
            MAX_SLOWSTART.as_secs()
        )
    };
    let d = shoal_contract::parse_duration(v).map_err(|_| bad())?;
    let ms = d.as_millis();
    if ms == 0 || d > MAX_SLOWSTART || d.subsec_nanos() % 1_000_000 != 0 {
        return Err(bad());
    }
    Ok(if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    })
}

/// The pool-wide value of one setting: the value held by most members; a tie goes to the
/// value of the member whose name sorts first. `held` is (member, value) in member-name order.
/// Returns the value and how many members hold it.
fn vote(held: &[(&str, String)]) -> (String, usize) {
    // value → (members holding it, position of its first holder)
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (i, (_, v)) in held.iter().enumerate() {
        counts.entry(v.as_str()).or_insert((0, i)).0 += 1;
    }
    let (value, (n, _)) = counts
        .into_iter()
        .max_by(|a, b| {
            (a.1 .0, std::cmp::Reverse(a.1 .1)).cmp(&(b.1 .0, std::cmp::Reverse(b.1 .1)))
        })
        .unwrap_or(("", (0, 0)));
    (value.to_string(), n)
}

impl Model {
    /// The model as node `local` sees it: `local` set and its own entry marked in `lbs`
    /// (kept there while it leaves). For per-node files only (`--render`), never HAProxy's.
    pub fn with_local(mut self, doc: &MembersDoc, local: Option<&str>) -> Model {
        if let Some(name) = local {
            self.lbs = crate::nodes::lb_peers(doc, &self.members, Some(name));
            self.local = crate::nodes::local_of(doc, &self.members, &self.lbs, name);
        }
        self
    }

    /// Builds the model with the default [`ListenPolicy`] (what `--var` does not change).
    pub fn build(doc: &MembersDoc) -> Model {
        Model::build_with(doc, &ListenPolicy::default())
    }

    /// Builds the model. Never fails: bad members are skipped and listed in `rejected`.
    pub fn build_with(doc: &MembersDoc, policy: &ListenPolicy) -> Model {
        let mut model = Model::default();
        let mut by_pool: BTreeMap<String, Vec<Backend>> = BTreeMap::new();
        let mut seen_names: BTreeMap<&str, ()> = BTreeMap::new();
        let mut members: Vec<&Member> = doc.members.iter().collect();
        // Sort so that duplicate handling and everything after it is order-independent.
        members.sort_by(|a, b| {
            (&a.name, &a.addr, a.status.as_str(), &a.tags).cmp(&(
                &b.name,
                &b.addr,
                b.status.as_str(),
                &b.tags,
            ))
        });
        for m in members {
            match backend_of(m, policy) {
                Ok(None) => {}
                Ok(Some(b)) => {
                    if b.server.is_some() && seen_names.insert(&m.name, ()).is_some() {
                        model.rejected.push(Rejection {
                            member: m.name.clone(),
                            reason: "duplicate member name".into(),
                        });
                        continue;
                    }
                    by_pool.entry(b.service.clone()).or_default().push(b);
                }
                Err(reason) => model.rejected.push(Rejection {
                    member: sanitize_for_log(&m.name),
                    reason,
                }),
            }
        }
        // A status this lbgen does not know (a newer agent): not a backend, reported.
        let mut unrecognised: Vec<_> = doc.unrecognised.iter().collect();
        unrecognised.sort_by(|a, b| (&a.name, &a.status).cmp(&(&b.name, &b.status)));
        for u in unrecognised {
            let reason = if valid_name(&u.name) {
                format!("unknown status {}", q(&u.status))
            } else {
                "name must be 1-64 of [A-Za-z0-9._-]".into()
            };
            model.rejected.push(Rejection {
                member: sanitize_for_log(&u.name),
                reason,
            });
        }
        for (name, backends) in by_pool {
            // The members that serve vote on the pool's settings; a pool with none keeps
            // the settings its other members (failed, left, not ready) declare.
            let (serving, declaring): (Vec<Backend>, Vec<Backend>) =
                backends.into_iter().partition(|b| b.server.is_some());
            let report = !serving.is_empty();
            let voters = if report { serving } else { declaring };
            let total = voters.len();
            let mut pick = |setting: &str, of: fn(&Backend) -> String| {
                let held: Vec<(&str, String)> = voters
                    .iter()
                    .map(|b| (b.server.as_ref().map_or("", |s| s.name.as_str()), of(b)))
                    .collect();
                let (value, n) = vote(&held);
                for (member, v) in held.iter().filter(|(_, v)| *v != value && report) {
                    model.conflicts.push(Conflict {
                        pool: name.clone(),
                        member: member.to_string(),
                        setting: setting.to_string(),
                        value: v.clone(),
                        used: format!("the pool's {setting} is {value:?} (held by {n} of {total})"),
                    });
                }
                value
            };
            let route = pick("route", |b| b.route.clone());
            let check = pick("check", |b| b.check.clone());
            let sticky = pick("sticky", |b| b.sticky.clone());
            let balance = pick("balance", |b| b.balance.clone());
            let slowstart = pick("slowstart", |b| b.slowstart.clone());
            let host = pick("host", |b| b.host.clone());
            let listen = pick("listen", |b| b.listen.clone());
            let check_port = pick("check_port", |b| b.check_port.clone());
            let check_inter = pick("check_inter", |b| b.check_inter.clone());
            let check_rise = pick("check_rise", |b| b.check_rise.clone());
            let check_fall = pick("check_fall", |b| b.check_fall.clone());
            let check_timeout = pick("check_timeout", |b| b.check_timeout.clone());
            let check_status = pick("check_status", |b| b.check_status.clone());
            let route_weight = pick("route_weight", |b| b.route_weight.clone());
            let timeout_server = pick("timeout_server", |b| b.timeout_server.clone());
            let https_redirect = pick("https_redirect", |b| b.https_redirect.to_string()) == "true";
            let mut servers: Vec<Server> = voters.into_iter().filter_map(|b| b.server).collect();
            servers.sort_by(|a, b| a.name.cmp(&b.name));
            let some = |v: String| (!v.is_empty()).then_some(v);
            // Every value was validated by `validate`: these parses cannot fail.
            let listen_of = some(listen).and_then(|l| policy.listen(&l).ok());
            model.pools.push(Pool {
                name,
                route,
                check,
                sticky: sticky != "false",
                sticky_maxlife: (sticky != "false" && sticky != "true").then_some(sticky),
                balance,
                slowstart: some(slowstart),
                host: some(host),
                listen: listen_of.map(|l| l.port),
                tls: listen_of.is_some_and(|l| l.tls),
                check_port: check_port.parse().ok(),
                check_inter: some(check_inter),
                check_rise: check_rise.parse().unwrap_or(2),
                check_fall: check_fall.parse().unwrap_or(3),
                check_timeout: some(check_timeout),
                check_status: some(check_status).unwrap_or_else(|| "200-399".into()),
                route_weight: route_weight.parse().ok(),
                timeout_server: some(timeout_server),
                https_redirect,
                servers,
            });
        }
        model.members = crate::nodes::nodes_of(doc);
        model.scrape_targets = crate::nodes::scrape_targets(doc, &model.members);
        let routing = crate::routes::assign(&model.pools, &mut model.conflicts);
        model.routes = routing.main.routes;
        model.draws = routing.main.draws;
        model.default_pool = routing.main.default_pool;
        model.listener_without_default = routing.listeners.iter().any(|l| l.default_pool.is_none());
        model.listeners = routing.listeners;
        model.lbs = crate::nodes::lb_peers(doc, &model.members, None);
        model
    }

    /// Whether `pool` serves a route or is a listener's default pool (else another pool won
    /// its route).
    pub fn is_routed(&self, pool: &str) -> bool {
        self.is_default(pool)
            || self
                .routes
                .iter()
                .chain(self.listeners.iter().flat_map(|l| &l.routes))
                .any(|r| r.pool == pool)
    }

    /// Whether `pool` serves what no route of its listener matches.
    pub fn is_default(&self, pool: &str) -> bool {
        self.default_pool.as_deref() == Some(pool)
            || self
                .listeners
                .iter()
                .any(|l| l.default_pool.as_deref() == Some(pool))
    }

    /// Looks up a server by pool and name.
    pub fn server(&self, pool: &str, server: &str) -> Option<(&Pool, &Server)> {
        let p = self.pools.iter().find(|p| p.name == pool)?;
        let s = p.servers.iter().find(|s| s.name == server)?;
        Some((p, s))
    }

    /// The member `name` is `failed` (the gossip layer could not reach it, directly or
    /// through others): its host is likely gone, with the connections HAProxy holds to it.
    pub fn is_failed(&self, name: &str) -> bool {
        self.members
            .iter()
            .any(|n| n.name == name && n.status == Status::Failed.as_str())
    }
}

/// Makes a network-supplied string safe to print in one log line.
pub fn sanitize_for_log(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(80)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > 80 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, addr: &str, status: &str, tags: &[(&str, &str)]) -> Member {
        Member {
            name: name.into(),
            addr: addr.into(),
            status: status.parse().expect("a status"),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn doc(members: Vec<Member>) -> MembersDoc {
        MembersDoc::list(members)
    }

    fn web(name: &str, ip: &str) -> Member {
        member(
            name,
            &format!("{ip}:7946"),
            "alive",
            &[("service", "web"), ("port", "3000")],
        )
    }

    #[test]
    fn parses_the_contract_document() {
        let d = MembersDoc::from_json(
            r#"{"members":[{"name":"web-1","addr":"172.20.0.5:7946","status":"alive","tags":{"service":"web","port":"3000"}}]}"#,
        )
        .unwrap();
        let m = Model::build(&d);
        assert_eq!(m.pools.len(), 1);
        let s = &m.pools[0].servers[0];
        assert_eq!(s.addr, "172.20.0.5:3000");
        assert_eq!(s.weight, DEFAULT_WEIGHT);
        assert_eq!(s.state, ServerState::Ready);
        assert_eq!(m.default_pool.as_deref(), Some("web"));
        assert_eq!(m.pools[0].check, "/");
    }

    #[test]
    fn members_without_service_tag_are_not_backends() {
        let m = Model::build(&doc(vec![member("lb", "10.0.0.1:7946", "alive", &[])]));
        assert!(m.pools.is_empty());
        assert!(m.rejected.is_empty());
    }

    #[test]
    fn status_and_state_tag_decide_server_state() {
        let mut d = vec![
            web("a", "10.0.0.1"),
            web("b", "10.0.0.2"),
            web("c", "10.0.0.3"),
            web("d", "10.0.0.4"),
            web("e", "10.0.0.5"),
        ];
        d[1].tags.insert("state".into(), "draining".into());
        d[2].status = Status::Suspect;
        d[3].status = Status::Failed;
        d[4].status = Status::Left;
        let m = Model::build(&doc(d));
        let states: Vec<_> = m.pools[0]
            .servers
            .iter()
            .map(|s| (s.name.as_str(), s.state))
            .collect();
        assert_eq!(
            states,
            vec![
                ("a", ServerState::Ready),
                ("b", ServerState::Drain),
                ("c", ServerState::Drain)
            ]
        );
    }

    #[test]
    fn starting_and_unhealthy_members_are_quietly_not_servers() {
        let mut d = vec![
            web("a", "10.0.0.1"),
            web("b", "10.0.0.2"),
            web("c", "10.0.0.3"),
        ];
        d[1].tags.insert("state".into(), "starting".into());
        d[2].tags.insert("state".into(), "unhealthy".into());
        let m = Model::build(&doc(d));
        let names: Vec<_> = m.pools[0].servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["a"]);
        assert!(m.rejected.is_empty(), "{:?}", m.rejected);
    }

    #[test]
    fn order_of_members_does_not_change_the_model() {
        let a = vec![
            web("w2", "10.0.0.2"),
            member(
                "api1",
                "10.0.1.1:7946",
                "alive",
                &[("service", "api"), ("port", "80"), ("route", "/api")],
            ),
            web("w1", "10.0.0.1"),
        ];
        let mut b = a.clone();
        b.reverse();
        assert_eq!(Model::build(&doc(a)), Model::build(&doc(b)));
    }

    #[test]
    fn routes_are_longest_prefix_first_and_trailing_slash_is_ignored() {
        let m = Model::build(&doc(vec![
            member(
                "a",
                "10.0.0.1:1",
                "alive",
                &[("service", "api"), ("port", "80"), ("route", "/api")],
            ),
            member(
                "b",
                "10.0.0.2:1",
                "alive",
                &[("service", "api2"), ("port", "80"), ("route", "/api/v2/")],
            ),
            web("c", "10.0.0.3"),
        ]));
        let r: Vec<_> = m.routes.iter().map(|r| r.prefix.as_str()).collect();
        assert_eq!(r, vec!["/api/v2", "/api"]);
        assert_eq!(m.default_pool.as_deref(), Some("web"));
    }

    #[test]
    fn injection_attempts_are_rejected_and_the_rest_still_render() {
        let bad: Vec<Member> = vec![
            member(
                "evil\nbind :1",
                "10.0.0.9:1",
                "alive",
                &[("service", "web"), ("port", "80")],
            ),
            member(
                "x1",
                "10.0.0.9:1",
                "alive",
                &[("service", "web x"), ("port", "80")],
            ),
            member(
                "x2",
                "10.0.0.9:1",
                "alive",
                &[("service", "web#"), ("port", "80")],
            ),
            member(
                "x3",
                "10.0.0.9 1:1",
                "alive",
                &[("service", "web"), ("port", "80")],
            ),
            member(
                "x4",
                "10.0.0.9:1",
                "alive",
                &[("service", "web"), ("port", "80 check")],
            ),
            member(
                "x5",
                "10.0.0.9:1",
                "alive",
                &[("service", "web"), ("port", "0")],
            ),
            member(
                "x6",
                "10.0.0.9:1",
                "alive",
                &[("service", "web"), ("port", "70000")],
            ),
            member(
                "x7",
                "10.0.0.9:1",
                "alive",
                &[("service", "web"), ("port", "+80")],
            ),
            member(
                "x8",
                "10.0.0.9:1",
                "alive",
                &[("service", "web"), ("port", "80"), ("check", "/h\"ealth")],
            ),
            member(
                "x9",
                "10.0.0.9:1",
                "alive",
                &[("service", "web"), ("port", "80"), ("route", "/a b")],
            ),
            member(
                "x10",
                "10.0.0.9:1",
                "alive",
                &[("service", "web"), ("port", "80"), ("weight", "257")],
            ),
            member(
                "x11",
                "10.0.0.9:1",
                "alive",
                &[("service", "web"), ("port", "80"), ("sticky", "yes")],
            ),
            member(
                "x12",
                "10.0.0.9:1",
                "alive",
                &[
                    ("service", "web"),
                    ("port", "80"),
                    ("check", "/x\nserver y 1.2.3.4:1"),
                ],
            ),
            member(
                "x13",
                "0.0.0.0:1",
                "alive",
                &[("service", "web"), ("port", "80")],
            ),
            member(
                "x14",
                "host.example:1",
                "alive",
                &[("service", "web"), ("port", "80")],
            ),
            member("x15", "10.0.0.9:1", "alive", &[("service", "web")]),
            member(
                "x16",
                "10.0.0.9:1",
                "alive",
                &[
                    ("service", "web"),
                    ("port", "80"),
                    ("balance", "roundrobin\n"),
                ],
            ),
            member(
                "x17",
                "10.0.0.9:1",
                "alive",
                &[("service", "web"), ("port", "80"), ("state", "maint'")],
            ),
            member(
                "-x19",
                "10.0.0.9:1",
                "alive",
                &[("service", "web"), ("port", "80")],
            ),
            member(
                "x20",
                "10.0.0.9:1",
                "alive",
                &[("service", "web"), ("port", "80"), ("route", "api")],
            ),
        ];
        // A status outside the four cannot be a `Member`: the parser sets it aside.
        let zombie = MembersDoc::from_json(
            r#"{"members":[{"name":"x18","addr":"10.0.0.9:1","status":"zombie","tags":{"service":"web","port":"80"}}]}"#,
        )
        .unwrap();
        let n_bad = bad.len() + zombie.unrecognised.len();
        let mut all = bad;
        all.push(web("good", "10.0.0.1"));
        let mut d = doc(all);
        d.unrecognised = zombie.unrecognised;
        let m = Model::build(&d);
        assert_eq!(m.rejected.len(), n_bad, "{:#?}", m.rejected);
        assert!(m
            .rejected
            .iter()
            .any(|r| r.member == "x18" && r.reason == "unknown status \"zombie\""));
        assert_eq!(m.pools.len(), 1);
        assert_eq!(m.pools[0].servers.len(), 1);
        assert_eq!(m.pools[0].servers[0].name, "good");
        // Rejections are printable on one line.
        for r in &m.rejected {
            assert!(!r.member.contains('\n'));
        }
    }

    #[test]
    fn ipv6_addresses_get_brackets() {
        let m = Model::build(&doc(vec![web("v6", "[fd00::5]")]));
        assert_eq!(m.pools[0].servers[0].addr, "[fd00::5]:3000");
    }

    #[test]
    fn duplicate_member_names_keep_one() {
        let m = Model::build(&doc(vec![web("w", "10.0.0.1"), web("w", "10.0.0.2")]));
        assert_eq!(m.pools[0].servers.len(), 1);
        assert_eq!(m.pools[0].servers[0].addr, "10.0.0.1:3000");
        assert_eq!(m.rejected.len(), 1);
    }

    #[test]
    fn pool_settings_follow_the_majority_and_warn() {
        let mut a = web("a", "10.0.0.1");
        let mut b = web("b", "10.0.0.2");
        let mut c = web("c", "10.0.0.3");
        a.tags.insert("check".into(), "/health".into());
        b.tags.insert("check".into(), "/health".into());
        c.tags.insert("check".into(), "/other".into());
        a.tags.insert("sticky".into(), "true".into());
        b.tags.insert("sticky".into(), "true".into());
        let m = Model::build(&doc(vec![a, b, c]));
        assert_eq!(m.pools[0].check, "/health");
        assert!(m.pools[0].sticky);
        // c is outvoted on check and sticky: reported, still a server of the pool.
        let c: Vec<_> = m
            .conflicts
            .iter()
            .map(|c| (c.member.as_str(), c.setting.as_str()))
            .collect();
        assert_eq!(
            c,
            vec![("c", "check"), ("c", "sticky")],
            "{:?}",
            m.conflicts
        );
        assert_eq!(m.pools[0].servers.len(), 3);
    }

    #[test]
    fn one_member_cannot_change_a_pools_health_check() {
        let with = |name: &str, check: &str| {
            let mut m = web(name, "10.0.0.1");
            m.tags.insert("check".into(), check.into());
            m
        };
        // Outnumbered.
        let m = Model::build(&doc(vec![
            with("web-1", "/health"),
            with("web-2", "/health"),
            with("evil", "/a"),
        ]));
        assert_eq!(m.pools[0].check, "/health");
        // A tie goes to the member whose name sorts first, not to the smallest value
        // ("/a" < "/health" would let any newcomer pick a winning value).
        let m = Model::build(&doc(vec![with("web-1", "/health"), with("x-evil", "/a")]));
        assert_eq!(m.pools[0].check, "/health");
        assert_eq!(m.conflicts.len(), 1, "{:?}", m.conflicts);
        let c = &m.conflicts[0];
        assert_eq!((c.member.as_str(), c.value.as_str()), ("x-evil", "/a"));
        assert!(
            c.to_string().contains("\"/health\" (held by 1 of 2)"),
            "{c}"
        );
    }

    #[test]
    fn a_pool_with_fewer_members_cannot_take_the_default_route() {
        let aaa = member(
            "zz",
            "10.0.0.9:1",
            "alive",
            &[("service", "aaa"), ("port", "80")],
        );
        let m = Model::build(&doc(vec![
            web("web-1", "10.0.0.1"),
            web("web-2", "10.0.0.2"),
            aaa,
        ]));
        assert_eq!(m.default_pool.as_deref(), Some("web"));
        assert!(m.routes.is_empty());
        assert_eq!(m.conflicts.len(), 1, "{:?}", m.conflicts);
        assert_eq!(m.conflicts[0].pool, "aaa");
        assert!(m.conflicts[0]
            .used
            .contains("pool web (2 servers) serves it"));
    }

    #[test]
    fn a_pool_not_routed_at_slash_never_becomes_the_default() {
        let api = |name: &str, route: Option<&str>| {
            let mut tags = vec![("service", "api"), ("port", "80")];
            if let Some(r) = route {
                tags.push(("route", r));
            }
            member(name, "10.0.0.1:1", "alive", &tags)
        };
        // 1 : 1 between "/api" and the default "/": the first member by name decides.
        let m = Model::build(&doc(vec![api("api-1", Some("/api")), api("api-2", None)]));
        assert_eq!(m.pools[0].route, "/api");
        assert_eq!(m.default_pool, None);
        assert_eq!(m.routes.len(), 1);
        // No pool at `/` at all: no default pool (the template answers 503 itself).
        let m = Model::build(&doc(vec![api("api-1", Some("/api"))]));
        assert_eq!(m.default_pool, None);
    }

    #[test]
    fn a_scoped_ipv6_address_is_refused_not_stripped() {
        for addr in ["[fe80::1%eth0]:7946", "[fe80::1%2]:7946"] {
            let m = Model::build(&doc(vec![member(
                "v6",
                addr,
                "alive",
                &[("service", "web"), ("port", "80")],
            )]));
            assert!(m.pools.is_empty(), "{addr}: {:?}", m.pools);
            assert_eq!(m.rejected.len(), 1);
            assert!(
                m.rejected[0].reason.contains("scope id"),
                "{:?}",
                m.rejected
            );
        }
    }

    #[test]
    fn two_pools_on_one_route_first_by_name_wins() {
        let m = Model::build(&doc(vec![
            member(
                "b",
                "10.0.0.2:1",
                "alive",
                &[("service", "beta"), ("port", "80")],
            ),
            member(
                "a",
                "10.0.0.1:1",
                "alive",
                &[("service", "alpha"), ("port", "80")],
            ),
        ]));
        assert_eq!(m.default_pool.as_deref(), Some("alpha"));
        assert_eq!(m.pools.len(), 2);
        assert_eq!(m.conflicts.len(), 1);
    }

    #[test]
    fn slowstart_tag_becomes_an_haproxy_time_and_bad_values_are_skipped() {
        for (v, want) in [
            ("30s", "30s"),
            ("1.5s", "1500ms"),
            ("2m", "120s"),
            ("45", "45s"),
        ] {
            let mut a = web("a", "10.0.0.1");
            a.tags.insert("slowstart".into(), v.into());
            let m = Model::build(&doc(vec![a]));
            assert_eq!(m.pools[0].slowstart.as_deref(), Some(want), "{v}");
        }
        for v in ["0s", "2h", "fast", "1s 2s", "-1s", "0.0001s", ""] {
            let mut a = web("a", "10.0.0.1");
            a.tags.insert("slowstart".into(), v.into());
            let m = Model::build(&doc(vec![a]));
            assert!(m.pools.is_empty(), "{v:?}: {:?}", m.pools);
            assert!(
                m.rejected[0].reason.contains("slowstart"),
                "{:?}",
                m.rejected
            );
        }
        assert_eq!(
            Model::build(&doc(vec![web("a", "10.0.0.1")])).pools[0].slowstart,
            None
        );
    }

    #[test]
    fn weight_and_balance_tags() {
        let mut a = web("a", "10.0.0.1");
        a.tags.insert("weight".into(), "0".into());
        a.tags.insert("balance".into(), "leastconn".into());
        let m = Model::build(&doc(vec![a]));
        assert_eq!(m.pools[0].servers[0].weight, 0);
        assert_eq!(m.pools[0].balance, "leastconn");
    }

    fn with(name: &str, ip: &str, service: &str, extra: &[(&str, &str)]) -> Member {
        let mut tags = vec![("service", service), ("port", "80")];
        tags.extend_from_slice(extra);
        member(name, &format!("{ip}:7946"), "alive", &tags)
    }

    #[test]
    fn a_pool_whose_members_all_left_keeps_its_route_with_no_server() {
        let mut api = with("api-1", "10.0.0.1", "api", &[("route", "/api")]);
        let mut d = vec![api.clone(), web("web-1", "10.0.0.2")];
        for status in [Status::Failed, Status::Left] {
            api.status = status;
            d[0] = api.clone();
            let m = Model::build(&doc(d.clone()));
            let pool = m
                .pools
                .iter()
                .find(|p| p.name == "api")
                .expect("pool stays");
            assert!(pool.servers.is_empty());
            assert_eq!(m.routes.len(), 1, "{status:?}");
            assert_eq!(m.routes[0].pool, "api");
            assert!(m.rejected.is_empty(), "{:?}", m.rejected);
        }
        // Not ready yet (supervisor's gate) also declares the pool.
        api.status = Status::Alive;
        api.tags.insert("state".into(), "starting".into());
        d[0] = api;
        let m = Model::build(&doc(d));
        assert_eq!(m.routes[0].pool, "api");
        // Reaped (gone from the document): the pool and its route go.
        let m = Model::build(&doc(vec![web("web-1", "10.0.0.2")]));
        assert!(m.routes.is_empty());
        assert_eq!(m.pools.len(), 1);
    }

    #[test]
    fn a_dead_member_with_bad_tags_declares_nothing_and_is_not_reported() {
        let mut bad = with("x", "10.0.0.9", "api", &[("route", "no slash")]);
        bad.status = Status::Failed;
        let m = Model::build(&doc(vec![bad]));
        assert!(m.pools.is_empty());
        assert!(m.rejected.is_empty());
    }

    #[test]
    fn the_serving_members_vote_and_dead_ones_do_not() {
        let mut old = with("a-old", "10.0.0.1", "api", &[("route", "/old")]);
        old.status = Status::Left;
        let new = with("b-new", "10.0.0.2", "api", &[("route", "/new")]);
        let m = Model::build(&doc(vec![old, new]));
        assert_eq!(m.pools[0].route, "/new");
        assert!(m.conflicts.is_empty(), "{:?}", m.conflicts);
    }

    #[test]
    fn host_listen_and_check_tags_reach_the_pool() {
        let m = Model::build(&doc(vec![with(
            "a",
            "10.0.0.1",
            "api",
            &[
                ("host", "API.example.com"),
                ("route", "/v2"),
                ("listen", "8100/tls"),
                ("check_port", "8081"),
                ("check_inter", "500ms"),
                ("check_rise", "1"),
                ("check_fall", "5"),
                ("check_timeout", "1s"),
                ("check_status", "200,204"),
                ("sticky", "24h"),
                ("timeout_server", "60m"),
            ],
        )]));
        let p = &m.pools[0];
        assert_eq!(p.host.as_deref(), Some("api.example.com"));
        assert_eq!((p.listen, p.tls), (Some(8100), true));
        assert_eq!(p.check_port, Some(8081));
        assert_eq!(p.check_inter.as_deref(), Some("500ms"));
        assert_eq!((p.check_rise, p.check_fall), (1, 5));
        assert_eq!(p.check_timeout.as_deref(), Some("1s"));
        assert_eq!(p.check_status, "200,204");
        assert!(p.sticky);
        assert_eq!(p.sticky_maxlife.as_deref(), Some("1d"));
        assert_eq!(p.timeout_server.as_deref(), Some("1h"));
        // Its route is on listener 8100, which has no default pool; the main one neither.
        assert!(m.routes.is_empty());
        assert_eq!(m.listeners.len(), 1);
        let l = &m.listeners[0];
        assert_eq!(
            (l.name.as_str(), l.port, l.tls),
            ("listen-8100", 8100, true)
        );
        assert_eq!(l.routes[0].host.as_deref(), Some("api.example.com"));
        assert!(m.listener_without_default);
    }

    #[test]
    fn each_bad_routing_tag_is_refused_by_name() {
        for (tag, v) in [
            ("host", "a b"),
            ("host", "evil\nbind :1"),
            ("listen", "80"),
            ("listen", "22"),
            ("listen", "8100/ssl"),
            ("check_port", "0"),
            ("check_port", "8081 check"),
            ("check_inter", "1ms"),
            ("check_inter", "2h"),
            ("check_rise", "0"),
            ("check_fall", "21"),
            ("check_timeout", "x"),
            ("check_status", "2xx"),
            ("sticky", "forever"),
            ("route_weight", "1001"),
            ("route_weight", "-1"),
            ("timeout_server", "2d"),
        ] {
            let m = Model::build(&doc(vec![with("a", "10.0.0.1", "api", &[(tag, v)])]));
            assert!(m.pools.is_empty(), "{tag}={v:?}");
            let r = &m.rejected[0].reason;
            assert!(r.starts_with(&format!("tag {tag}=")), "{tag}={v:?}: {r}");
        }
    }

    #[test]
    fn pools_with_route_weights_split_one_route() {
        let m = Model::build(&doc(vec![
            with(
                "b1",
                "10.0.0.1",
                "blue",
                &[("route", "/app"), ("route_weight", "90")],
            ),
            with(
                "b2",
                "10.0.0.2",
                "blue",
                &[("route", "/app"), ("route_weight", "90")],
            ),
            with(
                "g1",
                "10.0.0.3",
                "green",
                &[("route", "/app"), ("route_weight", "10")],
            ),
            // Without a weight on a split route: no route, reported.
            with("o1", "10.0.0.4", "other", &[("route", "/app")]),
        ]));
        let r: Vec<_> = m
            .routes
            .iter()
            .map(|r| {
                let d = r.draw.as_ref().expect("a split");
                (r.pool.as_str(), d.var.as_str(), d.lo, d.hi)
            })
            .collect();
        assert_eq!(
            r,
            vec![
                ("blue", "txn.draw1", 0, 90),
                ("green", "txn.draw1", 90, 100)
            ]
        );
        assert_eq!(m.draws.len(), 1);
        assert_eq!(m.draws[0].total, 100);
        assert_eq!(m.conflicts.len(), 1, "{:?}", m.conflicts);
        assert_eq!(m.conflicts[0].member, "o1");
        // Blue/green cut-over: weight 0 takes nothing; all 0 splits evenly.
        let m = Model::build(&doc(vec![
            with("b1", "10.0.0.1", "blue", &[("route_weight", "0")]),
            with("g1", "10.0.0.3", "green", &[("route_weight", "100")]),
        ]));
        assert_eq!(m.routes.len(), 1);
        assert_eq!(m.routes[0].pool, "green");
        assert_eq!(m.routes[0].prefix, "/");
        assert_eq!(m.default_pool, None);
        let m = Model::build(&doc(vec![
            with("b1", "10.0.0.1", "blue", &[("route_weight", "0")]),
            with("g1", "10.0.0.3", "green", &[("route_weight", "0")]),
        ]));
        assert_eq!(m.routes.len(), 2);
        assert_eq!(m.draws[0].total, 2);
    }

    #[test]
    fn host_rules_come_before_path_rules() {
        let m = Model::build(&doc(vec![
            with("a", "10.0.0.1", "api", &[("route", "/api/v2/long")]),
            with("b", "10.0.0.2", "admin", &[("host", "admin.example.com")]),
            web("w", "10.0.0.3"),
        ]));
        let r: Vec<_> = m
            .routes
            .iter()
            .map(|r| (r.pool.as_str(), r.host.as_deref()))
            .collect();
        assert_eq!(r, vec![("admin", Some("admin.example.com")), ("api", None)]);
        assert_eq!(m.default_pool.as_deref(), Some("web"));
        assert!(!m.listener_without_default);
    }
}
