//! lbgen against a token-protected agent (`shoal agent --api-token T`): with
//! the token it follows the agent and renders its members; with a wrong or
//! missing one every request is refused, and the error names the 401 and
//! the flag to fix.

mod common;

use std::time::Duration;

use common::{ip, wait_for, Agent};
use lbgen::apply::ApplyOutcome as Outcome;
use lbgen::source::{Source, SourceSpec};

const TOKEN: &str = "s3cr3t-token";

fn config_has(out: &std::path::Path, needle: &str) -> bool {
    std::fs::read_to_string(out).is_ok_and(|t| t.contains(needle))
}

/// One raw HTTP/1.1 GET with the bearer token; the whole answer, headers included.
fn raw_get(addr: &str, path: &str, token: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect api");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn lbgen_follows_a_token_protected_agent_and_names_a_refused_token() {
    let dir = tempfile::tempdir().unwrap();
    let seed = vec![format!("{}:7946", ip(70, 1))];
    let lb = Agent::start("lb", &ip(70, 1), &seed, &["--api-token", TOKEN]);
    let _web = Agent::start(
        "web-1",
        &ip(70, 2),
        &seed,
        &["--tag", "service=web", "--tag", "port=3000"],
    );
    let rt = runtime();

    // The snapshot (what `lbgen status --api` reads) carries the token and the contract's version.
    let doc = rt
        .block_on(Source::new(SourceSpec::api(lb.api(), Some(TOKEN.into()))).snapshot())
        .unwrap_or_else(|e| panic!("snapshot with the right token: {e}\n{}", lb.log_text()));
    assert_eq!(doc.version, Some(shoal_contract::API_VERSION));
    let answer = raw_get(&lb.api(), "/v1/members", TOKEN);
    assert!(
        answer.starts_with("HTTP/1.1 200")
            && answer.contains(&format!(
                "{}: {}\r\n",
                shoal_contract::VERSION_HEADER,
                shoal_contract::API_VERSION
            )),
        "every answer names the API version:\n{answer}"
    );
    for (token, says) in [
        (Some("wrong".to_string()), "refused the token given"),
        (None, "no token was given"),
    ] {
        let err = rt
            .block_on(Source::new(SourceSpec::api(lb.api(), token.clone())).snapshot())
            .expect_err("the agent must refuse it");
        assert!(
            err.0.contains("401") && err.0.contains(says) && err.0.contains("--api-token"),
            "{token:?}: {err}"
        );
    }

    // The follow loop with the token: event stream and snapshots both get in.
    let out = dir.path().join("haproxy.cfg");
    let mut cfg = common::lbgen_watch_config(lb.api(), out.clone());
    cfg.source = SourceSpec::api(lb.api(), Some(TOKEN.into()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = rt.spawn(lbgen::watch::run(cfg, async {
        let _ = stop_rx.await;
    }));
    let web_line = format!("server web-1 {}:3000", ip(70, 2));
    assert!(
        wait_for(Duration::from_secs(20), || config_has(&out, &web_line)),
        "web-1 never rendered through the token-protected agent:\n{}\nagent log:\n{}",
        std::fs::read_to_string(&out).unwrap_or_default(),
        lb.log_text()
    );
    let _ = stop_tx.send(());
    rt.block_on(watcher)
        .expect("the watch task did not panic")
        .expect("the watch loop ended cleanly");

    // A wrong token: nothing is written, and the report says why.
    let bad_out = dir.path().join("refused.cfg");
    let mut cfg = common::lbgen_watch_config(lb.api(), bad_out.clone());
    cfg.source = SourceSpec::api(lb.api(), Some("wrong".into()));
    let (reports_tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    cfg.reports = Some(reports_tx);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = rt.spawn(lbgen::watch::run(cfg, async {
        let _ = stop_rx.await;
    }));
    let report = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), reports.recv()).await })
        .expect("a report within 10 s")
        .expect("the loop reports");
    match &report.outcome {
        Outcome::Failed(why) => assert!(
            why.contains("HTTP 401") && why.contains("--api-token"),
            "{why}"
        ),
        other => panic!("a wrong token was applied: {other:?}"),
    }
    assert!(
        !bad_out.exists(),
        "nothing may be written without the agent's members"
    );
    let _ = stop_tx.send(());
    rt.block_on(watcher)
        .expect("the watch task did not panic")
        .expect("the watch loop ended cleanly");
}
