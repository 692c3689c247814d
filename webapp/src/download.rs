//! `GET /download?seconds=S&rate=B`: a body of exactly `S × B` bytes sent at a steady `B`
//! bytes per second, in ten slices a second. A deploy test holds one open across a rolling
//! update: the client checks the length (`Content-Length`) and every byte
//! ([`download_byte`]), so a cut, a stall turned into a truncation or a mixed-up body is seen.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::StreamBody;
use hyper::body::Frame;

/// Default length of a download in seconds.
pub const DEFAULT_SECONDS: u64 = 30;
/// Default rate in bytes per second.
pub const DEFAULT_RATE: u64 = 10_240;
/// Longest download (s): a deploy test needs tens of seconds, not hours.
pub const MAX_SECONDS: u64 = 600;
/// Highest rate (bytes/s).
pub const MAX_RATE: u64 = 1 << 20;
/// Slices per second: each is sent one tenth of a second after the last.
const SLICES_PER_SECOND: u64 = 10;

/// What was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Download {
    pub seconds: u64,
    pub rate: u64,
}

impl Download {
    /// Total bytes the body carries.
    pub fn len(&self) -> u64 {
        self.seconds * self.rate
    }

    /// True for a zero-length download (`seconds=0`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses the query string (`seconds=30&rate=10240`, both optional). Unknown keys and
    /// out-of-range or non-numeric values are errors naming the problem.
    pub fn from_query(query: Option<&str>) -> Result<Download, String> {
        let mut d = Download {
            seconds: DEFAULT_SECONDS,
            rate: DEFAULT_RATE,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (slot, range) = match key {
                "seconds" => (&mut d.seconds, 0..=MAX_SECONDS),
                "rate" => (&mut d.rate, 1..=MAX_RATE),
                other => {
                    return Err(format!(
                        "unknown parameter {other:?} (use seconds and rate)"
                    ))
                }
            };
            *slot = value
                .parse()
                .ok()
                .filter(|v| range.contains(v))
                .ok_or_else(|| {
                    format!(
                        "{key}={value:?}: a whole number from {} to {}",
                        range.start(),
                        range.end()
                    )
                })?;
        }
        Ok(d)
    }

    /// The streaming body: slice `i` (of `seconds × 10`) is sent at `i / 10` s and carries
    /// the bytes up to `(i + 1) × len / slices`, so the total is exact for any rate.
    pub fn body(
        self,
    ) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
        let slices = self.seconds * SLICES_PER_SECOND;
        let mut ticker = tokio::time::interval(Duration::from_millis(1000 / SLICES_PER_SECOND));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let total = self.len();
        let state = (ticker, 0u64, 0u64);
        StreamBody::new(stream::unfold(
            state,
            move |(mut ticker, slice, sent)| async move {
                if slice >= slices {
                    return None;
                }
                ticker.tick().await;
                let end = (slice + 1) * total / slices;
                let chunk: Vec<u8> = (sent..end).map(download_byte).collect();
                Some((
                    Ok(Frame::data(Bytes::from(chunk))),
                    (ticker, slice + 1, end),
                ))
            },
        ))
    }
}

/// The byte at `offset` of every download: `a`–`z` repeating, so any client can check it.
pub fn download_byte(offset: u64) -> u8 {
    b'a' + (offset % 26) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_when_the_query_is_empty() {
        let d = Download::from_query(None).unwrap();
        assert_eq!((d.seconds, d.rate), (DEFAULT_SECONDS, DEFAULT_RATE));
        assert_eq!(Download::from_query(Some("")).unwrap(), d);
    }

    #[test]
    fn bad_parameters_are_refused_by_name() {
        let e = Download::from_query(Some("seconds=abc")).unwrap_err();
        assert!(e.contains("seconds=\"abc\""), "{e}");
        let e = Download::from_query(Some("seconds=601")).unwrap_err();
        assert!(e.contains("0 to 600"), "{e}");
        let e = Download::from_query(Some("rate=0")).unwrap_err();
        assert!(e.contains("rate"), "{e}");
        let e = Download::from_query(Some("speed=3")).unwrap_err();
        assert!(e.contains("unknown parameter \"speed\""), "{e}");
    }

    #[test]
    fn the_pattern_repeats_the_alphabet() {
        assert_eq!(download_byte(0), b'a');
        assert_eq!(download_byte(25), b'z');
        assert_eq!(download_byte(26), b'a');
    }
}
