//! Picking the address to advertise, and resolving `--join` targets.
//!
//! Containers have several interfaces (bridge, overlay, ingress); advertising
//! the wrong one is a classic Serf complaint. In a Docker Swarm task the
//! default route leaves through `docker_gwbridge`, whose address other tasks
//! cannot reach, so "the default route's interface" is wrong there. Order:
//! `--advertise`, else a specific `--bind` IP, else the first IPv4 address of
//! `--iface`, else the local address the kernel would use to reach the
//! resolved `--join` targets (a connected UDP socket's `local_addr`: no packet
//! is sent), else the host name's own address, else (after waiting a little
//! for the join names) the interface holding the default route, else the
//! first non-loopback IPv4. See [`detect_advertise`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

pub const DEFAULT_PORT: u16 = 7946;

/// Parses `IP[:PORT]`; a missing port means `default_port`.
pub fn parse_ip_port(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    Err(format!("{s:?} is not an IP address or IP:PORT"))
}

/// Splits `HOST[:PORT]` for `--join`, `shoal join` and `POST /v1/join`;
/// checks the shape only (resolution happens on each retry). Port 0 is
/// refused: no node listens there, so such a join could never succeed.
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty join address".into());
    }
    let (host, port) = split_host_port(s)?;
    if port == 0 {
        return Err(format!(
            "join address {s:?}: port 0 is not a port a node listens on (omit it for {DEFAULT_PORT})"
        ));
    }
    Ok((host, port))
}

fn split_host_port(s: &str) -> Result<(String, u16), String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok((sa.ip().to_string(), sa.port()));
    }
    if s.parse::<IpAddr>().is_ok() {
        return Ok((s.to_string(), DEFAULT_PORT));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("join address {s:?}: {p:?} is not a port number"))?,
        ),
        None => (s, DEFAULT_PORT),
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(format!(
            "join address {s:?}: {host:?} is not a valid host name"
        ));
    }
    Ok((host.to_string(), port))
}

/// Resolves a join target to *all* its addresses (a DNS name of a scaled
/// service has one A record per container).
pub async fn resolve(host: &str, port: u16) -> Vec<SocketAddr> {
    match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => {
            let mut v: Vec<SocketAddr> = addrs.filter(|a| a.is_ipv4()).collect();
            v.sort();
            v.dedup();
            v
        }
        Err(_) => Vec::new(),
    }
}

/// Resolves every target at the same time (each lookup is a blocking
/// `getaddrinfo` on tokio's blocking pool, and one slow name must not hold
/// the others back); the union of their addresses, in the targets' order.
pub async fn resolve_all(targets: &[(String, u16)]) -> Vec<SocketAddr> {
    let lookups: Vec<_> = targets
        .iter()
        .map(|(host, port)| {
            let (host, port) = (host.clone(), *port);
            tokio::spawn(async move { resolve(&host, port).await })
        })
        .collect();
    let mut addrs = Vec::new();
    for lookup in lookups {
        addrs.extend(lookup.await.unwrap_or_default());
    }
    addrs
}

/// An advertise address and why it was chosen (logged at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub ip: IpAddr,
    pub why: String,
}

/// One resolved join target and the local address the kernel would send
/// from to reach it (`None`: no route).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteProbe {
    pub target: Ipv4Addr,
    pub local: Option<Ipv4Addr>,
}

/// The pure part of the join-target rule. Each probe votes for an address:
/// the target itself when it is one of `own` (a `tasks.<service>` name lists
/// this node too), else the kernel's source address towards it. Non-loopback
/// votes win over loopback ones (a loopback-only answer is kept only when
/// every target is local); among them the address with the most votes, ties
/// to the earliest. `None` when no probe has a usable address.
pub fn pick_from_routes(probes: &[RouteProbe], own: &[Ipv4Addr]) -> Option<Detected> {
    let votes: Vec<(Ipv4Addr, Ipv4Addr, bool)> = probes
        .iter()
        .filter_map(|p| {
            if own.contains(&p.target) {
                Some((p.target, p.target, true))
            } else {
                p.local.map(|l| (l, p.target, false))
            }
        })
        .filter(|(ip, _, _)| !ip.is_unspecified() && !ip.is_broadcast() && !ip.is_multicast())
        .collect();
    let any_routable = votes.iter().any(|(ip, _, _)| !ip.is_loopback());
    let mut best: Option<(usize, usize)> = None; // (index of first vote, count)
    for (i, (ip, _, _)) in votes.iter().enumerate() {
        if any_routable && ip.is_loopback() {
            continue;
        }
        if votes[..i].iter().any(|(prev, _, _)| prev == ip) {
            continue;
        }
        let count = votes.iter().filter(|(v, _, _)| v == ip).count();
        if best.is_none_or(|(_, c)| count > c) {
            best = Some((i, count));
        }
    }
    let (i, count) = best?;
    let (ip, target, is_own) = votes[i];
    let why = if is_own {
        format!("join target {target} is this node's own address")
    } else {
        format!("the kernel routes to join target {target} from it")
    };
    let why = if count > 1 {
        format!(
            "{why} ({count} of {} resolved join addresses agree)",
            probes.len()
        )
    } else {
        why
    };
    Some(Detected {
        ip: IpAddr::V4(ip),
        why,
    })
}

/// The source address the kernel picks to reach `target` (a connected UDP
/// socket: `connect` only looks the route up, nothing is sent).
pub fn route_source(target: Ipv4Addr, port: u16) -> Option<Ipv4Addr> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    sock.connect((target, port.max(1))).ok()?;
    match sock.local_addr().ok()?.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

/// Blocking resolution of every join target (used at start), in the given
/// order, IPv4 only, without duplicates. The names are looked up at the same
/// time, one thread each: at a container's start the resolver is Docker's
/// DNS, slow while dockerd starts the rest of the project, and one name after
/// the other made the agent wait for each answer in turn.
fn resolve_targets_blocking(targets: &[(String, u16)]) -> Vec<(Ipv4Addr, u16)> {
    let answers: Vec<Vec<SocketAddr>> = std::thread::scope(|scope| {
        let lookups: Vec<_> = targets
            .iter()
            .map(|(host, port)| {
                scope.spawn(move || {
                    (host.as_str(), *port)
                        .to_socket_addrs()
                        .map(Iterator::collect)
                        .unwrap_or_default()
                })
            })
            .collect();
        lookups
            .into_iter()
            .map(|l| l.join().unwrap_or_default())
            .collect()
    });
    let mut out = Vec::new();
    for ((_, port), addrs) in targets.iter().zip(answers) {
        for a in addrs {
            if let SocketAddr::V4(v4) = a {
                if !out.iter().any(|(ip, _)| ip == v4.ip()) {
                    out.push((*v4.ip(), *port));
                }
            }
        }
    }
    out
}

fn own_ipv4_addrs() -> Result<Vec<(String, Ipv4Addr)>, String> {
    Ok(nix::ifaddrs::getifaddrs()
        .map_err(|e| format!("cannot list network interfaces: {e}"))?
        .filter_map(|ifa| {
            let ip = ifa.address?.as_sockaddr_in()?.ip();
            Some((ifa.interface_name, ip))
        })
        .collect())
}

/// The IP to advertise when neither `--advertise` nor a specific `--bind` IP
/// was given, in this order:
/// 1. `--iface`'s first IPv4 address;
/// 2. with join targets that resolve now, the route towards them;
/// 3. the host name's address when it is one of ours and not loopback. Docker
///    (compose and Swarm) maps a container's hostname to its address on its
///    first network. This step matters in Swarm: `tasks.<service>` lists only
///    *healthy* tasks, so at a stack's first deploy no name resolves until
///    some agent has started, which it would otherwise wait for;
/// 4. with join targets, the route towards them once they resolve, waiting up
///    to `wait`;
/// 5. the interface holding the default route, else the first non-loopback
///    IPv4 (the old heuristics).
///
/// Also returns the join targets as step 2 or 4 resolved them (empty if
/// neither did): the agent's first join round uses them instead of asking
/// the resolver again. In a container that is Docker's DNS, served by a
/// dockerd that is busy starting the rest of the project just then.
pub fn detect_advertise(
    iface: Option<&str>,
    join: &[(String, u16)],
    wait: Duration,
) -> Result<(Detected, Vec<SocketAddr>), String> {
    let addrs = own_ipv4_addrs()?;
    if let Some(want) = iface {
        return addrs
            .iter()
            .find(|(name, _)| name == want)
            .map(|(_, ip)| {
                let d = Detected {
                    ip: IpAddr::V4(*ip),
                    why: format!("the first IPv4 address of --iface {want}"),
                };
                (d, Vec::new())
            })
            .ok_or_else(|| format!("interface {want:?} has no IPv4 address"));
    }
    let own: Vec<Ipv4Addr> = addrs.iter().map(|(_, ip)| *ip).collect();
    let from_join = || -> Option<Result<(Detected, Vec<SocketAddr>), ()>> {
        let resolved = resolve_targets_blocking(join);
        if resolved.is_empty() {
            return None;
        }
        let join_addrs = resolved
            .iter()
            .map(|&(ip, port)| SocketAddr::new(IpAddr::V4(ip), port))
            .collect();
        let probes: Vec<RouteProbe> = resolved
            .iter()
            .map(|&(target, port)| RouteProbe {
                target,
                local: route_source(target, port),
            })
            .collect();
        Some(
            pick_from_routes(&probes, &own)
                .map(|d| (d, join_addrs))
                .ok_or_else(|| {
                    tracing::warn!(?resolved, "no route to any join target");
                }),
        )
    };
    let mut join_unroutable = false;
    if !join.is_empty() {
        match from_join() {
            Some(Ok(d)) => return Ok(d),
            Some(Err(())) => join_unroutable = true,
            None => {}
        }
    }
    let host_addrs = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| {
            let ips = resolve_targets_blocking(&[(h.clone(), 0)]);
            (h, ips.into_iter().map(|(ip, _)| ip).collect::<Vec<_>>())
        });
    if let Some((host, ips)) = &host_addrs {
        if let Some(d) = pick_hostname_addr(host, ips, &own) {
            return Ok((d, Vec::new()));
        }
    }
    if !join.is_empty() && !join_unroutable && !wait.is_zero() {
        tracing::info!(
            wait = ?wait,
            "waiting for a join target to resolve to pick the advertise address"
        );
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
            match from_join() {
                Some(Ok(d)) => return Ok(d),
                Some(Err(())) => break,
                None => {}
            }
        }
        tracing::warn!(
            wait = ?wait,
            "no join target resolved in time: using the default route's interface \
             (pass --advertise or --iface if that is the wrong network)"
        );
    }
    pick_fallback(&addrs, default_route_iface().as_deref()).map(|d| (d, Vec::new()))
}

/// Step 3 of [`detect_advertise`], pure: the first address `host` resolved
/// to that is one of `own` and not loopback (Debian maps the host name to
/// 127.0.1.1 on machines without a fixed address: skipped).
pub fn pick_hostname_addr(host: &str, resolved: &[Ipv4Addr], own: &[Ipv4Addr]) -> Option<Detected> {
    resolved
        .iter()
        .find(|ip| !ip.is_loopback() && own.contains(ip))
        .map(|ip| Detected {
            ip: IpAddr::V4(*ip),
            why: format!("the host name {host} resolves to it (no join target resolved yet)"),
        })
}

/// The old heuristics: the default route's interface, else the first
/// non-loopback IPv4 address.
fn pick_fallback(
    addrs: &[(String, Ipv4Addr)],
    route_iface: Option<&str>,
) -> Result<Detected, String> {
    if let Some(route_iface) = route_iface {
        if let Some((_, ip)) = addrs
            .iter()
            .find(|(n, ip)| n == route_iface && !ip.is_loopback())
        {
            return Ok(Detected {
                ip: IpAddr::V4(*ip),
                why: format!("the default route's interface {route_iface}"),
            });
        }
    }
    addrs
        .iter()
        .find(|(_, ip)| !ip.is_loopback())
        .map(|(name, ip)| Detected {
            ip: IpAddr::V4(*ip),
            why: format!("the first non-loopback IPv4 address ({name})"),
        })
        .ok_or_else(|| "no non-loopback IPv4 address found; pass --advertise IP".to_string())
}

/// The interface of the IPv4 default route, from /proc/net/route.
fn default_route_iface() -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|line| {
        let mut cols = line.split_whitespace();
        let iface = cols.next()?;
        (cols.next()? == "00000000").then(|| iface.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_targets_parse_or_explain() {
        assert_eq!(parse_host_port("lb").unwrap(), ("lb".into(), 7946));
        assert_eq!(parse_host_port("lb:8000").unwrap(), ("lb".into(), 8000));
        assert_eq!(
            parse_host_port("10.0.0.1").unwrap(),
            ("10.0.0.1".into(), 7946)
        );
        assert_eq!(
            parse_host_port("10.0.0.1:1").unwrap(),
            ("10.0.0.1".into(), 1)
        );
        assert!(parse_host_port("lb:http").unwrap_err().contains("port"));
        assert!(parse_host_port("a b").is_err());
        assert!(parse_host_port("").is_err());
    }

    #[test]
    fn a_join_address_with_port_zero_is_refused_by_name() {
        for bad in ["127.0.0.1:0", "lb:0", "[::1]:0", " lb:0 "] {
            let e = parse_host_port(bad).unwrap_err();
            assert!(e.contains("port 0") && e.contains(bad.trim()), "{bad}: {e}");
        }
        assert_eq!(parse_host_port("lb:1").unwrap(), ("lb".into(), 1));
    }

    #[test]
    fn ip_port_defaults_the_port() {
        assert_eq!(
            parse_ip_port("10.1.2.3", 7946).unwrap(),
            "10.1.2.3:7946".parse().unwrap()
        );
        assert!(parse_ip_port("host", 1).is_err());
    }

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn probe(target: &str, local: Option<&str>) -> RouteProbe {
        RouteProbe {
            target: v4(target),
            local: local.map(v4),
        }
    }

    /// A Swarm task: eth0 on the overlay, eth1 on docker_gwbridge (which holds
    /// the default route). The old heuristic advertised the gwbridge address.
    fn swarm_task_addrs() -> Vec<(String, Ipv4Addr)> {
        vec![
            ("lo".into(), v4("127.0.0.1")),
            ("eth0".into(), v4("10.0.1.6")),
            ("eth1".into(), v4("172.18.0.3")),
        ]
    }

    #[test]
    fn a_swarm_task_advertises_its_overlay_address_not_the_gwbridge_one() {
        let own: Vec<Ipv4Addr> = swarm_task_addrs().iter().map(|(_, ip)| *ip).collect();
        // tasks.lb → another task; tasks.webapp → another task and ourselves.
        let probes = [
            probe("10.0.1.3", Some("10.0.1.6")),
            probe("10.0.1.4", Some("10.0.1.6")),
            probe("10.0.1.6", Some("10.0.1.6")),
        ];
        let d = pick_from_routes(&probes, &own).unwrap();
        assert_eq!(d.ip, v4("10.0.1.6"));
        assert!(d.why.contains("3 of 3"), "{}", d.why);
        // The fallback alone would have picked the wrong network.
        let old = pick_fallback(&swarm_task_addrs(), Some("eth1")).unwrap();
        assert_eq!(old.ip, v4("172.18.0.3"));
    }

    #[test]
    fn a_join_target_that_is_our_own_address_is_advertised_even_without_a_route() {
        // The first task of a service: tasks.<service> lists only itself.
        let own = [v4("127.0.0.1"), v4("10.0.1.6"), v4("172.18.0.3")];
        let d = pick_from_routes(&[probe("10.0.1.6", None)], &own).unwrap();
        assert_eq!(d.ip, v4("10.0.1.6"));
        assert!(d.why.contains("own address"), "{}", d.why);
    }

    #[test]
    fn non_loopback_routes_win_over_loopback_ones() {
        let own = [v4("127.0.0.1"), v4("10.0.1.6")];
        let probes = [
            probe("127.0.0.1", Some("127.0.0.1")),
            probe("127.0.0.2", Some("127.0.0.1")),
            probe("10.0.1.9", Some("10.0.1.6")),
        ];
        assert_eq!(pick_from_routes(&probes, &own).unwrap().ip, v4("10.0.1.6"));
        // Only local targets (a test cluster on loopback): loopback it is.
        let local_only = [probe("127.0.0.2", Some("127.0.0.1"))];
        assert_eq!(
            pick_from_routes(&local_only, &own).unwrap().ip,
            v4("127.0.0.1")
        );
    }

    #[test]
    fn the_majority_of_routes_wins_and_ties_go_to_the_first_target() {
        let own = [v4("10.0.1.6"), v4("10.0.2.6")];
        let majority = [
            probe("10.0.2.1", Some("10.0.2.6")),
            probe("10.0.1.1", Some("10.0.1.6")),
            probe("10.0.1.2", Some("10.0.1.6")),
        ];
        assert_eq!(
            pick_from_routes(&majority, &own).unwrap().ip,
            v4("10.0.1.6")
        );
        let tie = [
            probe("10.0.2.1", Some("10.0.2.6")),
            probe("10.0.1.1", Some("10.0.1.6")),
        ];
        assert_eq!(pick_from_routes(&tie, &own).unwrap().ip, v4("10.0.2.6"));
    }

    #[test]
    fn no_usable_route_means_no_answer() {
        assert_eq!(pick_from_routes(&[], &[v4("10.0.1.6")]), None);
        let unroutable = [probe("10.9.9.9", None), probe("10.9.9.8", Some("0.0.0.0"))];
        assert_eq!(pick_from_routes(&unroutable, &[v4("10.0.1.6")]), None);
    }

    #[test]
    fn the_fallback_prefers_the_default_route_then_any_non_loopback() {
        let addrs = swarm_task_addrs();
        assert_eq!(
            pick_fallback(&addrs, Some("eth0")).unwrap().ip,
            v4("10.0.1.6")
        );
        let d = pick_fallback(&addrs, None).unwrap();
        assert_eq!(d.ip, v4("10.0.1.6"));
        assert!(d.why.contains("eth0"), "{}", d.why);
        assert!(pick_fallback(&addrs[..1], None).is_err());
    }

    #[test]
    fn the_host_name_counts_only_when_it_names_one_of_our_non_loopback_addresses() {
        let own = [v4("127.0.0.1"), v4("10.0.2.9"), v4("172.18.0.4")];
        // A Swarm task's /etc/hosts: "10.0.2.9 webapp-1" (its first network).
        let d = pick_hostname_addr("webapp-1", &[v4("10.0.2.9")], &own).unwrap();
        assert_eq!(d.ip, v4("10.0.2.9"));
        assert!(d.why.contains("webapp-1"), "{}", d.why);
        // Debian's "127.0.1.1 myhost", or a DNS answer that is not this machine.
        assert_eq!(pick_hostname_addr("h", &[v4("127.0.1.1")], &own), None);
        assert_eq!(pick_hostname_addr("h", &[v4("192.0.2.7")], &own), None);
        assert_eq!(pick_hostname_addr("h", &[], &own), None);
    }

    #[test]
    fn the_kernel_route_to_loopback_leaves_from_loopback() {
        // The impure half, on an address every machine has; nothing is sent.
        assert_eq!(route_source(v4("127.0.0.1"), 7946), Some(v4("127.0.0.1")));
    }

    #[test]
    fn literal_join_addresses_are_used_without_waiting() {
        let t0 = Instant::now();
        let (d, resolved) =
            detect_advertise(None, &[("127.0.0.1".into(), 7946)], Duration::from_secs(30)).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_eq!(d.ip, IpAddr::V4(v4("127.0.0.1")));
        // Handed on to the first join round, which then does not resolve again.
        assert_eq!(resolved, ["127.0.0.1:7946".parse::<SocketAddr>().unwrap()]);
    }

    #[tokio::test]
    async fn resolves_localhost() {
        assert!(resolve("localhost", 7946)
            .await
            .iter()
            .any(|a| a.ip().is_loopback()));
    }
}
