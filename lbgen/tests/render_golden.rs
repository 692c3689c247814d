//! Golden-file renders of the default template, each also validated by the real `haproxy -c`.
//! Regenerate after an intended template change: `UPDATE_GOLDEN=1 cargo test -p lbgen --test render_golden`.

use lbgen::testing as common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn lbgen(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    // stdin from a file: the command cannot block on a pipe, and it has a deadline.
    let input = tempfile::NamedTempFile::new().expect("stdin file");
    std::fs::write(input.path(), stdin.unwrap_or("")).expect("write stdin");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lbgen"));
    cmd.args(args)
        .env("LBGEN_LOG", "warn")
        .stdin(std::fs::File::open(input.path()).expect("open stdin file"));
    let out = common::output_within(&mut cmd, common::COMMAND_TIMEOUT);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn haproxy_check(cfg: &Path) {
    let out = common::output_within(
        Command::new(lbgen::output::resolve_program("haproxy"))
            .args(["-c", "-f"])
            .arg(cfg)
            .stdin(Stdio::null()),
        common::COMMAND_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "haproxy -c rejected {}: {}",
        cfg.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn golden(case: &str) {
    golden_with(case, &[]);
}

/// A golden render with more `--var K=V`.
fn golden_with(case: &str, vars: &[&str]) {
    let members = dir().join(format!("{case}.json"));
    let expected = dir().join(format!("{case}.cfg"));
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/haproxy.cfg.hbs");
    let mut args = vec![
        "render".to_string(),
        "--template".into(),
        template.to_str().unwrap().into(),
        "--members".into(),
        members.to_str().unwrap().into(),
        "--var".into(),
        "stats_socket=/tmp/lbgen-golden.sock".into(),
    ];
    for v in vars {
        args.push("--var".into());
        args.push(v.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = lbgen(&args, None);
    assert!(ok, "render {case} failed: {err}");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected, &out).unwrap();
    }
    let want =
        std::fs::read_to_string(&expected).expect("golden file (UPDATE_GOLDEN=1 creates it)");
    assert_eq!(
        out,
        want,
        "render of {case} differs from {}",
        expected.display()
    );
    haproxy_check(&expected);
}

#[test]
fn golden_one_pool() {
    golden("one_pool");
}

#[test]
fn golden_several_pools_with_routes_checks_and_stickiness() {
    golden("several_pools");
}

/// The HA web-services layout from tags only: the main listener on 443 (a default pool, a
/// host rule, the four path rules, a 90/10 canary split), listeners 8100 and 9494 (TLS asked
/// for, rendered plain until TLS is configured) with their own default pools and a route, a
/// check on another port, one-day stickiness, a one-hour server timeout for uploads, and a
/// pool whose only member failed: its route stays (503), it does not fall through to `web`.
#[test]
fn golden_ha_layout_from_tags_only() {
    golden_with("ha_layout", &["http_port=443"]);
    let cfg = std::fs::read_to_string(dir().join("ha_layout.cfg")).unwrap();
    for line in [
        "    bind *:443\n",
        "\nfrontend listen-8100\n    bind *:8100\n",
        "\nfrontend listen-9494\n    bind *:9494\n",
        "    default_backend svc9494\n",
        "    use_backend reports if route_reports\n",
        "port 8081 observe",
        "cookie SERVERID insert indirect nocache dynamic maxlife 1d\n",
        "    timeout server 1h\n",
        "    use_backend admin if host_admin\n",
    ] {
        assert!(cfg.contains(line), "no {line:?} in ha_layout.cfg");
    }
    for prefix in ["/api/v2", "/api/v0", "/upload", "/socket.io-queue"] {
        assert!(
            cfg.contains(&format!(" path_beg {prefix}/\n")),
            "no rule for {prefix}"
        );
    }
}

#[test]
fn golden_empty_cluster() {
    golden("empty");
}

#[test]
fn golden_injection_attempts_are_skipped_and_reported() {
    golden("injection");
    let members = dir().join("injection.json");
    let (_, _, err) = lbgen(&["render", "--members", members.to_str().unwrap()], None);
    assert_eq!(err.matches("member skipped").count(), 5, "{err}");
}

#[test]
fn members_from_stdin() {
    let doc = std::fs::read_to_string(dir().join("one_pool.json")).unwrap();
    let (ok, out, err) = lbgen(&["render", "--members", "-"], Some(&doc));
    assert!(ok, "{err}");
    assert!(
        out.contains("server web-1 172.20.0.5:3000 weight 100 check"),
        "{out}"
    );
}

#[test]
fn var_flags_reach_the_template() {
    let (ok, out, err) = lbgen(
        &[
            "render",
            "--members",
            "-",
            "--var",
            "http_port=8080",
            "--var",
            "stats_port=1937",
        ],
        Some(r#"{"members":[]}"#),
    );
    assert!(ok, "{err}");
    assert!(out.contains("bind *:8080"), "{out}");
    assert!(out.contains("bind *:1937"), "{out}");
}

/// Each bad input: exit status 1, one line naming the problem, nothing written.
#[test]
fn bad_input_gives_one_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let bad_syntax = d.path().join("bad.hbs");
    std::fs::write(&bad_syntax, "global\n    maxconn 10\n{{#each pools}\n").unwrap();
    let unknown = d.path().join("unknown.hbs");
    std::fs::write(
        &unknown,
        "global\n    maxconn {{vars.maxconn}}\n    x {{vars.nosuch}}\n",
    )
    .unwrap();
    let out = d.path().join("out.cfg");
    let members = dir().join("one_pool.json");
    let m = members.to_str().unwrap();
    let o = out.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "render",
                "--template",
                "/nonexistent.hbs",
                "--members",
                m,
                "--out",
                o,
            ],
            "/nonexistent.hbs",
        ),
        (
            vec![
                "render",
                "--template",
                bad_syntax.to_str().unwrap(),
                "--members",
                m,
                "--out",
                o,
            ],
            "line 3",
        ),
        (
            vec![
                "render",
                "--template",
                unknown.to_str().unwrap(),
                "--members",
                m,
                "--out",
                o,
            ],
            "line 3",
        ),
        (
            vec!["render", "--members", "/nonexistent.json", "--out", o],
            "/nonexistent.json",
        ),
        (
            vec![
                "render",
                "--members",
                bad_syntax.to_str().unwrap(),
                "--out",
                o,
            ],
            "invalid members document",
        ),
        (
            vec!["render", "--members", m, "--var", "oops", "--out", o],
            "oops",
        ),
        (
            vec!["render", "--members", m, "--out", o, "--check-cmd", "false"],
            "rejected",
        ),
    ];
    for (args, needle) in cases {
        let (ok, _, err) = lbgen(&args, None);
        assert!(!ok, "{args:?} should fail");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("lbgen: ")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].contains(needle), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} wrote output");
    }
}

/// One member with its own `check` and a one-member pool at `/`: the pools keep the value most
/// members hold, and `lbgen status` (and the log) name the outvoted members.
#[test]
fn one_members_tags_do_not_take_over_a_pool_and_status_names_it() {
    let doc = r#"{"members":[
{"name":"web-1","addr":"10.0.0.1:7946","status":"alive","tags":{"service":"web","port":"3000","check":"/health"}},
{"name":"web-2","addr":"10.0.0.2:7946","status":"alive","tags":{"service":"web","port":"3000","check":"/health"}},
{"name":"a-evil","addr":"10.0.0.9:7946","status":"alive","tags":{"service":"web","port":"3000","check":"/a"}},
{"name":"b-evil","addr":"10.0.0.8:7946","status":"alive","tags":{"service":"aaa","port":"3000"}}]}"#;
    let (ok, cfg, err) = lbgen(&["render", "--members", "-"], Some(doc));
    assert!(ok, "{err}");
    assert!(
        cfg.contains("http-check send meth GET uri /health\n"),
        "{cfg}"
    );
    assert!(!cfg.contains("uri /a\n"), "{cfg}");
    assert!(cfg.contains("    default_backend web\n"), "{cfg}");
    assert!(
        err.contains("member a-evil of pool web: check \"/a\" not used"),
        "{err}"
    );
    let (ok, out, err) = lbgen(&["status", "--members", "-"], Some(doc));
    assert!(ok, "{err}");
    assert!(
        out.contains("pool web: route / (default), check /health,"),
        "{out}"
    );
    assert!(
        out.contains("conflict: member a-evil of pool web: check \"/a\""),
        "{out}"
    );
    assert!(
        out.contains("conflict: member b-evil of pool aaa: route \"/\""),
        "{out}"
    );
    let (ok, out, _) = lbgen(&["status", "--members", "-", "--format", "json"], Some(doc));
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["default_pool"], "web");
    assert_eq!(v["conflicts"].as_array().unwrap().len(), 2, "{out}");
}

/// `lbgen status` takes the `--var`s `watch` runs with (flag and `LBGEN_VAR`): a `listen=`
/// tag on a port the LB binds itself, or outside `listen_ports`, is skipped in the status
/// exactly as it is in the render, and accepted when the variables allow it.
#[test]
fn status_with_the_watch_vars_judges_listen_tags_as_the_render_does() {
    let doc = r#"{"members":[
{"name":"web-1","addr":"10.0.0.1:7946","status":"alive","tags":{"service":"web","port":"3000"}},
{"name":"svc-1","addr":"10.0.0.2:7946","status":"alive","tags":{"service":"svc","port":"8100","listen":"8100"}}]}"#;
    let status = |extra: &[&str], env: Option<&str>| {
        let input = tempfile::NamedTempFile::new().expect("stdin file");
        std::fs::write(input.path(), doc).expect("write stdin");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lbgen"));
        cmd.args(["status", "--members", "-"])
            .args(extra)
            .env("LBGEN_LOG", "warn")
            .env_remove("LBGEN_VAR")
            .stdin(std::fs::File::open(input.path()).expect("open stdin file"));
        if let Some(v) = env {
            cmd.env("LBGEN_VAR", v);
        }
        let out = common::output_within(&mut cmd, common::COMMAND_TIMEOUT);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let served = "pool svc: route / on listener 8100";
    let out = status(&[], None);
    assert!(out.contains(served), "{out}");

    let own = "skipped: member svc-1: tag listen=\"8100\" is a port the LB binds itself";
    for out in [
        status(&["--var", "http_port=8100"], None),
        status(&[], Some("http_port=8100,stats_port=1936")),
    ] {
        assert!(out.contains(own), "{out}");
        assert!(!out.contains("pool svc:"), "{out}");
    }
    let out = status(&["--var", "listen_ports=9494"], None);
    assert!(
        out.contains("skipped: member svc-1: tag listen=\"8100\" is not in --var listen_ports"),
        "{out}"
    );
    let out = status(&["--var", "listen_ports=8100,9494"], None);
    assert!(out.contains(served), "{out}");
    // The render with the same variables agrees.
    let (ok, cfg, err) = lbgen(
        &["render", "--members", "-", "--var", "http_port=8100"],
        Some(doc),
    );
    assert!(ok, "{err}");
    assert!(!cfg.contains("backend svc\n"), "{cfg}");
}

/// The Prometheus file_sd template: golden bytes, valid JSON, and every target once.
#[test]
fn golden_prometheus_targets_from_membership() {
    let members = dir().join("monitoring.json");
    let expected = dir().join("monitoring.targets.json");
    let template =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/prometheus-targets.json.hbs");
    let (ok, out, err) = lbgen(
        &[
            "render",
            "--template",
            template.to_str().unwrap(),
            "--members",
            members.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "render failed: {err}");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected, &out).unwrap();
    }
    let want =
        std::fs::read_to_string(&expected).expect("golden file (UPDATE_GOLDEN=1 creates it)");
    assert_eq!(out, want, "render differs from {}", expected.display());
    let groups: Vec<serde_json::Value> = serde_json::from_str(&out).expect("valid JSON");
    let got: Vec<(String, String)> = groups
        .iter()
        .map(|g| {
            (
                g["labels"]["job"].as_str().unwrap().to_string(),
                g["targets"][0].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("haproxy", "172.20.0.9:1936"),
        ("haproxy", "172.20.0.2:1936"),
        ("haproxy", "[fd00::2]:1936"),
        ("lbgen", "172.20.0.2:8405"),
        ("shoal-agent", "172.20.0.2:7373"),
        ("shoal-agent", "172.20.0.5:7373"),
        ("shoal-agent", "172.20.0.6:7373"),
        ("shoal-agent", "172.20.0.7:7373"),
    ]
    .iter()
    .map(|(j, a)| (j.to_string(), a.to_string()))
    .collect();
    assert_eq!(got, want);
    // The member with an unsafe service tag is scraped without it.
    assert_eq!(groups[0]["labels"]["node"], "evil");
    assert_eq!(groups[0]["labels"]["service"], "");
}

#[test]
fn an_empty_cluster_renders_an_empty_target_list() {
    let template =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/prometheus-targets.json.hbs");
    let (ok, out, err) = lbgen(
        &[
            "render",
            "--template",
            template.to_str().unwrap(),
            "--members",
            "-",
        ],
        Some(r#"{"members":[]}"#),
    );
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!([])
    );
}

#[test]
fn the_acme_challenge_var_routes_the_challenge_path_before_every_route() {
    let members = std::fs::read_to_string(dir().join("several_pools.json")).unwrap();
    let (ok, out, err) = lbgen(
        &[
            "render",
            "--members",
            "-",
            "--var",
            "acme_challenge=127.0.0.1:8402",
            "--var",
            "stats_socket=/tmp/lbgen-golden.sock",
        ],
        Some(&members),
    );
    assert!(ok, "{err}");
    let acme = "    use_backend acme-challenge if { path_beg /.well-known/acme-challenge/ }";
    let at = out.find(acme).expect("the challenge route");
    let first_route = out.find("    use_backend ").unwrap();
    assert_eq!(at, first_route, "the challenge route comes first:\n{out}");
    assert!(
        out.contains("backend acme-challenge\n    server acme 127.0.0.1:8402\n"),
        "{out}"
    );
    lbgen::render::check_lines(&out).unwrap();
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), &out).unwrap();
    haproxy_check(f.path());
    // Off by default: the golden renders above have no such lines.
    let (_, plain, _) = lbgen(&["render", "--members", "-"], Some(&members));
    assert!(!plain.contains("acme"), "{plain}");
}

#[test]
fn an_acme_challenge_var_that_is_not_ipv4_and_port_is_refused() {
    for bad in [
        "localhost:8402",
        "127.0.0.1",
        "[::1]:8402",
        "127.0.0.1:80 backup",
    ] {
        let (ok, _, err) = lbgen(
            &[
                "render",
                "--members",
                "-",
                "--var",
                &format!("acme_challenge={bad}"),
            ],
            Some(r#"{"members":[]}"#),
        );
        assert!(!ok, "{bad} accepted");
        assert!(err.contains("acme_challenge"), "{bad}: {err}");
    }
}
