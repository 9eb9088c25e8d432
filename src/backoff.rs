//! The one retry-pause rule of the crate: exponential, capped, with jitter.
//!
//! Everything that reconnects (the client after a dropped node, the mesh dialer after a failed
//! link) waits by this rule, so that many peers of a restarted node spread their retries
//! instead of arriving in lockstep. Callers keep their own attempt counter (a dialer resets it
//! after a stable link); the rule itself holds no state.

use std::ops::Range;
use std::time::Duration;

/// Pause before retry `attempt` (0-based): `first` doubled `attempt` times (at most
/// `max_doublings`), capped at `cap`, then scaled by a random factor drawn from `jitter`.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// The pause before the first retry, before jitter.
    pub first: Duration,
    /// Doublings stop after this many attempts.
    pub max_doublings: u32,
    /// The longest pause before jitter.
    pub cap: Duration,
    /// The random factor the pause is scaled by.
    pub jitter: Range<f64>,
    /// Whether the jittered pause is capped too (else jitter may exceed `cap`).
    pub cap_jittered: bool,
}

impl Backoff {
    /// `first` doubling up to `cap`, jitter ×0.5..1.5 that may exceed the cap.
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff {
            first,
            max_doublings: 10,
            cap,
            jitter: 0.5..1.5,
            cap_jittered: false,
        }
    }

    /// Stops doubling after `n` attempts.
    pub fn max_doublings(mut self, n: u32) -> Backoff {
        self.max_doublings = n;
        self
    }

    /// Keeps the jittered pause within the cap as well.
    pub fn cap_jittered(mut self) -> Backoff {
        self.cap_jittered = true;
        self
    }

    /// The pause before retry `attempt`, with a fresh random factor.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = if self.jitter.is_empty() {
            self.jitter.start
        } else {
            rand::random_range(self.jitter.clone())
        };
        self.delay_with(attempt, factor)
    }

    /// The pause before retry `attempt` for a given jitter factor.
    pub fn delay_with(&self, attempt: u32, factor: f64) -> Duration {
        let doublings = attempt.min(self.max_doublings).min(31);
        let base = self.first.saturating_mul(1u32 << doublings).min(self.cap);
        let pause = base.mul_f64(factor);
        if self.cap_jittered {
            pause.min(self.cap)
        } else {
            pause
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn client_rule_doubles_and_stays_within_the_cap() {
        let b = Backoff::new(100 * MS, 500 * MS).cap_jittered();
        assert_eq!(b.delay_with(0, 1.0), 100 * MS);
        assert_eq!(b.delay_with(1, 1.0), 200 * MS);
        assert_eq!(b.delay_with(2, 1.0), 400 * MS);
        assert_eq!(b.delay_with(3, 1.0), 500 * MS);
        assert_eq!(b.delay_with(0, 0.5), 50 * MS);
        assert_eq!(b.delay_with(2, 1.49), 500 * MS);
        assert_eq!(b.delay_with(u32::MAX, 1.0), 500 * MS);
        for attempt in 0..40 {
            let d = b.delay(attempt);
            assert!(d <= 500 * MS, "{d:?}");
            assert!(d >= 50 * MS, "{d:?}");
        }
    }

    #[test]
    fn dialer_rule_caps_before_jitter() {
        let b = Backoff::new(100 * MS, 5000 * MS).max_doublings(6);
        assert_eq!(b.delay_with(5, 1.0), 3200 * MS);
        assert_eq!(b.delay_with(6, 1.0), 5000 * MS);
        assert_eq!(b.delay_with(60, 1.5), 7500 * MS);
        assert_eq!(b.delay_with(60, 0.5), 2500 * MS);
    }
}
