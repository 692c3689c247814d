//! Serf's command line with real processes: the `serf` link prints what
//! real `serf` 0.8 prints (side by side with real Serf agents when
//! `/usr/bin/serf` is installed), handler scripts written for Serf call
//! `serf members` back unmodified, Serf's doc config files load, and a
//! restarted agent rejoins its snapshot's members although its join name
//! does not resolve.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{
    converged, ip, output_within, own_session, shoal_bin, stop_session, wait_for, Agent,
    CLI_TIMEOUT,
};
use serde_json::Value;

const REAL_SERF: &str = "/usr/bin/serf";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/serf")
        .join(name)
}

/// A directory with `serf` as a symlink to the shoal binary.
fn serf_link() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(shoal_bin(), dir.path().join("serf")).expect("symlink");
    dir
}

fn run(bin: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    output_within(&mut cmd, CLI_TIMEOUT)
}

/// A real Serf agent, stopped (with its session) on drop.
struct SerfAgent {
    child: Child,
    rpc: String,
}

impl SerfAgent {
    fn start(name: &str, ip: &str, extra: &[&str]) -> SerfAgent {
        let mut cmd = Command::new(REAL_SERF);
        cmd.args(["agent", "-node", name, "-profile", "local"])
            .arg(format!("-bind={ip}:7946"))
            .arg(format!("-rpc-addr={ip}:7373"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        own_session(&mut cmd);
        let child = cmd.spawn().expect("spawn serf");
        let rpc = format!("{ip}:7373");
        assert!(
            wait_for(Duration::from_secs(10), || std::net::TcpStream::connect(
                &rpc
            )
            .is_ok()),
            "serf agent {name} never opened its RPC port"
        );
        SerfAgent { child, rpc }
    }
}

impl Drop for SerfAgent {
    fn drop(&mut self) {
        stop_session(&mut self.child);
    }
}

/// Sorted lines with each cluster's own addresses replaced by `IPn`, the
/// tags column sorted (Serf prints a Go map: in random order) and trailing
/// blanks cut (Serf keeps them on every line but the last).
fn normalised(out: &str, ips: &[String]) -> Vec<String> {
    let mut lines: Vec<String> = out
        .lines()
        .map(|l| {
            let mut l = l.trim_end().to_string();
            for (i, ip) in ips.iter().enumerate() {
                l = l.replace(ip.as_str(), &format!("IP{i}"));
            }
            if let Some((head, tags)) = l.rsplit_once("  ") {
                if tags.contains('=') {
                    let mut t: Vec<&str> = tags.split(',').collect();
                    t.sort();
                    l = format!("{head}  {}", t.join(","));
                }
            }
            l
        })
        .collect();
    lines.sort();
    lines
}

/// Every key path of a JSON value (`members[].protocol.max`), values aside.
fn key_paths(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, inner) in o {
                let p = format!("{at}.{k}");
                // Tag names are data, not fields.
                if k != "tags" {
                    key_paths(inner, &p, out);
                }
                out.push(p);
            }
        }
        Value::Array(a) => {
            for inner in a {
                key_paths(inner, &format!("{at}[]"), out);
            }
        }
        _ => {}
    }
    out.sort();
    out.dedup();
}

#[test]
fn serf_members_through_the_serf_link_prints_what_real_serf_prints() {
    let link = serf_link();
    let serf = link.path().join("serf");
    let ours = [ip(230, 1), ip(230, 2)];
    let a = Agent::start(
        "a",
        &ours[0],
        &[],
        &["--tag", "role=web", "--tag", "port=3000"],
    );
    let b = Agent::start("bb", &ours[1], &[a.gossip()], &[]);
    assert!(wait_for(Duration::from_secs(10), || converged(
        &[&a, &b],
        &["a", "bb"]
    )));
    let rpc = format!("-rpc-addr={}", a.api());

    let plain = run(&serf, &["members", &rpc]);
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    let plain = text(&plain.stdout);
    let ip0 = &ours[0];
    let ip1 = &ours[1];
    assert_eq!(
        normalised(&plain, &ours),
        [
            "a   IP0:7946  alive  port=3000,role=web".to_string(),
            "bb  IP1:7946  alive".to_string()
        ],
        "{plain}"
    );
    // `-status` takes a regex, anchored; a status nobody has lists nobody.
    let alive = run(&serf, &["members", &rpc, "-status", "al.*"]);
    assert_eq!(text(&alive.stdout).lines().count(), 2);
    let none = run(&serf, &["members", &rpc, "-status=bogus"]);
    assert!(none.status.success() && none.stdout.is_empty());
    let named = run(&serf, &["members", &rpc, "-name", "b+"]);
    assert_eq!(text(&named.stdout).lines().count(), 1);
    let json = run(&serf, &["members", &rpc, "-format", "json"]);
    let doc: Value = serde_json::from_slice(&json.stdout).expect("serf members -format json");
    let a_doc = doc["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "a"))
        .expect("a listed");
    assert_eq!(a_doc["addr"], format!("{ip0}:7946"));
    assert_eq!(a_doc["port"], 7946);
    assert_eq!(a_doc["tags"]["role"], "web");
    let detailed = text(&run(&serf, &["members", &rpc, "-detailed"]).stdout);
    assert!(
        detailed.contains(&format!("bb  {ip1}:7946  alive                      Protocol Version: 1  Available Protocol Range: [1, 1]")),
        "{detailed}"
    );

    // The same cluster of real Serf agents, when Serf is installed.
    if !Path::new(REAL_SERF).exists() {
        eprintln!("{REAL_SERF} not installed: the side-by-side comparison is skipped");
        return;
    }
    let theirs = [ip(231, 1), ip(231, 2)];
    let sa = SerfAgent::start("a", &theirs[0], &["-tag", "role=web", "-tag", "port=3000"]);
    let _sb = SerfAgent::start("bb", &theirs[1], &[&format!("-join={}:7946", theirs[0])]);
    let real_rpc = format!("-rpc-addr={}", sa.rpc);
    let real = Path::new(REAL_SERF);
    assert!(wait_for(Duration::from_secs(10), || {
        text(&run(real, &["members", &real_rpc]).stdout)
            .lines()
            .count()
            == 2
    }));
    let real_plain = text(&run(real, &["members", &real_rpc]).stdout);
    assert_eq!(normalised(&real_plain, &theirs), normalised(&plain, &ours));
    let real_json: Value =
        serde_json::from_slice(&run(real, &["members", &real_rpc, "-format", "json"]).stdout)
            .expect("real serf json");
    let (mut want, mut got) = (Vec::new(), Vec::new());
    key_paths(&real_json, "", &mut want);
    key_paths(&doc, "", &mut got);
    assert_eq!(got, want, "field names differ from real serf's");
    let real_detailed = text(&run(real, &["members", &real_rpc, "-detailed"]).stdout);
    // Per line, sorted: Serf lists members in no fixed order.
    let columns = |s: &str| -> Vec<usize> {
        let mut c: Vec<usize> = s
            .lines()
            .map(|l| l.split("  ").filter(|c| !c.is_empty()).count())
            .collect();
        c.sort();
        c
    };
    assert_eq!(
        columns(&real_detailed),
        columns(&detailed),
        "{real_detailed}\n{detailed}"
    );
}

#[test]
fn a_serf_join_handler_calling_serf_members_back_works_unmodified() {
    let link = serf_link();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("alive.json");
    // In Serf's documented style: the event in SERF_EVENT, members on stdin,
    // and the agent asked back through the `serf` command.
    let script = dir.path().join("join.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$SERF_EVENT\" = \"member-join\" ]; then\n  \
             serf members -status alive -format json > {out}.tmp && mv {out}.tmp {out}\nfi\n",
            out = out.display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!(
        "{}:{}",
        link.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let lb_ip = ip(232, 1);
    let handler = format!("member-join={}", script.display());
    let lb = Agent::start_in_with(
        std::sync::Arc::new(tempfile::tempdir().expect("tempdir")),
        "lb",
        &lb_ip,
        &[],
        &["-event-handler", &handler],
        |cmd| {
            cmd.env("PATH", &path)
                .env("SERF_RPC_ADDR", format!("{lb_ip}:7373"));
        },
    );
    let _web = Agent::start("web", &ip(232, 2), &[lb.gossip()], &["-tag", "service=web"]);
    let listed = || -> Option<Vec<String>> {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).ok()?).ok()?;
        let mut names: Vec<String> = doc["members"]
            .as_array()?
            .iter()
            .filter_map(|m| m["name"].as_str().map(String::from))
            .collect();
        names.sort();
        Some(names)
    };
    assert!(
        wait_for(Duration::from_secs(10), || listed().as_deref()
            == Some(&["lb".to_string(), "web".to_string()][..])),
        "the handler's `serf members` output: {:?}; log:\n{}",
        std::fs::read_to_string(&out),
        lb.log_text()
    );
}

#[test]
fn serf_config_files_from_serfs_docs_load() {
    let node_ip = ip(233, 1);
    let work = tempfile::tempdir().expect("tempdir");
    let conf = work.path().join("conf.d");
    std::fs::create_dir(&conf).expect("conf.d");
    std::fs::copy(fixture("docs-keys.json"), conf.join("10-keys.json")).expect("copy");
    std::fs::copy(
        fixture("docs-keys-ignored.json"),
        conf.join("20-ignored.json"),
    )
    .expect("copy");
    let mut cmd = Command::new(shoal_bin());
    cmd.current_dir(work.path())
        .args(["agent", "-config-dir", &conf.display().to_string()])
        .arg(format!("-bind={node_ip}:7946"))
        .arg(format!("-rpc-addr={node_ip}:7373"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    own_session(&mut cmd);
    let mut child = cmd.spawn().expect("spawn");
    let api = format!("{node_ip}:7373");
    let up = wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(&api).is_ok()
    });
    let info = run(
        Path::new(shoal_bin()),
        &["--api", &api, "info", "--format", "json"],
    );
    stop_session(&mut child);
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(
        up,
        "the agent did not start from Serf's config keys:\n{stderr}"
    );
    let info: Value = serde_json::from_slice(&info.stdout).expect("info json");
    assert_eq!(info["self"]["name"], "from-config", "node_name");
    assert_eq!(info["self"]["tags"]["datacenter"], "east", "tags");
    assert_eq!(info["protocol"]["profile"], "local", "profile");
    assert!(
        stderr.contains("\"protocol\" ignored"),
        "a warning per ignored key:\n{stderr}"
    );

    // The docs' example file: its tags and handlers are read (the handler
    // filters themselves are checked as --event-handler ones are).
    let cfg =
        shoal::serf::config::load(&[fixture("docs-example.json")], &[]).expect("docs example");
    assert_eq!(cfg.tags["role"], "load-balancer");
    assert_eq!(cfg.event_handlers, ["handle.sh", "user:deploy=deploy.sh"]);

    // Real Serf reads the same files (its decoder refuses unknown keys too).
    if Path::new(REAL_SERF).exists() {
        for f in [
            "docs-example.json",
            "docs-keys.json",
            "docs-keys-ignored.json",
        ] {
            let serf_ip = ip(233, 2);
            let mut cmd = Command::new(REAL_SERF);
            cmd.current_dir(work.path())
                .args(["agent", "-config-file", &fixture(f).display().to_string()])
                .arg(format!("-bind={serf_ip}:7946"))
                .arg(format!("-rpc-addr={serf_ip}:7373"));
            let mut cmd_child = {
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                own_session(&mut cmd);
                cmd.spawn().expect("spawn serf")
            };
            let rpc = format!("{serf_ip}:7373");
            let ok = wait_for(Duration::from_secs(5), || {
                std::net::TcpStream::connect(&rpc).is_ok()
            });
            stop_session(&mut cmd_child);
            assert!(ok, "real serf refused {f}");
        }
    }
}

#[test]
fn an_unknown_serf_flag_or_config_key_is_named_and_nothing_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"node_name":"x","bogus_key":1}"#).expect("write");
    let shoal = Path::new(shoal_bin());
    let out = run(
        shoal,
        &["agent", "-config-file", &bad.display().to_string()],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.json") && err.contains("\"bogus_key\""),
        "{err}"
    );
    let out = run(shoal, &["agent", "-nodename=x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("-nodename"),
        "{}",
        text(&out.stderr)
    );
    let out = run(shoal, &["agent", "-discover=cluster"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("-discover: not supported"));
}

#[test]
fn a_restarted_agent_rejoins_its_snapshot_members_when_its_join_name_does_not_resolve() {
    let dir = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
    let snap = dir.path().join("snapshot.json");
    let snap_arg = snap.display().to_string();
    let lb = Agent::start("lb", &ip(234, 1), &[], &[]);
    let mut web = Agent::start_in(
        dir.clone(),
        "web",
        &ip(234, 2),
        &[lb.gossip()],
        &["-snapshot", &snap_arg],
    );
    assert!(wait_for(Duration::from_secs(10), || converged(
        &[&lb, &web],
        &["lb", "web"]
    )));
    assert!(
        wait_for(Duration::from_secs(5), || std::fs::read_to_string(&snap)
            .is_ok_and(|s| s.contains("\"lb\""))),
        "the snapshot never listed lb"
    );
    web.kill9();
    // lb must not reach out to web's address by itself: once web is held
    // failed, force it out (lb then neither probes nor reconnects to it).
    assert!(wait_for(Duration::from_secs(10), || lb
        .status_of("web")
        .as_deref()
        == Some("failed")));
    assert!(lb.cli(&["force-leave", "web"]).status.success());

    // Control: without the snapshot, a join name that never resolves
    // (`.invalid` is reserved) leaves the restarted agent alone.
    let mut alone = Agent::start_in(
        dir.clone(),
        "web",
        &ip(234, 2),
        &["lb.invalid".to_string()],
        &[],
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(alone.status_of("lb"), None, "joined without a snapshot?");
    alone.kill9();
    drop(alone);

    // With it: rejoined at once.
    let t0 = Instant::now();
    let web = Agent::start_in(
        dir.clone(),
        "web",
        &ip(234, 2),
        &["lb.invalid".to_string()],
        &["-snapshot", &snap_arg],
    );
    let synced = wait_for(Duration::from_secs(8), || {
        common::info(&web)["synced"] == true && web.status_of("lb").as_deref() == Some("alive")
    });
    assert!(
        synced,
        "not rejoined from the snapshot; log:\n{}",
        web.log_text()
    );
    eprintln!(
        "rejoined from the snapshot and synced {:?} after the restart",
        t0.elapsed()
    );

    // A graceful leave is recorded: the next start stays out unless -rejoin.
    let mut web = web;
    web.terminate(Duration::from_secs(5));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&snap).expect("snapshot"))
        .expect("snapshot json");
    assert_eq!(doc["left"], true, "{doc}");
    let web = Agent::start_in(
        dir.clone(),
        "web",
        &ip(234, 2),
        &[],
        &["-snapshot", &snap_arg, "-rejoin"],
    );
    assert!(
        wait_for(Duration::from_secs(8), || web.status_of("lb").as_deref()
            == Some("alive")),
        "-rejoin did not rejoin after a leave; log:\n{}",
        web.log_text()
    );
}

#[test]
fn leave_on_terminate_false_makes_sigterm_stop_without_leaving_as_serf_does() {
    let dir = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
    let conf = dir.path().join("serf.json");
    std::fs::write(&conf, r#"{"leave_on_terminate": false}"#).expect("write");
    let conf = conf.display().to_string();
    let lb = Agent::start("lb", &ip(235, 1), &[], &[]);
    let mut web = Agent::start_in(
        dir,
        "web",
        &ip(235, 2),
        &[lb.gossip()],
        &["-config-file", &conf],
    );
    assert!(wait_for(Duration::from_secs(10), || converged(
        &[&lb, &web],
        &["lb", "web"]
    )));
    assert_eq!(
        web.terminate(Duration::from_secs(5)),
        Some(0),
        "log:\n{}",
        web.log_text()
    );
    assert!(
        wait_for(Duration::from_secs(10), || lb.status_of("web").as_deref()
            == Some("failed")),
        "lb holds web {:?}, not failed",
        lb.status_of("web")
    );
    assert!(
        web.log_text()
            .contains("stopping without leaving the cluster"),
        "{}",
        web.log_text()
    );
}

#[test]
fn serf_monitor_streams_the_agents_log_lines_debug_included() {
    let link = serf_link();
    let a = Agent::start("mon", &ip(236, 1), &[], &[]);
    let mut cmd = Command::new(link.path().join("serf"));
    cmd.args(["monitor", "-log-level=debug"])
        .arg(format!("-rpc-addr={}", a.api()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut monitor = common::Session::spawn(&mut cmd);
    // The stream only carries what is logged after it was opened.
    std::thread::sleep(Duration::from_millis(500));
    assert!(a.cli(&["tags", "--set", "probe=1"]).status.success());
    // A join nobody answers is logged at debug only: the agent logs at info.
    let nobody = format!("{}:7946", ip(236, 9));
    let _ = a.cli(&["join", &nobody]);
    std::thread::sleep(Duration::from_millis(500));
    let out = monitor.stop_and_read_stdout();
    assert!(
        out.lines()
            .any(|l| l.contains("[INFO] shoal_core::node: tags changed")),
        "{out}"
    );
    assert!(
        out.lines().any(
            |l| l.contains("[DEBUG] shoal::join: join push-pull failed") && l.contains(&nobody)
        ),
        "{out}"
    );
    assert!(
        !a.log_text().contains("join push-pull failed"),
        "the agent's own log stays at info"
    );
    let first = out.lines().next().unwrap_or_default();
    assert!(
        first.len() > 20 && first.as_bytes()[4] == b'/' && first.as_bytes()[10] == b' ',
        "Serf's time format: {first}"
    );
}

/// `serf query` output with the acks and responses (which come in arrival
/// order) sorted between the first line and the totals.
fn query_lines(out: &str) -> Vec<String> {
    let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
    if lines.len() > 2 {
        let totals = lines
            .iter()
            .position(|l| l.starts_with("Total "))
            .unwrap_or(lines.len());
        lines[1..totals].sort();
    }
    lines
}

/// `SUBCOMMAND -rpc-addr=X ARGS...`: where Serf's CLI takes the flag.
fn with_rpc<'a>(args: &[&'a str], rpc: &'a str) -> Vec<&'a str> {
    let mut out = vec![args[0], rpc];
    out.extend_from_slice(&args[1..]);
    out
}

#[test]
fn serf_query_through_the_serf_link_prints_what_real_serf_prints() {
    let link = serf_link();
    let serf = link.path().join("serf");
    // The same handler for shoal and for real Serf.
    let handler = "query:hi=echo \"hello from $SERF_SELF_NAME\"";
    let ours = [ip(237, 1), ip(237, 2)];
    let a = Agent::start(
        "a",
        &ours[0],
        &[],
        &["-event-handler", handler, "-tag", "role=lb"],
    );
    let b = Agent::start(
        "bb",
        &ours[1],
        &[a.gossip()],
        &["-event-handler", handler, "-tag", "role=web"],
    );
    assert!(wait_for(Duration::from_secs(10), || converged(
        &[&a, &b],
        &["a", "bb"]
    )));
    let rpc = format!("-rpc-addr={}", a.api());
    let cases: [&[&str]; 5] = [
        &["query", "-timeout", "3s", "hi", "payload"],
        &["query", "-timeout=3s", "-no-ack", "hi"],
        &["query", "-timeout", "3s", "-node", "bb", "hi"],
        &["query", "-timeout", "3s", "-tag", "role=we", "hi"],
        &[
            "query", "-timeout", "3s", "-node", "a", "-node", "bb", "nobody",
        ],
    ];
    let mut shoal_out = Vec::new();
    for args in cases {
        let got = run(&serf, &with_rpc(args, &rpc));
        assert!(got.status.success(), "{args:?}: {}", text(&got.stderr));
        shoal_out.push(text(&got.stdout));
    }
    assert_eq!(
        query_lines(&shoal_out[0]),
        [
            "Query 'hi' dispatched",
            "Ack from 'a'",
            "Ack from 'bb'",
            "Response from 'a': hello from a",
            "Response from 'bb': hello from bb",
            "Total Acks: 2",
            "Total Responses: 2"
        ],
        "{}",
        shoal_out[0]
    );
    assert!(!shoal_out[1].contains("Total Acks"), "{}", shoal_out[1]);
    assert!(shoal_out[2].contains("Response from 'bb'") && !shoal_out[2].contains("from 'a'"));
    assert!(shoal_out[3].contains("Response from 'bb'") && !shoal_out[3].contains("from 'a'"));
    let json = run(&serf, &["query", rpc.as_str(), "-format", "json", "hi"]);
    let doc: Value = serde_json::from_slice(&json.stdout).expect("serf query -format json");
    assert_eq!(doc["Responses"]["bb"], "hello from bb\n", "{doc}");
    let no_ack = run(
        &serf,
        &["query", rpc.as_str(), "-no-ack", "-format=json", "hi"],
    );
    let no_ack: Value = serde_json::from_slice(&no_ack.stdout).expect("json");
    assert_eq!(no_ack["Acks"], Value::Null, "Serf's nil slice: {no_ack}");
    // -relay-factor: shoal's answers come straight back; said so, and run.
    let relayed = run(&serf, &["query", rpc.as_str(), "-relay-factor", "2", "hi"]);
    assert!(relayed.status.success());
    assert!(text(&relayed.stderr).contains("-relay-factor ignored"));
    assert!(text(&relayed.stdout).contains("Total Responses: 2"));
    // A bad timeout is a clear error.
    let bad = run(&serf, &["query", rpc.as_str(), "-timeout", "soon", "hi"]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("timeout"),
        "{}",
        text(&bad.stderr)
    );

    if !Path::new(REAL_SERF).exists() {
        eprintln!("{REAL_SERF} not installed: the side-by-side comparison is skipped");
        return;
    }
    let theirs = [ip(238, 1), ip(238, 2)];
    let sa = SerfAgent::start(
        "a",
        &theirs[0],
        &["-event-handler", handler, "-tag", "role=lb"],
    );
    let _sb = SerfAgent::start(
        "bb",
        &theirs[1],
        &[
            &format!("-join={}:7946", theirs[0]),
            "-event-handler",
            handler,
            "-tag",
            "role=web",
        ],
    );
    let real = Path::new(REAL_SERF);
    let real_rpc = format!("-rpc-addr={}", sa.rpc);
    assert!(wait_for(Duration::from_secs(10), || {
        text(&run(real, &["members", &real_rpc]).stdout)
            .lines()
            .count()
            == 2
    }));
    for (args, ours) in cases.iter().zip(&shoal_out) {
        let theirs = run(real, &with_rpc(args, &real_rpc));
        assert!(
            theirs.status.success(),
            "real serf {args:?}: {}",
            text(&theirs.stderr)
        );
        let theirs = text(&theirs.stdout);
        assert_eq!(
            query_lines(ours),
            query_lines(&theirs),
            "serf {args:?}: shoal's output (left) against real Serf's"
        );
    }
    let real_json = run(real, &["query", real_rpc.as_str(), "-format", "json", "hi"]);
    let real_doc: Value = serde_json::from_slice(&real_json.stdout).expect("real serf json");
    assert_eq!(doc, real_doc, "serf query -format json");
    let real_no_ack = run(
        real,
        &["query", real_rpc.as_str(), "-no-ack", "-format=json", "hi"],
    );
    let real_no_ack: Value = serde_json::from_slice(&real_no_ack.stdout).expect("json");
    assert_eq!(no_ack, real_no_ack, "serf query -no-ack -format json");
}

#[test]
fn serf_event_flags_in_serfs_spelling_work() {
    let link = serf_link();
    let serf = link.path().join("serf");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("events.txt");
    let handler = format!(
        "user:deploy=echo \"$SERF_USER_EVENT $(cat)\" >> {}",
        out.display()
    );
    const TOKEN: &str = "serf-spelling-token";
    let a = Agent::start(
        "a",
        &ip(239, 1),
        &[],
        &["-event-handler", &handler, "-rpc-auth", TOKEN],
    );
    let auth = format!("-rpc-auth={TOKEN}");
    let rpc = format!("-rpc-addr={}", a.api());
    let sent = run(
        &serf,
        &[&rpc, &auth, "event", "-coalesce=false", "deploy", "v1"],
    );
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    // What real Serf 0.8 prints for the same command.
    assert_eq!(
        text(&sent.stdout),
        "Event 'deploy' dispatched! Coalescing enabled: false\n"
    );
    let sent = run(&serf, &["event", &rpc, "-rpc-auth", TOKEN, "deploy", "v2"]);
    assert_eq!(
        text(&sent.stdout),
        "Event 'deploy' dispatched! Coalescing enabled: true\n",
        "{}",
        text(&sent.stderr)
    );
    // `-coalesce` alone is true; Go's boolean flags take no separate value.
    let sent = run(&serf, &[&rpc, &auth, "event", "-coalesce", "deploy", "v3"]);
    assert!(text(&sent.stdout).ends_with("Coalescing enabled: true\n"));
    assert!(wait_for(Duration::from_secs(5), || {
        let t = std::fs::read_to_string(&out).unwrap_or_default();
        ["deploy v1", "deploy v2", "deploy v3"]
            .iter()
            .all(|e| t.contains(e))
    }));
    // shoal itself takes Serf's spelling too.
    let shoal_sent = run(
        Path::new(shoal_bin()),
        &[&rpc, &auth, "event", "-coalesce=false", "deploy", "v4"],
    );
    assert!(text(&shoal_sent.stdout)
        .starts_with("Event 'deploy' dispatched! Coalescing enabled: false (ltime "));
    // Without the token: refused, as Serf's RPC refuses a bad -rpc-auth.
    let refused = run(&serf, &[&rpc, "event", "deploy", "v5"]);
    assert!(!refused.status.success());
    let bad = run(&serf, &[&rpc, &auth, "event", "-coalesce=maybe", "deploy"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("-coalesce=maybe"),
        "{}",
        text(&bad.stderr)
    );

    if Path::new(REAL_SERF).exists() {
        let sa = SerfAgent::start("a", &ip(239, 2), &[]);
        let real_rpc = format!("-rpc-addr={}", sa.rpc);
        let real = text(
            &run(
                Path::new(REAL_SERF),
                &["event", &real_rpc, "-coalesce=false", "deploy", "v1"],
            )
            .stdout,
        );
        assert_eq!(
            real,
            "Event 'deploy' dispatched! Coalescing enabled: false\n"
        );
    }
}
