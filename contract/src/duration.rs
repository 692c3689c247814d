//! The one duration syntax of every flag, environment variable and file:
//! a number and a unit, `250ms`, `1.5s`, `2m`, `24h`, `1d`. A bare number is
//! seconds. Decimals and exponents are fine (`0.5s`, `1e3ms`), a space before
//! the unit too (`5 s`); negative, NaN and absurdly long durations are refused
//! with a message that says so.

use std::fmt;
use std::time::Duration;

/// Longest duration accepted, in seconds (about 3,000 years: room for every
/// "never" people type, far from overflowing a clock).
pub const MAX_SECS: f64 = 1e11;

/// The units, with their length in nanoseconds.
const UNITS: [(&str, f64); 6] = [
    ("", 1e9),
    ("ms", 1e6),
    ("s", 1e9),
    ("m", 60e9),
    ("h", 3_600e9),
    ("d", 86_400e9),
];

/// Why a duration was refused; the message quotes the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError(String);

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DurationError {}

impl From<DurationError> for String {
    fn from(e: DurationError) -> String {
        e.0
    }
}

/// Parses `250ms`, `1.5s`, `2m`, `24h`, `1d` or a bare number of seconds.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    let err = |why: String| Err(DurationError(why));
    let unit_at = s
        .rfind(|c: char| !c.is_ascii_alphabetic())
        .map_or(0, |i| i + 1);
    let (num, unit) = s.split_at(unit_at);
    let num = num.trim_end();
    if num.is_empty() {
        return err(format!(
            "{s:?} is not a duration (examples: 250ms, 1.5s, 2m, 24h, 1d)"
        ));
    }
    let Some(&(_, ns_per_unit)) = UNITS.iter().find(|(u, _)| *u == unit) else {
        return err(format!(
            "{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
        ));
    };
    if num.starts_with('-') {
        return err(format!("{s:?}: a duration cannot be negative"));
    }
    let Ok(value) = num.parse::<f64>() else {
        return err(format!(
            "{s:?} is not a duration: {num:?} is not a number (examples: 250ms, 1.5s, 2m, 24h, 1d)"
        ));
    };
    // Rounded to whole nanoseconds, so `0.3s` is 300 ms, not 299.999999 ms.
    let nanos = (value * ns_per_unit).round();
    if !nanos.is_finite() || !(0.0..=MAX_SECS * 1e9).contains(&nanos) {
        return err(format!(
            "{s:?} is out of range (at most {MAX_SECS:e} seconds)"
        ));
    }
    let secs = (nanos / 1e9).trunc();
    let sub = (nanos - secs * 1e9).clamp(0.0, 999_999_999.0);
    Ok(Duration::new(secs as u64, sub as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Duration {
        parse_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn refused(s: &str) -> String {
        match parse_duration(s) {
            Ok(d) => panic!("{s:?} was accepted as {d:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_unit_reads() {
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("24h"), Duration::from_secs(86_400));
        assert_eq!(ok("1d"), Duration::from_secs(86_400));
        assert_eq!(ok("0"), Duration::ZERO);
    }

    #[test]
    fn a_bare_number_is_seconds() {
        assert_eq!(ok("3"), Duration::from_secs(3));
        assert_eq!(ok("0.25"), Duration::from_millis(250));
    }

    #[test]
    fn what_any_of_the_old_parsers_took_still_reads() {
        // The agent's flags, lbgen's flags and the services file each took these.
        assert_eq!(ok(" 10s "), Duration::from_secs(10));
        assert_eq!(ok("5 s"), Duration::from_secs(5));
        assert_eq!(ok("+2s"), Duration::from_secs(2));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("1e3ms"), Duration::from_secs(1));
        assert_eq!(ok("1e9"), Duration::from_secs(1_000_000_000));
        assert_eq!(ok("1e9m"), Duration::from_secs(60_000_000_000));
    }

    #[test]
    fn decimals_round_to_whole_nanoseconds() {
        assert_eq!(ok("0.3s"), Duration::from_millis(300));
        assert_eq!(ok("0.1m"), Duration::from_secs(6));
        assert_eq!(ok("1.5ms"), Duration::from_micros(1500));
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        assert!(refused("-1s").contains("negative"));
        assert!(refused("-0.5").contains("negative"));
        assert!(refused("5 parsecs").contains("unknown unit \"parsecs\""));
        assert!(refused("10S").contains("unit"));
        assert!(refused("soon").contains("not a duration"));
        assert!(refused("").contains("not a duration"));
        assert!(refused("NaN").contains("not a duration"));
        assert!(refused("inf").contains("not a duration"));
        assert!(refused("1.2.3s").contains("not a number"));
        assert!(refused("1e400").contains("out of range"));
        assert!(refused("1e12").contains("out of range"));
        assert!(refused("2000000d").contains("out of range"));
    }
}
