//! Per-MP rate limits: a token bucket per caller (certificate subject and serial).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// A per-caller token bucket.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `rate` per second, bursts of `burst`.
    pub fn new(rate: u32, burst: u32) -> RateLimiter {
        RateLimiter { rate: f64::from(rate), burst: f64::from(burst), buckets: Mutex::default() }
    }

    /// Takes `n` tokens for `who`; `Err(seconds to wait)` if fewer are left.
    pub fn take(&self, who: &str, n: u32) -> Result<(), u64> {
        let now = Instant::now();
        let n = f64::from(n);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, last) = buckets.entry(who.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= n {
            *tokens -= n;
            Ok(())
        } else {
            Err(((n - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let l = RateLimiter::new(1, 3);
        assert!((0..3).all(|_| l.take("mp", 1).is_ok()));
        assert_eq!(l.take("mp", 1), Err(1));
        assert!(l.take("other", 1).is_ok(), "buckets are per caller");
        assert_eq!(l.take("other", 5), Err(3), "{:?}", l.take("other", 5));
    }
}
