//! When to renew and when to try again (pure: no clock, no I/O).

use std::time::{Duration, SystemTime};

use crate::Error;

/// `--renew-before`: a share of the certificate's lifetime (`1/3`) or a fixed time before
/// its end (`30d`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RenewBefore {
    /// Renew when this share of the lifetime is left (0 < f < 1).
    Fraction(f64),
    /// Renew this long before `notAfter`.
    Before(Duration),
}

impl RenewBefore {
    /// The default: a third of the lifetime left (Let's Encrypt's 90 days → 30 days; a
    /// test CA's 30 s certificate → 10 s).
    pub const DEFAULT: &'static str = "1/3";

    /// `N/M` (a share of the lifetime) or a duration (`30d`, `720h`).
    pub fn parse(s: &str) -> Result<RenewBefore, Error> {
        if let Some((n, m)) = s.split_once('/') {
            let (n, m) = (n.trim().parse::<u32>(), m.trim().parse::<u32>());
            return match (n, m) {
                (Ok(n), Ok(m)) if n > 0 && n < m => Ok(RenewBefore::Fraction(n as f64 / m as f64)),
                _ => Err(Error::new(format!(
                    "--renew-before {s:?}: a share is N/M with 0 < N < M (1/3)"
                ))),
            };
        }
        let d = shoal_contract::parse_duration(s)
            .map_err(|e| Error::new(format!("--renew-before {s:?}: {e}")))?;
        if d.is_zero() {
            return Err(Error::new(format!(
                "--renew-before {s:?}: must be more than 0"
            )));
        }
        Ok(RenewBefore::Before(d))
    }

    /// When a certificate valid from `not_before` to `not_after` is due. A fixed time that
    /// is not shorter than half the lifetime (`30d` with a 1-day test certificate) renews
    /// at half the lifetime instead, so a short-lived certificate is never renewed in a loop.
    pub fn renew_at(&self, not_before: SystemTime, not_after: SystemTime) -> SystemTime {
        let lifetime = not_after
            .duration_since(not_before)
            .unwrap_or(Duration::ZERO);
        let left = match *self {
            RenewBefore::Fraction(f) => lifetime.mul_f64(f),
            RenewBefore::Before(d) => d.min(lifetime / 2),
        };
        not_after - left
    }
}

/// Backoff after failed orders: `first`, doubling, at most `max`; reset by a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The most a retry waits unless `--retry` asks for more: an hour keeps a broken
    /// set-up well under Let's Encrypt's failed-validation limit (5 per hour and name).
    pub const MAX: Duration = Duration::from_secs(3600);

    pub fn new(first: Duration) -> Backoff {
        Backoff {
            first,
            max: Self::MAX.max(first),
        }
    }

    /// The wait after the `failures`-th failure in a row (1 = the first).
    pub fn after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.first.saturating_mul(1u32 << doublings).min(self.max)
    }
}

/// One certificate: the domains it covers; its file is `NAME.pem`, NAME = the first domain
/// (HAProxy picks a directory's certificate by SNI from its names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    pub domains: Vec<String>,
}

impl CertSpec {
    /// `--cert example.com,www.example.com`: DNS names, lowercase, no wildcard (HTTP-01
    /// cannot prove one), no name twice.
    pub fn parse(s: &str) -> Result<CertSpec, Error> {
        let mut domains: Vec<String> = Vec::new();
        for d in s.split(',').map(str::trim) {
            let d = d.to_ascii_lowercase();
            if !dns_name(&d) {
                return Err(Error::new(format!(
                    "--cert {s:?}: {d:?} is not a DNS name (letters, digits, '-' and '.'; \
                     no wildcard: HTTP-01 cannot validate one)"
                )));
            }
            if domains.contains(&d) {
                return Err(Error::new(format!("--cert {s:?}: {d} is given twice")));
            }
            domains.push(d);
        }
        Ok(CertSpec { domains })
    }

    /// The file's name without `.pem`.
    pub fn name(&self) -> &str {
        &self.domains[0]
    }
}

/// A DNS name: labels of 1–63 letters, digits and inner `-`, at least two, 253 at most.
fn dns_name(d: &str) -> bool {
    d.len() <= 253
        && d.split('.').count() >= 2
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_share_renews_when_that_share_of_the_lifetime_is_left() {
        let nb = SystemTime::UNIX_EPOCH;
        let r = RenewBefore::parse("1/3").unwrap();
        assert_eq!(r.renew_at(nb, nb + 90 * DAY), nb + 60 * DAY);
        let short = Duration::from_secs(30);
        assert_eq!(r.renew_at(nb, nb + short), nb + Duration::from_secs(20));
    }

    #[test]
    fn a_fixed_time_longer_than_half_the_lifetime_renews_at_half() {
        let nb = SystemTime::UNIX_EPOCH;
        let r = RenewBefore::parse("30d").unwrap();
        assert_eq!(r.renew_at(nb, nb + 90 * DAY), nb + 60 * DAY);
        assert_eq!(r.renew_at(nb, nb + DAY), nb + DAY / 2);
    }

    #[test]
    fn bad_renew_before_values_are_refused_with_the_reason() {
        for bad in ["0/3", "3/3", "4/3", "x/3", "0s", "soon"] {
            let e = RenewBefore::parse(bad).unwrap_err().0;
            assert!(e.contains("--renew-before"), "{bad}: {e}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff::new(Duration::from_secs(60));
        assert_eq!(b.after(1), Duration::from_secs(60));
        assert_eq!(b.after(2), Duration::from_secs(120));
        assert_eq!(b.after(3), Duration::from_secs(240));
        assert_eq!(b.after(40), Backoff::MAX);
        let long = Backoff::new(Duration::from_secs(7200));
        assert_eq!(long.after(5), Duration::from_secs(7200));
    }

    #[test]
    fn a_cert_is_named_by_its_first_domain() {
        let c = CertSpec::parse("Shop.Example.com, www.example.com").unwrap();
        assert_eq!(c.name(), "shop.example.com");
        assert_eq!(c.domains, ["shop.example.com", "www.example.com"]);
    }

    #[test]
    fn wildcards_paths_and_repeats_are_not_domains() {
        for bad in [
            "*.example.com",
            "example",
            "a/../b.com",
            "a.com,a.com",
            "-a.com",
            "a..com",
            "",
        ] {
            assert!(CertSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
