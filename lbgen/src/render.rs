//! Template rendering: handlebars in strict mode, no HTML escaping, errors that name the line.

use std::collections::BTreeMap;
use std::path::Path;

use handlebars::Handlebars;
use serde::Serialize;

use crate::model::{Model, Pool, Route};
use crate::Error;

pub use crate::grammar::check_lines;

/// The default template, compiled in so `lbgen render` works without `--template`.
pub const DEFAULT_TEMPLATE: &str = include_str!("../../templates/haproxy.cfg.hbs");

/// Variables every template gets unless `--var` overrides them.
pub const DEFAULT_VARS: &[(&str, &str)] = &[
    ("bind", "*"),
    ("http_port", "80"),
    ("stats_port", "1936"),
    ("stats_socket", "/run/haproxy/admin.sock"),
    ("maxconn", "4096"),
    ("hard_stop_after", "30s"),
    ("httpclient_ssl_verify", "none"),
    ("timeout_connect", "5s"),
    ("timeout_client", "30s"),
    ("timeout_server", "30s"),
    ("check_inter", "2s"),
    ("server_state_file", "/run/haproxy/server-state"),
    ("access_log", "stdout"),
    ("access_log_format", "json"),
    ("request_id_header", "X-Request-ID"),
    ("forwarded_for", "true"),
    ("forwarded_proto", "true"),
    ("prometheus_exporter", "true"),
    ("cookie_key", "shoal"),
    // TLS (docs/lbgen.md#tls): off while tls_certs is empty.
    ("tls_certs", ""),
    ("tls_state_dir", "/run/haproxy/tls"),
    ("https_port", "443"),
    ("https_redirect", "false"),
    ("https_redirect_port", "443"),
    ("hsts_max_age", ""),
    (TLS_CRT_LIST, ""),
    ("acme_challenge", ""),
];

/// Set by lbgen, not by `--var`: the crt-list path once the certificate directory gave at
/// least one certificate, else empty (HAProxy refuses a TLS bind without one, so the
/// default template opens the HTTPS port only then).
pub const TLS_CRT_LIST: &str = "tls_crt_list";

/// Variables the default template reads as a switch: `true` or `false`, nothing else (a
/// typo such as `flase` would otherwise silently mean "off").
const SWITCH_VARS: &[&str] = &[
    "forwarded_for",
    "forwarded_proto",
    "prometheus_exporter",
    "https_redirect",
];

/// `httpclient_ssl_verify`: HAProxy's own `httpclient.ssl.verify` values.
const HTTPCLIENT_VERIFY: &[&str] = &["none", "required"];

/// `access_log_format`: a JSON object per request, or HAProxy's own httplog line.
const ACCESS_LOG_FORMATS: &[&str] = &["json", "httplog"];

/// Variables whose value is a comma list. `--var` and `LBGEN_VAR` split on commas, so
/// `listen_ports=8100,9494` arrives as `listen_ports=8100` and `9494`: the pieces without
/// `=` that follow such a variable are its value's next items.
const LIST_VARS: &[&str] = &["listen_ports"];

/// The default template's variables with a fixed vocabulary or alphabet; the reason when
/// `value` is not one of them. Other variables (a custom template's own) pass as they are.
fn check_known_var(key: &str, value: &str) -> Result<(), String> {
    if SWITCH_VARS.contains(&key) && !matches!(value, "true" | "false") {
        return Err(format!("--var {key}={value:?}: expected true or false"));
    }
    if key == "access_log_format" && !ACCESS_LOG_FORMATS.contains(&value) {
        return Err(format!(
            "--var {key}={value:?}: expected one of {}",
            ACCESS_LOG_FORMATS.join(", ")
        ));
    }
    if key == "httpclient_ssl_verify" && !HTTPCLIENT_VERIFY.contains(&value) {
        return Err(format!(
            "--var {key}={value:?}: expected one of {} (HAProxy's httpclient.ssl.verify)",
            HTTPCLIENT_VERIFY.join(", ")
        ));
    }
    // An HTTP header name (RFC 9110 token, kept to letters, digits and `-`); empty = off.
    if key == "request_id_header"
        && !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(format!(
            "--var {key}={value:?}: a header name is letters, digits and -; empty turns the request id off"
        ));
    }
    if key == "listen_ports"
        && !value.is_empty()
        && !value
            .split(',')
            .all(|p| p.trim().parse::<u16>().is_ok_and(|p| p > 0))
    {
        return Err(format!(
            "--var {key}={value:?}: a comma list of ports 1-65535 (8100,9494), or empty"
        ));
    }
    if matches!(key, "https_port" | "https_redirect_port")
        && !(value.bytes().all(|b| b.is_ascii_digit()) && matches!(value.parse::<u16>(), Ok(1..)))
    {
        return Err(format!("--var {key}={value:?}: expected a port, 1-65535"));
    }
    if key == "hsts_max_age"
        && !(value.is_empty() || (value.len() <= 10 && value.bytes().all(|b| b.is_ascii_digit())))
    {
        return Err(format!(
            "--var {key}={value:?}: expected seconds (31536000 = a year); empty turns HSTS off"
        ));
    }
    if key == "tls_state_dir"
        && !(value.starts_with('/')
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-')))
    {
        return Err(format!(
            "--var {key}={value:?}: an absolute path of letters, digits, '/', '.', '_' and '-'"
        ));
    }
    if key == TLS_CRT_LIST {
        return Err(format!(
            "--var {key}: set by lbgen from tls_certs (the crt-list it writes in tls_state_dir)"
        ));
    }
    if key == "cookie_key" && !cookie_key(value) {
        return Err(format!(
            "--var {key}={value:?}: letters, digits, '.', '_' and '-' only, not empty"
        ));
    }
    // Where `lbgen acme --http` answers HTTP-01 challenges: IPv4:PORT; empty = no ACME route.
    if key == "acme_challenge"
        && !value.is_empty()
        && value.parse::<std::net::SocketAddrV4>().is_err()
    {
        return Err(format!(
            "--var {key}={value:?}: expected IPv4:PORT (lbgen acme --http), or empty for none"
        ));
    }
    Ok(())
}

/// Template variables: the defaults above, then `--var K=V` (last one wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vars(pub BTreeMap<String, String>);

impl Default for Vars {
    fn default() -> Self {
        Vars(
            DEFAULT_VARS
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
}

impl Vars {
    /// Applies `K=V` overrides. Keys are `[A-Za-z0-9_]+`; values may not contain control
    /// characters (they are operator input, but a newline would still break the config).
    pub fn with_overrides<S: AsRef<str>>(overrides: &[S]) -> Result<Vars, Error> {
        let mut vars = Vars::default();
        let mut pieces = overrides.iter().map(AsRef::as_ref).peekable();
        while let Some(kv) = pieces.next() {
            let (k, first) = kv
                .split_once('=')
                .ok_or_else(|| Error::new(format!("--var {kv:?}: expected K=V")))?;
            let mut v = first.to_string();
            if LIST_VARS.contains(&k) {
                while let Some(item) = pieces.next_if(|p| !p.contains('=')) {
                    v.push(',');
                    v.push_str(item);
                }
            }
            let v = v.as_str();
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(Error::new(format!(
                    "--var {kv:?}: name must be [A-Za-z0-9_]+"
                )));
            }
            if v.chars().any(char::is_control) {
                return Err(Error::new(format!(
                    "--var {k}: value contains a control character"
                )));
            }
            check_known_var(k, v).map_err(Error::new)?;
            vars.0.insert(k.to_string(), v.to_string());
        }
        Ok(vars)
    }

    /// The certificate directory (`tls_certs`), None while TLS is off.
    pub fn tls_certs(&self) -> Option<&str> {
        self.0
            .get("tls_certs")
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// Where lbgen keeps its certificate copies and the crt-list (`tls_state_dir`).
    pub fn tls_state_dir(&self) -> &str {
        self.0
            .get("tls_state_dir")
            .map_or("/run/haproxy/tls", String::as_str)
    }

    /// Sets the derived [`TLS_CRT_LIST`] (None = no certificate: no TLS bind); true if it
    /// changed.
    pub fn set_tls_crt_list(&mut self, path: Option<&str>) -> bool {
        let v = path.unwrap_or_default().to_string();
        self.0.insert(TLS_CRT_LIST.to_string(), v.clone()) != Some(v)
    }
}

/// A `dynamic-cookie-key` word (HAProxy takes it up to a space; a `#` would start a comment).
fn cookie_key(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What the template sees. Documented in docs/lbgen.md (Template variables); keep the two in sync.
#[derive(Serialize)]
struct Context<'a> {
    vars: &'a BTreeMap<String, String>,
    pools: &'a [Pool],
    routes: &'a [Route],
    default_pool: &'a Option<String>,
    draws: &'a [crate::model::Draw],
    listeners: &'a [crate::model::Listener],
    listener_without_default: bool,
    members: &'a [crate::nodes::Node],
    scrape_targets: &'a [crate::nodes::ScrapeTarget],
    lbs: &'a [crate::nodes::LbPeer],
    local: &'a Option<crate::nodes::Local>,
}

/// A compiled template.
pub struct Renderer {
    hb: Handlebars<'static>,
    name: String,
}

const TPL: &str = "main";

impl Renderer {
    /// Compiles template source; `name` (usually the file path) appears in errors.
    pub fn from_source(name: &str, src: &str) -> Result<Renderer, Error> {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::no_escape);
        hb.register_template_string(TPL, src).map_err(|e| {
            let at = match e.pos() {
                Some((line, col)) => format!(" line {line} col {col}"),
                None => String::new(),
            };
            Error::new(format!(
                "template {name}{at}: {}",
                one_line(&e.reason().to_string())
            ))
        })?;
        Ok(Renderer {
            hb,
            name: name.to_string(),
        })
    }

    /// Reads and compiles a template file.
    pub fn from_file(path: &Path) -> Result<Renderer, Error> {
        let src = std::fs::read_to_string(path)
            .map_err(|e| Error::new(format!("template {}: {e}", path.display())))?;
        Renderer::from_source(&path.display().to_string(), &src)
    }

    /// The compiled-in default template.
    pub fn builtin() -> Renderer {
        // The default template is tested; failing here is a build defect, not input.
        Renderer::from_source("(builtin)", DEFAULT_TEMPLATE).expect("builtin template compiles")
    }

    pub fn render(&self, model: &Model, vars: &Vars) -> Result<String, Error> {
        let ctx = Context {
            vars: &vars.0,
            pools: &model.pools,
            routes: &model.routes,
            default_pool: &model.default_pool,
            draws: &model.draws,
            listeners: &model.listeners,
            listener_without_default: model.listener_without_default,
            members: &model.members,
            scrape_targets: &model.scrape_targets,
            lbs: &model.lbs,
            local: &model.local,
        };
        let mut out = self.hb.render(TPL, &ctx).map_err(|e| {
            let at = match (e.line_no, e.column_no) {
                (Some(l), Some(c)) => format!(" line {l} col {c}"),
                (Some(l), None) => format!(" line {l}"),
                _ => String::new(),
            };
            let why = match e.reason() {
                handlebars::RenderErrorReason::MissingVariable(Some(v)) => {
                    format!("unknown field `{v}` (strict mode)")
                }
                other => one_line(&other.to_string()),
            };
            Error::new(format!("template {}{at}: {why}", self.name))
        })?;
        if !out.ends_with('\n') {
            out.push('\n');
        }
        Ok(out)
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MembersDoc;

    fn model(json: &str) -> Model {
        Model::build(&MembersDoc::from_json(json).unwrap())
    }

    #[test]
    fn syntax_error_names_the_line() {
        let err = Renderer::from_source("t.hbs", "global\n  {{#each pools}}\n  x\n")
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("template t.hbs line "), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn unknown_field_in_strict_mode_names_the_line() {
        let r = Renderer::from_source("t.hbs", "a\nb {{vars.nope}}\n").unwrap();
        let err = r
            .render(&Model::default(), &Vars::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("nope"), "{err}");
    }

    /// Regression: `--var listen_ports=8100,9494` (and the same in `LBGEN_VAR`) reached lbgen
    /// split on its comma, and `9494` was refused as "expected K=V".
    #[test]
    fn listen_ports_keeps_its_comma_list_when_the_flag_split_it() {
        let v =
            Vars::with_overrides(&["http_port=443", "listen_ports=8100", "9494", "x=1"]).unwrap();
        assert_eq!(v.0["listen_ports"], "8100,9494");
        assert_eq!(v.0["x"], "1");
        let v = Vars::with_overrides(&["listen_ports=8100,9494"]).unwrap();
        assert_eq!(v.0["listen_ports"], "8100,9494");
        // Anywhere else a piece without `=` is still an error, and so is a bad port.
        for bad in [
            &["x=1", "9494"][..],
            &["9494"],
            &["listen_ports=8100", "http"],
            &["listen_ports=0"],
            &["listen_ports=8100,", "x=1"],
        ] {
            assert!(Vars::with_overrides(bad).is_err(), "{bad:?}");
        }
        assert!(
            Vars::with_overrides(&["listen_ports="]).is_ok(),
            "empty = any port"
        );
    }

    #[test]
    fn no_html_escaping() {
        let r = Renderer::from_source("t", "{{vars.x}}").unwrap();
        let v = Vars::with_overrides(&["x=a&b<c>'\""]).unwrap();
        assert_eq!(r.render(&Model::default(), &v).unwrap(), "a&b<c>'\"\n");
    }

    #[test]
    fn var_overrides_and_bad_vars() {
        let v = Vars::with_overrides(&["http_port=8080", "x=1=2"]).unwrap();
        assert_eq!(v.0["http_port"], "8080");
        assert_eq!(v.0["x"], "1=2");
        assert!(Vars::with_overrides(&["novalue"]).is_err());
        assert!(Vars::with_overrides(&["a b=1"]).is_err());
        assert!(Vars::with_overrides(&["a=1\nlisten x"]).is_err());
        assert_eq!(
            Vars::with_overrides(&["cookie_key=prod-1.a_b"]).unwrap().0["cookie_key"],
            "prod-1.a_b"
        );
        for bad in ["cookie_key=", "cookie_key=a b", "cookie_key=a#b"] {
            let e = Vars::with_overrides(&[bad]).expect_err(bad).to_string();
            assert!(e.contains("cookie_key"), "{e}");
        }
    }

    #[test]
    fn a_switch_var_that_is_not_true_or_false_is_refused_by_name() {
        let err = Vars::with_overrides(&["forwarded_proto=flase"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("forwarded_proto") && err.contains("true or false"),
            "{err}"
        );
        let err = Vars::with_overrides(&["access_log_format=xml"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("json, httplog"), "{err}");
        let err = Vars::with_overrides(&["request_id_header=X Id"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("request_id_header"), "{err}");
        let v = Vars::with_overrides(&[
            "prometheus_exporter=false",
            "access_log_format=httplog",
            "request_id_header=",
        ])
        .unwrap();
        assert_eq!(v.0["request_id_header"], "");
    }

    #[test]
    fn every_switch_of_the_default_template_turns_its_lines_off() {
        let on = Renderer::builtin()
            .render(&Model::default(), &Vars::default())
            .unwrap();
        let off = Renderer::builtin()
            .render(
                &Model::default(),
                &Vars::with_overrides(&[
                    "forwarded_for=false",
                    "forwarded_proto=false",
                    "prometheus_exporter=false",
                    "request_id_header=",
                    "access_log_format=httplog",
                ])
                .unwrap(),
            )
            .unwrap();
        for line in [
            "    option forwardfor\n",
            "X-Forwarded-Proto",
            "prometheus-exporter",
            "unique-id-header X-Request-ID",
            "    log-format \"{",
        ] {
            assert!(on.contains(line), "default lacks {line:?}:\n{on}");
            assert!(
                !off.contains(line),
                "switched off but still has {line:?}:\n{off}"
            );
        }
        assert!(off.contains("    option httplog\n"), "{off}");
        assert!(!on.contains("    option httplog\n"), "{on}");
    }

    #[test]
    fn identical_membership_renders_identical_bytes() {
        let a = model(
            r#"{"members":[{"name":"b","addr":"10.0.0.2:1","status":"alive","tags":{"service":"web","port":"80"}},
                           {"name":"a","addr":"10.0.0.1:1","status":"alive","tags":{"service":"web","port":"80"}}]}"#,
        );
        let b = model(
            r#"{"members":[{"name":"a","addr":"10.0.0.1:1","status":"alive","tags":{"port":"80","service":"web"}},
                           {"name":"b","addr":"10.0.0.2:1","status":"alive","tags":{"service":"web","port":"80"}}]}"#,
        );
        let r = Renderer::builtin();
        assert_eq!(
            r.render(&a, &Vars::default()).unwrap(),
            r.render(&b, &Vars::default()).unwrap()
        );
    }

    #[test]
    fn with_no_pool_at_slash_unmatched_requests_go_to_the_503_backend() {
        let m = model(
            r#"{"members":[{"name":"a","addr":"10.0.0.1:1","status":"alive","tags":{"service":"api","port":"80","route":"/api"}}]}"#,
        );
        let out = Renderer::builtin().render(&m, &Vars::default()).unwrap();
        assert!(out.contains("    default_backend no-backend\n"), "{out}");
        assert!(out.contains("\nbackend no-backend\n"), "{out}");
        assert!(!out.contains("default_backend api"), "{out}");
    }
}
