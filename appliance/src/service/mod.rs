//! `sitesignd`, the signing service management points call (SPEC §4), in Parsec's shape —
//! front (listeners) → routes → handlers → the domain:
//!
//! - [`app`]: the shared state and how it follows the store (live reload);
//! - [`listen`]: the mTLS and ops listeners; [`tls`]: rustls with the server key in the device
//!   and client certificates checked against the current roots and revocations;
//! - [`routes`]: the routers and the per-MP rate limit ([`limits`]);
//! - [`tokens`], [`batch`], [`publish`], [`ops`]: the endpoints; [`error`]: the one mapping from
//!   errors to status and code;
//! - [`admin_socket`]: the Unix socket the CLI's admin commands use;
//! - this module: start-up, the background tasks (following the store, audit checkpoints, CRLs),
//!   `sd_notify` ([`notify`]) and graceful shutdown.
//!
//! Blocking work (device signatures, SQLite, the audit commit) runs on blocking threads, never on
//! the runtime's own; nothing holds a lock across an `.await`. The process set-up (arguments,
//! logging, hardening) belongs to the `sitesignd` binary.

pub mod admin_socket;
pub mod admission;
pub mod app;
pub mod batch;
pub mod error;
pub mod limits;
pub mod listen;
pub mod notify;
pub mod ops;
pub mod publish;
pub mod routes;
pub mod tls;
pub mod tokens;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;

pub use app::{App, StartError};
pub use tls::Caller;

use crate::admin::AdminContext;
use crate::config::Config;
use notify::sd_notify;

/// How often the service asks the store whether it changed: well within SPEC §7's one second.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(250);
/// How often the audit log's head is signed and witnessed (when it moved): records cut from the
/// end of the log go unnoticed only if they are younger than this.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);
/// How often the CRLs are checked for freshness (a CRL is re-signed at half its validity).
pub const CRL_CHECK_EVERY: Duration = Duration::from_secs(600);
/// How often a device that failed is tried again, so that readiness comes back by itself.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// How often the node reports itself in the store's node registry.
pub const NODE_REPORT_EVERY: Duration = Duration::from_secs(5);

/// When several appliances share a PostgreSQL store: takes up a change as soon as the database
/// announces it (`LISTEN`, notified by the change counter's trigger at commit), on a connection
/// of its own. Polling every [`FOLLOW_EVERY`] stays as the fallback: a lost notification
/// connection delays a change by at most that, and is made again within a second.
fn listen_for_changes(app: &App, db: &crate::config::PgConfig) {
    use ::postgres::fallible_iterator::FallibleIterator as _;
    while !app.stopping.load(Ordering::Relaxed) {
        let mut client = match crate::store::postgres::connect(db) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for changes; polling meanwhile");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {}", crate::store::postgres::CHANNEL)) {
            tracing::warn!(error = %crate::store::postgres::error_text(&e), "cannot listen for changes; polling meanwhile");
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        tracing::info!("listening for changes other nodes make");
        while !app.stopping.load(Ordering::Relaxed) {
            let next = client.notifications().timeout_iter(Duration::from_secs(1)).next();
            match next {
                Ok(Some(_)) => follow(app),
                Ok(None) if !client.is_closed() => {}
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %crate::store::postgres::error_text(&e), "change notifications lost; polling meanwhile");
                    break;
                }
            }
        }
    }
}

/// Reports the node in the registry (best effort: the registry is for operators).
fn report_node(app: &App) {
    if let Err(e) = app.report_node() {
        tracing::warn!(error = %e, "cannot report this node in the node registry");
    }
}

/// While the devices are down (not ready), tries the active token-signing key: the first
/// signature that succeeds makes the service ready again without a request having to risk it.
fn probe_devices(app: &App) {
    if !app.health.is_down() {
        return;
    }
    let Some(signer) = app.signing.load().signer_at(crate::time::now_unix()).cloned() else { return };
    let result = signer.probe();
    if result.is_ok() {
        tracing::info!("the key device answers again");
    }
    app.health.note(&app.metrics, result.as_ref().map(|_| ()));
}

/// Signs a checkpoint of the audit log's head with the token-signing key and witnesses it
/// outside the log (SPEC §8; see [`crate::witness`]).
fn checkpoint(app: &App) {
    let Some(signer) = app.signing.load().signer_at(crate::time::now_unix()).cloned() else { return };
    let sign: crate::audit::CheckpointSigner =
        Box::new(move |statement| signer.sign_checkpoint(statement).map_err(|e| e.to_string()));
    // The device signs on the audit writer's thread; the store is locked only to witness.
    let witnessed = app.audit.checkpoint(sign).map_err(crate::witness::WitnessError::from).and_then(|cp| match cp {
        Some(cp) => crate::witness::witness(&mut app.store(), app.config.audit.anchor_file.as_deref(), &cp),
        None => Ok(()),
    });
    if let Err(e) = witnessed {
        tracing::error!(code = e.code(), error = %e, "audit checkpoint failed");
    }
}

/// Keeps a fresh CRL for every SMS Issuing root that still verifies.
fn refresh_crls(app: &App) {
    let mut store = app.store();
    let mut ctx = AdminContext {
        config: &app.config,
        store: &mut store,
        backends: &app.backends,
        audit: &app.audit,
        actor: "sitesignd",
        now: crate::time::now_unix(),
    };
    match crate::admin::certs::refresh_crls(&mut ctx) {
        Ok(0) => {}
        Ok(n) => tracing::info!(signed = n, "CRLs signed"),
        Err(e) => tracing::error!(code = e.code(), error = %e, "CRL refresh failed"),
    }
    // What the CRL alert watches: each root's latest CRL's nextUpdate.
    let state = app.signing.load_full().state.clone();
    app.metrics.crl_next_update.clear();
    for root in state.keys.iter().filter(|k| k.role == crate::keys::KeyRole::Issuing && k.revoked.is_none()) {
        match store.latest_crl(&root.id) {
            Ok(Some(crl)) => {
                app.metrics
                    .crl_next_update
                    .get_or_create(&crate::metrics::IssuerLabel { issuer: root.id.clone() })
                    .set(crl.next_update);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the latest CRL"),
        }
    }
}

/// Runs `work` on a blocking thread every `every`, until `stop`.
async fn every(app: Arc<App>, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>, work: fn(&App)) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let app = Arc::clone(&app);
        let _ = tokio::task::spawn_blocking(move || work(&app)).await;
    }
}

fn follow(app: &App) {
    if let Err(e) = app.follow_store() {
        tracing::error!(error = %e, "cannot follow the state store; not ready until it can");
    }
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
    {
        let a = Arc::clone(&app);
        let _ = tokio::task::spawn_blocking(move || refresh_crls(&a)).await;
    }

    let api_listener = bind(service.listen, "API listener").await?;
    let ops_listener = match service.ops_listen {
        Some(addr) => Some(bind(addr, "ops listener").await?),
        None => None,
    };
    let admin = admin_socket::bind(&service).map_err(|source| StartError::Io {
        what: format!("admin socket {}", service.admin_socket.display()),
        source,
    })?;
    let api_addr =
        api_listener.local_addr().map_err(|source| StartError::Io { what: "API listener".into(), source })?;
    let ops_addr = match &ops_listener {
        Some(l) => Some(l.local_addr().map_err(|source| StartError::Io { what: "ops listener".into(), source })?),
        None => None,
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let api = tokio::spawn(listen::serve_api(api_listener, Arc::clone(&app), stop_rx.clone()));
    if let Some(l) = ops_listener {
        tokio::spawn(listen::serve_ops(l, Arc::clone(&app), stop_rx.clone()));
    }
    tokio::spawn(admin_socket::serve(admin, Arc::clone(&app), stop_rx.clone()));
    tokio::spawn(every(Arc::clone(&app), FOLLOW_EVERY, stop_rx.clone(), follow));
    tokio::spawn(every(Arc::clone(&app), CHECKPOINT_EVERY, stop_rx.clone(), checkpoint));
    tokio::spawn(every(Arc::clone(&app), CRL_CHECK_EVERY, stop_rx.clone(), refresh_crls));
    tokio::spawn(every(Arc::clone(&app), PROBE_EVERY, stop_rx.clone(), probe_devices));
    tokio::spawn(every(Arc::clone(&app), admission::REPORT_EVERY, stop_rx.clone(), |a| a.admission.report()));
    {
        let a = Arc::clone(&app);
        let _ = tokio::task::spawn_blocking(move || report_node(&a)).await;
    }
    tokio::spawn(every(Arc::clone(&app), NODE_REPORT_EVERY, stop_rx.clone(), report_node));
    if let crate::config::StoreConfig::Postgres(db) = &app.config.store {
        let (a, db) = (Arc::clone(&app), db.clone());
        std::thread::Builder::new()
            .name("store-listen".into())
            .spawn(move || listen_for_changes(&a, &db))
            .map_err(|source| StartError::Io { what: "change listener".into(), source })?;
    }

    let ops_text = ops_addr.map_or_else(|| "off".to_owned(), |a| a.to_string());
    tracing::info!(api = %api_addr, ops = %ops_text, admin = %service.admin_socket.display(), "sitesignd ready");
    sd_notify(&format!("READY=1\nSTATUS=serving api={api_addr} ops={ops_text}"));

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
