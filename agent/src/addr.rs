//! Picking the address to advertise, and resolving `--join` targets.
//!
//! Containers have several interfaces (bridge, overlay, ingress); advertising
//! the wrong one is a classic Serf complaint. Order: `--advertise`, else a
//! specific `--bind` IP, else the first IPv4 address of `--iface`, else of the
//! interface holding the default route, else the first non-loopback IPv4.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

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

/// Splits `HOST[:PORT]` for `--join`; checks the shape only (resolution happens on each retry).
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty join address".into());
    }
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

/// Resolves every target; the union of their addresses.
pub async fn resolve_all(targets: &[(String, u16)]) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for (host, port) in targets {
        addrs.extend(resolve(host, *port).await);
    }
    addrs
}

/// The IP to advertise when none was given.
pub fn detect_advertise_ip(iface: Option<&str>) -> Result<IpAddr, String> {
    let addrs: Vec<(String, Ipv4Addr)> = nix::ifaddrs::getifaddrs()
        .map_err(|e| format!("cannot list network interfaces: {e}"))?
        .filter_map(|ifa| {
            let ip = ifa.address?.as_sockaddr_in()?.ip();
            Some((ifa.interface_name, ip))
        })
        .collect();
    if let Some(want) = iface {
        return addrs
            .iter()
            .find(|(name, _)| name == want)
            .map(|(_, ip)| IpAddr::V4(*ip))
            .ok_or_else(|| format!("interface {want:?} has no IPv4 address"));
    }
    if let Some(route_iface) = default_route_iface() {
        if let Some((_, ip)) = addrs
            .iter()
            .find(|(n, ip)| *n == route_iface && !ip.is_loopback())
        {
            return Ok(IpAddr::V4(*ip));
        }
    }
    addrs
        .iter()
        .find(|(_, ip)| !ip.is_loopback())
        .map(|(_, ip)| IpAddr::V4(*ip))
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
    fn ip_port_defaults_the_port() {
        assert_eq!(
            parse_ip_port("10.1.2.3", 7946).unwrap(),
            "10.1.2.3:7946".parse().unwrap()
        );
        assert!(parse_ip_port("host", 1).is_err());
    }

    #[tokio::test]
    async fn resolves_localhost() {
        assert!(resolve("localhost", 7946)
            .await
            .iter()
            .any(|a| a.ip().is_loopback()));
    }
}
