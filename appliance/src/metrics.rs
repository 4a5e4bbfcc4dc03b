//! Prometheus metrics: lock-free counters and histograms, rendered in the text exposition format
//! (version 0.0.4) that Prometheus scrapes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Upper bounds (seconds) for latency histograms: 100 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0];
/// Upper bounds for batch sizes (items).
pub const SIZE_BUCKETS: [f64; 8] = [1.0, 10.0, 100.0, 1000.0, 10_000.0, 100_000.0, 1_000_000.0, 10_000_000.0];

/// A histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum in millionths (µs for seconds), to stay atomic.
    sum_micro: AtomicU64,
}

impl Histogram {
    /// A histogram over `bounds` (ascending; +Inf is implied).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micro: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micro.fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Everything the service measures.
#[derive(Debug)]
pub struct Metrics {
    /// Tokens issued by kind: bulk, client, access.
    pub tokens_issued: [AtomicU64; 3],
    /// Items per batch request.
    pub batch_size: Histogram,
    /// Time spent in the device per signature.
    pub sign_seconds: Histogram,
    /// Backend errors by stable code.
    pub backend_errors: Mutex<BTreeMap<String, u64>>,
    /// Device signing operations in progress (sessions in use).
    pub sessions_in_use: AtomicI64,
    /// HTTP responses by status code.
    pub responses: Mutex<BTreeMap<u16, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            tokens_issued: Default::default(),
            batch_size: Histogram::new(&SIZE_BUCKETS),
            sign_seconds: Histogram::new(&LATENCY_BUCKETS),
            backend_errors: Mutex::default(),
            sessions_in_use: AtomicI64::new(0),
            responses: Mutex::default(),
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

impl Metrics {
    /// Counts a backend error.
    pub fn backend_error(&self, code: &str) {
        *self.backend_errors.lock().unwrap_or_else(|p| p.into_inner()).entry(code.to_owned()).or_default() += 1;
    }

    /// Counts a response.
    pub fn response(&self, status: u16) {
        *self.responses.lock().unwrap_or_else(|p| p.into_inner()).entry(status).or_default() += 1;
    }

    /// The text exposition, with the audit log's commit histogram and readiness.
    pub fn render(&self, audit_commit: &Histogram, audit_failures: u64, ready: bool) -> String {
        let mut out = String::new();
        let name = "sitesign_tokens_issued_total";
        header(&mut out, name, "counter", "Tokens issued, by kind.");
        for (kind, c) in ["bulk", "client", "access"].iter().zip(&self.tokens_issued) {
            let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {}", c.load(Ordering::Relaxed));
        }
        header(&mut out, "sitesign_batch_size", "histogram", "Items per batch request.");
        self.batch_size.render(&mut out, "sitesign_batch_size", "");
        header(&mut out, "sitesign_sign_seconds", "histogram", "Time in the key device per signature.");
        self.sign_seconds.render(&mut out, "sitesign_sign_seconds", "");
        let name = "sitesign_backend_errors_total";
        header(&mut out, name, "counter", "Key backend errors, by stable code.");
        for (code, n) in self.backend_errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "{name}{{code=\"{code}\"}} {n}");
        }
        header(&mut out, "sitesign_audit_fsync_seconds", "histogram", "Audit group-commit time (fsync included).");
        audit_commit.render(&mut out, "sitesign_audit_fsync_seconds", "");
        header(
            &mut out,
            "sitesign_audit_failures_total",
            "counter",
            "Audit commits that failed (signatures withheld).",
        );
        let _ = writeln!(out, "sitesign_audit_failures_total {audit_failures}");
        header(&mut out, "sitesign_sessions_in_use", "gauge", "Device signing operations in progress.");
        let _ = writeln!(out, "sitesign_sessions_in_use {}", self.sessions_in_use.load(Ordering::Relaxed));
        let name = "sitesign_http_responses_total";
        header(&mut out, name, "counter", "HTTP responses, by status.");
        for (status, n) in self.responses.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "{name}{{status=\"{status}\"}} {n}");
        }
        header(&mut out, "sitesign_ready", "gauge", "1 when the service is ready to sign.");
        let _ = writeln!(out, "sitesign_ready {}", u8::from(ready));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let h = Histogram::new(&LATENCY_BUCKETS);
        for v in [0.00005, 0.002, 0.002, 20.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.0025\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n") && out.contains("x_count 4\n"), "{out}");
    }
}
