//! The audit log (SPEC §8): one record per signature — time, caller, kind, subject, key id and
//! the SHA-256 of the signed output, never the output — in a hash chain, made durable before the
//! result is released.
//!
//! Records go to an SQLite database of their own (`audit.db`, WAL, `synchronous=FULL`) so that
//! it can live on its own filesystem. One writer thread owns the connection and commits in
//! groups: it takes every record waiting, writes them in one transaction (one fsync), and only
//! then answers each caller. If the commit fails (disk full, EIO, read-only), every caller in the
//! group gets an error — the signature must not be released — and [`AuditLog::healthy`] turns
//! false until a commit succeeds again. While it is false the writer probes every
//! [`PROBE_EVERY`] with a write as large as a big group of records (committed, then removed), so
//! the service becomes ready again by itself once space returns, without waiting for traffic that
//! a load balancer no longer sends it.
//!
//! Each record's hash is SHA-256 over the previous record's hash and the record's canonical
//! JSON; [`verify`] recomputes the chain and reports the first edit, deletion or reordering.
//!
//! Where the chain lives is an [`AuditPlace`]: `audit.db` in a folder (one appliance), or — when
//! several appliances share a PostgreSQL store — this node's chain (node id + sequence) in that
//! database ([`postgres`]), written by the same group-commit writer.

pub mod postgres;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The hash before the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a caller asks to record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Unix time of the signature.
    pub time: i64,
    /// Who asked (certificate subject of the MP, or `cli:uid=N` / `admin:uid=N`).
    pub caller: String,
    /// `client-token`, `access-token`, `bulk-token`, `certificate`, …
    pub kind: String,
    /// Device id, bulk GUID or certificate subject.
    pub subject: String,
    /// The signing key.
    pub key_id: String,
    /// SHA-256 of the signed output, hex (empty for a transition that signed nothing).
    pub sha256: String,
    /// How the request was authorised (`internal`, `bulk:<guid>`, `renew:<UniqueId>`, …) or
    /// what a transition changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditEvent {
    /// The record of an issued token: never the token, only its SHA-256.
    pub fn token(token: &crate::token::IssuedToken, caller: &str, subject: &str, detail: String) -> AuditEvent {
        AuditEvent {
            time: token.claims.issued_at().unwrap_or(token.claims.window().0),
            caller: caller.to_owned(),
            kind: format!("{}-token", token.claims.kind().as_str()),
            subject: subject.to_owned(),
            key_id: token.key_id.clone(),
            sha256: token.sha256.clone(),
            detail: Some(detail),
        }
    }

    /// The record of an issued certificate.
    pub fn certificate(c: &crate::store::CertRecord, actor: &str) -> AuditEvent {
        AuditEvent {
            time: c.issued,
            caller: actor.to_owned(),
            kind: format!("certificate:{}", c.profile),
            subject: c.subject.clone(),
            key_id: c.issuer_key.clone(),
            sha256: c.sha256.clone(),
            detail: Some(format!("serial {}", c.serial)),
        }
    }

    /// The record of a change that signed nothing: a key scheduled, retired or revoked, a
    /// certificate revoked, a bulk token blocked.
    pub fn transition(time: i64, actor: &str, kind: &str, subject: &str, key_id: &str, detail: String) -> AuditEvent {
        AuditEvent {
            time,
            caller: actor.to_owned(),
            kind: kind.to_owned(),
            subject: subject.to_owned(),
            key_id: key_id.to_owned(),
            sha256: String::new(),
            detail: Some(detail),
        }
    }
}

/// A stored record: the event, its place and its chain hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position, from 1, without gaps.
    pub seq: i64,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// The previous record's hash.
    pub prev: String,
    /// This record's hash.
    pub hash: String,
}

/// The chain hash of `event` at `seq` after `prev`.
pub fn chain_hash(seq: i64, event: &AuditEvent, prev: &str) -> String {
    #[derive(Serialize)]
    struct Canonical<'a> {
        seq: i64,
        time: i64,
        caller: &'a str,
        kind: &'a str,
        subject: &'a str,
        key_id: &'a str,
        sha256: &'a str,
        // Absent in records written before it existed, so their hashes are unchanged.
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<&'a str>,
    }
    let canonical = serde_json::to_vec(&Canonical {
        seq,
        time: event.time,
        caller: &event.caller,
        kind: &event.kind,
        subject: &event.subject,
        key_id: &event.key_id,
        sha256: &event.sha256,
        detail: event.detail.as_deref(),
    })
    .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(&canonical);
    hex::encode(h.finalize())
}

/// Why an audit record could not be made durable.
#[derive(Debug, Clone, thiserror::Error)]
#[error("audit log {path}: {reason}; no signature is released until the audit log is writable again")]
pub struct AuditError {
    /// The database file.
    pub path: PathBuf,
    /// What failed.
    pub reason: String,
}

/// Called with the outcome of a commit (on the writer thread: keep it short).
pub type AuditCallback = Box<dyn FnOnce(Result<i64, AuditError>) + Send>;

enum Reply {
    Wait(mpsc::SyncSender<Result<i64, AuditError>>),
    Call(AuditCallback),
}

impl Reply {
    fn send(self, result: Result<i64, AuditError>) {
        match self {
            Reply::Wait(tx) => {
                let _ = tx.send(result);
            }
            Reply::Call(f) => f(result),
        }
    }
}

struct Pending {
    events: Vec<AuditEvent>,
    reply: Reply,
}

/// Signs a checkpoint statement with the token-signing key: (key id, signature).
pub type CheckpointSigner = Box<dyn FnOnce(&[u8]) -> Result<(String, Vec<u8>), String> + Send>;

enum Message {
    Records(Pending),
    Checkpoint(CheckpointSigner, mpsc::SyncSender<Result<Option<Checkpoint>, AuditError>>),
}

/// A signed statement of the chain's head: `seq` records, the last with `hash`. Deleting records
/// at the end of the log — which the chain alone cannot show — leaves a checkpoint that names
/// more records than there are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Records in the log when it was signed.
    pub seq: i64,
    /// The hash of record `seq`.
    pub hash: String,
    /// Unix time.
    pub time: i64,
    /// The token-signing key that signed it.
    pub key_id: String,
    /// The signature over [`Checkpoint::statement`], base64url.
    pub signature: String,
}

impl Checkpoint {
    /// The bytes signed.
    pub fn statement(seq: i64, hash: &str, time: i64) -> Vec<u8> {
        format!("sitesign audit checkpoint\nseq {seq}\nhash {hash}\ntime {time}\n").into_bytes()
    }
}

/// Group-commit statistics. The histogram and the failure counter are the service's metrics'
/// own (see [`AuditStats::for_metrics`]); the CLI's are private.
#[derive(Debug)]
pub struct AuditStats {
    /// Commits made.
    pub commits: AtomicU64,
    /// Records written.
    pub records: AtomicU64,
    /// Commit time (fsync included), seconds.
    pub commit_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Commits that failed.
    pub failures: prometheus_client::metrics::counter::Counter,
}

impl Default for AuditStats {
    fn default() -> Self {
        AuditStats {
            commits: AtomicU64::new(0),
            records: AtomicU64::new(0),
            commit_seconds: prometheus_client::metrics::histogram::Histogram::new(crate::metrics::LATENCY_BUCKETS),
            failures: prometheus_client::metrics::counter::Counter::default(),
        }
    }
}

impl AuditStats {
    /// Statistics that feed `metrics`' audit histogram and failure counter.
    pub fn for_metrics(metrics: &crate::metrics::Metrics) -> AuditStats {
        AuditStats {
            commit_seconds: metrics.audit_fsync_seconds.clone(),
            failures: metrics.audit_failures.clone(),
            ..AuditStats::default()
        }
    }
}

/// Where an audit chain lives.
#[derive(Debug, Clone)]
pub enum AuditPlace {
    /// `audit.db` in this folder, at most this large.
    Local {
        /// The folder.
        dir: PathBuf,
        /// The cap, bytes.
        max_bytes: Option<u64>,
    },
    /// Node `node`'s chain in the shared PostgreSQL store.
    Shared {
        /// The database.
        db: Box<crate::config::PgConfig>,
        /// The node.
        node: String,
    },
}

impl AuditPlace {
    /// Where `config` keeps this node's chain.
    pub fn of(config: &crate::config::Config) -> AuditPlace {
        match &config.store {
            crate::config::StoreConfig::Sqlite => {
                AuditPlace::Local { dir: config.audit.dir.clone(), max_bytes: config.audit.max_bytes }
            }
            crate::config::StoreConfig::Postgres(db) => {
                AuditPlace::Shared { db: db.clone(), node: config.node.id.clone() }
            }
        }
    }

    /// A name for messages: the file, or the node and the database.
    pub fn name(&self) -> PathBuf {
        match self {
            AuditPlace::Local { dir, .. } => AuditLog::path_in(dir),
            AuditPlace::Shared { db, node } => PathBuf::from(format!("node {node} in PostgreSQL ({})", db.describe)),
        }
    }

    /// The node whose chain this is (`None`: the one appliance's).
    pub fn node(&self) -> Option<&str> {
        match self {
            AuditPlace::Local { .. } => None,
            AuditPlace::Shared { node, .. } => Some(node),
        }
    }

    /// Every chain there is: this one, or every node's in the shared store (any node with
    /// records, checkpoints, a witnessed head or a registration), by id.
    pub fn chains(&self) -> Result<Vec<AuditPlace>, AuditError> {
        match self {
            AuditPlace::Local { .. } => Ok(vec![self.clone()]),
            AuditPlace::Shared { db, .. } => Ok(postgres::nodes(db)
                .map_err(|e| self.fail(&e))?
                .into_iter()
                .map(|node| AuditPlace::Shared { db: db.clone(), node })
                .collect()),
        }
    }

    fn fail(&self, e: &dyn std::fmt::Display) -> AuditError {
        AuditError { path: self.name(), reason: e.to_string() }
    }
}

/// Where a chain is written: the writer thread's only contact with its database.
trait Sink: Send {
    /// Appends `events` after the chain's head in one durable transaction; the first's `seq`.
    fn commit(&mut self, events: &[&AuditEvent]) -> Result<i64, String>;
    /// Whether a write succeeds again (after a failure).
    fn probe(&mut self) -> Result<(), String>;
    /// The chain's head: its last `seq` and hash.
    fn head(&mut self) -> Result<(i64, String), String>;
    /// The `seq` of the last checkpoint.
    fn last_checkpoint(&mut self) -> Result<Option<i64>, String>;
    /// Stores a checkpoint.
    fn add_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), String>;
}

/// The records of `events` chained after (`seq`, `prev`).
fn chain(events: &[&AuditEvent], mut seq: i64, prev: &str) -> Vec<AuditRecord> {
    let mut prev = prev.to_owned();
    events
        .iter()
        .map(|e| {
            seq += 1;
            let hash = chain_hash(seq, e, &prev);
            AuditRecord { seq, event: (*e).clone(), prev: std::mem::replace(&mut prev, hash.clone()), hash }
        })
        .collect()
}

/// The chain in `audit.db`, its head kept between commits (re-read after a failure).
struct SqliteSink {
    conn: Connection,
    head: Option<(i64, String)>,
}

impl Sink for SqliteSink {
    fn commit(&mut self, events: &[&AuditEvent]) -> Result<i64, String> {
        let head = self.head.take();
        let tx = self.conn.transaction().map_err(|e| e.to_string())?;
        let (seq, prev) = match head {
            Some(h) => h,
            None => head_of(&tx).map_err(|e| e.to_string())?,
        };
        let records = chain(events, seq, &prev);
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO audit (seq, time, caller, kind, subject, key_id, sha256, prev, hash, detail)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(|e| e.to_string())?;
            for r in &records {
                let e = &r.event;
                insert
                    .execute(params![
                        r.seq, e.time, e.caller, e.kind, e.subject, e.key_id, e.sha256, r.prev, r.hash, e.detail
                    ])
                    .map_err(|e| e.to_string())?;
            }
        }
        tx.commit().map_err(|e| e.to_string())?;
        self.head = Some(records.last().map_or((seq, prev), |r| (r.seq, r.hash.clone())));
        Ok(seq + 1)
    }

    fn probe(&mut self) -> Result<(), String> {
        self.conn
            .execute("INSERT INTO probe (data) VALUES (zeroblob(?1))", [PROBE_BYTES])
            .map_err(|e| e.to_string())?;
        self.conn.execute("DELETE FROM probe", []).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn head(&mut self) -> Result<(i64, String), String> {
        head_of(&self.conn).map_err(|e| e.to_string())
    }

    fn last_checkpoint(&mut self) -> Result<Option<i64>, String> {
        self.conn.query_row("SELECT max(seq) FROM checkpoints", [], |r| r.get(0)).map_err(|e| e.to_string())
    }

    fn add_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), String> {
        self.conn
            .execute(
                "INSERT INTO checkpoints (seq, hash, time, key_id, signature) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![cp.seq, cp.hash, cp.time, cp.key_id, cp.signature],
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The audit log, shared by every signing path.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::SyncSender<Message>,
    healthy: Arc<AtomicBool>,
    stats: Arc<AuditStats>,
    path: PathBuf,
    coming: Arc<AtomicUsize>,
}

/// Held by a signing worker while it signs a job whose records it will submit (see
/// [`AuditLog::expect`]); dropped once they are submitted.
#[derive(Debug)]
pub struct Coming(Arc<AtomicUsize>);

impl Drop for Coming {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) fn open(path: &Path, max_bytes: Option<u64>) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS audit (
            seq     INTEGER PRIMARY KEY,
            time    INTEGER NOT NULL,
            caller  TEXT NOT NULL,
            kind    TEXT NOT NULL,
            subject TEXT NOT NULL,
            key_id  TEXT NOT NULL,
            sha256  TEXT NOT NULL,
            prev    TEXT NOT NULL,
            hash    TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS probe (data BLOB NOT NULL);
        CREATE TABLE IF NOT EXISTS checkpoints (
            seq       INTEGER PRIMARY KEY,
            hash      TEXT NOT NULL,
            time      INTEGER NOT NULL,
            key_id    TEXT NOT NULL,
            signature TEXT NOT NULL
        );",
    )?;
    // Logs written before records carried `detail`, and before tokens could be looked up by
    // their SHA-256 (renewal of a revoked key's tokens asks whether this site issued them).
    let has_detail: bool =
        conn.query_row("SELECT count(*) FROM pragma_table_info('audit') WHERE name = 'detail'", [], |r| {
            r.get::<_, i64>(0).map(|n| n > 0)
        })?;
    if !has_detail {
        conn.execute_batch("ALTER TABLE audit ADD COLUMN detail TEXT")?;
    }
    conn.execute_batch("CREATE INDEX IF NOT EXISTS audit_sha256 ON audit (sha256)")?;
    if let Some(max) = max_bytes {
        let page: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        conn.pragma_update(None, "max_page_count", (i64::try_from(max).unwrap_or(i64::MAX) / page).max(16))?;
    }
    Ok(conn)
}

fn head_of(conn: &Connection) -> rusqlite::Result<(i64, String)> {
    Ok(conn
        .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((0, GENESIS.to_owned())))
}

impl AuditLog {
    /// The database file in `dir`.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join("audit.db")
    }

    /// Opens (creating) the log in `dir` and starts its writer thread. `max_bytes` caps the
    /// database's size: past it, appends fail as on a full disk.
    pub fn open(dir: &Path, max_bytes: Option<u64>) -> Result<AuditLog, AuditError> {
        Self::open_with(dir, max_bytes, AuditStats::default())
    }

    /// [`AuditLog::open`], counting into `stats`.
    pub fn open_with(dir: &Path, max_bytes: Option<u64>, stats: AuditStats) -> Result<AuditLog, AuditError> {
        Self::open_place(&AuditPlace::Local { dir: dir.to_owned(), max_bytes }, stats)
    }

    /// Opens the chain at `place` for appending (creating it) and starts its writer thread.
    pub fn open_place(place: &AuditPlace, stats: AuditStats) -> Result<AuditLog, AuditError> {
        let path = place.name();
        let sink: Box<dyn Sink> = match place {
            AuditPlace::Local { dir, max_bytes } => {
                std::fs::create_dir_all(dir).map_err(|e| place.fail(&e))?;
                let conn = open(&path, *max_bytes).map_err(|e| place.fail(&e))?;
                Box::new(SqliteSink { conn, head: None })
            }
            AuditPlace::Shared { db, node } => Box::new(postgres::PgSink::open(db, node).map_err(|e| place.fail(&e))?),
        };
        let fail = |e: &dyn std::fmt::Display| place.fail(e);
        let (tx, rx) = mpsc::sync_channel::<Message>(65_536);
        let healthy = Arc::new(AtomicBool::new(true));
        let stats = Arc::new(stats);
        let coming = Arc::new(AtomicUsize::new(0));
        let (h, s, p, c) = (Arc::clone(&healthy), Arc::clone(&stats), path.clone(), Arc::clone(&coming));
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer(sink, rx, &h, &s, &p, &c))
            .map_err(|e| fail(&e))?;
        Ok(AuditLog { tx, healthy, stats, path, coming })
    }

    /// Tells the writer that records are on their way (a worker is signing a job) until the
    /// guard is dropped: only then is it worth holding a group open for more. When every request
    /// in flight is already in the group, the writer commits at once instead of waiting out its
    /// window for records that cannot come (16 single requests waited ~5 ms each that way).
    pub fn expect(&self) -> Coming {
        self.coming.fetch_add(1, Ordering::Relaxed);
        Coming(Arc::clone(&self.coming))
    }

    /// Records `events` durably (in order, consecutive); returns the last one's `seq`. Blocks
    /// until the group they join is committed.
    pub fn append(&self, events: Vec<AuditEvent>) -> Result<i64, AuditError> {
        let (reply, wait) = mpsc::sync_channel(1);
        let gone = || AuditError { path: self.path.clone(), reason: "the audit writer has stopped".into() };
        self.tx.send(Message::Records(Pending { events, reply: Reply::Wait(reply) })).map_err(|_| gone())?;
        wait.recv().map_err(|_| gone())?
    }

    /// Signs and stores a checkpoint of the current head with `sign`, if records were added since
    /// the last one; returns it. Blocks until it is durable.
    pub fn checkpoint(&self, sign: CheckpointSigner) -> Result<Option<Checkpoint>, AuditError> {
        let (reply, wait) = mpsc::sync_channel(1);
        let gone = || AuditError { path: self.path.clone(), reason: "the audit writer has stopped".into() };
        self.tx.send(Message::Checkpoint(sign, reply)).map_err(|_| gone())?;
        wait.recv().map_err(|_| gone())?
    }

    /// Queues `events` and returns at once; `then` is called (on the writer thread) once their
    /// group is committed, or has failed. This is how the signing pipeline releases results only
    /// after their records are durable without waiting for each fsync itself.
    pub fn submit(&self, events: Vec<AuditEvent>, then: AuditCallback) {
        if let Err(mpsc::SendError(Message::Records(p))) =
            self.tx.send(Message::Records(Pending { events, reply: Reply::Call(then) }))
        {
            p.reply.send(Err(AuditError { path: self.path.clone(), reason: "the audit writer has stopped".into() }));
        }
    }

    /// Whether the last commit succeeded.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Commit statistics.
    pub fn stats(&self) -> &AuditStats {
        &self.stats
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Most records one commit takes.
const GROUP_MAX: usize = 4096;
/// While records keep arriving and more are being signed ([`AuditLog::expect`]), a group stays
/// open this long after its first record before it is committed: each commit costs an fsync and
/// a WAL frame whatever its size, so under load fewer, larger commits leave the CPU to the
/// signing workers. An idle log — or one whose every awaited record is in the group — commits at
/// once.
const GROUP_WINDOW: Duration = Duration::from_millis(5);

/// A group holds itself open for more records only from this many on (a batch's job brings up to
/// 32): records of single requests are each someone waiting, and commit at once.
const WAIT_FROM: usize = 32;

/// How often an unhealthy log probes whether it can be written again.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// The size of the probe's write: about a thousand records' worth.
const PROBE_BYTES: i64 = 256 * 1024;

fn writer(
    mut sink: Box<dyn Sink>,
    rx: mpsc::Receiver<Message>,
    healthy: &AtomicBool,
    stats: &AuditStats,
    path: &Path,
    coming: &AtomicUsize,
) {
    let mut deferred: Option<Message> = None;
    loop {
        let next = match deferred.take() {
            Some(m) => Ok(m),
            None if healthy.load(Ordering::Relaxed) => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            None => rx.recv_timeout(PROBE_EVERY),
        };
        let first = match next {
            Ok(m) => m,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if sink.probe().is_ok() {
                    healthy.store(true, Ordering::Relaxed);
                    tracing::info!(path = %path.display(), "audit log writable again: signing resumes");
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let first = match first {
            Message::Checkpoint(sign, reply) => {
                let _ = reply.send(write_checkpoint(&mut *sink, sign, path));
                continue;
            }
            Message::Records(p) => p,
        };
        let opened = Instant::now();
        let mut group = vec![first];
        let mut n = group[0].events.len();
        while n < GROUP_MAX && deferred.is_none() {
            let next = match rx.try_recv() {
                Ok(m) => Some(m),
                Err(mpsc::TryRecvError::Empty) if n >= WAIT_FROM && coming.load(Ordering::Relaxed) > 0 => {
                    // Busy, and records are being signed: wait a little for more, up to the window.
                    rx.recv_timeout(GROUP_WINDOW.saturating_sub(opened.elapsed())).ok()
                }
                Err(_) => None,
            };
            match next {
                Some(Message::Records(p)) => {
                    n += p.events.len();
                    group.push(p);
                }
                Some(checkpoint) => deferred = Some(checkpoint),
                None => break,
            }
        }
        let started = Instant::now();
        let result = commit(&mut *sink, &group);
        stats.commit_seconds.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(lasts) => {
                healthy.store(true, Ordering::Relaxed);
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.records.fetch_add(n as u64, Ordering::Relaxed);
                for (p, last) in group.into_iter().zip(lasts) {
                    p.reply.send(Ok(last));
                }
            }
            Err(e) => {
                healthy.store(false, Ordering::Relaxed);
                stats.failures.inc();
                tracing::error!(path = %path.display(), error = %e, "audit commit failed: signatures withheld");
                let err = AuditError { path: path.to_owned(), reason: e.to_string() };
                for p in group {
                    p.reply.send(Err(err.clone()));
                }
            }
        }
    }
}

fn write_checkpoint(
    sink: &mut dyn Sink,
    sign: CheckpointSigner,
    path: &Path,
) -> Result<Option<Checkpoint>, AuditError> {
    let fail = |reason: String| AuditError { path: path.to_owned(), reason };
    let (seq, hash) = sink.head().map_err(fail)?;
    let last = sink.last_checkpoint().map_err(fail)?;
    if seq == 0 || last == Some(seq) {
        return Ok(None);
    }
    let time = crate::time::now_unix();
    let (key_id, signature) = sign(&Checkpoint::statement(seq, &hash, time)).map_err(fail)?;
    let cp = Checkpoint { seq, hash, time, key_id, signature: crate::token::b64::encode(&signature) };
    sink.add_checkpoint(&cp).map_err(fail)?;
    tracing::info!(seq = cp.seq, hash = %cp.hash, key = %cp.key_id, "audit checkpoint signed");
    Ok(Some(cp))
}

/// Commits a group's records; the last `seq` of each of its members.
fn commit(sink: &mut dyn Sink, group: &[Pending]) -> Result<Vec<i64>, String> {
    let events: Vec<&AuditEvent> = group.iter().flat_map(|p| p.events.iter()).collect();
    let mut last = sink.commit(&events)? - 1;
    Ok(group
        .iter()
        .map(|p| {
            last += p.events.len() as i64;
            last
        })
        .collect())
}

/// Runs `read` on a read-only connection to the log in `dir`; an absent log reads as empty.
fn read_only<T: Default>(dir: &Path, read: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, AuditError> {
    let path = AuditLog::path_in(dir);
    if !path.exists() {
        return Ok(T::default());
    }
    Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|conn| read(&conn))
        .map_err(|e| AuditError { path, reason: e.to_string() })
}

/// Looks issued tokens up in the log by their SHA-256 (an index), on a read-only connection of
/// its own: the policy asks before renewing a token of a revoked key. In a shared store, every
/// node's chain is asked: a token another node issued is this site's too.
#[derive(Debug)]
pub struct Lookup {
    place: AuditPlace,
    conn: std::sync::Mutex<Option<LookupConnection>>,
}

enum LookupConnection {
    Sqlite(Connection),
    Postgres(::postgres::Client),
}

impl std::fmt::Debug for LookupConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LookupConnection::Sqlite(_) => "Sqlite",
            LookupConnection::Postgres(_) => "Postgres",
        })
    }
}

impl Lookup {
    /// A lookup in the chain(s) at `place` (connected at the first question).
    pub fn new(place: &AuditPlace) -> Lookup {
        Lookup { place: place.clone(), conn: std::sync::Mutex::new(None) }
    }
}

impl crate::policy::IssuedTokens for Lookup {
    fn issued(&self, sha256_hex: &str) -> Result<bool, String> {
        let fail = |e: &dyn std::fmt::Display| format!("audit log {}: {e}", self.place.name().display());
        let mut guard = self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Twice at most: a connection the database dropped (a restart since the last question)
        // is found lost by the first attempt, and made again for the second.
        for attempt in 0..2 {
            let lost = matches!(&*guard, Some(LookupConnection::Postgres(c)) if c.is_closed());
            if guard.is_none() || lost {
                *guard = Some(match &self.place {
                    AuditPlace::Local { dir, .. } => LookupConnection::Sqlite(
                        Connection::open_with_flags(AuditLog::path_in(dir), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                            .map_err(|e| fail(&e))?,
                    ),
                    AuditPlace::Shared { db, .. } => {
                        LookupConnection::Postgres(crate::store::postgres::connect(db).map_err(|e| fail(&e))?)
                    }
                });
            }
            let result = match guard.as_mut() {
                Some(LookupConnection::Sqlite(conn)) => conn
                    .query_row("SELECT count(*) FROM audit WHERE sha256 = ?1", [sha256_hex], |r| r.get::<_, i64>(0))
                    .map(|n| n > 0)
                    .map_err(|e| fail(&e)),
                Some(LookupConnection::Postgres(client)) => postgres::issued(client, sha256_hex).map_err(|e| fail(&e)),
                None => Err(fail(&"no connection")),
            };
            let retry = attempt == 0 && matches!(&*guard, Some(LookupConnection::Postgres(c)) if c.is_closed());
            if result.is_ok() || !retry {
                return result;
            }
        }
        Err(fail(&"no connection"))
    }
}

/// What the chain at `place` holds around record `seq`: how many records, the highest `seq`,
/// and records `seq - 1` and `seq` if it holds them (an absent log holds none).
pub fn records_around(place: &AuditPlace, seq: i64) -> Result<(i64, i64, Vec<AuditRecord>), AuditError> {
    let dir = match place {
        AuditPlace::Local { dir, .. } => dir,
        AuditPlace::Shared { db, node } => return postgres::records_around(db, node, seq).map_err(|e| place.fail(&e)),
    };
    read_only(dir, |conn| {
        let has: bool =
            conn.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'audit'", [], |r| r.get::<_, i64>(0))? > 0;
        if !has {
            return Ok((0, 0, Vec::new()));
        }
        let (count, max): (i64, i64) =
            conn.query_row("SELECT count(*), coalesce(max(seq), 0) FROM audit", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let mut stmt = conn.prepare(
            "SELECT seq, time, caller, kind, subject, key_id, sha256, prev, hash, detail FROM audit
             WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
        )?;
        let rows = stmt.query_map([seq - 1, seq], record_of)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok((count, max, rows))
    })
}

fn record_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        seq: r.get(0)?,
        event: AuditEvent {
            time: r.get(1)?,
            caller: r.get(2)?,
            kind: r.get(3)?,
            subject: r.get(4)?,
            key_id: r.get(5)?,
            sha256: r.get(6)?,
            detail: r.get(9)?,
        },
        prev: r.get(7)?,
        hash: r.get(8)?,
    })
}

/// Every record of the chain at `place`, in storage order (`seq` order in a shared store).
pub fn read_all(place: &AuditPlace) -> Result<Vec<AuditRecord>, AuditError> {
    let dir = match place {
        AuditPlace::Local { dir, .. } => dir,
        AuditPlace::Shared { db, node } => return postgres::read_all(db, node).map_err(|e| place.fail(&e)),
    };
    read_only(dir, |conn| {
        let mut stmt = conn.prepare(
            "SELECT seq, time, caller, kind, subject, key_id, sha256, prev, hash, detail FROM audit ORDER BY rowid",
        )?;
        let rows = stmt.query_map([], record_of)?;
        rows.collect()
    })
}

/// Every checkpoint of the chain at `place`, in `seq` order.
pub fn read_checkpoints(place: &AuditPlace) -> Result<Vec<Checkpoint>, AuditError> {
    let dir = match place {
        AuditPlace::Local { dir, .. } => dir,
        AuditPlace::Shared { db, node } => return postgres::read_checkpoints(db, node).map_err(|e| place.fail(&e)),
    };
    read_only(dir, |conn| {
        let has: bool = conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE name = 'checkpoints'", [], |r| r.get::<_, i64>(0))?
            > 0;
        if !has {
            return Ok(Vec::new());
        }
        let mut stmt = conn.prepare("SELECT seq, hash, time, key_id, signature FROM checkpoints ORDER BY seq")?;
        let rows = stmt.query_map([], |r| {
            Ok(Checkpoint { seq: r.get(0)?, hash: r.get(1)?, time: r.get(2)?, key_id: r.get(3)?, signature: r.get(4)? })
        })?;
        rows.collect()
    })
}

/// Checks each checkpoint against the (already chain-verified) `records`: its signature (by
/// `check_signature(key_id, statement, signature)`), that the log still holds record `seq`, and
/// that the record's hash is the one signed.
pub fn verify_checkpoints(
    records: &[AuditRecord],
    checkpoints: &[Checkpoint],
    check_signature: impl Fn(&str, &[u8], &[u8]) -> bool,
) -> Result<usize, ChainBreak> {
    for cp in checkpoints {
        let brk = |problem: String| ChainBreak { position: cp.seq.max(0) as usize, seq: cp.seq, problem };
        let signature = crate::token::b64::decode(&cp.signature).unwrap_or_default();
        if !check_signature(&cp.key_id, &Checkpoint::statement(cp.seq, &cp.hash, cp.time), &signature) {
            return Err(brk(format!("the checkpoint at seq {} is not validly signed by key {}", cp.seq, cp.key_id)));
        }
        match records.get((cp.seq - 1).max(0) as usize) {
            None => {
                return Err(brk(format!(
                    "a signed checkpoint covers {} records but the log has {}: records at the end were deleted",
                    cp.seq,
                    records.len()
                )));
            }
            Some(r) if r.hash != cp.hash => {
                return Err(brk(format!("record {} is not the one the checkpoint signed", cp.seq)));
            }
            Some(_) => {}
        }
    }
    Ok(checkpoints.len())
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("audit chain broken at record {position} (seq {seq}): {problem}")]
pub struct ChainBreak {
    /// 1-based position in storage order.
    pub position: usize,
    /// The record's `seq` as stored.
    pub seq: i64,
    /// What is wrong.
    pub problem: String,
}

/// Checks `records` (in storage order): consecutive `seq` from 1, each `prev` the previous
/// `hash`, each `hash` recomputed. Returns the number of records.
pub fn verify(records: &[AuditRecord]) -> Result<usize, ChainBreak> {
    let mut prev = GENESIS.to_owned();
    for (i, r) in records.iter().enumerate() {
        let expected_seq = i as i64 + 1;
        let brk = |problem: String| ChainBreak { position: i + 1, seq: r.seq, problem };
        if r.seq != expected_seq {
            return Err(brk(format!("expected seq {expected_seq}: a record was deleted, inserted or moved")));
        }
        if r.prev != prev {
            return Err(brk("its previous-hash does not match the record before it: deleted or reordered".into()));
        }
        if chain_hash(r.seq, &r.event, &r.prev) != r.hash {
            return Err(brk("its content does not match its hash: edited".into()));
        }
        prev = r.hash.clone();
    }
    Ok(records.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(dir: &Path) -> AuditPlace {
        AuditPlace::Local { dir: dir.to_owned(), max_bytes: None }
    }

    fn event(i: i64) -> AuditEvent {
        AuditEvent {
            time: 1_795_600_000 + i,
            caller: "CN=mp01".into(),
            kind: "client-token".into(),
            subject: format!("GUID:{i}"),
            key_id: "ts-1".into(),
            sha256: hex::encode(Sha256::digest(i.to_be_bytes())),
            detail: (i % 2 == 0).then(|| "internal".to_owned()),
        }
    }

    #[test]
    fn appends_in_groups_and_the_chain_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), None).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    (0..25).map(|i| log.append(vec![event(t * 100 + i)]).unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seqs: Vec<i64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
        assert_eq!(log.stats().records.load(Ordering::Relaxed), 200);
        let records = read_all(&local(dir.path())).unwrap();
        assert_eq!(verify(&records), Ok(200));
    }

    #[test]
    fn records_submitted_together_are_committed_in_groups() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), None).unwrap();
        let (done, finished) = mpsc::channel();
        // Submitting does not wait for a commit, so 1,000 records queue up far faster than one
        // fsync: the writer must take them in groups, not one commit each.
        for i in 0..1000 {
            let done = done.clone();
            log.submit(vec![event(i)], Box::new(move |r| done.send(r.is_ok()).unwrap_or_default()));
        }
        assert!((0..1000).all(|_| finished.recv().unwrap()));
        let commits = log.stats().commits.load(Ordering::Relaxed);
        assert!(commits < 250, "{commits} commits for 1000 records submitted at once");
        assert_eq!(verify(&read_all(&local(dir.path())).unwrap()), Ok(1000));
    }

    #[test]
    fn edits_deletions_and_reordering_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), None).unwrap();
        log.append((1..=5).map(event).collect()).unwrap();
        let records = read_all(&local(dir.path())).unwrap();
        let mut edited = records.clone();
        edited[2].event.subject = "GUID:forged".into();
        assert_eq!(verify(&edited).unwrap_err().position, 3);
        let mut deleted = records.clone();
        deleted.remove(1);
        assert_eq!(verify(&deleted).unwrap_err().position, 2);
        let mut swapped = records.clone();
        swapped.swap(1, 3);
        assert_eq!(verify(&swapped).unwrap_err().position, 2);
        // Renumbered after a deletion: the previous-hash link still breaks.
        let mut renumbered = records.clone();
        renumbered.remove(1);
        for (i, r) in renumbered.iter_mut().enumerate() {
            r.seq = i as i64 + 1;
        }
        assert!(verify(&renumbered).is_err());
    }

    #[test]
    fn a_full_log_fails_closed_and_reports_unhealthy() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), Some(64 * 1024)).unwrap();
        let mut failed = None;
        for i in 0..10_000 {
            if let Err(e) = log.append(vec![event(i)]) {
                failed = Some(e);
                break;
            }
        }
        let e = failed.expect("the capped log fills up");
        assert!(e.reason.contains("full"), "{e}");
        assert!(!log.healthy());
        // What was committed before still verifies.
        assert!(verify(&read_all(&local(dir.path())).unwrap()).is_ok());
    }
}
