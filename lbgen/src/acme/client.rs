//! One ACME exchange with `instant-acme`: the account (created once, kept in a mode-600
//! file), then an order answered by HTTP-01 through the shared challenge directory.
//! Errors say what failed in the operator's words: the CA unreachable, a challenge the CA
//! could not validate (with the CA's own detail), a rate limit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use super::policy::CertSpec;
use super::store::Store;
use crate::Error;

/// How long the CA may take to validate the challenges and to issue.
const ORDER_TIMEOUT: Duration = Duration::from_secs(90);

/// Where and as whom to order.
#[derive(Debug, Clone)]
pub struct CaConfig {
    pub directory: String,
    /// `mailto:` is added.
    pub email: Option<String>,
    pub account_file: PathBuf,
    /// PEM root the CA's directory is served with (a test CA); the system roots without it.
    pub ca_bundle: Option<PathBuf>,
}

/// A certificate just issued: the chain (leaf first) and its new private key, PEM.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// The account: loaded from `account_file`, or registered and saved there (mode 600).
pub async fn account(ca: &CaConfig, store: &Store) -> Result<Account, Error> {
    let builder = || match &ca.ca_bundle {
        Some(p) => Account::builder_with_root(p)
            .map_err(|e| Error::new(format!("--ca-bundle {}: {e}", p.display()))),
        None => Account::builder().map_err(|e| Error::new(format!("TLS roots: {e}"))),
    };
    if let Some(creds) = read_account(&ca.account_file, &ca.directory)? {
        return builder()?
            .from_credentials(creds)
            .await
            .map_err(|e| named(ca, "loading the account", e));
    }
    let contact = ca.email.as_ref().map(|e| format!("mailto:{e}"));
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            ca.directory.clone(),
            None,
        )
        .await
        .map_err(|e| named(ca, "registering an account", e))?;
    let json = serde_json::to_vec_pretty(&creds)
        .map_err(|e| Error::new(format!("encoding the account: {e}")))?;
    store.write_atomic(&ca.account_file, &json)?;
    tracing::info!(account = %account.id(), file = %ca.account_file.display(), "ACME account registered");
    Ok(account)
}

/// The saved account; one of another CA is refused (its credentials would silently send
/// every order to the CA it was made with).
fn read_account(path: &Path, directory: &str) -> Result<Option<AccountCredentials>, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::new(format!("--account {}: {e}", path.display()))),
    };
    let bad = |e: String| {
        Error::new(format!(
            "--account {}: not an account file of lbgen acme: {e}",
            path.display()
        ))
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if let Some(made_with) = value.get("directory").and_then(|d| d.as_str()) {
        if made_with != directory {
            return Err(Error::new(format!(
                "--account {}: an account of {made_with}, not of --directory {directory}; \
                 give another --account or remove this file",
                path.display()
            )));
        }
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}

/// Orders a certificate for `spec`, publishing the HTTP-01 answers in `store` (removed
/// again whatever happens).
pub async fn issue(
    ca: &CaConfig,
    account: &Account,
    store: &Store,
    spec: &CertSpec,
) -> Result<Issued, Error> {
    let mut tokens = Vec::new();
    let res = order(ca, account, store, spec, &mut tokens).await;
    for t in &tokens {
        store.remove_challenge(t);
    }
    res
}

async fn order(
    ca: &CaConfig,
    account: &Account,
    store: &Store,
    spec: &CertSpec,
    tokens: &mut Vec<String>,
) -> Result<Issued, Error> {
    let ids: Vec<Identifier> = spec
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| named(ca, "creating the order", e))?;
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a.map_err(|e| named(ca, "fetching an authorization", e))?;
        match a.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(Error::new(format!(
                    "authorization for {} is {other:?}",
                    a.identifier()
                )))
            }
        }
        let domain = a.identifier().to_string();
        let mut ch = a.challenge(ChallengeType::Http01).ok_or_else(|| {
            Error::new(format!("the CA offers no http-01 challenge for {domain}"))
        })?;
        store.put_challenge(&ch.token, ch.key_authorization().as_str())?;
        tokens.push(ch.token.clone());
        ch.set_ready()
            .await
            .map_err(|e| named(ca, &format!("starting the challenge for {domain}"), e))?;
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(ORDER_TIMEOUT);
    // An order the CA could not validate ends invalid (or with its problem document):
    // the reason is in each failed challenge.
    match order.poll_ready(&retry).await {
        Ok(OrderStatus::Ready) => {}
        Ok(status) => {
            let fallback = format!("the order ended {status:?} without a reason from the CA");
            return Err(Error::new(challenge_failure(&mut order, fallback).await));
        }
        Err(instant_acme::Error::Api(p)) => {
            let fallback = format!("the CA refused the order: {p}");
            return Err(Error::new(challenge_failure(&mut order, fallback).await));
        }
        Err(e) => return Err(named(ca, "waiting for validation", e)),
    }
    let key_pem = order
        .finalize()
        .await
        .map_err(|e| named(ca, "finalizing the order", e))?;
    let chain_pem = order
        .poll_certificate(&retry)
        .await
        .map_err(|e| named(ca, "downloading the certificate", e))?;
    Ok(Issued { chain_pem, key_pem })
}

/// The CA's own reason an order went invalid: each failed challenge's problem.
async fn challenge_failure(order: &mut instant_acme::Order, fallback: String) -> String {
    let mut why = Vec::new();
    let mut authzs = order.authorizations();
    while let Some(Ok(mut a)) = authzs.next().await {
        let domain = a.identifier().to_string();
        let Ok(state) = a.refresh().await else {
            continue;
        };
        for c in &state.challenges {
            if let Some(p) = &c.error {
                why.push(format!(
                    "{domain}: {}",
                    p.detail.as_deref().unwrap_or("no detail")
                ));
            }
        }
    }
    if why.is_empty() {
        fallback
    } else {
        format!(
            "the CA could not validate the http-01 challenge: {}",
            why.join("; ")
        )
    }
}

/// Names what failed: the CA unreachable, rate limited, or its problem document.
fn named(ca: &CaConfig, step: &str, e: instant_acme::Error) -> Error {
    use instant_acme::Error as E;
    let msg = match &e {
        E::Hyper(_) | E::Http(_) | E::Other(_) => {
            format!(
                "cannot reach the ACME server {} ({step}): {}",
                ca.directory,
                chain(&e)
            )
        }
        E::Api(p)
            if p.r#type
                .as_deref()
                .is_some_and(|t| t.ends_with(":rateLimited")) =>
        {
            format!(
                "rate limited by the CA ({step}): {}",
                p.detail.as_deref().unwrap_or("no detail")
            )
        }
        E::Api(p) => format!("the CA refused {step}: {p}"),
        E::Timeout(_) => format!("the CA did not answer in time ({step})"),
        _ => format!("{step}: {e}"),
    };
    Error::new(msg)
}

/// The error and its sources on one line (hyper's "client error (Connect)" alone says little).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_file_of_another_ca_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("account.json");
        std::fs::write(
            &f,
            r#"{"id":"https://a.test/acct/1","key_pkcs8":"AAAA","directory":"https://a.test/dir"}"#,
        )
        .unwrap();
        let e = read_account(&f, "https://b.test/dir").err().unwrap().0;
        assert!(e.contains("an account of https://a.test/dir"), "{e}");
        assert!(e.contains("--directory https://b.test/dir"), "{e}");
        assert!(read_account(&f, "https://a.test/dir").unwrap().is_some());
        assert!(read_account(&dir.path().join("none"), "x")
            .unwrap()
            .is_none());
        std::fs::write(&f, "{").unwrap();
        let e = read_account(&f, "x").err().unwrap().0;
        assert!(e.contains("not an account file"), "{e}");
    }
}
