//! Caps on what strangers can make the agent hold: connections per source
//! and in all, and warnings per source. Pure bookkeeping (the caller passes
//! the time), shared by the gossip port's TCP listener and the UDP loop.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Open connections, in all and per source address. A slot is held by the
/// [`ConnSlot`] guard and given back when it drops.
#[derive(Clone)]
pub struct ConnLimiter {
    inner: Arc<Mutex<Counts>>,
    total: usize,
    per_source: usize,
}

struct Counts {
    open: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `total` connections are open.
    Total(usize),
    /// This source has `per_source` connections open.
    Source(usize),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Total(n) => write!(f, "{n} connections are open (the cap)"),
            Refused::Source(n) => write!(f, "this source has {n} connections open (the cap)"),
        }
    }
}

impl ConnLimiter {
    pub fn new(total: usize, per_source: usize) -> ConnLimiter {
        ConnLimiter {
            inner: Arc::new(Mutex::new(Counts {
                open: 0,
                by_source: HashMap::new(),
            })),
            total,
            per_source,
        }
    }

    /// A slot for a connection from `source`, unless a cap is reached.
    pub fn admit(&self, source: IpAddr) -> Result<ConnSlot, Refused> {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if c.open >= self.total {
            return Err(Refused::Total(self.total));
        }
        let mine = c.by_source.entry(source).or_default();
        if *mine >= self.per_source {
            return Err(Refused::Source(self.per_source));
        }
        *mine += 1;
        c.open += 1;
        Ok(ConnSlot {
            limiter: self.inner.clone(),
            source,
        })
    }

    pub fn open(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).open
    }
}

/// One admitted connection; dropping it frees the slot.
pub struct ConnSlot {
    limiter: Arc<Mutex<Counts>>,
    source: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut c = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        c.open = c.open.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&self.source);
            }
        }
    }
}

/// At most one warning per source per `every`, and at most `max_sources`
/// sources remembered: a flood from many addresses evicts the oldest, and
/// all sources together still log at most `max_sources` lines per `every`.
pub struct WarnLimiter {
    every: Duration,
    max_sources: usize,
    last: HashMap<IpAddr, Instant>,
    window: (Instant, usize),
}

impl WarnLimiter {
    pub fn new(every: Duration, max_sources: usize, now: Instant) -> WarnLimiter {
        WarnLimiter {
            every,
            max_sources,
            last: HashMap::new(),
            window: (now, 0),
        }
    }

    /// Whether a warning about `source` may be logged now (and note it).
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        let every = self.every;
        let recent = |t: &Instant| now.saturating_duration_since(*t) < every;
        if self.last.get(&source).is_some_and(recent) {
            return false;
        }
        if !recent(&self.window.0) {
            self.window = (now, 0);
        }
        if self.window.1 >= self.max_sources {
            return false;
        }
        self.window.1 += 1;
        if self.last.len() >= self.max_sources {
            self.last.retain(|_, t| recent(t));
        }
        if self.last.len() >= self.max_sources {
            if let Some(oldest) = self.last.iter().min_by_key(|(_, t)| **t).map(|(ip, _)| *ip) {
                self.last.remove(&oldest);
            }
        }
        self.last.insert(source, now);
        true
    }

    pub fn remembered(&self) -> usize {
        self.last.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn connections_are_capped_per_source_and_in_all_and_freed_on_drop() {
        let limiter = ConnLimiter::new(3, 2);
        let a1 = limiter.admit(ip(1)).unwrap();
        let _a2 = limiter.admit(ip(1)).unwrap();
        assert_eq!(limiter.admit(ip(1)).err(), Some(Refused::Source(2)));
        let _b1 = limiter.admit(ip(2)).unwrap();
        assert_eq!(limiter.admit(ip(3)).err(), Some(Refused::Total(3)));
        drop(a1);
        assert_eq!(limiter.open(), 2);
        assert!(limiter.admit(ip(3)).is_ok());
    }

    #[test]
    fn warnings_are_limited_per_source_and_the_map_stays_bounded() {
        let t0 = Instant::now();
        let mut w = WarnLimiter::new(Duration::from_secs(30), 4, t0);
        assert!(w.allow(ip(1), t0));
        for i in 0..200 {
            assert!(!w.allow(ip(1), t0 + Duration::from_millis(i)));
        }
        assert!(w.allow(ip(1), t0 + Duration::from_secs(31)));
        // Many sources: at most 4 lines per window, at most 4 remembered.
        let t1 = t0 + Duration::from_secs(100);
        let allowed = (0..1000).filter(|&n| w.allow(ip(n), t1)).count();
        assert_eq!(allowed, 4);
        assert!(w.remembered() <= 4);
        let t2 = t1 + Duration::from_secs(31);
        assert!(w.allow(ip(999), t2));
        assert!(w.remembered() <= 4);
    }
}
