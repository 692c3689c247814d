//! The operator's flags and environment on a real agent: `--tag` values
//! keep their commas, `SHOAL_TAG` lists carry escaped ones, and `SHOAL_LOG`
//! really sets the level.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ip, wait_for, Agent};

fn tags_of(a: &Agent) -> serde_json::Value {
    a.member(&a.name)
        .map(|m| m["tags"].clone())
        .unwrap_or_default()
}

#[test]
fn a_tag_flag_with_commas_is_one_tag() {
    let a = Agent::start("of1", &ip(62, 1), &[], &["--tag", "note=x,role=admin"]);
    let tags = tags_of(&a);
    assert_eq!(tags["note"], "x,role=admin", "{tags}");
    assert!(
        tags.get("role").is_none(),
        "a comma in --tag set another tag: {tags}"
    );
}

#[test]
fn the_tag_env_list_splits_on_commas_and_keeps_escaped_ones() {
    let dir = Arc::new(tempfile::tempdir().expect("tmp"));
    let a = Agent::start_in_with(dir, "of2", &ip(62, 2), &[], &[], |cmd| {
        cmd.env("SHOAL_TAG", r"service=web,note=a\,b");
    });
    let tags = tags_of(&a);
    assert_eq!(tags["service"], "web", "{tags}");
    assert_eq!(tags["note"], "a,b", "{tags}");
}

#[test]
fn shoal_log_debug_prints_debug_lines() {
    let start = |name: &str, n: u8, level: &'static str| {
        let dir = Arc::new(tempfile::tempdir().expect("tmp"));
        Agent::start_in_with(dir, name, &ip(62, n), &[], &[], move |cmd| {
            cmd.env("SHOAL_LOG", level);
        })
    };
    let debug = start("of3", 3, "debug");
    let info = start("of4", 4, "info");
    // A garbage packet is dropped with a debug line.
    let sock = std::net::UdpSocket::bind(format!("{}:0", ip(62, 9))).expect("udp");
    for a in [&debug, &info] {
        sock.send_to(b"not a shoal packet", a.gossip())
            .expect("send");
    }
    assert!(
        wait_for(Duration::from_secs(5), || {
            let log = debug.log_text();
            log.contains("DEBUG") && log.contains("dropped packet")
        }),
        "SHOAL_LOG=debug printed no debug line:\n{}",
        debug.log_text()
    );
    // The info agent logged its start but no debug line.
    assert!(info.log_text().contains("INFO"), "{}", info.log_text());
    assert!(!info.log_text().contains("DEBUG"), "{}", info.log_text());
}
