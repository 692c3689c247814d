//! Encryption, key rotation, API tokens and hostile tags, with real agents.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{converged, http, ip, wait_for, Agent};

fn keygen() -> String {
    let out = common::output_within(
        std::process::Command::new(common::shoal_bin()).arg("keygen"),
        common::CLI_TIMEOUT,
    );
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn info(a: &Agent) -> serde_json::Value {
    let (_, body) = http(&a.api(), "GET", "/v1/info", "");
    serde_json::from_str(&body).unwrap_or_default()
}

#[test]
fn clusters_with_different_keys_stay_apart_and_say_why() {
    let k1 = keygen();
    let k2 = keygen();
    assert_ne!(k1, k2);
    let seed = vec![format!("{}:7946", ip(40, 1))];
    let a = Agent::start("x1", &ip(40, 1), &seed, &["--encrypt", &k1]);
    let b = Agent::start("x2", &ip(40, 2), &seed, &["--encrypt", &k1]);
    assert!(wait_for(Duration::from_secs(20), || converged(
        &[&a, &b],
        &["x1", "x2"]
    )));
    // Wrong key and no key: both try to join x1 and must stay out.
    let wrong = Agent::start("wrong", &ip(40, 3), &seed, &["--encrypt", &k2]);
    let clear = Agent::start("clear", &ip(40, 4), &seed, &[]);
    std::thread::sleep(Duration::from_secs(4));
    for x in [&a, &b] {
        let names: Vec<String> = x
            .members()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["x1", "x2"], "intruder got in");
    }
    assert_eq!(wrong.members().len(), 1);
    assert_eq!(clear.members().len(), 1);
    assert!(
        wrong.log_text().contains("same --encrypt key"),
        "the wrong-key node must say why:\n{}",
        wrong.log_text()
    );
    assert!(info(&a)["stats"]["auth_failures"].as_u64().unwrap() > 0);
    assert!(info(&wrong)["stats"]["auth_failures"].as_u64().unwrap() > 0);
    // A bad key is refused at start, exit 2.
    let out = common::output_within(
        std::process::Command::new(common::shoal_bin()).args([
            "agent",
            "--node",
            "bad",
            "--encrypt",
            "c2hvcnQ=",
        ]),
        common::CLI_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("16, 24 or 32"));
}

#[test]
fn key_rotation_across_a_live_cluster_never_splits_it() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let k1 = keygen();
    let k2 = keygen();
    let names = ["r1", "r2", "r3", "r4", "r5"];
    let seed = vec![format!("{}:7946", ip(41, 1))];
    let agents: Vec<Agent> = (0..5)
        .map(|i| {
            let ring = dir.path().join(format!("{}.keyring", names[i]));
            let ring = ring.to_string_lossy().to_string();
            Agent::start_in(
                dir.clone(),
                names[i],
                &ip(41, i as u8 + 1),
                &seed,
                &["--encrypt", &k1, "--keyring-file", &ring],
            )
        })
        .collect();
    let refs: Vec<&Agent> = agents.iter().collect();
    assert!(wait_for(Duration::from_secs(20), || converged(
        &refs, &names
    )));

    let auth_failures = |a: &Agent| common::stat(a, "auth_failures");
    let failures_before: Vec<u64> = agents.iter().map(auth_failures).collect();
    // Watch every node's view during the whole rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(AtomicUsize::new(0));
    let apis: Vec<String> = agents.iter().map(|a| a.api()).collect();
    let watcher = {
        let (stop, violations) = (stop.clone(), violations.clone());
        std::thread::spawn(move || {
            let mut polls = 0;
            while !stop.load(Ordering::SeqCst) {
                for api in &apis {
                    let (_, body) = http(api, "GET", "/v1/members", "");
                    let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let ms = doc["members"].as_array().cloned().unwrap_or_default();
                    // A split is a member lost or declared failed. A brief
                    // `suspect` can come from a loaded machine alone; a key
                    // that does not open shows up in `auth_failures` below.
                    if ms.len() != 5
                        || ms
                            .iter()
                            .any(|m| m["status"] != "alive" && m["status"] != "suspect")
                    {
                        violations.fetch_add(1, Ordering::SeqCst);
                        eprintln!("split seen at {api}: {ms:?}");
                    }
                }
                polls += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            polls
        })
    };
    let keys = |args: &[&str]| agents[2].cli(&[&["keys"], args].concat());
    let out = keys(&["--install", &k2]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("install: 5/5 nodes ok"));
    std::thread::sleep(Duration::from_secs(1));
    let out = keys(&["--use", &k2]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::thread::sleep(Duration::from_secs(2));
    // The primary cannot be removed, anywhere.
    let out = keys(&["--remove", &k2]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("primary"));
    let out = keys(&["--remove", &k1]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let polls = watcher.join().unwrap();
    assert!(polls > 20);
    assert_eq!(
        violations.load(Ordering::SeqCst),
        0,
        "some pair could not talk during the rotation"
    );
    // Not one packet or frame failed to open on any node.
    let failures_after: Vec<u64> = agents.iter().map(auth_failures).collect();
    assert_eq!(
        failures_before, failures_after,
        "packets failed to authenticate"
    );

    let out = keys(&["--list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{k2}  5/5  primary on 5")), "{text}");
    assert!(!text.contains(&k1), "{text}");
    // Persisted: every keyring file now holds only the new key.
    for n in names {
        let saved = std::fs::read_to_string(dir.path().join(format!("{n}.keyring"))).unwrap();
        assert!(saved.contains(&k2) && !saved.contains(&k1), "{n}: {saved}");
    }
    // Still one cluster, gossiping with the new key.
    assert!(converged(&refs, &names));
}

#[test]
fn a_forged_leave_about_a_live_node_is_refuted() {
    use shoal::identity::NodeId;
    let seed = vec![format!("{}:7946", ip(172, 1))];
    let a = Agent::start("s1", &ip(172, 1), &seed, &[]);
    let b = Agent::start("s2", &ip(172, 2), &seed, &[]);
    let c = Agent::start("s3", &ip(172, 3), &seed, &[]);
    let all = ["s1", "s2", "s3"];
    assert!(wait_for(Duration::from_secs(20), || converged(
        &[&a, &b, &c],
        &all
    )));
    let generation = |x: &Agent| info(x)["self"]["generation"].as_u64().unwrap();
    let dropped = |x: &Agent| info(x)["stats"]["dropped_in"].as_u64().unwrap();
    // The spoofer: its own address, plain text, as anyone on the network.
    let spoofer = std::net::UdpSocket::bind(format!("{}:0", ip(172, 99))).unwrap();
    let leave = |g: u64| {
        let forged = NodeId {
            name: "s2".into(),
            addr: b.gossip().parse().unwrap(),
            generation: g,
            tags: shoal::tags::Tags::new(),
        };
        spoofer
            .send_to(&shoal::wire::encode_leave(&forged), a.gossip())
            .unwrap();
    };
    // A generation no clock will reach for ages: refused and counted.
    let before = dropped(&a);
    leave(u64::MAX);
    assert!(wait_for(Duration::from_secs(5), || dropped(&a) > before));
    assert_eq!(a.status_of("s2").as_deref(), Some("alive"));
    // A plausible one (a minute ahead): s2 hears of it and refutes.
    let forged = generation(&b).max(shoal::identity::now_millis()) + 60_000;
    let t = std::time::Instant::now();
    leave(forged);
    assert!(
        wait_for(Duration::from_secs(3), || generation(&b) > forged),
        "s2 did not refute:\n{}",
        b.log_text()
    );
    assert!(
        wait_for(Duration::from_secs(5), || converged(&[&a, &b, &c], &all)),
        "s2 not alive everywhere: {:?}",
        a.members()
    );
    eprintln!(
        "forged leave refuted, s2 alive everywhere after {:?}",
        t.elapsed()
    );
    assert!(b.log_text().contains("refuting with a newer generation"));
}

/// Sends one TCP frame to an agent's gossip port and decodes its answer.
fn exchange_frame(to: &str, frame: &[u8], ring: &shoal::keyring::Keyring) -> shoal::wire::TcpMsg {
    use shoal::wire;
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(frame).unwrap();
    let mut header = [0u8; wire::FRAME_HEADER];
    s.read_exact(&mut header).unwrap();
    let mut body = vec![0u8; wire::frame_len(&header).unwrap()];
    s.read_exact(&mut body).unwrap();
    wire::decode_frame_body(&body, Some(ring)).unwrap()
}

#[test]
fn a_replayed_key_operation_is_refused_and_counted() {
    use shoal::keyring::{Key, Keyring};
    use shoal::wire::{self, KeyOp, KeyRequest, TcpMsg};
    let k1 = keygen();
    let k2 = keygen();
    let seed = vec![format!("{}:7946", ip(171, 1))];
    let a = Agent::start("k1", &ip(171, 1), &seed, &["--encrypt", &k1]);
    let b = Agent::start("k2", &ip(171, 2), &seed, &["--encrypt", &k1]);
    assert!(wait_for(Duration::from_secs(20), || converged(
        &[&a, &b],
        &["k1", "k2"]
    )));
    let out = a.cli(&["keys", "--install", &k2]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A sealed "use K2" frame, as it crosses the network (made with the key).
    let mut ring = Keyring::new(Key::parse(&k1).unwrap());
    ring.install(Key::parse(&k2).unwrap());
    let now = shoal::identity::now_millis();
    let use_k2 = TcpMsg::KeyOp(KeyRequest::new(KeyOp::Use(k2.clone()), now));
    let captured = wire::encode_frame(&use_k2, Some(&ring)).unwrap();
    let primary = |msg: TcpMsg| match msg {
        TcpMsg::KeyReply(r) => (r.error, r.keys[0].clone()),
        other => panic!("not a key reply: {other:?}"),
    };
    let (error, first) = primary(exchange_frame(&b.gossip(), &captured, &ring));
    assert_eq!(
        (error, first),
        (None, k2.clone()),
        "the fresh frame is taken"
    );
    // The operator switches back to K1 everywhere...
    let out = a.cli(&["keys", "--use", &k1]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // ...and the captured frame, resent, changes nothing.
    let (error, first) = primary(exchange_frame(&b.gossip(), &captured, &ring));
    assert!(
        error.as_deref().unwrap_or("").contains("replayed"),
        "{error:?}"
    );
    assert_eq!(first, k1, "the replay made K2 primary again");
    // An old request with a fresh nonce (a capture replayed later) too.
    let old = TcpMsg::KeyOp(KeyRequest::new(KeyOp::Use(k2.clone()), now - 120_000));
    let frame = wire::encode_frame(&old, Some(&ring)).unwrap();
    let (error, first) = primary(exchange_frame(&b.gossip(), &frame, &ring));
    assert!(
        error.as_deref().unwrap_or("").contains("stale"),
        "{error:?}"
    );
    assert_eq!(first, k1);
    let stats = &info(&b)["stats"];
    assert_eq!(stats["key_ops_replayed"], 1, "{stats}");
    assert_eq!(stats["key_ops_stale"], 1, "{stats}");
    assert!(b.log_text().contains("key operation refused"));
    // The cluster still rotates normally.
    let out = a.cli(&["keys", "--use", &k2]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_api_token_is_checked_and_required_off_loopback() {
    let seed = vec![format!("{}:7946", ip(42, 1))];
    let a = Agent::start("y1", &ip(42, 1), &seed, &["--api-token", "s3cret"]);
    let (code, body) = http(&a.api(), "GET", "/v1/members", "");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("token"));
    let mut s = std::net::TcpStream::connect(a.api()).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET /v1/members HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    // The CLI sends the token.
    let out = common::output_within(
        std::process::Command::new(common::shoal_bin()).args([
            "--api",
            &a.api(),
            "--api-token",
            "s3cret",
            "members",
        ]),
        common::CLI_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = a.cli(&["members"]);
    assert_eq!(out.status.code(), Some(1));
    // Off loopback, no token: refused before anything starts.
    let out = common::output_within(
        std::process::Command::new(common::shoal_bin()).args([
            "agent",
            "--node",
            "y2",
            "--bind",
            &format!("{}:7946", ip(42, 2)),
            "--api",
            "0.0.0.0:7373",
        ]),
        common::CLI_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--api-token"));
}

#[test]
fn a_lower_case_bearer_scheme_authenticates_and_an_unusable_token_is_refused_at_start() {
    let seed = vec![format!("{}:7946", ip(170, 1))];
    let a = Agent::start("t1", &ip(170, 1), &seed, &["--api-token", "s3cret"]);
    let get = |auth: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(a.api()).unwrap();
        let req = format!(
            "GET /v1/members HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        resp
    };
    for auth in ["bearer s3cret", "BEARER s3cret", "Bearer s3cret"] {
        assert!(get(auth).starts_with("HTTP/1.1 200"), "{auth}");
    }
    assert!(get("bearer s3cre").starts_with("HTTP/1.1 401"));
    // Tokens no Authorization header can carry as given: refused at start.
    for bad in [" s3cret", "s3cret ", "s3 cret", "pässword"] {
        let out = common::output_within(
            std::process::Command::new(common::shoal_bin())
                .args([
                    "agent",
                    "--node",
                    "t2",
                    "--bind",
                    &format!("{}:7946", ip(170, 2)),
                ])
                .args(["--api", &format!("{}:7373", ip(170, 2)), "--api-token", bad]),
            common::CLI_TIMEOUT,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {err}");
        assert!(err.contains("--api-token"), "{bad:?}: {err}");
    }
}

#[test]
fn hostile_tags_never_reach_the_haproxy_config() {
    // Tags the agent accepts (printable) but that could break a config line.
    let seed = vec![format!("{}:7946", ip(43, 1))];
    let lb = Agent::start("lb", &ip(43, 1), &seed, &[]);
    let members: [(&str, &[&str]); 4] = [
        ("good", &["service=web", "port=3000"]),
        ("quote", &["service=web", "port=3000", "check=/h\" x"]),
        ("hash", &["service=web", "port=3000 #", "route=/a#b"]),
        ("space", &["service=web x", "port=3000"]),
    ];
    let _members: Vec<Agent> = members
        .iter()
        .enumerate()
        .map(|(i, (name, tags))| {
            let args: Vec<&str> = tags.iter().flat_map(|t| ["--tag", *t]).collect();
            Agent::start(name, &ip(43, i as u8 + 2), &seed, &args)
        })
        .collect();
    // Control characters never even get into the cluster.
    let out = common::output_within(
        std::process::Command::new(common::shoal_bin()).args([
            "agent",
            "--node",
            "nl",
            "--tag",
            "check=/a\nbackend evil",
        ]),
        common::CLI_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(wait_for(Duration::from_secs(20), || lb.members().len() == 5));

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("haproxy.cfg");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = common::lbgen_watch_config(lb.api(), out.clone());
    let out2 = out.clone();
    let outcome = runtime.block_on(async move {
        let w = tokio::spawn(lbgen::watch::run(cfg, async {
            let _ = stop_rx.await;
        }));
        for _ in 0..100 {
            if std::fs::read_to_string(&out2).is_ok_and(|t| t.contains("server good ")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(10), w).await
    });
    // The watch loop's own result: an error or a panic in it fails the test.
    let outcome = outcome
        .expect("lbgen watch did not stop")
        .expect("lbgen watch panicked");
    assert!(outcome.is_ok(), "lbgen watch failed: {outcome:?}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("server good "), "{text}");
    for bad in ["quote", "hash", "space", "\" x", "#b", "web x"] {
        assert!(!text.contains(bad), "{bad:?} reached the config:\n{text}");
    }
    // Every line is one HAProxy understands in its place, and HAProxy itself takes the
    // whole file: a tag that broke out of its field would show up here.
    if let Err(e) = lbgen::render::check_lines(&text) {
        panic!("{e}\n{text}");
    }
    let check = common::output_within(
        std::process::Command::new(lbgen::output::resolve_program("haproxy"))
            .arg("-c")
            .arg("-f")
            .arg(&out),
        common::CLI_TIMEOUT,
    );
    assert!(
        check.status.success(),
        "haproxy -c refused the config rendered from hostile tags:\n{}{}\n{text}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn a_saved_keyring_is_0600_and_one_that_cannot_be_saved_is_left_unchanged() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
    let ring_dir = dir.path().join("ring");
    std::fs::create_dir(&ring_dir).expect("mkdir");
    let ring = ring_dir.join("keyring.json");
    let (k1, k2, k3) = (keygen(), keygen(), keygen());
    let a = Agent::start_in(
        dir.clone(),
        "kr1",
        &ip(172, 1),
        &[],
        &["--encrypt", &k1, "--keyring-file", &ring.to_string_lossy()],
    );
    let out = a.cli(&["keys", "--install", &k2]);
    assert!(out.status.success(), "{out:?}");
    let mode = std::fs::metadata(&ring)
        .expect("keyring file written")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "keyring saved with mode {mode:o}");
    let saved = std::fs::read_to_string(&ring).expect("keyring");
    assert!(saved.contains(&k2), "{saved}");
    // The file cannot be written any more (its directory is gone; a read-only
    // directory would not stop root): the install is refused and the keyring
    // in memory is what it was, not ahead of the file.
    std::fs::remove_dir_all(&ring_dir).expect("rm ring dir");
    let out = a.cli(&["keys", "--install", &k3]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "an unsaved install succeeded: {text}"
    );
    assert!(text.contains("keyring left unchanged"), "{text}");
    let out = a.cli(&["keys", "--list"]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && list.contains(&k1) && list.contains(&k2),
        "{list}"
    );
    assert!(!list.contains(&k3), "the unsaved key is in use: {list}");
}
