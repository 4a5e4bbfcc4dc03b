//! Prometheus metrics (SPEC §4): typed families from `prometheus-client`, rendered in the text
//! exposition format (version 0.0.4) that Prometheus scrapes.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) for latency histograms: 100 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0];
/// Upper bounds for batch sizes (lines).
pub const SIZE_BUCKETS: [f64; 8] = [1.0, 10.0, 100.0, 1000.0, 10_000.0, 100_000.0, 1_000_000.0, 10_000_000.0];

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A token kind label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `bulk`, `client` or `access`.
    pub kind: &'static str,
}

/// A stable error-code label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The stable code.
    pub code: &'static str,
}

/// An HTTP status label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// The status code.
    pub status: u16,
}

/// Why a connection was closed before its TLS handshake.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `max_connections`, `handshakes_in_progress` or `handshake_rate`.
    pub reason: &'static str,
}

/// How a TLS handshake ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok`, `failed` or `timeout`.
    pub outcome: &'static str,
}

/// A key in service.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabel {
    /// `issuing`, `token-signing` or `tls`.
    pub role: &'static str,
    /// The key's id (`sitesign keys list`).
    pub key: String,
}

/// An SMS Issuing root.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerLabel {
    /// The root key's id.
    pub issuer: String,
}

/// Everything the service measures.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Tokens issued (released after their audit record), by kind.
    pub tokens_issued: Family<KindLabel, Counter>,
    /// Lines per batch request.
    pub batch_size: Histogram,
    /// Time in the device per signature.
    pub sign_seconds: Histogram,
    /// Key backend errors by stable code.
    pub backend_errors: Family<CodeLabel, Counter>,
    /// Device signing operations in progress.
    pub sessions_in_use: Gauge<i64, AtomicI64>,
    /// HTTP responses by status.
    pub responses: Family<StatusLabel, Counter>,
    /// Audit group-commit time, fsync included.
    pub audit_fsync_seconds: Histogram,
    /// Audit commits that failed (signatures withheld).
    pub audit_failures: Counter,
    /// 1 when the service is ready to sign.
    pub ready: Gauge<i64, AtomicI64>,
    /// Changes of the state picked up from the store.
    pub state_reloads: Counter,
    /// Signatures the TLS key made for handshakes.
    pub handshake_signatures: Counter,
    /// Connections closed before their handshake, by reason.
    pub connections_refused: Family<ReasonLabel, Counter>,
    /// TLS handshakes, by outcome.
    pub handshakes: Family<OutcomeLabel, Counter>,
    /// Connections open on the API listener.
    pub connections_open: Gauge<i64, AtomicI64>,
    /// Signing jobs waiting for a worker (a job is one single request, or up to 32 batch lines).
    pub queue_depth: Gauge<i64, AtomicI64>,
    /// When each key in service stops being usable: its retirement, or its certificate's end.
    pub key_expiry: Family<KeyLabel, Gauge<i64, AtomicI64>>,
    /// The nextUpdate of each SMS Issuing root's latest CRL.
    pub crl_next_update: Family<IssuerLabel, Gauge<i64, AtomicI64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let tokens_issued = Family::<KindLabel, Counter>::default();
        for kind in ["bulk", "client", "access"] {
            // Every kind is shown from the start, at 0, so a dashboard's rate() has a series.
            let _ = tokens_issued.get_or_create(&KindLabel { kind });
        }
        let batch_size = Histogram::new(SIZE_BUCKETS);
        let sign_seconds = Histogram::new(LATENCY_BUCKETS);
        let backend_errors = Family::<CodeLabel, Counter>::default();
        for &code in hsm_adapters::Error::DEVICE_CODES {
            // Shown from the start, at 0: an alert on increase() then sees the first error.
            let _ = backend_errors.get_or_create(&CodeLabel { code });
        }
        let sessions_in_use = Gauge::<i64, AtomicI64>::default();
        let responses = Family::<StatusLabel, Counter>::default();
        let audit_fsync_seconds = Histogram::new(LATENCY_BUCKETS);
        let audit_failures = Counter::default();
        let ready = Gauge::<i64, AtomicI64>::default();
        let state_reloads = Counter::default();
        let handshake_signatures = Counter::default();
        let connections_refused = Family::<ReasonLabel, Counter>::default();
        for reason in ["max_connections", "handshakes_in_progress", "handshake_rate", "max_connections_per_mp"] {
            let _ = connections_refused.get_or_create(&ReasonLabel { reason });
        }
        let handshakes = Family::<OutcomeLabel, Counter>::default();
        for outcome in ["ok", "failed", "timeout"] {
            let _ = handshakes.get_or_create(&OutcomeLabel { outcome });
        }
        let connections_open = Gauge::<i64, AtomicI64>::default();
        let queue_depth = Gauge::<i64, AtomicI64>::default();
        let key_expiry = Family::<KeyLabel, Gauge<i64, AtomicI64>>::default();
        let crl_next_update = Family::<IssuerLabel, Gauge<i64, AtomicI64>>::default();
        registry.register("sitesign_tokens_issued", "Tokens issued, by kind", tokens_issued.clone());
        registry.register("sitesign_batch_size", "Lines per batch request", batch_size.clone());
        registry.register("sitesign_sign_seconds", "Time in the key device per signature", sign_seconds.clone());
        registry.register("sitesign_backend_errors", "Key backend errors, by stable code", backend_errors.clone());
        registry.register("sitesign_sessions_in_use", "Device signing operations in progress", sessions_in_use.clone());
        registry.register("sitesign_http_responses", "HTTP responses, by status", responses.clone());
        registry.register(
            "sitesign_audit_fsync_seconds",
            "Audit group-commit time (fsync included)",
            audit_fsync_seconds.clone(),
        );
        registry.register(
            "sitesign_audit_failures",
            "Audit commits that failed (signatures withheld)",
            audit_failures.clone(),
        );
        registry.register("sitesign_ready", "1 when the service is ready to sign", ready.clone());
        registry.register("sitesign_state_reloads", "Changes of the state store picked up", state_reloads.clone());
        registry.register(
            "sitesign_tls_handshake_signatures",
            "Signatures the TLS key made for handshakes",
            handshake_signatures.clone(),
        );
        registry.register(
            "sitesign_connections_refused",
            "Connections closed before their TLS handshake, by reason",
            connections_refused.clone(),
        );
        registry.register("sitesign_tls_handshakes", "TLS handshakes, by outcome", handshakes.clone());
        registry.register(
            "sitesign_connections_open",
            "Connections open on the API listener",
            connections_open.clone(),
        );
        registry.register(
            "sitesign_queue_depth",
            "Signing jobs waiting for a worker (a single request, or up to 32 lines of a batch)",
            queue_depth.clone(),
        );
        registry.register(
            "sitesign_key_expiry_timestamp_seconds",
            "When each key in service stops being usable (its retirement or its certificate's notAfter), Unix time",
            key_expiry.clone(),
        );
        registry.register(
            "sitesign_crl_next_update_timestamp_seconds",
            "nextUpdate of each SMS Issuing root's latest CRL, Unix time",
            crl_next_update.clone(),
        );
        Metrics {
            registry,
            tokens_issued,
            batch_size,
            sign_seconds,
            backend_errors,
            sessions_in_use,
            responses,
            audit_fsync_seconds,
            audit_failures,
            ready,
            state_reloads,
            handshake_signatures,
            connections_refused,
            handshakes,
            connections_open,
            queue_depth,
            key_expiry,
            crl_next_update,
        }
    }
}

impl Metrics {
    /// Counts one token of `kind` issued.
    pub fn token_issued(&self, kind: crate::token::TokenKind) {
        self.tokens_issued.get_or_create(&KindLabel { kind: kind.as_str() }).inc();
    }

    /// Counts a backend error.
    pub fn backend_error(&self, code: &'static str) {
        self.backend_errors.get_or_create(&CodeLabel { code }).inc();
    }

    /// Counts a response.
    pub fn response(&self, status: u16) {
        self.responses.get_or_create(&StatusLabel { status }).inc();
    }

    /// Sets the key gauges from `state`: every key that is not retired or revoked, with the
    /// earlier of its scheduled retirement and its certificate's end.
    pub fn set_keys(&self, state: &crate::state::State) {
        self.key_expiry.clear();
        for k in state.keys.iter().filter(|k| k.revoked.is_none()) {
            if k.retires.is_some_and(|r| r <= state.at) {
                continue;
            }
            let expiry = k.retires.map_or(k.not_after, |r| r.min(k.not_after));
            self.key_expiry.get_or_create(&KeyLabel { role: k.role.as_str(), key: k.id.clone() }).set(expiry);
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format_with_every_kind() {
        let m = Metrics::default();
        m.token_issued(crate::token::TokenKind::Client);
        m.sign_seconds.observe(0.002);
        m.backend_error("backend_busy");
        let text = m.render();
        assert!(text.contains("sitesign_tokens_issued_total{kind=\"client\"} 1\n"), "{text}");
        assert!(text.contains("sitesign_tokens_issued_total{kind=\"bulk\"} 0\n"), "{text}");
        assert!(text.contains("sitesign_sign_seconds_bucket{le=\"0.0025\"} 1\n"), "{text}");
        assert!(text.contains("sitesign_backend_errors_total{code=\"backend_busy\"} 1\n"), "{text}");
        assert!(text.contains("# TYPE sitesign_sign_seconds histogram"), "{text}");
    }
}
