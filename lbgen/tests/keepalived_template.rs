//! templates/keepalived.conf.hbs, rendered by the real lbgen binary per LB (`--local`) and
//! checked by the real `keepalived -t` (Debian's keepalived; CI installs it, elsewhere the
//! check is skipped with a note): peers, priorities from the names, nopreempt; the HAProxy config is the
//! same bytes whatever `--local` says, and a vrrp state tag does not touch keepalived's file.

use lbgen::testing as common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn template() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/keepalived.conf.hbs")
}

/// A real interface of this host (keepalived -t refuses unknown ones and loopback).
fn interface() -> String {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    if names.iter().any(|n| n == "eth0") {
        return "eth0".into();
    }
    names
        .into_iter()
        .find(|n| n != "lo")
        .unwrap_or_else(|| "eth0".into())
}

fn members(a_state: &str) -> String {
    format!(
        r#"{{"members":[
        {{"name":"lb-b","addr":"10.1.0.3:7946","status":"alive","tags":{{"role":"lb","vrrp":"backup"}}}},
        {{"name":"lb-a","addr":"10.1.0.2:7946","status":"alive","tags":{{"role":"lb","vrrp":"{a_state}"}}}},
        {{"name":"lb-gone","addr":"10.1.0.4:7946","status":"failed","tags":{{"role":"lb"}}}},
        {{"name":"web-1","addr":"10.1.0.9:7946","status":"alive","tags":{{"service":"web","port":"3000"}}}}]}}"#
    )
}

/// `lbgen render` with stdin from a file; (ok, stdout, stderr).
fn render(members: &str, extra: &[&str]) -> (bool, String, String) {
    let input = tempfile::NamedTempFile::new().expect("stdin file");
    std::fs::write(input.path(), members).expect("write stdin");
    let vars = format!(
        "vrrp_vip=10.1.0.200/24,vrrp_interface={},vrrp_router_id=51,vrrp_advert_int=0.2,vrrp_script=/bin/true",
        interface()
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lbgen"));
    cmd.args(["render", "--members", "-", "--var", &vars])
        .args(extra)
        .env("LBGEN_LOG", "warn")
        .stdin(std::fs::File::open(input.path()).expect("open stdin"));
    let out = common::output_within(&mut cmd, common::COMMAND_TIMEOUT);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn keepalived_check(text: &str) {
    let bin = ["/usr/sbin/keepalived", "/sbin/keepalived"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(bin) = bin else {
        assert!(
            std::env::var("CI").is_err(),
            "keepalived is not installed (apt-get install keepalived)"
        );
        eprintln!("keepalived not installed: config check skipped");
        return;
    };
    let f = tempfile::NamedTempFile::new().expect("config file");
    std::fs::write(f.path(), text).expect("write config");
    let out = common::output_within(
        Command::new(bin).arg("-t").arg("-f").arg(f.path()),
        common::COMMAND_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "keepalived -t refused:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        text
    );
}

#[test]
fn each_lb_gets_the_other_lbs_failed_ones_too_as_unicast_peers_and_keepalived_accepts_it() {
    let tpl = template();
    let tpl = tpl.to_str().unwrap();
    for (me, ip, peer) in [
        ("lb-a", "10.1.0.2", "10.1.0.3"),
        ("lb-b", "10.1.0.3", "10.1.0.2"),
    ] {
        let prio = lbgen::nodes::priority_of(me);
        let (ok, text, err) = render(&members("master"), &["--template", tpl, "--local", me]);
        assert!(ok, "{me}: {err}");
        assert!(text.contains(&format!("router_id {me}\n")), "{text}");
        assert!(text.contains(&format!("unicast_src_ip {ip}\n")), "{text}");
        assert!(text.contains(&format!("priority {prio}\n")), "{text}");
        assert!(text.contains(&format!("        {peer}    #")), "{text}");
        assert!(
            !text.contains(&format!("        {ip}    #")),
            "itself as a peer: {text}"
        );
        // A failed LB stays until it is reaped: back on its address, it hears the master.
        assert!(
            text.contains("        10.1.0.4    # lb-gone"),
            "a failed LB was dropped from the peers: {text}"
        );
        assert!(text.contains("vrrp_startup_delay 2\n"), "{text}");
        assert!(
            text.contains("nopreempt") && text.contains("state BACKUP"),
            "{text}"
        );
        assert!(text.contains("10.1.0.200/24 dev "), "{text}");
        keepalived_check(&text);
    }
}

#[test]
fn an_lb_alone_still_renders_unicast_so_a_reload_never_switches_keepalived_to_multicast() {
    // keepalived 2.2 falls back to multicast on an empty peer list (`keepalived -t` exits 5 on
    // it) and a reload between the modes restarts the instance in BACKUP: the VIP drops.
    let alone = r#"{"members":[
        {"name":"lb-a","addr":"10.1.0.2:7946","status":"alive","tags":{"role":"lb","vrrp":"master"}}]}"#;
    let tpl = template();
    let (ok, text, err) = render(
        alone,
        &["--template", tpl.to_str().unwrap(), "--local", "lb-a"],
    );
    assert!(ok, "{err}");
    let block = unicast_peers(&text);
    assert!(block.contains("127.0.0.1"), "{text}");
    assert!(!block.contains("10.1.0."), "{text}");
    keepalived_check(&text);
}

#[test]
fn a_left_lb_stays_a_unicast_peer_so_a_leave_does_not_change_keepalived_s_file() {
    // The master keeps sending adverts to a leaving backup through its drain, and its file
    // (so keepalived's state and timers) stays the same until the agent reaps the LB.
    let alive = r#"{"members":[
        {"name":"lb-a","addr":"10.1.0.2:7946","status":"alive","tags":{"role":"lb","vrrp":"master"}},
        {"name":"lb-b","addr":"10.1.0.3:7946","status":"alive","tags":{"role":"lb","vrrp":"backup"}}]}"#;
    let alone = r#"{"members":[
        {"name":"lb-a","addr":"10.1.0.2:7946","status":"alive","tags":{"role":"lb","vrrp":"master"}},
        {"name":"lb-b","addr":"10.1.0.3:7946","status":"left","tags":{"role":"lb"}}]}"#;
    let tpl = template();
    let (ok, text, err) = render(
        alone,
        &["--template", tpl.to_str().unwrap(), "--local", "lb-a"],
    );
    assert!(ok, "{err}");
    let block = unicast_peers(&text);
    assert!(block.contains("127.0.0.1"), "{text}");
    assert!(block.contains("10.1.0.3"), "a left LB was dropped: {text}");
    let (ok, before, err) = render(
        alive,
        &["--template", tpl.to_str().unwrap(), "--local", "lb-a"],
    );
    assert!(ok, "{err}");
    assert_eq!(before, text, "a leave changed the master's keepalived file");
    keepalived_check(&text);
}

#[test]
fn the_haproxy_config_is_the_same_bytes_whatever_local_is() {
    let (ok_a, a, err) = render(&members("master"), &["--local", "lb-a"]);
    assert!(ok_a, "{err}");
    let (ok_b, b, err) = render(&members("backup"), &["--local", "lb-b"]);
    assert!(ok_b, "{err}");
    let (ok, none, err) = render(&members("fault"), &[]);
    assert!(ok, "{err}");
    assert!(a == b && b == none, "LBs render different HAProxy configs");
}

#[test]
fn a_vrrp_state_tag_change_leaves_keepalived_s_file_unchanged() {
    let tpl = template();
    let tpl = tpl.to_str().unwrap();
    let (_, master, _) = render(&members("master"), &["--template", tpl, "--local", "lb-b"]);
    let (_, fault, _) = render(&members("fault"), &["--template", tpl, "--local", "lb-b"]);
    assert_eq!(master, fault);
}

#[test]
fn without_knowing_this_node_the_keepalived_template_does_not_render() {
    let tpl = template();
    let (ok, _, err) = render(&members("master"), &["--template", tpl.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("local.name"), "{err}");
    let (ok, _, err) = render(
        &members("master"),
        &["--template", tpl.to_str().unwrap(), "--local", "nobody"],
    );
    assert!(!ok, "a name that is no member rendered");
    assert!(err.contains("local.name"), "{err}");
}

#[test]
fn a_draining_lb_renders_fault_so_it_hands_the_vip_over_and_never_takes_it() {
    // The agent gossips state=draining first on SIGTERM, leaves, and stops keepalived only
    // after its drain: its peers go for good meanwhile (the master may stop first), so a
    // backup that kept listening would take the VIP (docs/ha.md).
    let draining = r#"{"members":[
        {"name":"lb-a","addr":"10.1.0.2:7946","status":"alive","tags":{"role":"lb","vrrp":"backup","state":"draining"}},
        {"name":"lb-b","addr":"10.1.0.3:7946","status":"alive","tags":{"role":"lb","vrrp":"master"}}]}"#;
    let tpl = template();
    let (ok, text, err) = render(
        draining,
        &["--template", tpl.to_str().unwrap(), "--local", "lb-a"],
    );
    assert!(ok, "{err}");
    assert!(
        text.contains("track_file {\n        shoal_leaving weight 0"),
        "{text}"
    );
    assert!(text.contains("init_file 1 overwrite"), "{text}");
    keepalived_check(&text);
    // The other LB, and lb-a before it drained, track no such file.
    let (ok, b, err) = render(
        draining,
        &["--template", tpl.to_str().unwrap(), "--local", "lb-b"],
    );
    assert!(ok, "{err}");
    assert!(!b.contains("shoal_leaving"), "{b}");
    let (ok, a, err) = render(
        &members("backup"),
        &["--template", tpl.to_str().unwrap(), "--local", "lb-a"],
    );
    assert!(ok, "{err}");
    assert!(!a.contains("shoal_leaving"), "{a}");
}

/// The body of the rendered file's `unicast_peer { ... }` block.
fn unicast_peers(text: &str) -> &str {
    text.split("unicast_peer {")
        .nth(1)
        .and_then(|b| b.split('}').next())
        .expect("a unicast_peer block")
}
