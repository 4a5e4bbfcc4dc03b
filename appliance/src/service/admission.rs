//! Who gets a TLS handshake on the API listener (SPEC §9).
//!
//! In TLS 1.3 the server proves its identity — a signature by the TLS key, in the device —
//! before it sees the client's certificate, so every handshake costs a device signature, even an
//! anonymous one. Before a connection gets one:
//! - at most `max_connections` connections are open at once;
//! - at most `max_handshakes` handshakes are in progress, and at most an eighth of them from one
//!   source (an IPv4 address, an IPv6 /56: one customer's allocation), so one source holding
//!   connections open cannot take every slot — and a connection that sends no ClientHello within
//!   3 s gives its slot back. A connection finding no slot free waits for one up to
//!   [`SLOT_PATIENCE`] (an MP opening its connection pool at once is served, a few at a time),
//!   then is refused;
//! - each source may start `handshakes_per_second_per_source` handshakes a second, in bursts of
//!   five times that;
//!
//! and the TLS key signs through [`HandshakeGate`]: `tls_sessions` signatures at a time, in
//! device sessions of its own (PKCS#11), so however many handshakes wait, the token-signing
//! workers keep theirs.
//!
//! A refused connection is closed at once and counted by reason. Refusals, failed handshakes and
//! accept errors are logged as a rate, once every [`REPORT_EVERY`], never one line each: a flood
//! must not become a flood of log lines.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::limits::RateLimiter;
use crate::config::ServiceConfig;
use crate::metrics::{Metrics, OutcomeLabel, ReasonLabel};

/// How long a new connection waits for a handshake slot before it is refused.
pub const SLOT_PATIENCE: Duration = Duration::from_secs(1);

/// How often refusals are summarised in the log.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The admission policy of the API listener and what it has refused since the last report.
#[derive(Debug)]
pub struct Admission {
    max_connections: usize,
    open: Arc<AtomicUsize>,
    handshakes: Arc<Semaphore>,
    per_source_max: usize,
    in_progress: Arc<Mutex<HashMap<String, usize>>>,
    freed: Arc<tokio::sync::Notify>,
    per_source: RateLimiter,
    metrics: Arc<Metrics>,
    refused: [AtomicU64; 4],
    failed: AtomicU64,
    timed_out: AtomicU64,
    accept_errors: AtomicU64,
}

/// Why a connection was refused.
const REASONS: [&str; 4] = ["max_connections", "handshakes_in_progress", "handshake_rate", "max_connections_per_mp"];

/// A handshake's place among its source's: given back when dropped.
#[derive(Debug)]
pub struct SourceSlot {
    in_progress: Arc<Mutex<HashMap<String, usize>>>,
    freed: Arc<tokio::sync::Notify>,
    source: String,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut map = self.in_progress.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.source);
            }
        }
        drop(map);
        self.freed.notify_waiters();
    }
}

/// A connection's place: held while it is open.
#[derive(Debug)]
pub struct Connection {
    open: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.metrics.connections_open.dec();
    }
}

/// An admitted connection: its place, and its source, whose handshake slot it then waits for
/// ([`Admission::handshake`]).
#[derive(Debug)]
pub struct Admitted {
    /// Held for the connection's life.
    pub connection: Connection,
    /// Its source's key.
    pub source: String,
}

/// A handshake's slots: held until the handshake ends.
pub type HandshakeSlot = (OwnedSemaphorePermit, SourceSlot);

/// How a handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The client is an MP.
    Ok,
    /// Refused or broken.
    Failed,
    /// Not finished in time.
    Timeout,
}

/// The key of a source address: the address, or an IPv6 address's /56 (one customer's usual
/// allocation; its 2^72 addresses must not be 2^72 buckets).
fn source_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/56", s[0], s[1], s[2], s[3] & 0xff00)
            }
        },
    }
}

impl Admission {
    /// The policy of `config`.
    pub fn new(config: &ServiceConfig, metrics: Arc<Metrics>) -> Admission {
        let rate = config.handshakes_per_second_per_source;
        Admission {
            max_connections: config.max_connections,
            open: Arc::default(),
            handshakes: Arc::new(Semaphore::new(config.max_handshakes)),
            per_source_max: (config.max_handshakes / 8).max(1),
            in_progress: Arc::default(),
            freed: Arc::default(),
            per_source: RateLimiter::new(rate, rate.saturating_mul(5)),
            metrics,
            refused: Default::default(),
            failed: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
        }
    }

    fn refuse(&self, i: usize) -> &'static str {
        self.refused[i].fetch_add(1, Ordering::Relaxed);
        self.metrics.connections_refused.get_or_create(&ReasonLabel { reason: REASONS[i] }).inc();
        REASONS[i]
    }

    /// Admits a new connection from `peer` (the connection cap), or says why not.
    pub fn admit(&self, peer: IpAddr) -> Result<Admitted, &'static str> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max_connections {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(self.refuse(0));
        }
        self.metrics.connections_open.inc();
        let connection = Connection { open: Arc::clone(&self.open), metrics: Arc::clone(&self.metrics) };
        Ok(Admitted { connection, source: source_key(peer) })
    }

    /// A handshake slot for a connection from `source` — one of `max_handshakes`, and of its
    /// source's eighth — waiting for one up to [`SLOT_PATIENCE`], then the source's handshake
    /// rate; refused (and counted) if no slot came or the rate is spent.
    pub async fn handshake(&self, source: &str) -> Result<HandshakeSlot, &'static str> {
        let deadline = tokio::time::Instant::now() + SLOT_PATIENCE;
        loop {
            // Registered before trying, so that a slot freed in between is not missed.
            let freed = self.freed.notified();
            if let Some(slot) = self.try_handshake(source) {
                // The source's rate counts the handshakes it starts, not the connections it opens.
                if self.per_source.take(source, 1).is_err() {
                    return Err(self.refuse(2));
                }
                return Ok(slot);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(self.refuse(1));
            }
        }
    }

    fn try_handshake(&self, source: &str) -> Option<HandshakeSlot> {
        let mut map = self.in_progress.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(source).copied().unwrap_or(0) >= self.per_source_max {
            return None;
        }
        let permit = Arc::clone(&self.handshakes).try_acquire_owned().ok()?;
        *map.entry(source.to_owned()).or_insert(0) += 1;
        let slot = SourceSlot {
            in_progress: Arc::clone(&self.in_progress),
            freed: Arc::clone(&self.freed),
            source: source.to_owned(),
        };
        Some((permit, slot))
    }

    /// Counts a handshake's end.
    pub fn handshake_ended(&self, outcome: Outcome) {
        let label = match outcome {
            Outcome::Ok => "ok",
            Outcome::Failed => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                "failed"
            }
            Outcome::Timeout => {
                self.timed_out.fetch_add(1, Ordering::Relaxed);
                "timeout"
            }
        };
        self.metrics.handshakes.get_or_create(&OutcomeLabel { outcome: label }).inc();
    }

    /// Counts a connection closed after its handshake because its MP has
    /// `max_connections_per_mp` open.
    pub fn refused_after_handshake(&self) {
        let _ = self.refuse(3);
    }

    /// Counts an accept error (logged with the next report).
    pub fn accept_failed(&self) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Logs what was refused since the last report, if anything, and forgets the rate-limit
    /// state of sources that are quiet again.
    pub fn report(&self) {
        let take = |c: &AtomicU64| c.swap(0, Ordering::Relaxed);
        let refused: Vec<u64> = self.refused.iter().map(take).collect();
        let (failed, timed_out, accept_errors) = (take(&self.failed), take(&self.timed_out), take(&self.accept_errors));
        if refused.iter().sum::<u64>() + failed + timed_out + accept_errors > 0 {
            tracing::warn!(
                seconds = REPORT_EVERY.as_secs(),
                handshakes_failed = failed,
                handshakes_timed_out = timed_out,
                refused_max_connections = refused[0],
                refused_handshakes_in_progress = refused[1],
                refused_handshake_rate = refused[2],
                refused_max_connections_per_mp = refused[3],
                accept_errors,
                open = self.open.load(Ordering::Relaxed),
                "API listener: connections refused or failed in the last interval"
            );
        }
        self.per_source.forget_idle();
    }
}

/// The TLS key's signatures, `permits` at a time: the handshakes' share of the device, however
/// many handshakes wait.
#[derive(Debug)]
pub struct HandshakeGate {
    free: Mutex<usize>,
    freed: Condvar,
    patience: Duration,
}

/// A signature's turn at the device.
#[derive(Debug)]
pub struct Turn<'a>(&'a HandshakeGate);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.0.freed.notify_one();
    }
}

impl HandshakeGate {
    /// `permits` signatures at a time; a handshake waits at most `patience` for its turn.
    pub fn new(permits: usize, patience: Duration) -> HandshakeGate {
        HandshakeGate { free: Mutex::new(permits.max(1)), freed: Condvar::new(), patience }
    }

    /// Waits (blocking) for a turn; `None` if none came within the patience.
    pub fn turn(&self) -> Option<Turn<'_>> {
        let free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut free, _) =
            self.freed.wait_timeout_while(free, self.patience, |n| *n == 0).unwrap_or_else(PoisonError::into_inner);
        if *free == 0 {
            return None;
        }
        *free -= 1;
        Some(Turn(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_are_counted_by_their_56() {
        let a: IpAddr = "2001:db8:1:2aa:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2ff:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:302::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        assert_eq!(source_key("::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_waits_for_its_sources_handshake_slot_then_is_refused() {
        let mut problems = Vec::new();
        let file = crate::config::ServiceConfigFile::default();
        let config =
            crate::config::validate_service(&file, std::path::Path::new("/"), std::path::Path::new("/"), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let admission = Admission::new(&config, Arc::new(Metrics::default()));
        let per_source = (config.max_handshakes / 8).max(1);
        let held: Vec<_> = (0..per_source).map(|_| admission.try_handshake("10.0.0.1").unwrap()).collect();
        assert!(admission.try_handshake("10.0.0.2").is_some(), "another source has its own share");
        // One freed while a connection waits: it gets it.
        let mut held = held.into_iter();
        let first = held.next().unwrap();
        let waiting = admission.handshake("10.0.0.1");
        let release = async {
            tokio::time::sleep(SLOT_PATIENCE / 2).await;
            drop(first);
        };
        let (got, ()) = tokio::join!(waiting, release);
        let got = got.expect("a slot freed within the patience is taken");
        // None freed: refused after the patience.
        let started = tokio::time::Instant::now();
        assert_eq!(admission.handshake("10.0.0.1").await.unwrap_err(), "handshakes_in_progress");
        assert!(started.elapsed() >= SLOT_PATIENCE);
        drop(got);
    }

    #[test]
    fn the_gate_lets_permits_through_and_times_out_the_rest() {
        let gate = HandshakeGate::new(1, Duration::from_millis(50));
        let first = gate.turn().unwrap();
        assert!(gate.turn().is_none(), "the second waits, then gives up");
        drop(first);
        assert!(gate.turn().is_some());
    }
}
