//! End-to-end: the HA web-services layout from tags only (`compose/ha-layout.yml`): seven
//! pools of the webapp image, the LB's TLS listeners 443, 8100 and 9494 (a local CA's
//! certificate, `curl --cacert`) each with its default pool, the four path rules, a pool
//! checked on another port than it serves, one-day stickiness; every listener and route
//! answers from its pool, and a pool scaled to 0 answers 503 on its path while every other
//! route still serves, then serves again when scaled up.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use shoal_e2e::*;

const S: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(250);

/// The compose services of the layout: (service, pool, replicas).
const POOLS: [(&str, &str, usize); 7] = [
    ("webapp", "web", 1),
    ("api-v2", "api-v2", 1),
    ("api-v0", "api-v0", 1),
    ("upload", "upload", 1),
    ("queue", "queue", 2),
    ("svc8100", "svc8100", 1),
    ("svc9494", "svc9494", 1),
];

/// The listeners, by their container port, and the CA their certificate verifies with.
struct Lb {
    main: SocketAddr,
    l8100: SocketAddr,
    l9494: SocketAddr,
    plain: SocketAddr,
    stats: SocketAddr,
    ca: PathBuf,
}

impl Lb {
    fn get(&self, addr: SocketAddr, path: &str, cookie: Option<&str>) -> Result<Resp, String> {
        https_get(addr, path, cookie, &self.ca, 5 * S)
    }
}

/// A local CA and `default.pem` (chain + key) for 127.0.0.1 in `dir/certs`, made with
/// `openssl` as `./demo up` does; removed on drop.
struct Certs(PathBuf);

impl Certs {
    fn new() -> Certs {
        let dir = std::env::temp_dir().join(format!("shoal-e2e-halayout-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("certs")).expect("cert dir");
        let certs = Certs(dir);
        let openssl = |args: &[&str]| {
            run_ok(
                Command::new("openssl").args(args).current_dir(&certs.0),
                30 * S,
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &["-days", "2", "-subj", "/CN=shoal e2e CA"],
                &["-keyout", "ca.key", "-out", "ca.pem"],
            ]
            .concat(),
        );
        std::fs::write(
            certs.0.join("lb.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext file");
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-subj",
                    "/CN=localhost",
                    "-keyout",
                    "lb.key",
                    "-out",
                    "lb.csr",
                ],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            "lb.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "lb.ext",
            "-out",
            "lb.crt",
        ]);
        let pem = [
            std::fs::read(certs.0.join("lb.crt")).expect("lb.crt"),
            std::fs::read(certs.0.join("lb.key")).expect("lb.key"),
        ]
        .concat();
        std::fs::write(certs.0.join("certs/default.pem"), pem).expect("default.pem");
        certs
    }
    fn dir(&self) -> PathBuf {
        self.0.join("certs")
    }
    fn ca(&self) -> PathBuf {
        self.0.join("ca.pem")
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every route of the layout: (listener, path, pool whose WEBAPP_TAG answers).
fn routes(lb: &Lb) -> Vec<(SocketAddr, &'static str, &'static str)> {
    vec![
        (lb.main, "/", "web"),
        (lb.main, "/index.html", "web"),
        (lb.main, "/api/v2", "api-v2"),
        (lb.main, "/api/v2/users?id=7", "api-v2"),
        (lb.main, "/api/v2x", "web"),
        (lb.main, "/api/v0/items", "api-v0"),
        (lb.main, "/upload/big.bin", "upload"),
        (lb.main, "/socket.io-queue/?EIO=4", "queue"),
        (lb.main, "/socket.io-queuex", "web"),
        (lb.l8100, "/", "svc8100"),
        // The main listener's routes are not on the others.
        (lb.l8100, "/api/v2/users", "svc8100"),
        (lb.l9494, "/", "svc9494"),
        (lb.l9494, "/upload/x", "svc9494"),
    ]
}

/// `n` HTTPS requests to `path`: each a 200 from `pool` (its tag) on one of its containers,
/// which saw `X-Forwarded-Proto: https`.
fn assert_route(
    lb: &Lb,
    addr: SocketAddr,
    path: &str,
    pool: &str,
    hosts: &BTreeMap<String, BTreeSet<String>>,
    n: usize,
) {
    for _ in 0..n {
        let r = lb
            .get(addr, path, None)
            .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"));
        assert_eq!(r.status, 200, "GET {path} on {addr}: {r:?}");
        let v = r
            .json()
            .unwrap_or_else(|| panic!("GET {path}: not JSON: {r:?}"));
        assert_eq!(v["tag"], pool, "GET {path} on {addr} → {pool}: {v}");
        assert_eq!(v["forwarded_proto"], "https", "GET {path} on {addr}: {v}");
        let host = v["hostname"].as_str().unwrap_or_default();
        assert!(
            hosts[pool].contains(host),
            "GET {path}: {host} is not a container of {pool} ({:?})",
            hosts[pool]
        );
    }
}

fn wait_all_up(lb: &Lb, hosts: &BTreeMap<String, BTreeSet<String>>) {
    wait_for(
        "every pool's containers UP in HAProxy",
        120 * S,
        POLL,
        || {
            let rows = stats(lb.stats)?;
            hosts
                .iter()
                .all(|(pool, want)| &up_servers(&rows, pool) == want)
                .then_some(())
        },
    );
}

#[test]
fn the_ha_layout_from_tags_routes_every_listener_and_path_and_an_empty_pool_answers_503() {
    let Some(_serial) = setup() else { return };
    let certs = Certs::new();
    let cert_dir = certs.dir().display().to_string();
    let p = Project::new(
        "halayout",
        &["../../../compose/ha-layout.yml"],
        &[
            ("LB_HTTPS_PORT", "0"),
            ("LB_8100_PORT", "0"),
            ("LB_9494_PORT", "0"),
            ("LB_TLS_CERTS", &cert_dir),
        ],
    );
    let mut scale = Vec::new();
    for (service, _, n) in POOLS {
        scale.push("--scale".to_string());
        scale.push(format!("{service}={n}"));
    }
    p.up(&scale.iter().map(String::as_str).collect::<Vec<_>>());
    let lb = Lb {
        main: p.lb_addr(443),
        l8100: p.lb_addr(8100),
        l9494: p.lb_addr(9494),
        plain: p.lb_addr(80),
        stats: p.lb_addr(1936),
        ca: certs.ca(),
    };
    let hosts: BTreeMap<String, BTreeSet<String>> = POOLS
        .iter()
        .map(|(service, pool, n)| {
            let h = p.hostnames(service);
            assert_eq!(h.len(), *n, "{service}: {h:?}");
            (pool.to_string(), h)
        })
        .collect();
    wait_all_up(&lb, &hosts);

    // Every listener and route answers from its own pool, over TLS verified by the CA.
    wait_for("the certificate served on 443", 30 * S, POLL, || {
        lb.get(lb.main, "/", None).ok()
    });
    for (addr, path, pool) in routes(&lb) {
        assert_route(&lb, addr, path, pool, &hosts, 4);
    }
    // The main listener's plain-HTTP side has the same routes; 8100 and 9494 are TLS only.
    let r = http_get(lb.plain, "/api/v2/users", None, 5 * S).unwrap();
    assert_eq!(
        r.json().map(|v| v["tag"].clone()),
        Some("api-v2".into()),
        "{r:?}"
    );
    for addr in [lb.l8100, lb.l9494] {
        let plain = http_get(addr, "/", None, 5 * S);
        assert!(
            !matches!(&plain, Ok(r) if r.status == 200),
            "plain HTTP served on the TLS listener {addr}: {plain:?}"
        );
    }

    // api-v0 answers /health only on 3001 and 404 on the port it serves: it is UP (above)
    // only because HAProxy checks it on 3001.
    let cfg = p.exec_lb(&["cat", "/usr/local/etc/haproxy/haproxy.cfg"]);
    let api_v0 = hosts["api-v0"].iter().next().unwrap();
    let line = cfg
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("server {api_v0} ")))
        .unwrap_or_else(|| panic!("no server line for {api_v0} in\n{cfg}"));
    assert!(
        line.contains(":3000 ") && line.contains(" port 3001 "),
        "{line}"
    );
    let id = &p.containers("api-v0")[0];
    let own = docker(&[
        "exec",
        id,
        "sh",
        "-c",
        "webapp probe --port 3000 --health-port 3000; echo rc=$?",
    ]);
    assert!(
        own.contains("rc=1"),
        "the served port's /health must fail: {own}"
    );

    // One-day stickiness: the cookie carries HAProxy's dates (maxlife), and the client keeps
    // its server; without it the two queue servers share the requests.
    let first = lb.get(lb.main, "/socket.io-queue/", None).unwrap();
    let cookie = first
        .cookie("SERVERID")
        .unwrap_or_else(|| panic!("no SERVERID from the sticky pool: {first:?}"));
    assert!(
        cookie.contains('|'),
        "no maxlife dates in SERVERID={cookie}"
    );
    let pinned = first.hostname().unwrap();
    for _ in 0..10 {
        let r = lb
            .get(
                lb.main,
                "/socket.io-queue/",
                Some(&format!("SERVERID={cookie}")),
            )
            .unwrap();
        assert_eq!(r.hostname().as_deref(), Some(pinned.as_str()), "{r:?}");
    }
    let spread: BTreeSet<String> = (0..8)
        .filter_map(|_| lb.get(lb.main, "/socket.io-queue/", None).ok()?.hostname())
        .collect();
    assert_eq!(spread, hosts["queue"], "no cookie: round robin over queue");

    // upload scaled to 0: its path answers 503 (a page naming nothing internal), it never
    // falls through to web, and every other route still serves.
    let gone: Vec<String> = p
        .containers("upload")
        .iter()
        .map(|id| container_ip(id, &p.network()))
        .chain(hosts["upload"].iter().cloned())
        .collect();
    p.up(&["--no-deps", "--scale", "upload=0", "upload"]);
    let page = wait_for("/upload to answer 503", 60 * S, POLL, || {
        lb.get(lb.main, "/upload/big.bin", None)
            .ok()
            .filter(|r| r.status == 503)
    });
    for word in gone.iter().map(String::as_str).chain(["upload", "backend"]) {
        assert!(
            !page.body.contains(word),
            "503 page names {word:?}: {}",
            page.body
        );
    }
    for _ in 0..5 {
        let r = lb.get(lb.main, "/upload/x", None).unwrap();
        assert_eq!(r.status, 503, "{r:?}");
    }
    for (addr, path, pool) in routes(&lb) {
        if pool != "upload" {
            assert_route(&lb, addr, path, pool, &hosts, 2);
        }
    }

    // Scaled up again, the pool serves its path again.
    p.up(&["--no-deps", "--scale", "upload=1", "upload"]);
    let fresh = p.hostnames("upload");
    let r = wait_for("/upload served again", 90 * S, POLL, || {
        lb.get(lb.main, "/upload/big.bin", None)
            .ok()
            .filter(|r| r.status == 200)
    });
    let v = r.json().unwrap();
    assert_eq!(v["tag"], "upload", "{v}");
    assert!(
        fresh.contains(v["hostname"].as_str().unwrap_or_default()),
        "{v}"
    );
}
