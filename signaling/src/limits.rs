//! Abuse limits that are not part of the room registry: a token bucket per
//! connection for messages per second, and a sliding count of new
//! connections per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Limits a server applies to its clients.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most rooms at once; joining a new room beyond it gets `too_many_rooms`.
    pub max_rooms: usize,
    /// Messages per second a connection may send on average.
    pub messages_per_sec: u32,
    /// Messages a connection may send in a burst.
    pub message_burst: u32,
    /// New WebSocket connections per client address per minute (0: no limit).
    pub connections_per_ip_per_min: u32,
    /// Time a connection has to send `join`.
    pub join_timeout: Duration,
    /// Time a socket write may take before the client counts as too slow.
    pub write_timeout: Duration,
    /// `Origin` values allowed to open `/ws`; empty allows any.
    pub allowed_origins: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_rooms: 50_000,
            messages_per_sec: 50,
            message_burst: 200,
            connections_per_ip_per_min: 120,
            join_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            allowed_origins: Vec::new(),
        }
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
pub(crate) struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            tokens: burst,
            rate: f64::from(rate.max(1)),
            burst,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// New connections per address in the current minute.
pub(crate) struct ConnectionRate {
    per_min: u32,
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl ConnectionRate {
    pub(crate) fn new(per_min: u32) -> Self {
        Self {
            per_min,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a new connection from `ip`; false if it is over the limit.
    pub(crate) fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        if self.per_min == 0 {
            return true;
        }
        let window = Duration::from_secs(60);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() > 100_000 {
            seen.retain(|_, (start, _)| now.saturating_duration_since(*start) < window);
        }
        let entry = seen.entry(ip).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= self.per_min
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 5);
        b.last = t0;
        assert_eq!((0..10).filter(|_| b.take(t0)).count(), 5);
        // 0.5 s later: five more tokens.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..10).filter(|_| b.take(t1)).count(), 5);
    }

    #[test]
    fn connections_per_address_are_counted_per_minute() {
        let r = ConnectionRate::new(3);
        let t0 = Instant::now();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        assert!((0..3).all(|_| r.admit(a, t0)));
        assert!(!r.admit(a, t0));
        assert!(r.admit(b, t0), "other addresses are not affected");
        assert!(r.admit(a, t0 + Duration::from_secs(61)), "a new minute");
    }
}
