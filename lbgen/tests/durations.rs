//! lbgen's duration flags (`--wait`, `--reload-timeout`, `--resync`) read the
//! contract's one syntax, the same as the agent's flags and services file:
//! `24h` failed in `--wait` before.

use std::time::Duration;

use lbgen::watch::{parse_duration, Wait};

#[test]
fn every_unit_of_the_contract_reads_in_lbgen_flags() {
    for (text, want) in [
        ("250ms", Duration::from_millis(250)),
        ("1.5s", Duration::from_millis(1500)),
        ("2m", Duration::from_secs(120)),
        ("24h", Duration::from_secs(86_400)),
        ("1d", Duration::from_secs(86_400)),
        ("10", Duration::from_secs(10)),
    ] {
        assert_eq!(parse_duration(text).unwrap(), want, "{text}");
    }
    let w = Wait::parse("1s:24h").unwrap();
    assert_eq!(
        (w.min, w.max),
        (Duration::from_secs(1), Duration::from_secs(86_400))
    );
}

#[test]
fn bad_durations_are_refused_with_the_reason() {
    assert!(parse_duration("-1s").unwrap_err().0.contains("negative"));
    assert!(parse_duration("5 parsecs").unwrap_err().0.contains("unit"));
    assert!(Wait::parse("2s:1s").is_err());
}
