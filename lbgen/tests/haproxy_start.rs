//! What the builtin template costs HAProxy at start, against a real HAProxy 2.6 (127.0.0.1
//! only). Every start, reload and `haproxy -c` parses the whole config; HAProxy 2.6's
//! internal HTTP client loads the system's CA store then unless told not to verify, 50 of the
//! 65 ms HAProxy took to start on the demo's config. The template does not use that client
//! (no Lua), so `httpclient_ssl_verify` defaults to `none`.

use lbgen::testing as common;

use common::{member, Haproxy};
use lbgen::model::{MembersDoc, Model};
use lbgen::render::{Renderer, Vars};

/// The builtin template's config of one pool, HAProxy started from it, and its worker's
/// answer to `show ssl ca-file` (the CA files HAProxy holds in memory).
async fn ca_files_loaded_with(extra_vars: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let overrides = common::loopback_vars(d, common::free_port(), extra_vars);
    let vars = Vars::with_overrides(&overrides).unwrap();
    let doc = serde_json::json!({ "members": [member("web-1", 9, "alive", &[])] }).to_string();
    let cfg = Renderer::builtin()
        .render(&Model::build(&MembersDoc::from_json(&doc).unwrap()), &vars)
        .unwrap();
    let path = d.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let haproxy = Haproxy::start(d, &path);
    lbgen::haproxy::Master::new(&haproxy.master_sock)
        .command("@1 show ssl ca-file")
        .await
        .expect("show ssl ca-file")
}

#[tokio::test]
async fn haproxy_started_from_the_builtin_template_does_not_load_the_system_ca_store() {
    let loaded = ca_files_loaded_with(&[]).await;
    // No CA file at all: the answer is one empty line (HAProxy's default lists @system-ca).
    assert_eq!(loaded.trim(), "", "CA files loaded: {loaded}");
}

#[tokio::test]
async fn httpclient_ssl_verify_required_loads_the_system_ca_store_again() {
    // The same check on HAProxy's default: the store is loaded, so the test above can fail.
    let loaded = ca_files_loaded_with(&["httpclient_ssl_verify=required"]).await;
    assert!(
        loaded.starts_with("# filename") && loaded.contains("@system-ca"),
        "{loaded:?}"
    );
}

#[test]
fn an_unknown_httpclient_ssl_verify_is_refused_with_its_values() {
    let Err(err) = Vars::with_overrides(&["httpclient_ssl_verify=optional".to_string()]) else {
        panic!("httpclient_ssl_verify=optional was accepted");
    };
    let msg = err.to_string();
    assert!(
        msg.contains("httpclient_ssl_verify") && msg.contains("none, required"),
        "{msg}"
    );
}

/// `lbgen render --out` before HAProxy's first start (the lb image's haproxy service): the
/// config names a server-state file that does not exist yet, and HAProxy 2.6 logged a WARNING
/// at every new LB's start that it could not open it. lbgen creates it with no state in it
/// (the version line), and leaves an existing one alone.
#[test]
fn haproxy_started_from_lbgen_render_logs_no_warning_about_a_missing_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("server-state");
    let members = d.join("members.json");
    common::write_members(&members, &[member("web-1", 9, "alive", &[])]);
    let cfg = d.join("haproxy.cfg");
    let vars = common::loopback_vars(d, common::free_port(), &[]).join(",");
    let render = || {
        let out = common::output_within(
            std::process::Command::new(env!("CARGO_BIN_EXE_lbgen"))
                .args(["render", "--members"])
                .arg(&members)
                .arg("--out")
                .arg(&cfg)
                .args(["--var", &vars]),
            std::time::Duration::from_secs(20),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
    };
    render();
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "1\n");
    let haproxy = Haproxy::start(d, &cfg);
    // The config is parsed (and any warning about it logged) before the master says this.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(&haproxy.log).unwrap();
        if log.contains("Loading success") || std::time::Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(log.contains("Loading success"), "{log}");
    assert!(!log.contains("server state file"), "{log}");
    drop(haproxy);

    // A state file that is there (lbgen watch wrote it before a reload) is not touched.
    std::fs::write(&state, "1\n# be_id be_name\n").unwrap();
    render();
    assert_eq!(
        std::fs::read_to_string(&state).unwrap(),
        "1\n# be_id be_name\n"
    );
}
