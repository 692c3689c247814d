//! The strict line grammar of what the builtin template renders: every line is
//! one HAProxy understands in its place, with each field made of the characters
//! its value may hold. A member value that broke out of its field (a newline, a
//! quote, a `#`, a space) leaves a line that is not in this grammar — also when
//! the injected half is itself a valid line (`server x 6.6.6.6:80 ...`), because
//! the half it was cut from is not.
//!
//! Used by the members-JSON fuzz target, the golden tests and the security test
//! as an oracle; it knows the builtin template only (a custom template may emit
//! any directive).

/// Checks every line of `cfg`; the first line outside the grammar is the error
/// (with its 1-based number).
pub fn check_lines(cfg: &str) -> Result<(), String> {
    for (i, line) in cfg.split('\n').enumerate() {
        check_line(line).map_err(|why| format!("line {}: {why}: {line:?}", i + 1))?;
    }
    Ok(())
}

/// The oracle of the members-JSON fuzz target (and of the corpus replay in
/// `cargo test`): any bytes either fail to parse, or render with the builtin
/// template into lines inside the grammar, each `server` line naming a member
/// of the document at that member's IP. Panics with the offending line.
pub fn check_members_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(doc) = crate::model::MembersDoc::from_json(text) else {
        return;
    };
    let model = crate::model::Model::build(&doc);
    let Ok(cfg) =
        crate::render::Renderer::builtin().render(&model, &crate::render::Vars::default())
    else {
        return;
    };
    if let Err(e) = check_lines(&cfg) {
        panic!("{e}\n{cfg}");
    }
    for line in cfg.lines() {
        let Some(rest) = line.strip_prefix("    server ") else {
            continue;
        };
        let mut words = rest.split(' ');
        let (name, addr) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let ip = addr
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or("");
        let known = doc.members.iter().any(|m| {
            m.name == name
                && m.addr
                    .rsplit_once(':')
                    .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
                    .and_then(|h| h.parse::<std::net::IpAddr>().ok())
                    .zip(ip.parse::<std::net::IpAddr>().ok())
                    .is_some_and(|(a, b)| a == b)
        });
        assert!(
            known,
            "server line of no member of the document: {line:?}\n{cfg}"
        );
    }
}

/// Lines of the builtin template that carry no value at all.
const FIXED: &[&str] = &[
    "global",
    "defaults",
    "    mode http",
    "    log global",
    "    option httplog",
    "    option forwardfor",
    "    option idle-close-on-response",
    "    option redispatch",
    "    retries 3",
    "    retry-on conn-failure empty-response response-timeout",
    "    timeout http-request 10s",
    "    timeout http-keep-alive 10s",
    "    timeout queue 10s",
    "    option httpchk",
    "    http-request disable-l7-retry if !METH_GET !METH_HEAD",
    "    hash-type consistent",
    "    load-server-state-from-file global",
    "    http-request return status 503 content-type text/plain string \"no pool serves this path\"",
    "    stats enable",
    "    stats uri /",
    "    stats refresh 5s",
    // The request id, X-Forwarded-Proto, the JSON access log and the Prometheus exporter.
    "    unique-id-format %{+X}o%ci:%cp_%fi:%fp_%Ts_%rt:%pid",
    "    http-request set-header X-Forwarded-Proto https if { ssl_fc }",
    "    http-request set-header X-Forwarded-Proto http if !{ ssl_fc }",
    "    http-request set-var(txn.log_path) pathq,bytes(0,2048),json(utf8s)",
    "    http-request set-var(txn.log_host) req.hdr(host),bytes(0,256),json(utf8s)",
    JSON_LOG_FORMAT,
    "    http-request use-service prometheus-exporter if { path /metrics }",
    "    no log",
    // acme_challenge: the CA's HTTP-01 requests go to `lbgen acme --http`.
    "    use_backend acme-challenge if { path_beg /.well-known/acme-challenge/ }",
];

/// The default template's JSON access log line (`access_log_format=json`).
const JSON_LOG_FORMAT: &str = concat!(
    r#"    log-format "{\"ts\":%Ts.%ms,\"request_id\":\"%ID\",\"client_ip\":\"%ci\",\"client_port\":%cp,"#,
    r#"\"frontend\":\"%ft\",\"backend\":\"%b\",\"server\":\"%s\",\"method\":\"%HM\","#,
    r#"\"host\":\"%[var(txn.log_host)]\",\"path\":\"%[var(txn.log_path)]\",\"status\":%ST,"#,
    r#"\"bytes_in\":%U,\"bytes_out\":%B,\"time_request_ms\":%TR,\"time_queue_ms\":%Tw,"#,
    r#"\"time_connect_ms\":%Tc,\"time_response_ms\":%Tr,\"time_total_ms\":%Ta,\"termination\":\"%tsc\"}""#,
);

fn check_line(line: &str) -> Result<(), String> {
    if line.is_empty() || FIXED.contains(&line) {
        return Ok(());
    }
    if line.bytes().any(|b| b.is_ascii_control()) {
        return Err("control character".into());
    }
    if let Some(comment) = line.trim_start_matches(' ').strip_prefix('#') {
        // Comments may say anything printable; what a value injects after a
        // newline is checked as a line of its own.
        return if comment.is_empty() || comment.starts_with(' ') {
            Ok(())
        } else {
            Err("comment without a space after #".into())
        };
    }
    let (indented, body) = match line.strip_prefix("    ") {
        Some(body) => (true, body),
        None => (false, line),
    };
    if body.starts_with(' ') || body.ends_with(' ') || body.contains("  ") {
        return Err("stray whitespace".into());
    }
    let words: Vec<&str> = body.split(' ').collect();
    if !indented {
        return match words.as_slice() {
            ["frontend", "http-in"] | ["listen", "stats"] => Ok(()),
            ["frontend", name] if name.strip_prefix("listen-").is_some_and(port) => Ok(()),
            ["backend", name] if ident(name) => Ok(()),
            _ => Err("not a section header".into()),
        };
    }
    let ok = match words.as_slice() {
        ["server", name, addr, "weight", w, "check", "inter", d, "fall", f, "rise", r, rest @ ..] =>
        {
            let rest = match rest {
                ["port", p, rest @ ..] if port(p) => rest,
                _ => rest,
            };
            let tail = match rest {
                ["observe", "layer4", "error-limit", "1", "on-error", "mark-down", tail @ ..] => {
                    match tail {
                        [] => true,
                        ["slowstart", s] => duration(s),
                        _ => false,
                    }
                }
                _ => false,
            };
            ident(name)
                && address(addr)
                && weight(w)
                && duration(d)
                && small_number(f)
                && small_number(r)
                && tail
        }
        ["cookie", "SERVERID", "insert", "indirect", "nocache", "dynamic", rest @ ..] => match rest
        {
            [] => true,
            ["maxlife", d] => duration(d),
            _ => false,
        },
        ["http-check", "expect", "status", codes] => status_codes(codes),
        ["acl", acl, "req.hdr(host),host_only", "-m", "str", host] => {
            acl.strip_prefix("host_").is_some_and(ident) && dns_name(host)
        }
        ["http-request", set_var, rand] if set_var.starts_with("set-var(txn.draw") => {
            set_var
                .strip_prefix("set-var(")
                .and_then(|v| v.strip_suffix(')'))
                .is_some_and(draw_var)
                && rand
                    .strip_prefix("rand(")
                    .and_then(|n| n.strip_suffix(')'))
                    .is_some_and(number)
        }
        ["server", "acme", addr] => address(addr),
        ["acl", acl, "path", prefix] => route_acl(acl) && path(prefix),
        ["acl", acl, "path_beg", prefix] => route_acl(acl) && prefix.ends_with('/') && path(prefix),
        ["use_backend", pool, "if", conds @ ..] => ident(pool) && use_backend_conds(pool, conds),
        ["default_backend", pool] => ident(pool),
        ["balance", algo] => word(algo),
        // cookie_key (a name) + "-" + the pool's name.
        ["dynamic-cookie-key", key] => ident(key),
        ["http-check", "send", "meth", "GET", "uri", uri] => uri_path(uri),
        ["bind", addr] => bind(addr),
        ["bind", addr, "ssl", "crt-list", list, "alpn", "h2,http/1.1"] => {
            bind(addr) && file_path(list)
        }
        ["http-request", "redirect", "location", to, "code", "301", "if", "!{", "ssl_fc", "}"] => {
            https_location(to)
        }
        ["http-response", "set-header", "Strict-Transport-Security", age, "if", "{", "ssl_fc", "}"] => {
            age.strip_prefix("\"max-age=")
                .and_then(|a| a.strip_suffix('"'))
                .is_some_and(number)
        }
        ["maxconn", n] => number(n),
        ["log", target, "len", "8192", "format", "raw", "local0"] => log_target(target),
        ["http-request", "del-header", h] | ["unique-id-header", h] => header_name(h),
        ["hard-stop-after", d] => duration(d),
        ["httpclient.ssl.verify", "none" | "required"] => true,
        ["timeout", "connect" | "client" | "server" | "check", d] => duration(d),
        ["server-state-file", p] => file_path(p),
        ["stats", "socket", p, "mode", "600", "level", "admin", "expose-fd", "listeners"] => {
            file_path(p)
        }
        _ => return Err("not a directive of the builtin template".into()),
    };
    if ok {
        Ok(())
    } else {
        Err("a field holds characters it may not".into())
    }
}

/// What follows `use_backend POOL if`: `host_POOL`, `route_POOL`, a draw range, in that
/// order, at least one of them.
fn use_backend_conds(pool: &str, conds: &[&str]) -> bool {
    let mut rest = conds;
    if let [h, tail @ ..] = rest {
        if h.strip_prefix("host_") == Some(pool) {
            rest = tail;
        }
    }
    if let [r, tail @ ..] = rest {
        if r.strip_prefix("route_") == Some(pool) {
            rest = tail;
        }
    }
    let draw = |v: &str| {
        v.strip_prefix("var(")
            .and_then(|v| v.strip_suffix(')'))
            .is_some_and(draw_var)
    };
    let tail_ok = match rest {
        [] => true,
        ["{", v1, "-m", "int", "ge", lo, "}", "{", v2, "-m", "int", "lt", hi, "}"] => {
            v1 == v2 && draw(v1) && number(lo) && number(hi)
        }
        _ => false,
    };
    !conds.is_empty() && tail_ok
}

/// `txn.drawN`: the variable of a weighted route.
fn draw_var(s: &str) -> bool {
    s.strip_prefix("txn.draw").is_some_and(number)
}

/// `http-check expect status`: codes and ranges, comma-separated.
fn status_codes(s: &str) -> bool {
    !s.is_empty()
        && s.split(',').all(|i| {
            i.split('-')
                .all(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// A host rule's name (`pool_tags::host`'s alphabet, lower-case).
fn dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
}

/// `fall` / `rise` counts.
fn small_number(s: &str) -> bool {
    number(s) && s.len() <= 3
}

/// The HTTPS redirect's target: the request's host without its port, then an optional
/// `:PORT`, then its path and query.
fn https_location(s: &str) -> bool {
    s.strip_prefix("https://%[req.hdr(host),regsub(:[0-9]+$,)]")
        .and_then(|r| r.strip_suffix("%[pathq]"))
        .is_some_and(|port| port.is_empty() || port.strip_prefix(':').is_some_and(number))
}

/// An HTTP header name as `request_id_header` allows it.
fn header_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Member, pool and section names (`model::valid_name`'s alphabet).
fn ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn route_acl(s: &str) -> bool {
    s.strip_prefix("route_").is_some_and(ident)
}

fn word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
}

fn number(s: &str) -> bool {
    !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit())
}

fn weight(s: &str) -> bool {
    number(s) && s.parse::<u32>().is_ok_and(|w| w <= 256)
}

fn port(s: &str) -> bool {
    number(s) && s.parse::<u16>().is_ok_and(|p| p > 0)
}

/// `IPv4:port` or `[IPv6]:port`, as the model writes server addresses.
fn address(s: &str) -> bool {
    let Some((host, p)) = s.rsplit_once(':') else {
        return false;
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => host.parse::<std::net::Ipv4Addr>().is_ok(),
    };
    host_ok && port(p)
}

/// A `bind` address: `*:port`, `IPv4:port`, `[IPv6]:port` or `:::port`.
fn bind(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some(("*" | "::", p)) => port(p),
        _ => address(s),
    }
}

/// A route prefix: an absolute path of unreserved characters.
fn path(s: &str) -> bool {
    s.starts_with('/')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'~' | b'-'))
}

/// A health-check URI: a path, optionally with a simple query.
fn uri_path(s: &str) -> bool {
    s.starts_with('/')
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'/' | b'.' | b'_' | b'~' | b'-' | b'?' | b'=' | b'&' | b'%'
                )
        })
}

/// `10s`, `500ms`, `2m`, `1h`, `1d`, or a bare number (milliseconds).
/// Where HAProxy logs: `stdout`, `stderr`, a socket or file path, or `udp@ADDR:PORT`.
fn log_target(s: &str) -> bool {
    match s {
        "stdout" | "stderr" => true,
        _ => match s.strip_prefix("udp@") {
            Some(addr) => address(addr),
            None => file_path(s),
        },
    }
}

fn duration(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    number(digits) && matches!(unit, "" | "us" | "ms" | "s" | "m" | "h" | "d")
}

fn file_path(s: &str) -> bool {
    s.starts_with('/')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::check_lines;
    use crate::model::{MembersDoc, Model};
    use crate::render::{Renderer, Vars};

    fn render(json: &str) -> String {
        let doc = MembersDoc::from_json(json).expect("doc");
        Renderer::builtin()
            .render(&Model::build(&doc), &Vars::default())
            .expect("render")
    }

    #[test]
    fn the_golden_inputs_render_inside_the_grammar() {
        for name in [
            "empty",
            "one_pool",
            "several_pools",
            "injection",
            "ha_layout",
        ] {
            let json =
                std::fs::read_to_string(format!("tests/golden/{name}.json")).expect("golden");
            let cfg = render(&json);
            if let Err(e) = check_lines(&cfg) {
                panic!("{name}: {e}\n{cfg}");
            }
        }
    }

    /// The case of `tests/golden/injection.json` as it would render if the
    /// model let the port through: the old oracle (no `"`, `#` or `\` on a
    /// `server` line) passed it.
    #[test]
    fn a_newline_injected_server_line_is_caught() {
        let cfg = "backend web\n    server evil-1 172.20.0.66:3000\n    server x 6.6.6.6:80 weight 100 check\n";
        let err = check_lines(cfg).expect_err("injection passed");
        assert!(err.starts_with("line 2:"), "{err}");
        for bad in [
            "    server web-1 1.2.3.4:80 weight 100 check # x",
            "    server web 1 1.2.3.4:80 weight 100 check",
            "    server web-1 1.2.3.4:80 weight 100 check cookie other",
            "    http-check send meth GET uri /h\" x",
            "    acl route_a path /a#b",
            "listen pwn",
            "    use_backend a if route_b",
            "    server web-1 evil.example:80 weight 100 check",
            "    stats socket /tmp/x mode 600 level admin",
            "    use_backend a if",
            "    use_backend a if host_a route_a x",
            "    use_backend a if { var(txn.draw1) -m int ge 0 } { var(txn.x) -m int lt 1 }",
            "    acl host_a req.hdr(host),host_only -m str A.example",
            "    http-request set-var(txn.log) rand(10)",
            "frontend listen-x",
            "    server a 1.2.3.4:80 weight 1 check inter 2s fall 3 rise 2 port 80 x observe layer4 error-limit 1 on-error mark-down",
            "    cookie SERVERID insert indirect nocache dynamic maxlife 1d x",
        ] {
            assert!(check_lines(bad).is_err(), "{bad:?} passed");
        }
    }
}
