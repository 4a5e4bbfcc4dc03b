//! The signing pipeline (SPEC §6): every token the service signs — single requests and batch
//! lines alike — goes through it.
//!
//! ```text
//!  callers (async) ──try_submit / submit──▶ bounded job queue ──▶ N signing workers (threads)
//!                                                                   │  one per backend session
//!                                                                   ▼
//!  reply (oneshot) ◀── audit writer: group commit, fsync ◀── AuditLog::submit(record)
//! ```
//!
//! Callers build and validate everything on the host first (claims, signing input, proofs); a
//! worker only asks the device for the signature, hands the record to the audit writer and goes
//! back for the next job, so the devices stay busy while the audit log commits in groups. A
//! result is released only from the audit writer's callback, after its record is durable.
//! The queue is bounded: a single request that finds it full gets "busy" (503 + Retry-After);
//! a batch waits for room, which slows its reader and so its sender (TCP backpressure).
//!
//! A worker signs with the key that is active when it signs, not when the request was
//! validated: each job reads the current [`Signing`] (swapped when the store changes), re-prepares
//! a token whose key stopped being active meanwhile, and re-checks that its authorisation still
//! holds (a bulk token blocked since is refused). A rotation therefore fails no request in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::audit::{AuditError, AuditEvent, AuditLog};
use crate::metrics::Metrics;
use crate::policy::Authorization;
use crate::state::State;
use crate::token::issue::{IssueError, PreparedToken};
use crate::token::{IssuedToken, TokenSigner};

/// Why a job produced no token.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The device could not sign.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// The audit record could not be made durable; the token was discarded.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The queue is full: try again shortly.
    #[error("the signing queue is full")]
    Busy,
    /// The pipeline has stopped.
    #[error("the signing pipeline has stopped")]
    Stopped,
    /// No token-signing key is active now.
    #[error("no token-signing key is active; see `sitesign keys list`")]
    NoActiveKey,
    /// The authorisation no longer holds when the token is signed (a bulk token blocked while
    /// the request waited).
    #[error("{0} is blocked")]
    NoLongerAuthorised(String),
    /// The requesting management point's certificate was revoked (or expired) while the request
    /// waited to be signed.
    #[error("the client certificate was revoked or expired while the request waited")]
    CallerRefused,
    /// The shared state store cannot be confirmed current: nothing is signed.
    #[error(
        "the shared state store cannot be reached, so this node cannot confirm blocks and revocations made on other nodes; it signs nothing until it can (retry on another node)"
    )]
    StateUnconfirmed,
}

/// Who asked for a job's tokens: how the audit records name them, and — for a management
/// point — the certificate serial that must still be admitted when each token is signed.
#[derive(Debug, Clone)]
pub struct Requester {
    /// `<subject> (serial <hex>)`, or the local actor.
    pub identity: Arc<str>,
    /// The MP certificate's serial, lower-case hex.
    pub serial: Option<Arc<str>>,
}

/// The outcome of one token.
pub type JobResult = Result<IssuedToken, PipelineError>;

/// A token to sign, the audit subject it is recorded under, and how it was authorised.
#[derive(Debug)]
pub struct Item {
    /// The token, prepared (claims and signing input).
    pub prepared: PreparedToken,
    /// The audit record's subject (the device id).
    pub subject: String,
    /// Why it may be signed; re-checked when it is.
    pub authorization: Authorization,
}

/// What the workers sign with: the current state and signers for its active token-signing key
/// and for the one waiting to become active, so that a scheduled activation takes effect at its
/// second, not at the next reload.
#[derive(Debug, Clone)]
pub struct Signing {
    /// The state.
    pub state: Arc<State>,
    /// Signers of the keys that are active or pending in `state` (whose device handles could be
    /// had).
    pub signers: Vec<TokenSigner>,
}

impl Signing {
    /// The signer of the token-signing key active at `now` by the state's schedule; `None` when
    /// no key is active or its device handle is not at hand (then nothing is signed: never by a
    /// key that is not the active one).
    pub fn signer_at(&self, now: i64) -> Option<&TokenSigner> {
        let key = crate::keys::active(&self.state.keys, crate::keys::KeyRole::TokenSigning, now)?;
        self.signers.iter().find(|s| s.key_id() == key.id)
    }
}

/// A job: up to [`GROUP`] tokens of one caller, signed by one worker in order and recorded in one
/// audit submission — so the queue, the audit writer and the caller's wake-up are paid once per
/// group, not once per token.
struct Job {
    items: Vec<Item>,
    caller: Requester,
    reply: tokio::sync::oneshot::Sender<Vec<JobResult>>,
}

/// Most tokens in one job.
pub const GROUP: usize = 32;

/// Receives one job's outcomes, in the order of its items.
pub type Ticket = tokio::sync::oneshot::Receiver<Vec<JobResult>>;

/// The pipeline: a bounded queue and its signing workers.
#[derive(Debug, Clone)]
pub struct Pipeline {
    jobs: async_channel::Sender<Job>,
    workers: usize,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("items", &self.items.len()).finish_non_exhaustive()
    }
}

/// What the signing workers work with.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    /// The current state and signer, swapped when the store changes.
    pub signing: Arc<ArcSwap<Signing>>,
    /// The audit log.
    pub audit: AuditLog,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Whether the devices answer.
    pub health: Arc<BackendHealth>,
    /// Held (shared) by a worker from reading the state until its records are queued for the
    /// audit log; held exclusively by a change that takes authority away (a bulk token blocked,
    /// a certificate or key revoked) while it is recorded and taken up — so that no token is
    /// signed under the old state after the change's record.
    pub barrier: Arc<std::sync::RwLock<()>>,
    /// Whether the state is confirmed current: a shared store's node signs nothing otherwise,
    /// even what was admitted before.
    pub freshness: Arc<Freshness>,
}

/// Whether the state the service decides and signs on is known to be the store's: the last
/// attempt to follow the store succeeded — and, when several appliances share the store, did so
/// within [`Freshness::STALE_AFTER`]: another node's block, revocation or rotation must be taken
/// up within a second, so a node that cannot confirm it has missed none decides nothing and signs
/// nothing (a hung connection, not only a refused one). One appliance's own snapshot is always
/// its store's.
#[derive(Debug)]
pub struct Freshness {
    shared: bool,
    fresh: AtomicBool,
    started: Instant,
    /// When the store was last followed successfully, milliseconds after `started`.
    followed_ms: std::sync::atomic::AtomicU64,
}

impl Freshness {
    /// How long a node sharing its store may go without confirming its state. It follows every
    /// 250 ms and is told of changes at once: a second is three missed confirmations.
    pub const STALE_AFTER: Duration = Duration::from_secs(1);

    /// Freshly loaded state; `shared`: several appliances share the store.
    pub fn new(shared: bool) -> Freshness {
        Freshness { shared, fresh: AtomicBool::new(true), started: Instant::now(), followed_ms: 0.into() }
    }

    /// Notes the outcome of an attempt to follow the store.
    pub fn followed(&self, ok: bool) {
        self.fresh.store(ok, Ordering::Relaxed);
        if ok {
            self.followed_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// Whether the last attempt to follow the store succeeded.
    pub fn fresh(&self) -> bool {
        self.fresh.load(Ordering::Relaxed)
    }

    /// Whether the store is shared.
    pub fn shared(&self) -> bool {
        self.shared
    }

    /// Whether the state in use is confirmed to be the store's (see [`Freshness`]).
    pub fn current(&self) -> bool {
        let followed = Duration::from_millis(self.followed_ms.load(Ordering::Relaxed));
        self.fresh() && (!self.shared || self.started.elapsed().saturating_sub(followed) <= Self::STALE_AFTER)
    }

    /// Whether a decision must wait: a shared store's state not confirmed current.
    pub fn unconfirmed(&self) -> bool {
        self.shared && !self.current()
    }
}

/// Whether the last device call reached the device (for readiness), and error counts.
#[derive(Debug, Default)]
pub struct BackendHealth {
    down: AtomicBool,
}

impl BackendHealth {
    /// Notes the outcome of a device call.
    pub fn note(&self, metrics: &Metrics, result: Result<(), &hsm_adapters::Error>) {
        use std::sync::atomic::Ordering;
        match result {
            Ok(()) => self.down.store(false, Ordering::Relaxed),
            Err(e) => {
                metrics.backend_error(e.code());
                if e.code() == "faulty_signature" {
                    tracing::error!(error = %e, "a device signature failed its host check and was discarded");
                }
                if matches!(e.code(), "backend_unavailable" | "backend_failure" | "backend_module") {
                    self.down.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// Whether the last device call failed for lack of the device.
    pub fn is_down(&self) -> bool {
        self.down.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Pipeline {
    /// Starts `workers` signing threads (one per backend session) behind a queue of
    /// `queue_depth` jobs.
    pub fn start(context: WorkerContext, workers: usize, queue_depth: usize) -> Pipeline {
        let (tx, rx) = async_channel::bounded::<Job>(queue_depth.max(1));
        let workers = workers.max(1);
        for i in 0..workers {
            let (rx, context) = (rx.clone(), context.clone());
            let spawned = std::thread::Builder::new().name(format!("signer-{i}")).spawn(move || worker(&rx, &context));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a signing worker");
            }
        }
        Pipeline { jobs: tx, workers }
    }

    /// Signing workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Jobs waiting.
    pub fn queued(&self) -> usize {
        self.jobs.len()
    }

    fn job(items: Vec<Item>, caller: Requester) -> (Job, Ticket) {
        let (reply, ticket) = tokio::sync::oneshot::channel();
        (Job { items, caller, reply }, ticket)
    }

    /// Queues one token if there is room now (single requests: a full queue means "busy").
    pub fn try_submit(&self, item: Item, caller: Requester) -> Result<Ticket, PipelineError> {
        let (job, ticket) = Self::job(vec![item], caller);
        self.jobs.try_send(job).map_err(|e| if e.is_full() { PipelineError::Busy } else { PipelineError::Stopped })?;
        Ok(ticket)
    }

    /// Queues up to [`GROUP`] tokens as one job, waiting for room (batches: the wait is the
    /// backpressure).
    pub async fn submit(&self, items: Vec<Item>, caller: Requester) -> Result<Ticket, PipelineError> {
        let (job, ticket) = Self::job(items, caller);
        self.jobs.send(job).await.map_err(|_| PipelineError::Stopped)?;
        Ok(ticket)
    }

    /// Stops taking jobs; the workers finish what is queued and exit.
    pub fn close(&self) {
        self.jobs.close();
    }
}

fn worker(rx: &async_channel::Receiver<Job>, ctx: &WorkerContext) {
    while let Ok(job) = rx.recv_blocking() {
        if job.reply.is_closed() {
            continue; // the caller went away: do not sign for nobody
        }
        let _turn = ctx.barrier.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Records on their way to the audit writer until this job's are submitted.
        let coming = ctx.audit.expect();
        let current = ctx.signing.load_full();
        // Sign every token of the job; a failure fails that token only.
        let mut signed: Vec<JobResult> = Vec::with_capacity(job.items.len());
        let mut events = Vec::with_capacity(job.items.len());
        for item in job.items {
            let result = sign_one(ctx, &current, item, &job.caller);
            match result {
                Ok((token, event)) => {
                    events.push(event);
                    signed.push(Ok(token));
                }
                Err(e) => signed.push(Err(e)),
            }
        }
        // This job's records are on their way now: the writer need not wait for them.
        drop(coming);
        let (reply, metrics) = (job.reply, Arc::clone(&ctx.metrics));
        if events.is_empty() {
            let _ = reply.send(signed);
            continue;
        }
        // Released only from the audit writer, once the group's records are durable.
        ctx.audit.submit(
            events,
            Box::new(move |committed| {
                let outcome = match committed {
                    Ok(_) => signed
                        .into_iter()
                        .inspect(|r| {
                            if let Ok(t) = r {
                                metrics.token_issued(t.claims.kind());
                            }
                        })
                        .collect(),
                    Err(e) => {
                        signed.into_iter().map(|r| r.and_then(|_| Err(PipelineError::Audit(e.clone())))).collect()
                    }
                };
                let _ = reply.send(outcome);
            }),
        );
    }
}

/// Signs one item with the current signer: its authorisation re-checked, re-prepared if its key
/// stopped being active, the device's signature taken, and its audit event made (at signing time).
fn sign_one(
    ctx: &WorkerContext,
    current: &Signing,
    item: Item,
    caller: &Requester,
) -> Result<(IssuedToken, AuditEvent), PipelineError> {
    if caller.serial.as_ref().is_some_and(|serial| !current.state.admits(serial, crate::time::now_unix())) {
        return Err(PipelineError::CallerRefused);
    }
    if ctx.freshness.unconfirmed() {
        return Err(PipelineError::StateUnconfirmed);
    }
    match item.authorization.still_holds(&current.state) {
        Ok(true) => {}
        Ok(false) => return Err(PipelineError::NoLongerAuthorised(item.authorization.audit_detail())),
        Err(_) => return Err(PipelineError::StateUnconfirmed),
    }
    let signer = current.signer_at(crate::time::now_unix()).ok_or(PipelineError::NoActiveKey)?;
    let prepared = signer.reprepare(item.prepared)?;
    ctx.metrics.sessions_in_use.inc();
    let started = Instant::now();
    let result = signer.sign(prepared);
    ctx.metrics.sessions_in_use.dec();
    ctx.metrics.sign_seconds.observe(started.elapsed().as_secs_f64());
    match result {
        Ok(token) => {
            ctx.health.note(&ctx.metrics, Ok(()));
            let mut event =
                AuditEvent::token(&token, &caller.identity, &item.subject, item.authorization.audit_detail());
            event.time = crate::time::now_unix();
            Ok((token, event))
        }
        Err(e) => {
            if let IssueError::Backend(b) = &e {
                ctx.health.note(&ctx.metrics, Err(b));
            }
            Err(e.into())
        }
    }
}
