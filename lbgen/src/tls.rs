//! TLS certificates, the pure part: which file serves which SNI name, whether a PEM file is
//! whole, and the crt-list HAProxy reads. No I/O: [`crate::certs`] reads the directory and
//! talks to HAProxy.
//!
//! The rule, by file name in the certificate directory (`--var tls_certs=DIR`):
//! - `default.pem`: the default certificate (clients without SNI, or with a name no other
//!   file serves); listed first, without an SNI filter, so HAProxy also serves it for the
//!   names inside it.
//! - `example.com.pem`: SNI `example.com`.
//! - `_wildcard.example.com.pem`: SNI `*.example.com` (a `*` is awkward in file names and
//!   shell globs).
//! - Anything else ending in `.pem` is refused with the reason; other files (and every name
//!   starting with `.`, such as a writer's temp file before its rename) are not certificates.
//!
//! Without `default.pem` the first file in name order is the default (HAProxy serves the
//! first certificate of a crt-list to clients whose SNI matches nothing).

use std::cmp::Ordering;

/// The file name (without `.pem`) of the default certificate.
pub const DEFAULT_NAME: &str = "default";

/// The prefix that spells `*.` in a file name.
pub const WILDCARD_PREFIX: &str = "_wildcard.";

/// The largest certificate file read (a chain and a key are a few kB).
pub const MAX_PEM_BYTES: usize = 1024 * 1024;

/// Which client names a certificate file serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sni {
    /// `default.pem`: no filter (the names inside the certificate), listed first.
    Default,
    /// An SNI filter: `example.com` or `*.example.com`.
    Name(String),
}

impl Sni {
    /// As shown in logs and the status page.
    pub fn describe(&self) -> String {
        match self {
            Sni::Default => "default".to_string(),
            Sni::Name(n) => n.clone(),
        }
    }
}

/// What a file in the certificate directory is: `Ok(None)` = not a certificate file (ignored),
/// `Ok(Some(sni))` = a certificate for these names, `Err(reason)` = a `.pem` whose name
/// follows no rule.
pub fn sni_of(file_name: &str) -> Result<Option<Sni>, String> {
    if file_name.starts_with('.') {
        return Ok(None);
    }
    let Some(stem) = file_name.strip_suffix(".pem") else {
        return Ok(None);
    };
    if stem == DEFAULT_NAME {
        return Ok(Some(Sni::Default));
    }
    let (wild, host) = match stem.strip_prefix(WILDCARD_PREFIX) {
        Some(rest) => (true, rest),
        None => (false, stem),
    };
    if !dns_name(host) {
        return Err(format!(
            "file name {:?}: expected default.pem, HOST.pem or _wildcard.HOST.pem with HOST a DNS name (letters, digits, '-', dots)",
            crate::model::sanitize_for_log(file_name)
        ));
    }
    let host = host.to_ascii_lowercase();
    Ok(Some(Sni::Name(if wild {
        format!("*.{host}")
    } else {
        host
    })))
}

/// A DNS host name: labels of 1-63 letters, digits and `-` (not at either end), at most 253
/// characters. Nothing that could end an HAProxy word or start a comment.
fn dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Why `pem` is not a whole certificate file (chain and private key), or None. Catches
/// garbage, a missing key or certificate, and a half-written file (a block without its END
/// line); whether the key matches the certificate is HAProxy's to say.
pub fn pem_problem(pem: &[u8]) -> Option<String> {
    if pem.len() > MAX_PEM_BYTES {
        return Some(format!("larger than {MAX_PEM_BYTES} bytes"));
    }
    let Ok(text) = std::str::from_utf8(pem) else {
        return Some("not a PEM file (not text)".into());
    };
    let mut open: Option<&str> = None;
    let (mut certs, mut keys) = (0, 0);
    for line in text.lines().map(str::trim) {
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            if let Some(o) = open {
                return Some(format!("BEGIN {label} inside the unfinished {o} block"));
            }
            open = Some(label);
        } else if let Some(label) = line
            .strip_prefix("-----END ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            match open.take() {
                Some(o) if o == label => {
                    if label == "CERTIFICATE" {
                        certs += 1;
                    } else if label.ends_with("PRIVATE KEY") {
                        keys += 1;
                    }
                }
                Some(o) => return Some(format!("END {label} closes a {o} block")),
                None => return Some(format!("END {label} without its BEGIN")),
            }
        } else if open.is_some()
            && !line
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        {
            if line.starts_with('-') {
                // An END line cut short: the file was read while being written.
                return Some(half_written(open.unwrap_or_default()));
            }
            // Old-style encrypted keys carry headers (`Proc-Type:`); HAProxy cannot use
            // them without a passphrase either.
            return Some(
                "a PEM block holds something other than base64 (an encrypted key?)".into(),
            );
        }
    }
    if let Some(o) = open {
        return Some(half_written(o));
    }
    match (certs, keys) {
        (0, 0) => Some("no PEM block: not a certificate file".into()),
        (0, _) => Some("no CERTIFICATE block (the file holds only a key)".into()),
        (_, 0) => Some("no PRIVATE KEY block (the chain and its key belong in one file)".into()),
        (_, 1) => None,
        (_, n) => Some(format!("{n} private keys in one file (expected one)")),
    }
}

fn half_written(label: &str) -> String {
    format!(
        "the {label} block has no END line (half-written? write a temp file and rename it into place)"
    )
}

/// One line of the crt-list: the certificate file HAProxy loads and the names it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Absolute path of lbgen's copy (the name HAProxy's runtime API knows it by).
    pub path: String,
    pub sni: Sni,
}

impl Entry {
    /// The crt-list line (also the payload of `add ssl crt-list`).
    pub fn line(&self) -> String {
        match &self.sni {
            Sni::Default => self.path.clone(),
            Sni::Name(n) => format!("{} {n}", self.path),
        }
    }
}

/// The order HAProxy should see: `default.pem` first (the default certificate), then by path.
pub fn order(a: &Entry, b: &Entry) -> Ordering {
    let rank = |e: &Entry| !matches!(e.sni, Sni::Default);
    rank(a).cmp(&rank(b)).then_with(|| a.path.cmp(&b.path))
}

/// The crt-list file for `entries` (any order), one line each, default first.
pub fn crt_list(entries: &[Entry]) -> String {
    let mut sorted = entries.to_vec();
    sorted.sort_by(order);
    let mut out = String::from("# Written by lbgen from the certificate directory. Do not edit.\n");
    for e in &sorted {
        out.push_str(&e.line());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n";

    #[test]
    fn file_names_map_to_sni_names() {
        assert_eq!(sni_of("default.pem"), Ok(Some(Sni::Default)));
        assert_eq!(
            sni_of("Example.COM.pem"),
            Ok(Some(Sni::Name("example.com".into())))
        );
        assert_eq!(
            sni_of("_wildcard.example.com.pem"),
            Ok(Some(Sni::Name("*.example.com".into())))
        );
        for ignored in ["README", "a.crt", ".a.pem.tmp", ".example.com.pem"] {
            assert_eq!(sni_of(ignored), Ok(None), "{ignored}");
        }
        for bad in [
            "a b.pem",
            "*.x.pem",
            "x..y.pem",
            "-a.pem",
            "a#b.pem",
            "_wildcard..pem",
        ] {
            let e = sni_of(bad).expect_err(bad);
            assert!(e.contains("file name"), "{e}");
        }
    }

    #[test]
    fn a_whole_chain_and_key_pass_and_broken_files_are_named() {
        assert_eq!(pem_problem(format!("{CERT}{CERT}{KEY}").as_bytes()), None);
        assert_eq!(pem_problem(format!("{KEY}{CERT}").as_bytes()), None);
        let cases = [
            ("garbage\n", "no PEM block"),
            (KEY, "no CERTIFICATE"),
            (CERT, "no PRIVATE KEY"),
            ("-----BEGIN CERTIFICATE-----\nMIIB\n", "no END line"),
            ("-----END CERTIFICATE-----\n", "without its BEGIN"),
        ];
        for (pem, want) in cases {
            let why = pem_problem(pem.as_bytes()).unwrap_or_default();
            assert!(why.contains(want), "{pem:?}: {why}");
        }
        let half = format!("{CERT}{}", &KEY[..40]);
        assert!(pem_problem(half.as_bytes())
            .unwrap()
            .contains("half-written"));
        assert!(pem_problem(&[0xff, 0xfe]).unwrap().contains("not text"));
        let two_keys = format!("{CERT}{KEY}{KEY}");
        assert!(pem_problem(two_keys.as_bytes())
            .unwrap()
            .contains("2 private keys"));
    }

    #[test]
    fn the_crt_list_puts_the_default_first_and_filters_by_name() {
        let e = |p: &str, s: Sni| Entry {
            path: p.into(),
            sni: s,
        };
        let list = crt_list(&[
            e("/t/b.com.pem", Sni::Name("b.com".into())),
            e("/t/_wildcard.a.com.pem", Sni::Name("*.a.com".into())),
            e("/t/default.pem", Sni::Default),
        ]);
        let lines: Vec<&str> = list.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "/t/default.pem",
                "/t/_wildcard.a.com.pem *.a.com",
                "/t/b.com.pem b.com"
            ]
        );
    }
}
