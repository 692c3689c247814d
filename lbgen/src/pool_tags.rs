//! The routing and health-check tags of a pool (`host`, `listen`, `check_*`, `sticky`
//! with a lifetime, `route_weight`, `timeout_server`): each value from the network is
//! parsed into what the template renders, or refused with a reason naming the tag. Pure.
//!
//! Every accepted value is rendered by lbgen itself (numbers, HAProxy times, a lower-case
//! DNS name), so nothing a member sends reaches the config as it was typed.

use std::time::Duration;

use shoal_contract::tags;

/// A tag's value → what is rendered; `Err` names the tag and what it may hold.
type Parsed<T> = Result<T, String>;

/// Quotes a network-supplied value for an error message: escaped, at most 64 chars.
pub(crate) fn q(s: &str) -> String {
    let short: String = s.chars().take(64).collect();
    if short.len() < s.len() {
        format!("{short:?}…")
    } else {
        format!("{short:?}")
    }
}

/// An HAProxy time in the largest unit that holds `d` exactly (`1d`, `90m`, `1500ms`).
pub fn haproxy_time(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, n) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms.is_multiple_of(n) {
            return format!("{}{unit}", ms / n);
        }
    }
    format!("{ms}ms")
}

/// A duration tag from `min` to `max`, whole milliseconds, rendered by [`haproxy_time`].
pub fn time_tag(tag: &str, v: &str, min: Duration, max: Duration) -> Parsed<String> {
    let bad = || {
        format!(
            "tag {tag}={} must be a duration from {} to {} (e.g. 30s)",
            q(v),
            haproxy_time(min),
            haproxy_time(max)
        )
    };
    let d = shoal_contract::parse_duration(v).map_err(|_| bad())?;
    if d < min || d > max || d.subsec_nanos() % 1_000_000 != 0 {
        return Err(bad());
    }
    Ok(haproxy_time(d))
}

/// A number tag from `min` to `max`: ASCII digits only (no sign, no space).
pub fn number_tag(tag: &str, v: &str, min: u32, max: u32) -> Parsed<u32> {
    match v.parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) && v.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(format!("tag {tag}={} must be {min}-{max}", q(v))),
    }
}

/// `host=`: a DNS name (letters, digits, `-`, dots between labels of 1–63), at most 253
/// characters, compared case-insensitively (rendered lower-case, as HAProxy's `host_only`
/// gives the request's `Host`).
pub fn host(v: &str) -> Parsed<String> {
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(v.to_ascii_lowercase())
    } else {
        Err(format!(
            "tag host={} must be a DNS name (letters, digits, '-' and '.')",
            q(v)
        ))
    }
}

/// A listener a pool asks for: `listen=8100` (plain) or `listen=8100/tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listen {
    pub port: u16,
    pub tls: bool,
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.port, if self.tls { "/tls" } else { "" })
    }
}

/// Which ports `listen=` may open on the LB: a tag from the network must not bind the
/// main listener's or the stats port, nor (unless the operator lists it) a privileged one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenPolicy {
    /// Ports the template binds itself (`http_port`, `stats_port`, `https_port`).
    pub reserved: Vec<u16>,
    /// `vars.listen_ports`: the only ports allowed; None = 1024–65535.
    pub allowed: Option<Vec<u16>>,
}

impl Default for ListenPolicy {
    fn default() -> Self {
        ListenPolicy {
            reserved: vec![80, 1936],
            allowed: None,
        }
    }
}

impl ListenPolicy {
    /// From the template variables: `http_port`, `stats_port` and `https_port` are reserved,
    /// `listen_ports` (`8100,9494`) is the allow-list when set and not empty.
    pub fn from_vars(vars: &std::collections::BTreeMap<String, String>) -> ListenPolicy {
        let port = |k: &str| vars.get(k).and_then(|v| v.parse::<u16>().ok());
        let reserved = ["http_port", "stats_port", "https_port"]
            .into_iter()
            .filter_map(port)
            .collect();
        let allowed = vars
            .get("listen_ports")
            .filter(|v| !v.is_empty())
            .map(|v| v.split(',').filter_map(|p| p.trim().parse().ok()).collect());
        ListenPolicy { reserved, allowed }
    }

    /// `listen=`: `PORT` or `PORT/tls`, a port this policy allows.
    pub fn listen(&self, v: &str) -> Parsed<Listen> {
        let (p, tls) = match v.strip_suffix("/tls") {
            Some(p) => (p, true),
            None => (v, false),
        };
        let port = number_tag(tags::LISTEN, p, 1, 65535)
            .map_err(|_| format!("tag listen={} must be PORT or PORT/tls", q(v)))?
            as u16;
        if self.reserved.contains(&port) {
            return Err(format!(
                "tag listen={} is a port the LB binds itself (http, https or stats)",
                q(v)
            ));
        }
        let allowed = match &self.allowed {
            Some(list) => list.contains(&port),
            None => port >= 1024,
        };
        if !allowed {
            return Err(match &self.allowed {
                Some(_) => format!("tag listen={} is not in --var listen_ports", q(v)),
                None => format!(
                    "tag listen={} is a privileged port: allow it with --var listen_ports",
                    q(v)
                ),
            });
        }
        Ok(Listen { port, tls })
    }
}

/// `check_status=`: what a health check must answer, `200`, `200-399` or a comma list of
/// codes and ranges (at most 8, codes 100–599): HAProxy's `http-check expect status`.
pub fn check_status(v: &str) -> Parsed<String> {
    let code = |s: &str| {
        s.len() == 3
            && s.bytes().all(|b| b.is_ascii_digit())
            && s.parse::<u16>().is_ok_and(|n| (100..=599).contains(&n))
    };
    let items: Vec<&str> = v.split(',').collect();
    let ok = items.len() <= 8
        && items.iter().all(|i| match i.split_once('-') {
            Some((a, b)) => code(a) && code(b) && a <= b,
            None => code(i),
        });
    if ok {
        Ok(v.to_string())
    } else {
        Err(format!(
            "tag check_status={} must be a status, a range or a list (200, 200-399, 200,302)",
            q(v)
        ))
    }
}

/// `sticky=`: `true`, `false`, or how long a client stays on its server (`1d`: the cookie
/// is ignored after that, HAProxy's `maxlife`). Returns (sticky, lifetime).
pub fn sticky(v: &str) -> Parsed<(bool, Option<String>)> {
    match v {
        "false" => Ok((false, None)),
        "true" => Ok((true, None)),
        _ => time_tag(tags::STICKY, v, STICKY_MIN, STICKY_MAX)
            .map(|t| (true, Some(t)))
            .map_err(|_| {
                format!(
                    "tag sticky={} must be true, false or a lifetime from 1s to 30d (e.g. 1d)",
                    q(v)
                )
            }),
    }
}

pub const STICKY_MIN: Duration = Duration::from_secs(1);
pub const STICKY_MAX: Duration = Duration::from_secs(30 * 86_400);
pub const CHECK_TIME_MIN: Duration = Duration::from_millis(100);
pub const CHECK_TIME_MAX: Duration = Duration::from_secs(3600);
pub const TIMEOUT_SERVER_MIN: Duration = Duration::from_secs(1);
pub const TIMEOUT_SERVER_MAX: Duration = Duration::from_secs(86_400);
/// `check_rise` / `check_fall`.
pub const MAX_RISE_FALL: u32 = 20;
/// `route_weight`: a pool's share of a route it splits with others.
pub const MAX_ROUTE_WEIGHT: u32 = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_render_in_the_largest_exact_unit() {
        for (v, want) in [
            ("1d", "1d"),
            ("24h", "1d"),
            ("90m", "90m"),
            ("1.5s", "1500ms"),
        ] {
            let d = shoal_contract::parse_duration(v).unwrap();
            assert_eq!(haproxy_time(d), want, "{v}");
        }
    }

    #[test]
    fn hosts_are_dns_names_and_lower_cased() {
        assert_eq!(host("API.Example.com").unwrap(), "api.example.com");
        assert_eq!(host("localhost").unwrap(), "localhost");
        for bad in [
            "",
            "a..b",
            ".a",
            "a.",
            "-a.b",
            "a b",
            "a/b",
            "*.example.com",
            "a\nb",
            "exa_mple.com",
        ] {
            let e = host(bad).expect_err(bad);
            assert!(e.starts_with("tag host="), "{e}");
        }
        assert!(host(&"a".repeat(64)).is_err());
    }

    #[test]
    fn listen_ports_follow_the_policy() {
        let p = ListenPolicy::default();
        assert_eq!(
            p.listen("8100").unwrap(),
            Listen {
                port: 8100,
                tls: false
            }
        );
        assert!(p.listen("9494/tls").unwrap().tls);
        for bad in [
            "80", "1936", "22", "0", "70000", "8100/ssl", "+8100", "8100 ", "",
        ] {
            assert!(p.listen(bad).is_err(), "{bad:?}");
        }
        let vars = [("http_port", "443"), ("listen_ports", "8100,9494")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let p = ListenPolicy::from_vars(&vars);
        assert!(p.listen("8100").is_ok());
        let e = p.listen("8200").unwrap_err();
        assert!(e.contains("listen_ports"), "{e}");
        assert!(p.listen("443").is_err());
    }

    #[test]
    fn check_status_takes_codes_ranges_and_lists() {
        for ok in ["200", "200-399", "200,302", "204,300-399"] {
            assert_eq!(check_status(ok).unwrap(), ok);
        }
        for bad in [
            "",
            "20",
            "2000",
            "600",
            "399-200",
            "200 ",
            "200;x",
            "2xx",
            "1,2,3,4,5,6,7,8,9",
        ] {
            assert!(check_status(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sticky_takes_a_switch_or_a_lifetime() {
        assert_eq!(sticky("true").unwrap(), (true, None));
        assert_eq!(sticky("false").unwrap(), (false, None));
        assert_eq!(sticky("1d").unwrap(), (true, Some("1d".into())));
        assert_eq!(sticky("12h").unwrap(), (true, Some("12h".into())));
        for bad in ["yes", "0s", "31d", "1d 1h", "-1d", ""] {
            assert!(sticky(bad).is_err(), "{bad:?}");
        }
    }
}
