//! Per-MP limits: a token bucket per caller (certificate subject and serial) that requests and
//! batch lines both draw on, and caps on the batches and connections one caller has open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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

    /// Forgets the callers whose buckets have refilled (they are as if never seen), so the map
    /// holds only recent callers.
    pub fn forget_idle(&self) {
        let now = Instant::now();
        let (rate, burst) = (self.rate, self.burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        buckets.retain(|_, (tokens, last)| *tokens + now.duration_since(*last).as_secs_f64() * rate < burst);
    }

    /// Takes `n` tokens for `who` whether or not they are there (the bucket may go into debt);
    /// returns how long to wait before using them, so that the caller's lines come out at its
    /// rate. A batch waits; the caller's single requests meanwhile find the bucket empty.
    pub fn reserve(&self, who: &str, n: u32) -> Duration {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, last) = buckets.entry(who.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst) - f64::from(n);
        *last = now;
        if *tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-*tokens / self.rate) }
    }
}

/// Things open now — batches streaming, connections — per caller and in all.
#[derive(Debug, Default)]
pub struct PerCaller {
    open: Mutex<(HashMap<String, u32>, u32)>,
}

/// One open thing's place among its caller's; given back when dropped.
#[derive(Debug)]
pub struct Place {
    slots: Arc<PerCaller>,
    who: String,
}

/// Why there was no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The caller already has its most (`max_batches_per_mp`, `max_connections_per_mp`).
    Caller(u32),
    /// The appliance already has its most (`max_batches`).
    Appliance(u32),
}

impl PerCaller {
    /// A place for one more batch of `who`, unless it already streams `per_caller` or the
    /// appliance `total`.
    pub fn enter(self: &Arc<Self>, who: &str, per_caller: u32, total: u32) -> Result<Place, Full> {
        let mut guard = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (open, all) = &mut *guard;
        let n = open.get(who).copied().unwrap_or(0);
        if n >= per_caller {
            return Err(Full::Caller(per_caller));
        }
        if *all >= total {
            return Err(Full::Appliance(total));
        }
        open.insert(who.to_owned(), n + 1);
        *all += 1;
        Ok(Place { slots: Arc::clone(self), who: who.to_owned() })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut guard = self.slots.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (open, all) = &mut *guard;
        if let Some(n) = open.get_mut(&self.who) {
            *n -= 1;
            *all -= 1;
            if *n == 0 {
                open.remove(&self.who);
            }
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

    #[test]
    fn reservations_go_into_debt_and_say_how_long_to_wait() {
        let l = RateLimiter::new(10, 20);
        assert_eq!(l.reserve("mp", 20), Duration::ZERO);
        let wait = l.reserve("mp", 30);
        assert!(wait > Duration::from_millis(2900) && wait <= Duration::from_secs(3), "{wait:?}");
        assert!(l.take("mp", 1).is_err(), "single requests wait behind the batch's debt");
    }

    #[test]
    fn places_are_per_caller_and_come_back() {
        let slots = Arc::new(PerCaller::default());
        let a = slots.enter("mp", 2, 3).unwrap();
        let _b = slots.enter("mp", 2, 3).unwrap();
        assert_eq!(slots.enter("mp", 2, 3).unwrap_err(), Full::Caller(2));
        let c = slots.enter("other", 2, 3).unwrap();
        assert_eq!(slots.enter("third", 2, 3).unwrap_err(), Full::Appliance(3), "the appliance's cap");
        drop(a);
        assert!(slots.enter("mp", 2, 3).is_ok());
        drop(c);
        assert!(slots.enter("third", 2, 3).is_ok(), "places come back");
    }
}
