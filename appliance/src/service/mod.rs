//! `sitesignd`: the signing service management points call.
//!
//! - [`tls`]: rustls, TLS 1.3 only, the server key in the device, client certificates verified
//!   against SMS Issuing (clientAuth);
//! - [`api`]: the endpoints of SPEC §4 and the one function mapping errors to status and code;
//! - [`admin_socket`]: the Unix socket the CLI's admin commands use, checked with SO_PEERCRED;
//! - this module: start-up (self-test before ready), the listeners, `sd_notify`, graceful
//!   shutdown on SIGTERM.
//!
//! Blocking work (device signatures, SQLite, the audit commit) runs on `spawn_blocking` threads,
//! never on the runtime's own; nothing holds a lock across an `.await`.

pub mod admin_socket;
pub mod api;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::ops::{self, Backends, OpsError, tokens};
use crate::pipeline::{BackendHealth, Pipeline, Stage};
use crate::selftest::check_key;
use crate::store::{KeyRole, KeyStatus, Store};
use crate::token::{KeyRing, TokenSigner, VerifyPolicy};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Configuration, state, device or self-test failure.
    #[error(transparent)]
    Ops(#[from] OpsError),
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// A listener could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// Which listener.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TLS could not be configured.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// Refused to run as root.
    #[error(
        "refusing to run as root: run sitesignd as its own unprivileged user (see systemd/), or pass --allow-root on a throw-away development machine"
    )]
    Root,
}

/// Who called: the subject of the verified client certificate.
#[derive(Debug, Clone)]
pub struct Caller {
    /// RFC 4514 subject.
    pub subject: String,
}

/// A per-caller token bucket.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `rate` requests per second, bursts of `burst`.
    pub fn new(rate: u32, burst: u32) -> RateLimiter {
        RateLimiter { rate: f64::from(rate), burst: f64::from(burst), buckets: Mutex::default() }
    }

    /// Takes a token for `who`; `Err(seconds to wait)` if none is left.
    pub fn take(&self, who: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, last) = buckets.entry(who.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

/// The running service's state, shared by every request.
#[derive(Debug)]
pub struct App {
    /// The configuration.
    pub config: Config,
    store: Mutex<Store>,
    /// The opened key backends.
    pub backends: Backends,
    /// The active token-signing key.
    pub signer: TokenSigner,
    /// Every token-signing key, for verification.
    pub keys: RwLock<KeyRing>,
    /// Hierarchy and skew.
    pub policy: VerifyPolicy,
    /// The audit log.
    pub audit: AuditLog,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The signing pipeline every token goes through.
    pub pipeline: Pipeline,
    /// Whether the devices answer.
    pub health: Arc<BackendHealth>,
    /// Per-MP rate limits.
    pub limiter: RateLimiter,
    /// Self-test passed.
    selftest_passed: AtomicBool,
    /// Stopping: refuse new work.
    pub stopping: AtomicBool,
}

impl App {
    /// Opens the state, the devices and the audit log, and self-tests every active key (sign and
    /// verify independently, protection attributes); a failure refuses to start.
    pub fn open(config: Config) -> Result<App, StartError> {
        let store = Store::open(&config.state_dir).map_err(OpsError::from)?;
        let backends = Backends::open(&config)?;
        let audit = AuditLog::open(&config.audit.dir, config.audit.max_bytes)?;
        for record in store.keys().map_err(OpsError::from)?.iter().filter(|k| k.status == KeyStatus::Active) {
            let key = backends.key(record)?;
            let report = check_key(key.as_ref(), key.algorithm().default_scheme(), 2).map_err(OpsError::from)?;
            tracing::info!(key = %report.key, scheme = report.scheme, "self-test passed: protection as required, signature verified");
        }
        let signer = tokens::token_signer(&store, &backends)?;
        let keys = tokens::key_ring(&store)?;
        let policy = tokens::verify_policy(&store, &config)?;
        let limiter = RateLimiter::new(config.service.rate_limit_per_second, config.service.rate_limit_burst);
        let (ts_record, _) = ops::active_key(&store, KeyRole::TokenSigning)?;
        // One signing worker per device session: every session busy, none contended.
        let workers = backends.get(&ts_record.backend)?.capabilities().max_concurrency.max(1);
        let metrics = Arc::new(Metrics::default());
        let health = Arc::new(BackendHealth::default());
        let stage = Stage {
            signer: signer.clone(),
            audit: audit.clone(),
            metrics: Arc::clone(&metrics),
            health: Arc::clone(&health),
        };
        let pipeline = Pipeline::start(stage, workers, config.service.queue_depth);
        tracing::info!(workers, queue = config.service.queue_depth, "signing pipeline started");
        Ok(App {
            store: Mutex::new(store),
            backends,
            signer,
            keys: RwLock::new(keys),
            policy,
            audit,
            metrics,
            pipeline,
            health,
            limiter,
            selftest_passed: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
            config,
        })
    }

    /// The state store (blocking threads only).
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ready to sign: self-test passed, devices answering, audit log writable, not stopping.
    pub fn ready(&self) -> bool {
        self.selftest_passed.load(Ordering::Relaxed)
            && !self.health.is_down()
            && self.audit.healthy()
            && !self.stopping.load(Ordering::Relaxed)
    }
}

/// The subject of a DER certificate, RFC 4514.
fn subject_of(der: &[u8]) -> Option<String> {
    crate::pki::parse_certificate(der).ok().map(|c| c.tbs_certificate().subject().to_string())
}

async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Arc<App>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let router = api::router(Arc::clone(&app));
    let mut stop_accepting = stop.clone();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = stop_accepting.changed() => break,
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // The handshake must finish within 10 s (a slow-loris client cannot hold a slot).
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let Some(subject) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| subject_of(c))
            else {
                return;
            };
            let caller = Caller { subject };
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(caller.clone());
                router.clone().oneshot(req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
    // Finish in-flight requests, for at most 30 s.
    let _ = tokio::time::timeout(Duration::from_secs(30), graceful.shutdown()).await;
}

async fn serve_ops(listener: TcpListener, app: Arc<App>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let router = api::ops_router(app);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
            _ = stop.changed() => return,
        };
        let router = router.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                router.clone().oneshot(req)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// How often the audit log's head is signed (when it moved).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(60);

/// Signs a checkpoint of the audit log's head with the token-signing key (SPEC §8).
fn checkpoint(app: &App) {
    let signer = app.signer.clone();
    let sign: crate::audit::CheckpointSigner =
        Box::new(move |statement| signer.sign_checkpoint(statement).map_err(|e| e.to_string()));
    if let Err(e) = app.audit.checkpoint(sign) {
        tracing::error!(error = %e, "audit checkpoint failed");
    }
}

async fn checkpoints(app: Arc<App>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECKPOINT_EVERY) => {}
            _ = stop.changed() => return,
        }
        let app = Arc::clone(&app);
        let _ = tokio::task::spawn_blocking(move || checkpoint(&app)).await;
    }
}

/// Tells systemd (if it started us with `Type=notify`) that the service is ready or stopping.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let path = Path::new(&path);
    let _ = if let Some(name) = path.to_str().and_then(|p| p.strip_prefix('@')) {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), path)
    };
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Io { what: format!("{what} {addr}"), source })
}

/// Runs the service until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), StartError> {
    let service = config.service.clone();
    let app = tokio::task::spawn_blocking(move || App::open(config))
        .await
        .map_err(|e| StartError::Io { what: "start-up".into(), source: std::io::Error::other(e) })??;
    let app = Arc::new(app);

    let (tls_record, root_record) = {
        let store = app.store();
        (ops::active_key(&store, KeyRole::Tls)?.0, ops::active_key(&store, KeyRole::Issuing)?.0)
    };
    let tls_key = app.backends.key(&tls_record)?;
    let root_der = root_record.certificate.clone().unwrap_or_default();
    let chain = vec![tls_record.certificate.clone().unwrap_or_default(), root_der.clone()];
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(tls_key, chain, &root_der)?));

    let api_listener = bind(service.listen, "API listener").await?;
    let ops_listener = match service.ops_listen {
        Some(addr) => Some(bind(addr, "ops listener").await?),
        None => None,
    };
    let admin = admin_socket::bind(&service).map_err(|source| StartError::Io {
        what: format!("admin socket {}", service.admin_socket.display()),
        source,
    })?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let api = tokio::spawn(serve_tls(api_listener, acceptor, Arc::clone(&app), stop_rx.clone()));
    if let Some(l) = ops_listener {
        tokio::spawn(serve_ops(l, Arc::clone(&app), stop_rx.clone()));
    }
    tokio::spawn(admin_socket::serve(admin, Arc::clone(&app), service.clone(), stop_rx.clone()));

    tokio::spawn(checkpoints(Arc::clone(&app), stop_rx.clone()));

    tracing::info!(listen = %service.listen, ops = ?service.ops_listen, admin = %service.admin_socket.display(), "sitesignd ready");
    sd_notify("READY=1");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| StartError::Io { what: "SIGTERM handler".into(), source })?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping: finishing in-flight requests");
    sd_notify("STOPPING=1");
    app.stopping.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let _ = api.await;
    app.pipeline.close();
    // A last signed checkpoint of the audit log's head.
    let last = Arc::clone(&app);
    let _ = tokio::task::spawn_blocking(move || checkpoint(&last)).await;
    let _ = std::fs::remove_file(&service.admin_socket);
    tracing::info!("stopped");
    Ok(())
}

/// SPEC §9: no core dumps, not dumpable (no ptrace by the same user, no /proc/PID/mem), memory
/// locked so PINs and session state never reach swap. Each step that the environment refuses
/// (no RLIMIT_MEMLOCK headroom, a seccomp filter) is logged, not fatal: the unit sets the limits.
fn harden() {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    if let Err(e) = setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) }) {
        tracing::warn!(error = %e, "cannot disable core dumps");
    }
    if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        tracing::warn!(error = %e, "cannot set PR_SET_DUMPABLE=0");
    }
    // With MCL_FUTURE every later allocation must fit under RLIMIT_MEMLOCK, or it fails: lock
    // only with room to run (the unit sets LimitMEMLOCK=1G).
    let limit = rustix::process::getrlimit(Resource::Memlock).current;
    if limit.is_some_and(|l| l < 512 * 1024 * 1024) {
        tracing::warn!(limit, "RLIMIT_MEMLOCK below 512 MiB: memory not locked (set LimitMEMLOCK=1G)");
    } else if let Err(e) = rustix::mm::mlockall(rustix::mm::MlockAllFlags::CURRENT | rustix::mm::MlockAllFlags::FUTURE)
    {
        tracing::warn!(error = %e, "cannot lock memory; secrets could be swapped out");
    }
}

/// The `sitesignd` program: `sitesignd --config FILE [--allow-root]`.
pub fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let mut config_path = std::env::var("SITESIGN_CONFIG").unwrap_or_else(|_| "/etc/sitesign/sitesign.toml".into());
    let mut allow_root = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => config_path = args.next().unwrap_or_default(),
            "--allow-root" => allow_root = true,
            "--help" | "-h" => {
                println!(
                    "sitesignd --config FILE [--allow-root]\n\nThe sitesign signing service (SPEC §4). See README.md."
                );
                return std::process::ExitCode::SUCCESS;
            }
            other => {
                eprintln!("sitesignd: unknown argument {other:?} (usage: sitesignd --config FILE [--allow-root])");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let config = match Config::load(Path::new(&config_path)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sitesignd: error [config]: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,cryptoki=off".into());
    if config.service.json_logs {
        tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    // The PKCS#11 modules read their environment when loaded: if it is not set, replace this
    // process with itself, environment set (same PID, so systemd keeps tracking it).
    let missing = config.missing_environment();
    if !missing.is_empty() {
        use std::os::unix::process::CommandExt as _;
        let err = match std::env::current_exe() {
            Ok(exe) => std::process::Command::new(exe).args(std::env::args_os().skip(1)).envs(missing).exec(),
            Err(e) => e,
        };
        eprintln!("sitesignd: error [exec]: cannot re-run with the module environment: {err}");
        return std::process::ExitCode::FAILURE;
    }
    if rustix::process::geteuid().is_root() && !allow_root {
        eprintln!("sitesignd: error [root]: {}", StartError::Root);
        return std::process::ExitCode::FAILURE;
    }
    harden();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sitesignd: error [runtime]: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sitesignd cannot run");
            eprintln!("sitesignd: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
