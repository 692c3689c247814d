//! `lbgen acme`: certificates from an ACME CA (RFC 8555, HTTP-01) for HAProxy's cert
//! directory, renewed before they expire. It only writes `CERT_DIR/NAME.pem` (atomically);
//! HAProxy loads the directory (`crt DIR`) and the TLS watcher pushes a renewed file to the
//! running HAProxy, so a renewal needs no reload.
//!
//! Several LBs share one cert dir (a volume): each runs `lbgen acme` and answers the CA's
//! challenges from the shared `.acme/challenges/` (whichever LB the CA reaches), and an order
//! is placed only under the shared `.acme/lock`, after re-reading the file: one certificate is
//! issued once and used by all.
//!
//! - [`policy`]: when to renew, the retry backoff, `--cert` (pure).
//! - [`store`]: the files: certificates, account, challenge tokens, the lock.
//! - [`client`]: the exchange with the CA (`instant-acme`), errors named.
//! - [`responder`]: the HTTP-01 answers and `/status.json`.

pub mod client;
pub mod policy;
pub mod responder;
pub mod store;

use std::future::Future;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::Error;
pub use client::CaConfig;
pub use policy::{Backoff, CertSpec, RenewBefore};
pub use store::Store;

/// While another LB holds the order lock, look again this often (its order takes seconds).
const LOCKED_RETRY: Duration = Duration::from_secs(2);
/// The longest sleep: a certificate another LB renewed, or a clock that jumped, is noticed
/// at least this often.
const MAX_SLEEP: Duration = Duration::from_secs(600);

pub struct AcmeConfig {
    pub ca: CaConfig,
    pub certs: Vec<CertSpec>,
    pub store: Store,
    pub renew_before: RenewBefore,
    pub backoff: Backoff,
    /// `--http`: the challenge responder's socket (None: another LB's, or a separate
    /// responder, answers; mostly for tests).
    pub http: Option<std::net::TcpListener>,
}

/// One certificate's state, as `/status.json` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CertStatus {
    pub name: String,
    pub domains: Vec<String>,
    /// Unix seconds; None before the first certificate.
    pub not_after: Option<u64>,
    pub renew_at: Option<u64>,
    /// The last order's error; None after a success.
    pub last_error: Option<String>,
    /// Failed orders in a row.
    pub failures: u32,
    pub next_check: u64,
    pub issued: u64,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs until `shutdown` resolves.
pub async fn run(cfg: AcmeConfig, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let now = SystemTime::now();
    let status: responder::Shared = std::sync::Arc::new(std::sync::Mutex::new(
        cfg.certs
            .iter()
            .map(|c| CertStatus {
                name: c.name().to_string(),
                domains: c.domains.clone(),
                not_after: None,
                renew_at: None,
                last_error: None,
                failures: 0,
                next_check: unix(now),
                issued: 0,
            })
            .collect(),
    ));
    let _server = match cfg.http {
        Some(ref l) => {
            let l = l
                .try_clone()
                .map_err(|e| Error::new(format!("--http: {e}")))?;
            Some(AbortOnDrop(responder::spawn(
                l,
                cfg.store.clone(),
                status.clone(),
            )?))
        }
        None => None,
    };
    let mut next: Vec<SystemTime> = vec![now; cfg.certs.len()];
    let mut account = None;
    tokio::pin!(shutdown);
    loop {
        for (i, spec) in cfg.certs.iter().enumerate() {
            if SystemTime::now() < next[i] {
                continue;
            }
            let mut st = status
                .lock()
                .map(|s| s[i].clone())
                .map_err(|_| Error::new("status lock poisoned"))?;
            // An order can take a minute: SIGTERM does not wait for it (the lock goes with
            // the process; a challenge answer left behind is public anyway).
            next[i] = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                at = step(&cfg, spec, &mut st, &mut account) => at,
            };
            st.next_check = unix(next[i]);
            if let Ok(mut s) = status.lock() {
                s[i] = st;
            }
        }
        let soonest = next.iter().min().copied().unwrap_or(now);
        let wait = soonest
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(MAX_SLEEP);
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Looks at one certificate: fresh → when it is due; due → order it under the lock. Returns
/// when to look again.
async fn step(
    cfg: &AcmeConfig,
    spec: &CertSpec,
    st: &mut CertStatus,
    account: &mut Option<instant_acme::Account>,
) -> SystemTime {
    let name = spec.name();
    if let Some(at) = fresh_until(cfg, spec, st) {
        return at;
    }
    let lock = match cfg.store.try_lock() {
        Ok(Some(l)) => l,
        Ok(None) => {
            tracing::debug!(
                cert = name,
                "another lbgen acme holds the order lock; waiting"
            );
            return SystemTime::now() + LOCKED_RETRY;
        }
        Err(e) => return failed(cfg, st, e),
    };
    // Under the lock: another LB may have renewed it while we waited.
    if let Some(at) = fresh_until(cfg, spec, st) {
        return at;
    }
    tracing::info!(cert = name, domains = ?spec.domains, directory = %cfg.ca.directory, "ordering a certificate");
    let res = async {
        if account.is_none() {
            *account = Some(client::account(&cfg.ca, &cfg.store).await?);
        }
        let acct = account.as_ref().ok_or_else(|| Error::new("no account"))?;
        let issued = client::issue(&cfg.ca, acct, &cfg.store, spec).await?;
        cfg.store
            .write_cert(name, &issued.chain_pem, &issued.key_pem)?;
        Ok::<_, Error>(())
    }
    .await;
    drop(lock);
    match res {
        Ok(()) => {
            st.failures = 0;
            st.last_error = None;
            st.issued += 1;
            match fresh_until(cfg, spec, st) {
                Some(at) => {
                    tracing::info!(cert = name, file = %cfg.store.cert_path(name).display(), not_after = st.not_after, "certificate issued");
                    at
                }
                // The CA's certificate is already due (a lifetime shorter than the check):
                // say so and back off rather than order in a loop.
                None => failed(
                    cfg,
                    st,
                    Error::new("the issued certificate is already due for renewal"),
                ),
            }
        }
        Err(e) => {
            // A stale account (a test CA that forgot it) is registered again next time.
            if e.0.contains("accountDoesNotExist") {
                *account = None;
            }
            failed(cfg, st, e)
        }
    }
}

/// `Some(renew time)` when `NAME.pem` covers the domains and is not due yet; records what
/// the file says in `st`.
fn fresh_until(cfg: &AcmeConfig, spec: &CertSpec, st: &mut CertStatus) -> Option<SystemTime> {
    let name = spec.name();
    let on_disk = match cfg.store.read_cert(name) {
        Ok(Some(c)) => c,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(cert = name, error = %e, "unreadable certificate: ordering a new one");
            return None;
        }
    };
    let at = cfg
        .renew_before
        .renew_at(on_disk.not_before, on_disk.not_after);
    st.not_after = Some(unix(on_disk.not_after));
    st.renew_at = Some(unix(at));
    let mut want = spec.domains.clone();
    want.sort();
    if on_disk.domains != want {
        tracing::info!(cert = name, has = ?on_disk.domains, wants = ?want, "certificate names differ from --cert: ordering a new one");
        return None;
    }
    (SystemTime::now() < at).then_some(at)
}

/// Logs the error, keeps the old certificate, backs off.
fn failed(cfg: &AcmeConfig, st: &mut CertStatus, e: Error) -> SystemTime {
    st.failures += 1;
    let wait = cfg.backoff.after(st.failures);
    tracing::warn!(
        cert = %st.name,
        error = %e,
        failures = st.failures,
        retry_in = ?wait,
        "ACME order failed; the current certificate (if any) stays"
    );
    st.last_error = Some(e.0);
    SystemTime::now() + wait
}
