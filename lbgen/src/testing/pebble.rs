//! The ACME test bed: Debian's `pebble` (Let's Encrypt's test CA) with
//! `pebble-challtestsrv` as its DNS, an HAProxy from the default template that routes the
//! CA's HTTP-01 requests to `lbgen acme --http`, and an HAProxy serving a cert dir over TLS.
//! Used by `tests/acme_pebble.rs` and `examples/acme_bench.rs`.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, kill_group, output_within, Haproxy};

const PEBBLE: &str = "/usr/bin/pebble";
const CHALLTESTSRV: &str = "/usr/bin/pebble-challtestsrv";

/// A child in its own process group, killed with its group on drop; stderr+stdout to a file.
pub struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(cmd: &mut Command, log: PathBuf) -> Proc {
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e} (apt-get install pebble)"));
        Proc { child, log }
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn stop(&mut self) {
        kill_group(self.child.id(), "KILL");
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = output_within(cmd, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// pebble + its DNS. Every name resolves to 127.0.0.1 unless [`Pebble::add_a`] says else;
/// the CA validates HTTP-01 on `http_port`.
pub struct Pebble {
    dir: PathBuf,
    pub ca: Proc,
    _dns: Proc,
    mgmt: u16,
    dns_mgmt: u16,
    port: u16,
}

impl Pebble {
    pub fn start(dir: &Path, http_port: u16, validity_secs: u64) -> Pebble {
        assert!(
            Path::new(PEBBLE).exists() && Path::new(CHALLTESTSRV).exists(),
            "these tests need Debian's pebble package (apt-get install pebble)"
        );
        let dir = dir.join("pebble");
        std::fs::create_dir_all(&dir).unwrap();
        // pebble's own TLS certificate (its directory is HTTPS): a CA and a leaf for 127.0.0.1.
        let p = |f: &str| dir.join(f).display().to_string();
        run_ok(Command::new("openssl").args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.pem"),
            "-days",
            "2",
            "-subj",
            "/CN=pebble test CA",
        ]));
        run_ok(Command::new("openssl").args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &p("tls.key"),
            "-out",
            &p("tls.csr"),
            "-subj",
            "/CN=localhost",
        ]));
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        run_ok(Command::new("openssl").args([
            "x509",
            "-req",
            "-in",
            &p("tls.csr"),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-out",
            &p("tls.pem"),
            "-days",
            "2",
            "-extfile",
            &p("ext.cnf"),
        ]));
        let (port, mgmt, dns, dns_mgmt) = (free_port(), free_port(), free_port(), free_port());
        let dns_proc = Proc::spawn(
            Command::new(CHALLTESTSRV).args([
                "-dns01",
                &format!("127.0.0.1:{dns}"),
                "-management",
                &format!("127.0.0.1:{dns_mgmt}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ]),
            dir.join("challtestsrv.log"),
        );
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": p("tls.pem"),
            "privateKey": p("tls.key"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_secs,
        }});
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let ca = Proc::spawn(
            Command::new(PEBBLE)
                .arg("-config")
                .arg(dir.join("pebble.json"))
                .arg("-dnsserver")
                .arg(format!("127.0.0.1:{dns}"))
                // No random sleeps before validation, no random nonce rejections, a fresh
                // validation for every order (a renewal too).
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0"),
            dir.join("pebble.log"),
        );
        let pebble = Pebble {
            dir,
            ca,
            _dns: dns_proc,
            mgmt,
            dns_mgmt,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let dns_up = || std::net::TcpStream::connect(("127.0.0.1", dns_mgmt)).is_ok();
        while !dns_up() || !pebble.curl_ok(&pebble.directory()) {
            assert!(
                Instant::now() < deadline,
                "pebble did not start: {}",
                pebble.ca.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pebble
    }

    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The CA that signs pebble's own directory certificate (`--ca-bundle`).
    pub fn tls_ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn curl_ok(&self, url: &str) -> bool {
        Command::new("curl")
            .args(["-sSf", "-o", "/dev/null", "--max-time", "2", "--cacert"])
            .arg(self.tls_ca())
            .arg(url)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The root that issued certificates chain to (pebble makes a new one each run).
    pub fn issuing_root(&self, to: &Path) {
        let pem = run_ok(
            Command::new("curl")
                .args(["-sSf", "--max-time", "5", "--cacert"])
                .arg(self.tls_ca())
                .arg(format!("https://127.0.0.1:{}/roots/0", self.mgmt)),
        );
        std::fs::write(to, pem).unwrap();
    }

    /// `host` resolves to `ip` for the CA's validation.
    pub fn add_a(&self, host: &str, ip: &str) {
        run_ok(
            Command::new("curl")
                .args(["-sSf", "--max-time", "5", "-X", "POST", "-d"])
                .arg(serde_json::json!({"host": host, "addresses": [ip]}).to_string())
                .arg(format!("http://127.0.0.1:{}/add-a", self.dns_mgmt)),
        );
    }
}

/// An HTTP-only HAProxy from the default template, its frontend on `bind:port`, routing
/// `/.well-known/acme-challenge/` to `responder`.
pub fn challenge_lb(lbgen: &Path, dir: &Path, bind: &str, port: u16, responder: u16) -> Haproxy {
    std::fs::create_dir_all(dir).unwrap();
    let members = dir.join("members.json");
    std::fs::write(&members, r#"{"members":[]}"#).unwrap();
    let cfg = dir.join("haproxy.cfg");
    run_ok(
        Command::new(lbgen)
            .arg("render")
            .arg("--members")
            .arg(&members)
            .arg("--out")
            .arg(&cfg)
            .args(["--var", &format!("bind={bind}")])
            .args(["--var", &format!("http_port={port}")])
            .args(["--var", &format!("stats_port={}", free_port())])
            .args([
                "--var",
                &format!("stats_socket={}", dir.join("admin.sock").display()),
            ])
            .args(["--var", "server_state_file="])
            .args(["--var", "access_log="])
            .args(["--var", &format!("acme_challenge=127.0.0.1:{responder}")]),
    );
    Haproxy::start(dir, &cfg)
}

/// An HAProxy serving the cert dir over TLS (`crt DIR`, SNI by the certificates' names):
/// the shape of the TLS listener, answering every request itself.
pub fn tls_lb(dir: &Path, certs: &Path, port: u16) -> Haproxy {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = dir.join("tls.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n    stats socket {}/admin.sock mode 600 level admin\n\
             defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
             frontend https-in\n    bind 127.0.0.1:{port} ssl crt {}\n\
             \x20   http-request return status 200 content-type text/plain string \"tls ok\"\n",
            dir.display(),
            certs.display()
        ),
    )
    .unwrap();
    Haproxy::start(dir, &cfg)
}

pub fn curl_tls(root: &Path, host: &str, port: u16) -> String {
    run_ok(
        Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(root)
            .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
            .arg(format!("https://{host}:{port}/")),
    )
}
