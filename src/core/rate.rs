//! Per-sender rate limiting: a token bucket per agent, so one runaway agent (or an
//! acknowledgement storm) cannot flood everyone else's inbox.

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::time::Instant;

use crate::error::Error;
use crate::protocol::ErrorCode;

/// Token buckets by sender. Not behind its own lock: the caller holds one while it also
/// resolves recipients, so a refused send changes nothing.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: u32,
    burst: u32,
    buckets: HashMap<String, Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `per_second` 0 means unlimited; a burst below 1 counts as 1.
    pub fn new(per_second: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            per_second,
            burst: burst.max(1),
            buckets: HashMap::default(),
        }
    }

    /// Takes one token for `from` at `now`, or refuses with `rate_limited`.
    pub fn take(&mut self, from: &str, now: Instant) -> Result<(), Error> {
        let rate = self.per_second;
        if rate == 0 {
            return Ok(());
        }
        let burst = f64::from(self.burst);
        let b = self.buckets.entry(from.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * f64::from(rate);
        b.tokens = (b.tokens + refill).min(burst);
        b.at = now;
        if b.tokens < 1.0 {
            return Err(Error::refused(
                ErrorCode::RateLimited,
                format!(
                    "rate limit: at most {rate} messages/s (burst {burst}) per sender; slow down — \
                     and do not answer acknowledgements with acknowledgements"
                ),
            ));
        }
        b.tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut r = RateLimiter::new(50, 200);
        let t0 = Instant::now();
        for _ in 0..200 {
            r.take("alice", t0).unwrap();
        }
        let e = r.take("alice", t0).unwrap_err();
        assert_eq!(e.code(), ErrorCode::RateLimited);
        // Another sender has a bucket of its own.
        r.take("bob", t0).unwrap();
        // 100 ms at 50/s refill 5 tokens.
        let t1 = t0 + Duration::from_millis(100);
        for _ in 0..5 {
            r.take("alice", t1).unwrap();
        }
        assert!(r.take("alice", t1).is_err());
        // The bucket never holds more than the burst.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..200 {
            r.take("alice", t2).unwrap();
        }
        assert!(r.take("alice", t2).is_err());
    }

    #[test]
    fn zero_is_unlimited() {
        let mut r = RateLimiter::new(0, 1);
        let t = Instant::now();
        for _ in 0..10_000 {
            r.take("alice", t).unwrap();
        }
    }
}
