//! The certificate directory (`--var tls_certs=DIR`) made live without a reload.
//!
//! HAProxy never reads the directory itself: lbgen keeps a copy of every accepted file in
//! `tls_state_dir/certs/` and writes `tls_state_dir/crt-list` from them, and the config's
//! TLS bind reads that crt-list. So a broken file dropped into the directory (garbage, no
//! key, a key that does not match, half written) is refused by name and never reaches what
//! HAProxy loads, not even at the next reload; the last good copy keeps being served.
//!
//! A [`CertDir::refresh`] compares the directory with the copies and, when HAProxy runs the
//! crt-list already, changes it through the runtime API: `set ssl cert` + `commit ssl cert`
//! for a renewed file, `new ssl cert` + `set` + `commit` + `add ssl crt-list` for a new one,
//! `del ssl crt-list` + `del ssl cert` for a removed one. HAProxy checks the key against the
//! certificate at `commit`; before HAProxy runs the crt-list (at start), `haproxy -c` on a
//! one-line config does that check instead.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::haproxy::Master;
use crate::model::sanitize_for_log;
use crate::output::resolve_program;
use crate::tls::{crt_list, pem_problem, sni_of, Entry, Sni, MAX_PEM_BYTES};
use crate::Error;

/// A certificate file lbgen refused, and why (HAProxy's words when HAProxy refused it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refused {
    pub file: String,
    pub reason: String,
}

/// A certificate being served, as shown on the status page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Served {
    pub file: String,
    /// `default`, `example.com`, `*.example.com`.
    pub sni: String,
}

/// What one refresh changed, by file name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub removed: Vec<String>,
    /// Files refused by this refresh (a file still refused for the same reason is not
    /// repeated).
    pub refused: Vec<Refused>,
    /// The changes went through HAProxy's runtime API (else only the files were written,
    /// for HAProxy to load at its next reload).
    pub runtime: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.updated.is_empty()
            && self.removed.is_empty()
            && self.refused.is_empty()
    }
}

/// The certificate directory and lbgen's copies of what it accepted.
pub struct CertDir {
    src: PathBuf,
    state: PathBuf,
    /// Run `haproxy -c` on a new file when HAProxy cannot be asked (off with
    /// `--check-cmd none`: then only the file's shape is checked before the reload).
    validate: bool,
    /// File name → why it is refused, while it is.
    refused: BTreeMap<String, String>,
}

/// A good-looking file of the directory.
struct Candidate {
    sni: Sni,
    pem: Vec<u8>,
}

impl CertDir {
    /// `src`: the directory users and the ACME client write; `state`: where lbgen keeps its
    /// copies and the crt-list (created by the first refresh, mode 0700: it holds private
    /// keys). Touches nothing.
    pub fn new(src: &Path, state: &Path, validate: bool) -> Result<CertDir, Error> {
        if !src.is_dir() {
            return Err(Error::new(format!(
                "tls_certs {}: not a directory",
                src.display()
            )));
        }
        Ok(CertDir {
            src: src.to_path_buf(),
            state: state.to_path_buf(),
            validate,
            refused: BTreeMap::new(),
        })
    }

    pub fn src(&self) -> &Path {
        &self.src
    }

    /// The crt-list HAProxy's TLS bind reads.
    pub fn crt_list_path(&self) -> PathBuf {
        self.state.join("crt-list")
    }

    fn copy_path(&self, file: &str) -> PathBuf {
        self.state.join("certs").join(file)
    }

    /// The certificates being served (lbgen's copies), default first.
    pub fn served(&self) -> Vec<Served> {
        let mut entries = self.entries();
        entries.sort_by(crate::tls::order);
        entries
            .into_iter()
            .map(|e| Served {
                file: Path::new(&e.path)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                sni: e.sni.describe(),
            })
            .collect()
    }

    /// The files refused now, by name.
    pub fn refused(&self) -> Vec<Refused> {
        self.refused
            .iter()
            .map(|(f, r)| Refused {
                file: f.clone(),
                reason: r.clone(),
            })
            .collect()
    }

    /// The crt-list entries of the copies on disk.
    fn entries(&self) -> Vec<Entry> {
        self.copies()
            .into_keys()
            .filter_map(|f| match sni_of(&f) {
                Ok(Some(sni)) => Some(Entry {
                    path: self.copy_path(&f).display().to_string(),
                    sni,
                }),
                _ => None,
            })
            .collect()
    }

    /// lbgen's copies: file name → contents.
    fn copies(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let Ok(rd) = std::fs::read_dir(self.state.join("certs")) else {
            return out;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if matches!(sni_of(&name), Ok(Some(_))) {
                if let Ok(b) = std::fs::read(e.path()) {
                    out.insert(name, b);
                }
            }
        }
        out
    }

    /// The directory's files: good-looking candidates, and the refused with their reason.
    fn scan(&self) -> (BTreeMap<String, Candidate>, BTreeMap<String, String>) {
        let mut good = BTreeMap::new();
        let mut bad = BTreeMap::new();
        let rd = match std::fs::read_dir(&self.src) {
            Ok(rd) => rd,
            Err(e) => {
                // Keep serving what was accepted: a directory that vanished for a moment
                // (a remount) must not remove every certificate.
                tracing::warn!(dir = %self.src.display(), error = %e, "cannot read the certificate directory; certificates kept");
                return (good, bad);
            }
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let sni = match sni_of(&name) {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(why) => {
                    bad.insert(sanitize_for_log(&name), why);
                    continue;
                }
            };
            let read = std::fs::metadata(e.path()).and_then(|m| {
                if m.len() > MAX_PEM_BYTES as u64 {
                    Ok(Err(format!("larger than {MAX_PEM_BYTES} bytes")))
                } else if !m.is_file() {
                    Ok(Err("not a regular file".to_string()))
                } else {
                    std::fs::read(e.path()).map(Ok)
                }
            });
            match read {
                Ok(Ok(pem)) => match pem_problem(&pem) {
                    None => {
                        good.insert(name, Candidate { sni, pem });
                    }
                    Some(why) => {
                        bad.insert(name, why);
                    }
                },
                Ok(Err(why)) => {
                    bad.insert(name, why);
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    bad.insert(name, format!("unreadable: {err}"));
                }
            }
        }
        (good, bad)
    }

    /// Brings the copies, the crt-list and (with `master`, once HAProxy runs this crt-list)
    /// the running HAProxy in line with the directory. Never fails as a whole: a file that
    /// cannot be taken is refused by name and the rest still go through.
    pub async fn refresh(&mut self, master: Option<&Master>) -> Changes {
        let mut ch = Changes::default();
        let certs = self.state.join("certs");
        if let Err(e) = std::fs::create_dir_all(&certs) {
            tracing::error!(dir = %certs.display(), error = %e, "cannot create tls_state_dir; certificates not refreshed");
            return ch;
        }
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&certs, std::fs::Permissions::from_mode(0o700));
        let (good, bad) = self.scan();
        let copies = self.copies();
        let list = self.crt_list_path().display().to_string();
        let live: Option<BTreeSet<String>> = match master {
            Some(m) => runtime_entries(m, &list).await,
            None => None,
        };
        ch.runtime = live.is_some();
        let mut refused_now: BTreeMap<String, String> = bad;
        for (file, c) in &good {
            let path = self.copy_path(file).display().to_string();
            let copy = copies.get(file);
            let in_haproxy = live.as_ref().map(|l| l.contains(&path));
            if copy == Some(&c.pem) && in_haproxy != Some(false) {
                continue;
            }
            let entry = Entry {
                path: path.clone(),
                sni: c.sni.clone(),
            };
            let result = match (master, in_haproxy) {
                (Some(m), Some(true)) => update_runtime(m, &path, &c.pem).await,
                (Some(m), Some(false)) => add_runtime(m, &list, &entry, &c.pem).await,
                _ if self.validate => check_with_haproxy(file, &c.pem).await,
                _ => Ok(()),
            };
            if let Err(why) = result {
                refused_now.insert(file.clone(), why);
                continue;
            }
            if let Err(e) = write_private(&self.copy_path(file), &c.pem) {
                refused_now.insert(file.clone(), e.0);
                continue;
            }
            if copy.is_some() {
                tracing::info!(file = %file, sni = %c.sni.describe(), runtime = ch.runtime, "certificate renewed");
                ch.updated.push(file.clone());
            } else {
                tracing::info!(file = %file, sni = %c.sni.describe(), runtime = ch.runtime, "certificate added");
                ch.added.push(file.clone());
            }
        }
        for file in copies.keys() {
            if good.contains_key(file) || refused_now.contains_key(file) {
                continue;
            }
            // Gone from the directory (a refused file keeps its last good copy).
            let path = self.copy_path(file).display().to_string();
            if let (Some(m), Some(l)) = (master, &live) {
                if l.contains(&path) {
                    if let Err(why) = remove_runtime(m, &list, &path).await {
                        tracing::warn!(file = %file, reason = %why, "certificate removed from the directory; HAProxy serves it until its next reload");
                    }
                }
            }
            match std::fs::remove_file(self.copy_path(file)) {
                Ok(()) => {
                    tracing::info!(file = %file, "certificate removed");
                    ch.removed.push(file.clone());
                }
                Err(e) => tracing::warn!(file = %file, error = %e, "cannot remove lbgen's copy"),
            }
        }
        if let Err(e) = self.write_crt_list() {
            tracing::error!(error = %e, "crt-list not written");
        }
        for (file, why) in &refused_now {
            if self.refused.get(file) != Some(why) {
                let kept = self.copy_path(file).exists();
                tracing::warn!(file = %file, reason = %why, old_certificate_kept = kept, "certificate refused");
                ch.refused.push(Refused {
                    file: file.clone(),
                    reason: why.clone(),
                });
            }
        }
        self.refused = refused_now;
        ch
    }

    /// Rewrites the crt-list from the copies if it differs (atomically).
    fn write_crt_list(&self) -> Result<(), Error> {
        let text = crt_list(&self.entries());
        let path = self.crt_list_path();
        if std::fs::read(&path).ok().as_deref() == Some(text.as_bytes()) {
            return Ok(());
        }
        write_private(&path, text.as_bytes())
    }

    /// Whether the crt-list has at least one certificate (HAProxy refuses a TLS bind
    /// without one, so the default template opens the HTTPS port only then).
    pub fn has_certs(&self) -> bool {
        !self.entries().is_empty()
    }
}

/// The certificate paths of `list` in the running HAProxy, or None when it does not run
/// that crt-list (no TLS bind yet, or HAProxy unreachable).
async fn runtime_entries(m: &Master, list: &str) -> Option<BTreeSet<String>> {
    let out = m
        .command(&format!("@1 show ssl crt-list {list}"))
        .await
        .ok()?;
    let mut lines = out.lines();
    if lines.next().map(str::trim) != Some(format!("# {list}").as_str()) {
        return None;
    }
    Some(
        lines
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect(),
    )
}

/// A PEM as a runtime-API payload: the payload ends at the first empty line, so none may be
/// inside it.
fn payload(pem: &[u8]) -> String {
    String::from_utf8_lossy(pem)
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// One runtime command; Err(HAProxy's answer on one line) unless the answer holds `ok`.
async fn step(m: &Master, cmd: &str, ok: &str) -> Result<(), String> {
    let out = m.command(&format!("@1 {cmd}")).await.map_err(|e| e.0)?;
    if out.contains(ok) {
        return Ok(());
    }
    let t: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    Err(format!("haproxy: {}", sanitize_for_log(&t.join(" "))))
}

/// `set ssl cert` + `commit ssl cert`; a refused transaction is aborted (the old
/// certificate keeps serving).
async fn set_and_commit(m: &Master, path: &str, pem: &[u8]) -> Result<(), String> {
    let set = format!("set ssl cert {path} <<\n{}\n", payload(pem));
    let r = match step(m, &set, "Transaction").await {
        Ok(()) => step(m, &format!("commit ssl cert {path}"), "Success!").await,
        Err(e) => Err(e),
    };
    if r.is_err() {
        let _ = m.command(&format!("@1 abort ssl cert {path}")).await;
    }
    r
}

async fn update_runtime(m: &Master, path: &str, pem: &[u8]) -> Result<(), String> {
    set_and_commit(m, path, pem).await
}

async fn add_runtime(m: &Master, list: &str, e: &Entry, pem: &[u8]) -> Result<(), String> {
    // A store left from an earlier failed try is reused.
    let _ = step(m, &format!("new ssl cert {}", e.path), "New empty").await;
    let r = match set_and_commit(m, &e.path, pem).await {
        Ok(()) => {
            step(
                m,
                &format!("add ssl crt-list {list} <<\n{}\n", e.line()),
                "Success!",
            )
            .await
        }
        Err(e) => Err(e),
    };
    if r.is_err() {
        let _ = m.command(&format!("@1 del ssl cert {}", e.path)).await;
    }
    r
}

async fn remove_runtime(m: &Master, list: &str, path: &str) -> Result<(), String> {
    step(m, &format!("del ssl crt-list {list} {path}"), "deleted").await?;
    step(m, &format!("del ssl cert {path}"), "deleted").await
}

/// Asks `haproxy -c` whether it can load `pem` (key matching the certificate included).
async fn check_with_haproxy(file: &str, pem: &[u8]) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir for the check: {e}"))?;
    let cert = dir.path().join(file);
    let cfg = dir.path().join("check.cfg");
    std::fs::write(&cert, pem)
        .and_then(|()| {
            std::fs::write(
                &cfg,
                format!(
                    "defaults\n    mode http\n    timeout connect 1s\n    timeout client 1s\n    timeout server 1s\nfrontend tls_check\n    bind 127.0.0.1:1 ssl crt {}\n",
                    cert.display()
                ),
            )
        })
        .map_err(|e| format!("writing the check files: {e}"))?;
    let mut cmd = tokio::process::Command::new(resolve_program("haproxy"));
    cmd.args(["-c", "-f"]).arg(&cfg).kill_on_drop(true);
    let out = match tokio::time::timeout(Duration::from_secs(30), cmd.output()).await {
        Err(_) => return Err("haproxy -c timed out".into()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!("no haproxy binary to check certificates with; the reload will");
            return Ok(());
        }
        Ok(Err(e)) => return Err(format!("haproxy -c: {e}")),
        Ok(Ok(o)) => o,
    };
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let alert = text
        .lines()
        .find(|l| l.contains("ALERT"))
        .unwrap_or("haproxy -c refused it");
    // `[ALERT] (123) : config : parsing [...] : 'bind ...' : <the reason>`: the reason,
    // without the temp file's path.
    let why = alert.rsplit(" : ").next().unwrap_or(alert);
    Err(format!(
        "haproxy: {}",
        sanitize_for_log(&why.replace(&dir.path().display().to_string(), ""))
    ))
}

/// Replaces `path` atomically (temp file in the same directory + rename), mode 0600.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mode = std::fs::Permissions::from_mode(0o600);
    tempfile::Builder::new()
        .prefix(".lbgen-")
        .permissions(mode)
        .tempfile_in(dir)
        .and_then(|mut t| {
            t.write_all(contents)?;
            t.as_file().sync_all()?;
            t.persist(path).map_err(|e| e.error)
        })
        .map(drop)
        .map_err(|e| Error::new(format!("writing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_has_no_empty_line() {
        let p = payload(b"-----BEGIN A-----\nx\n-----END A-----\n\n\r\n-----BEGIN B-----\ny\n");
        assert!(!p.contains("\n\n"), "{p:?}");
        assert!(p.starts_with("-----BEGIN A-----\nx\n"));
    }
}
