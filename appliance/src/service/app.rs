//! The running service's shared state, [`App`], and how it follows the store: the current
//! [`State`], the token signer and the TLS configuration live behind atomic pointers; a watcher
//! rebuilds them when the store's change counter moves or a scheduled transition comes due, and
//! swaps them in. Nobody holds a lock across a device call or an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;
use hsm_adapters::SigningKey;

use super::admission::{Admission, HandshakeGate};
use super::limits::{PerCaller, RateLimiter};
use super::tls::{self, TlsInputs};
use crate::audit::{AuditLog, AuditStats, Lookup};
use crate::backends::{BackendError, Backends};
use crate::config::Config;
use crate::keys::{KeyRecord, KeyRole, KeyStatus};
use crate::metrics::Metrics;
use crate::pipeline::{BackendHealth, Pipeline, Signing, WorkerContext};
use crate::selftest::check_key;
use crate::state::{State, StateError};
use crate::store::{Store, StoreError};
use crate::time::now_unix;
use crate::token::TokenSigner;

/// Why the service could not start (or a new state could not be taken up).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The state could not be read.
    #[error(transparent)]
    State(#[from] StateError),
    /// A device failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A key failed its self-test.
    #[error(transparent)]
    SelfTest(#[from] crate::selftest::SelfTestError),
    /// The token signer could not be built.
    #[error(transparent)]
    Issue(#[from] crate::token::issue::IssueError),
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// The audit log is not the one witnessed (cut short, emptied, replaced).
    #[error(transparent)]
    Witness(#[from] crate::witness::WitnessError),
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A key does not match its certificate.
    #[error(transparent)]
    KeyCheck(#[from] KeyCheckError),
    /// A listener could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// Which listener.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl StartError {
    /// A stable code (the device's own for a device error: `pin_incorrect`, `tpm_auth_failed`, …).
    pub fn code(&self) -> &'static str {
        match self {
            StartError::Store(_) | StartError::State(_) => "state_store",
            StartError::Backend(e) => e.code(),
            StartError::SelfTest(e) => e.code(),
            StartError::Issue(e) => e.code(),
            StartError::Audit(_) => "audit_unavailable",
            StartError::Witness(e) => e.code(),
            StartError::Tls(_) => "tls",
            StartError::KeyCheck(_) => "key_mismatch",
            StartError::Io { .. } => "io",
        }
    }

    /// The device error underneath, if it is one (through recovery wrappers).
    pub fn device_error(&self) -> Option<&hsm_adapters::Error> {
        let e = match self {
            StartError::Backend(e) => e.device_error(),
            StartError::SelfTest(crate::selftest::SelfTestError::Backend(e)) => Some(e),
            StartError::Issue(crate::token::issue::IssueError::Backend(e)) => Some(e),
            _ => None,
        };
        e.map(hsm_adapters::Error::root)
    }

    /// Whether a device refused the configured secret (PIN, auth value) or is locked out:
    /// trying again would only count towards the device's lockout.
    pub fn is_secret_refused(&self) -> bool {
        self.device_error().is_some_and(|e| matches!(e.code(), "pin_incorrect" | "tpm_auth_failed" | "tpm_lockout"))
    }

    /// Whether the service cannot work with what it was given until someone changes it — the
    /// configuration, a file others may change, an audit log that is not the one witnessed, a
    /// key that is not its certificate's — so restarting would not help.
    pub fn needs_an_administrator(&self) -> bool {
        matches!(
            self.code(),
            "pin_file" | "config" | "backend_module" | "audit_truncated" | "audit_anchor" | "key_mismatch"
        ) || self.device_error().is_some_and(|e| matches!(e.code(), "pin_file" | "backend_module"))
    }
}

/// Why a key that is about to sign is not trusted to.
#[derive(Debug, thiserror::Error)]
#[error("key {key}: {reason}")]
pub struct KeyCheckError {
    /// The key's id.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// Device handles of inventory keys, looked up once (a lookup is a device call) and checked once
/// before first use: the device's public key is the one its certificate certifies, its protection
/// attributes are as required, and it signs a probe that verifies independently (SPEC §9) — at
/// start-up for the active keys, and for any key that becomes active or pending later.
#[derive(Debug, Default)]
struct KeyCache {
    keys: Mutex<HashMap<String, Arc<dyn SigningKey>>>,
}

impl KeyCache {
    fn get(&self, backends: &Backends, record: &KeyRecord) -> Result<Arc<dyn SigningKey>, StartError> {
        if let Some(k) = self.keys.lock().unwrap_or_else(PoisonError::into_inner).get(&record.id) {
            return Ok(Arc::clone(k));
        }
        let key = backends.key(record)?;
        let cert = record
            .certificate()
            .ok_or_else(|| KeyCheckError { key: record.id.clone(), reason: "it has no certificate".into() })?;
        let certified = crate::pki::parse_certificate(cert)
            .ok()
            .and_then(|c| der::Encode::to_der(c.tbs_certificate().subject_public_key_info()).ok());
        if certified.as_deref() != Some(key.public_key().spki_der()) {
            return Err(KeyCheckError {
                key: record.id.clone(),
                reason: format!(
                    "the key at {} is not the one its certificate certifies (a key restored next to the wrong certificate?); refusing to use it",
                    record.uri
                ),
            }
            .into());
        }
        let report = check_key(key.as_ref(), key.algorithm().default_scheme(), 2)?;
        tracing::info!(key = %report.key, scheme = report.scheme, "self-test passed: matches its certificate, protection as required, signature verified");
        self.keys.lock().unwrap_or_else(PoisonError::into_inner).insert(record.id.clone(), Arc::clone(&key));
        Ok(key)
    }
}

/// The TLS configuration in use and what it was built from.
#[derive(Debug)]
pub struct TlsState {
    /// What it was built from.
    pub inputs: TlsInputs,
    /// The configuration new handshakes use.
    pub config: Arc<rustls::ServerConfig>,
}

/// ALPN protocols the API listener offers.
pub const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The running service's state, shared by every request.
#[derive(Debug)]
pub struct App {
    /// The configuration.
    pub config: Config,
    /// The connection admin operations write through.
    store: Mutex<Store>,
    /// A connection of its own for following the store, so that an admin operation (which may
    /// hold the writer for seconds of device work) never delays taking up a change.
    reader: Mutex<Store>,
    /// The opened key backends.
    pub backends: Backends,
    keys: KeyCache,
    /// The current state and token signer (what the pipeline's workers sign with).
    pub signing: Arc<ArcSwap<Signing>>,
    /// The current TLS configuration.
    pub tls: ArcSwap<TlsState>,
    /// The audit log.
    pub audit: AuditLog,
    /// Looks tokens up in the audit log (renewal of a revoked key's tokens).
    pub issued: Lookup,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The signing pipeline every token goes through.
    pub pipeline: Pipeline,
    /// Whether the devices answer.
    pub health: Arc<BackendHealth>,
    /// Per-MP rate limits.
    pub limiter: RateLimiter,
    /// Per-MP batches streaming now.
    pub batches: Arc<PerCaller>,
    /// Per-MP connections open now.
    pub mp_connections: Arc<PerCaller>,
    /// Taken exclusively by a change that takes authority away, while it is recorded and taken
    /// up: no token is signed under the old state after the change's record (see
    /// [`crate::pipeline::WorkerContext::barrier`]).
    pub barrier: Arc<std::sync::RwLock<()>>,
    /// Who gets a TLS handshake on the API listener.
    pub admission: Admission,
    /// What every handshake signature goes through.
    observer: tls::Observer,
    /// Whether the state is confirmed to be the store's.
    freshness: Arc<crate::pipeline::Freshness>,
    /// The shared store's bulk-token registry, asked at each use (`None`: one appliance, whose
    /// snapshot is the store's).
    live_bulk: Option<crate::state::LiveBulk>,
    /// When it started, Unix time (for the node registry).
    started: i64,
    /// Stopping: refuse new work.
    pub stopping: AtomicBool,
    /// Serialises reloads (the watcher's and an admin operation's).
    reloading: Mutex<()>,
}

impl App {
    /// Opens the state, the devices and the audit log, self-tests every active key (sign,
    /// verify independently, protection attributes) and builds the signer and the TLS
    /// configuration; a failure refuses to start.
    pub fn open(config: Config) -> Result<App, StartError> {
        let store = Store::connect(&config)?;
        let reader = Store::connect(&config)?;
        let mut backends = Backends::open(&config)?;
        backends.open_handshake_lanes(config.service.tls_sessions);
        let metrics = Arc::new(Metrics::default());
        // Never a log shorter than its witnessed head: the service refuses to start on it.
        let audit = crate::witness::open_log(&config, &store, AuditStats::for_metrics(&metrics))?;
        let live_bulk = if store.shared() {
            let registry: Arc<dyn crate::token::BulkRegistry + Send + Sync> =
                Arc::new(LiveRegistry(Mutex::new(Store::connect(&config)?)));
            Some(crate::state::LiveBulk(registry))
        } else {
            None
        };
        let mut state = State::load(&store, &config, now_unix())?;
        state.bulk_live.clone_from(&live_bulk);
        let keys = KeyCache::default();
        for record in KeyRole::ALL.iter().filter_map(|r| state.active(*r)) {
            keys.get(&backends, record)?;
        }
        let signers = signers_for(&state, &keys, &backends);
        let health = Arc::new(BackendHealth::default());
        let observer = tls::Observer {
            health: Arc::clone(&health),
            metrics: Arc::clone(&metrics),
            gate: Arc::new(HandshakeGate::new(config.service.tls_sessions, config.service.handshake_timeout)),
        };
        let tls = build_tls(&state, &keys, &backends, &observer)?;
        let limiter = RateLimiter::new(config.service.rate_limit_per_second, config.service.rate_limit_burst);
        // One signing worker per device session of the token-signing backend: every session
        // busy, none contended.
        let workers = match state.active(KeyRole::TokenSigning) {
            Some(k) => backends.get(&k.backend)?.capabilities().max_concurrency.max(1),
            None => 1,
        };
        let signing = Arc::new(ArcSwap::from_pointee(Signing { state: Arc::new(state), signers }));
        let barrier = Arc::new(std::sync::RwLock::new(()));
        let freshness = Arc::new(crate::pipeline::Freshness::new(live_bulk.is_some()));
        let context = WorkerContext {
            freshness: Arc::clone(&freshness),
            barrier: Arc::clone(&barrier),
            signing: Arc::clone(&signing),
            audit: audit.clone(),
            metrics: Arc::clone(&metrics),
            health: Arc::clone(&health),
        };
        let pipeline = Pipeline::start(context, workers, config.service.queue_depth);
        tracing::info!(workers, queue = config.service.queue_depth, "signing pipeline started");
        let admission = Admission::new(&config.service, Arc::clone(&metrics));
        Ok(App {
            issued: Lookup::new(&crate::audit::AuditPlace::of(&config)),
            store: Mutex::new(store),
            reader: Mutex::new(reader),
            backends,
            keys,
            signing,
            tls: ArcSwap::from_pointee(tls),
            audit,
            metrics,
            pipeline,
            health,
            limiter,
            batches: Arc::default(),
            mp_connections: Arc::default(),
            barrier,
            admission,
            observer,
            freshness,
            live_bulk,
            started: now_unix(),
            stopping: AtomicBool::new(false),
            reloading: Mutex::new(()),
            config,
        })
    }

    /// The state store (blocking threads only).
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current state.
    pub fn state(&self) -> Arc<State> {
        Arc::clone(&self.signing.load().state)
    }

    /// Ready to sign: devices answering, audit log writable, the store followed, not stopping.
    pub fn ready(&self) -> bool {
        !self.health.is_down() && self.audit.healthy() && self.state_current() && !self.stopping.load(Ordering::Relaxed)
    }

    /// Whether the state in use is known to be the store's: the last attempt to follow it
    /// succeeded — and, when several appliances share the store, did so within
    /// [`crate::pipeline::Freshness::STALE_AFTER`] (another node's change must be taken up
    /// within a second; a node that cannot confirm it has not missed one decides nothing).
    pub fn state_current(&self) -> bool {
        self.freshness.current()
    }

    /// Refuses (503) a request that needs the store's current state when a shared store cannot
    /// be confirmed current: nothing is signed on a state that may miss another node's block,
    /// revocation or rotation. One appliance's own snapshot is always its store's.
    pub fn require_current_state(&self) -> Result<(), crate::service::error::ApiError> {
        if self.freshness.unconfirmed() {
            return Err(crate::service::error::ApiError::Unavailable(
                "the shared state store cannot be reached, so this node cannot confirm blocks and revocations made on other nodes; it signs nothing until it can (retry on another node)".into(),
            ));
        }
        Ok(())
    }

    /// Records this node in the store's node registry (start-up, then every few seconds).
    pub fn report_node(&self) -> Result<(), StoreError> {
        let node = crate::store::NodeRecord {
            id: self.config.node.id.clone(),
            address: self.config.node.address.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started: self.started,
            last_seen: now_unix(),
        };
        self.store().register_node(&node)
    }

    /// Whether the last attempt to read the store succeeded.
    pub fn state_fresh(&self) -> bool {
        self.freshness.fresh()
    }

    /// Follows the store (blocking): if its change counter moved, or a scheduled transition came
    /// due, rebuilds the state, the token signer and (when what it depends on changed) the TLS
    /// configuration, and swaps them in. Returns whether anything changed. A failure keeps the
    /// current state in use, marks the service not ready, and is retried on the next call.
    /// After a change that takes authority away could not be taken up: signs nothing until the
    /// watcher takes the store's state up (fail closed) — unless the live state is already the
    /// store's. True if signing was held.
    pub fn hold_signing_until_followed(&self) -> bool {
        let current = self.signing.load_full();
        // One lock: the store that cannot even be read holds signing too.
        let behind = match self.reader.lock().unwrap_or_else(PoisonError::into_inner).generation() {
            Ok(g) => g > current.state.generation,
            Err(_) => true,
        };
        if behind {
            // A counter no store has: the next successful follow rebuilds the signers even if the
            // store did not change (the change failed, and the store was unreadable meanwhile).
            let mut held = (*current.state).clone();
            held.generation = -1;
            self.signing.store(Arc::new(Signing { state: Arc::new(held), signers: Vec::new() }));
            tracing::error!(
                "a restricting change could not be taken up: signing held until the state store is followed again"
            );
        }
        behind
    }

    /// Takes up the state store's current state if it changed (see [`App::reload`]).
    pub fn follow_store(&self) -> Result<bool, StartError> {
        let _one = self.reloading.lock().unwrap_or_else(PoisonError::into_inner);
        let result = self.reload();
        self.freshness.followed(result.is_ok());
        result
    }

    fn reload(&self) -> Result<bool, StartError> {
        let now = now_unix();
        let current = self.signing.load_full();
        let state = {
            let reader = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
            if reader.generation()? == current.state.generation && current.state.current_at(now) {
                return Ok(false);
            }
            let mut state = State::load(&reader, &self.config, now)?;
            state.bulk_live.clone_from(&self.live_bulk);
            state
        };
        // The new state is taken up whatever else fails below: revocations and blocks must never
        // wait for a device. A key whose handle cannot be had signs nothing (fail closed).
        let signers = signers_for(&state, &self.keys, &self.backends);
        let before = current.signer_at(now).map(|s| s.key_id().to_owned());
        let next = Signing { state: Arc::new(state), signers };
        let after = next.signer_at(now).map(|s| s.key_id().to_owned());
        if before != after {
            tracing::info!(from = ?before, to = ?after, "token-signing key changed");
        }
        let generation = next.state.generation;
        let tls = TlsInputs::of(&next.state, &next.state.cross_certificates_for_active_root(), alpn()).map(|inputs| {
            (inputs != self.tls.load().inputs)
                .then(|| build_tls(&next.state, &self.keys, &self.backends, &self.observer))
        });
        self.signing.store(Arc::new(next));
        self.metrics.state_reloads.inc();
        tracing::info!(generation, "state changed");
        match tls {
            Ok(None) => {}
            Ok(Some(Ok(tls))) => {
                tracing::info!(key = %tls.inputs.key_id, roots = tls.inputs.roots.len(), clients = tls.inputs.allowed.len(), revoked = tls.inputs.revoked.len(), "TLS configuration changed");
                self.tls.store(Arc::new(tls));
            }
            // The previous configuration stays for new handshakes; every request is still checked
            // against the new state (revocations), and the watcher tries again.
            Ok(Some(Err(e))) => return Err(e),
            Err(e) => return Err(e.into()),
        }
        Ok(true)
    }
}

/// The shared store's bulk-token registry, asked at each use, on a connection of its own.
#[derive(Debug)]
struct LiveRegistry(Mutex<Store>);

impl crate::token::BulkRegistry for LiveRegistry {
    fn bulk_blocked(&self, guid: crate::token::Guid) -> Result<Option<bool>, String> {
        let store = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        store.bulk_token(&guid.lower()).map(|b| b.map(|b| b.blocked)).map_err(|e| e.to_string())
    }
}

/// The ALPN protocols offered.
fn alpn() -> Vec<Vec<u8>> {
    ALPN.iter().map(|p| p.to_vec()).collect()
}

/// Signers for the token-signing keys that are active or pending in `state`. A key whose device
/// handle cannot be had (or that fails its check) gets none — and so signs nothing — and is
/// logged; the next reload tries again.
fn signers_for(state: &State, keys: &KeyCache, backends: &Backends) -> Vec<TokenSigner> {
    let mut signers = Vec::new();
    for record in state.keys.iter().filter(|k| {
        k.role == KeyRole::TokenSigning && matches!(k.status_at(state.at), KeyStatus::Active | KeyStatus::Pending)
    }) {
        let signer = keys
            .get(backends, record)
            .and_then(|key| Ok(TokenSigner::for_record(record, key, state.policy.hierarchy)?));
        match signer {
            Ok(s) => signers.push(s),
            Err(e) => {
                tracing::error!(key = %record.id, error = %e, "this token-signing key cannot sign; tokens it should sign are refused")
            }
        }
    }
    signers
}

fn build_tls(
    state: &State,
    keys: &KeyCache,
    backends: &Backends,
    observer: &tls::Observer,
) -> Result<TlsState, StartError> {
    let inputs = TlsInputs::of(state, &state.cross_certificates_for_active_root(), alpn())?;
    let record = state.active(KeyRole::Tls).ok_or_else(|| tls::TlsError::State("no TLS key is active".into()))?;
    let key = keys.get(backends, record)?;
    let config = Arc::new(tls::server_config(&inputs, key, observer.clone())?);
    Ok(TlsState { inputs, config })
}
