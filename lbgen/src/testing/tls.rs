//! TLS for tests and the bench with Debian's own tools: a local CA and certificates from
//! `openssl`, HTTPS requests from `curl --cacert`, the certificate a server presents for an
//! SNI name from `openssl s_client`. 127.0.0.1 only.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{output_within, COMMAND_TIMEOUT};

/// A throwaway certificate authority in a directory of its own.
pub struct TestCa {
    pub dir: PathBuf,
    /// The CA certificate, for `curl --cacert`.
    pub cert: PathBuf,
    key: PathBuf,
    issued: std::cell::Cell<u32>,
}

fn openssl(args: &[&str], cwd: &Path) {
    let out = output_within(
        Command::new("openssl")
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null()),
        COMMAND_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    /// A new CA (P-256, 30 days) in `dir` (created).
    pub fn new(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).expect("CA dir");
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/CN=shoal test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
            dir,
        );
        TestCa {
            dir: dir.to_path_buf(),
            cert: dir.join("ca.pem"),
            key: dir.join("ca.key"),
            issued: std::cell::Cell::new(0),
        }
    }

    /// A certificate for `names` (the first is the CN; `*.x` wildcards allowed) signed by
    /// this CA, with its key: the bytes of a `NAME.pem` (chain + key).
    pub fn issue(&self, names: &[&str]) -> Vec<u8> {
        let (cert, key) = self.issue_parts(names);
        [cert, key].concat()
    }

    /// [`TestCa::issue`] as (certificate, key) PEM, for files built wrong on purpose.
    pub fn issue_parts(&self, names: &[&str]) -> (Vec<u8>, Vec<u8>) {
        let n = self.issued.get() + 1;
        self.issued.set(n);
        let base = format!("leaf{n}");
        let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        std::fs::write(
            self.dir.join(format!("{base}.ext")),
            format!("subjectAltName={}\n", san.join(",")),
        )
        .expect("ext file");
        let subj = format!("/CN={}", names[0]);
        let (keyf, csr, crt, ext) = (
            format!("{base}.key"),
            format!("{base}.csr"),
            format!("{base}.crt"),
            format!("{base}.ext"),
        );
        openssl(
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &subj,
                "-keyout",
                &keyf,
                "-out",
                &csr,
            ],
            &self.dir,
        );
        let ca = self.cert.display().to_string();
        let cakey = self.key.display().to_string();
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca,
                "-CAkey",
                &cakey,
                "-set_serial",
                &format!("{}", 1000 + n),
                "-days",
                "30",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
            &self.dir,
        );
        (
            std::fs::read(self.dir.join(&crt)).expect("cert"),
            std::fs::read(self.dir.join(&keyf)).expect("key"),
        )
    }
}

/// The serial number (hex, as openssl prints it) of a PEM's first certificate.
pub fn serial_of(pem: &[u8]) -> String {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(f.path(), pem).expect("write pem");
    let out = output_within(
        Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(f.path())
            .stdin(Stdio::null()),
        COMMAND_TIMEOUT,
    );
    parse_serial(&String::from_utf8_lossy(&out.stdout)).expect("a serial")
}

fn parse_serial(s: &str) -> Option<String> {
    s.lines()
        .find_map(|l| l.trim().strip_prefix("serial="))
        .map(str::to_string)
}

/// The serial of the certificate 127.0.0.1:`port` presents for `sni` (None = no SNI), or
/// None if no handshake happened. A fresh connection each time (no session reuse).
pub fn served_serial(port: u16, sni: Option<&str>) -> Option<String> {
    let connect = format!("127.0.0.1:{port}");
    let mut args = vec!["s_client", "-connect", &connect];
    match sni {
        Some(s) => args.extend(["-servername", s]),
        None => args.push("-noservername"),
    }
    let out = output_within(
        Command::new("openssl").args(&args).stdin(Stdio::null()),
        Duration::from_secs(10),
    );
    let pem = String::from_utf8_lossy(&out.stdout);
    let start = pem.find("-----BEGIN CERTIFICATE-----")?;
    let end = pem.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
    Some(serial_of(pem[start..end].as_bytes()))
}

/// One `curl` request to `https://HOST:PORT/PATH` at 127.0.0.1, verified with `ca`: the
/// status code (0 = no response) and the response headers.
pub fn curl_https(ca: &Path, host: &str, port: u16, path: &str) -> (u16, String) {
    let url = format!("https://{host}:{port}{path}");
    curl(&[
        "--cacert",
        &ca.display().to_string(),
        "--resolve",
        &format!("{host}:{port}:127.0.0.1"),
        &url,
    ])
}

/// One plain-HTTP `curl` request (no redirect followed): status and response headers.
pub fn curl_http(host: &str, port: u16, path: &str) -> (u16, String) {
    curl(&[
        "--resolve",
        &format!("{host}:{port}:127.0.0.1"),
        &format!("http://{host}:{port}{path}"),
    ])
}

fn curl(args: &[&str]) -> (u16, String) {
    let out = output_within(
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-D", "-", "--max-time", "10"])
            .args(args)
            .stdin(Stdio::null()),
        Duration::from_secs(20),
    );
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head)
}

/// HTTPS requests on new connections (`Connection: close`), verified with `ca`, from
/// `workers` threads until `stop` is set, at most `max` each: (ok, failed, first failure).
pub fn https_load(
    ca: PathBuf,
    host: String,
    port: u16,
    workers: usize,
    max: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(u64, u64, Option<String>)> {
    use std::sync::atomic::Ordering;
    std::thread::spawn(move || {
        let threads: Vec<_> = (0..workers)
            .map(|_| {
                let (ca, host, stop) = (ca.clone(), host.clone(), stop.clone());
                std::thread::spawn(move || {
                    let (mut ok, mut failed, mut first) = (0u64, 0u64, None);
                    // 20 requests per curl process: each on its own connection.
                    let url = format!("https://{host}:{port}/");
                    let mut args = vec![
                        "-s".to_string(),
                        "--cacert".into(),
                        ca.display().to_string(),
                        "--resolve".into(),
                        format!("{host}:{port}:127.0.0.1"),
                        "-H".into(),
                        "Connection: close".into(),
                        "--max-time".into(),
                        "10".into(),
                        "-w".into(),
                        "%{http_code}\\n".into(),
                    ];
                    for _ in 0..20 {
                        args.extend(["-o".into(), "/dev/null".into(), url.clone()]);
                    }
                    while !stop.load(Ordering::SeqCst) && ok + failed < max {
                        let out = output_within(
                            Command::new("curl").args(&args).stdin(Stdio::null()),
                            Duration::from_secs(60),
                        );
                        let text = String::from_utf8_lossy(&out.stdout);
                        let codes: Vec<&str> = text.lines().collect();
                        for c in &codes {
                            if *c == "200" {
                                ok += 1;
                            } else {
                                failed += 1;
                                first.get_or_insert_with(|| format!("status {c}"));
                            }
                        }
                        if codes.len() < 20 {
                            let missing = 20 - codes.len() as u64;
                            failed += missing;
                            first.get_or_insert_with(|| {
                                format!(
                                    "curl exited {} after {} responses: {}",
                                    out.status,
                                    codes.len(),
                                    String::from_utf8_lossy(&out.stderr)
                                )
                            });
                        }
                    }
                    (ok, failed, first)
                })
            })
            .collect();
        let mut total = (0, 0, None);
        for t in threads {
            let (ok, failed, first) = t.join().expect("load thread");
            total.0 += ok;
            total.1 += failed;
            if total.2.is_none() {
                total.2 = first;
            }
        }
        total
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn openssl_serial_lines_parse() {
        assert_eq!(
            super::parse_serial("serial=03E9\n").as_deref(),
            Some("03E9")
        );
        assert_eq!(super::parse_serial("nothing"), None);
    }
}
