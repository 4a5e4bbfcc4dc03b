//! The PostgreSQL engine of the state store (SPEC §10): one database several `sitesignd` nodes
//! share — key inventory, certificates and revocations, CRLs, bulk tokens, the node registry,
//! and each node's audit chain (see [`crate::audit`]).
//!
//! Connections are made with the `postgres` crate (rust-postgres): over a Unix socket, or over
//! TLS (rustls, the server's certificate checked against `[store] ca_file` and its host name) to
//! a network host — never in the clear. The password is read from its file or credential at
//! each connection and dropped once connected. A lost connection is made again at the next
//! call (never inside a read transaction, which must see one state); server-side timeouts bound
//! every statement so that a hung database fails a call instead of holding it.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ::postgres::Client;
use secrecy::ExposeSecret as _;

use super::migrations::MIGRATIONS;
use super::*;
use crate::config::PgConfig;

/// The channel the change counter's trigger notifies (payload: the new generation).
pub const CHANNEL: &str = "sitesign_state";

/// A lock key for migrations (`pg_advisory_xact_lock`): nodes starting together migrate once.
const MIGRATION_LOCK: i64 = 0x5173_5167_6e00;

/// A failure of `cfg`'s database.
pub fn failure(cfg: &PgConfig, reason: String) -> StoreError {
    StoreError::Postgres { database: cfg.describe.clone(), reason }
}

/// What went wrong, with the server's or the socket's reason (the crate's own `Display` alone
/// says only "db error").
pub fn error_text(e: &::postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

/// The TLS configuration for a network database: the CA(s) of `ca_file`, the server's name
/// checked, TLS 1.2 or 1.3 (rustls' defaults).
fn tls_config(ca_file: &std::path::Path) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file).map_err(|e| format!("ca_file {}: {e}", ca_file.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("ca_file {}: {e}", ca_file.display()))?;
        roots.add(cert).map_err(|e| format!("ca_file {}: {e}", ca_file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("ca_file {} holds no certificate", ca_file.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Connects to `cfg`'s database.
pub fn connect(cfg: &PgConfig) -> Result<Client, StoreError> {
    let fail = |reason: String| failure(cfg, reason);
    let mut config = cfg.config.clone();
    let network = !config.get_hostaddrs().is_empty()
        || config.get_hosts().iter().any(|h| matches!(h, ::postgres::config::Host::Tcp(_)));
    // A network database only over TLS: `prefer` would fall back to the clear.
    if network {
        config.ssl_mode(::postgres::config::SslMode::Require);
    }
    let options = format!(
        "{} -c statement_timeout=10000 -c idle_in_transaction_session_timeout=60000",
        config.get_options().unwrap_or_default()
    );
    config
        .application_name("sitesign")
        .options(options.trim())
        .connect_timeout(Duration::from_secs(5))
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(1))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(10));
    let password = match &cfg.password {
        Some(source) => Some(source.read().map_err(|e| fail(e.to_string()))?),
        None => None,
    };
    if let Some(p) = &password {
        config.password(p.expose_secret());
    }
    let client = match &cfg.ca_file {
        Some(ca) if network => {
            config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(ca).map_err(fail)?))
        }
        _ => config.connect(::postgres::NoTls),
    };
    // The crate keeps its copy of the password in `config`: dropped (with ours) right here.
    drop(config);
    drop(password);
    client.map_err(|e| fail(error_text(&e)))
}

/// The PostgreSQL engine.
pub struct PgEngine {
    cfg: PgConfig,
    node: String,
    client: RefCell<Option<Client>>,
    in_read: Cell<bool>,
}

impl std::fmt::Debug for PgEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEngine").field("database", &self.cfg.describe).field("node", &self.node).finish()
    }
}

/// What a transaction found that is not an error of the database.
enum Outcome {
    Done,
    Conflict,
}

impl PgEngine {
    /// Connects as node `node` and applies pending migrations (all in one transaction, under an
    /// advisory lock).
    pub fn open(cfg: PgConfig, node: &str) -> Result<PgEngine, StoreError> {
        let mut client = connect(&cfg)?;
        let fail = |e: ::postgres::Error| failure(&cfg, error_text(&e));
        let known = MIGRATIONS.len() as i64;
        let mut tx = client.transaction().map_err(fail)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).map_err(fail)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (id INTEGER PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL);
             INSERT INTO schema_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;",
        )
        .map_err(fail)?;
        let version: i64 = tx.query_one("SELECT version FROM schema_version WHERE id = 1", &[]).map_err(fail)?.get(0);
        if version > known {
            return Err(StoreError::TooNew { path: PathBuf::from(&cfg.describe), found: version, known });
        }
        for m in &MIGRATIONS[version as usize..] {
            if !m.postgres.is_empty() {
                tx.batch_execute(m.postgres).map_err(fail)?;
            }
        }
        tx.execute("UPDATE schema_version SET version = $1 WHERE id = 1", &[&known]).map_err(fail)?;
        tx.commit().map_err(fail)?;
        Ok(PgEngine { cfg, node: node.to_owned(), client: RefCell::new(Some(client)), in_read: Cell::new(false) })
    }

    /// Runs `f` on the connection, connecting first if there is none (or it was lost) — but not
    /// inside a read transaction, whose queries must all see one state.
    fn run<T>(&self, f: impl FnOnce(&mut Client) -> Result<T, ::postgres::Error>) -> Result<T, StoreError> {
        let mut slot = self.client.borrow_mut();
        if slot.as_ref().is_none_or(Client::is_closed) {
            if self.in_read.get() {
                return Err(failure(&self.cfg, "the connection was lost during a read".into()));
            }
            *slot = None;
            *slot = Some(connect(&self.cfg)?);
        }
        let Some(client) = slot.as_mut() else { return Err(failure(&self.cfg, "no connection".into())) };
        let result = f(client);
        if result.is_err() && client.is_closed() {
            *slot = None;
        }
        result.map_err(|e| failure(&self.cfg, error_text(&e)))
    }

    /// [`PgEngine::run`] for what only reads (or may be repeated): a connection found lost by
    /// this call — the database restarted since the last one — is made again and the call
    /// repeated once, so the first question after an outage is answered, not refused.
    fn read<T>(&self, f: impl Fn(&mut Client) -> Result<T, ::postgres::Error>) -> Result<T, StoreError> {
        // Only a connection that was there and is now gone: a database that refuses new ones
        // is not asked twice.
        let had = self.client.borrow().as_ref().is_some_and(|c| !c.is_closed());
        match self.run(&f) {
            Err(_) if had && !self.in_read.get() && self.client.borrow().is_none() => self.run(f),
            result => result,
        }
    }

    fn outcome(&self, o: Result<Outcome, StoreError>) -> Result<(), StoreError> {
        match o? {
            Outcome::Done => Ok(()),
            Outcome::Conflict => Err(StoreError::Conflict),
        }
    }
}

fn bulk_row(r: &::postgres::Row) -> BulkRecord {
    BulkRecord {
        guid: r.get(0),
        lifetime: r.get(1),
        created: r.get(2),
        expires: r.get(3),
        creator: r.get(4),
        key_id: r.get(5),
        blocked: r.get(6),
        changed: r.get(7),
        changed_by: r.get(8),
    }
}

fn cert_row(r: &::postgres::Row) -> CertRecord {
    CertRecord {
        serial: r.get(0),
        profile: r.get(1),
        subject: r.get(2),
        issuer_key: r.get(3),
        subject_key: r.get(4),
        not_before: r.get(5),
        not_after: r.get(6),
        sha256: r.get(7),
        der: r.get(8),
        issued: r.get(9),
        requested_by: r.get(10),
        revoked: r.get(11),
        revoke_reason: r.get(12),
        revoked_by: r.get(13),
    }
}

fn checkpoint_row(r: &::postgres::Row) -> crate::audit::Checkpoint {
    crate::audit::Checkpoint { seq: r.get(0), hash: r.get(1), time: r.get(2), key_id: r.get(3), signature: r.get(4) }
}

fn apply_in(c: &mut Client, changes: &ChangeSet) -> Result<Outcome, ::postgres::Error> {
    let mut tx = c.transaction()?;
    if let Some(expected) = changes.expect_generation {
        // Locks the counter: a concurrent change (this node or another) waits, then conflicts.
        let now: i64 = tx.query_one("SELECT value FROM generation WHERE id = 1 FOR UPDATE", &[])?.get(0);
        if now != expected {
            return Ok(Outcome::Conflict);
        }
    }
    for (name, value) in &changes.meta {
        tx.execute(
            "INSERT INTO meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            &[name, value],
        )?;
    }
    for k in &changes.new_keys {
        tx.execute(
            &format!("INSERT INTO keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"),
            &[
                &k.id,
                &k.backend,
                &k.uri,
                &k.algorithm,
                &k.role.as_str(),
                &k.created,
                &k.activates,
                &k.deactivates,
                &k.retires,
                &k.revoked,
                &k.revoke_reason,
                &k.not_after,
            ],
        )?;
    }
    for c in &changes.certificates {
        tx.execute(
            &format!(
                "INSERT INTO certificates ({CERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
            ),
            &[
                &c.serial,
                &c.profile,
                &c.subject,
                &c.issuer_key,
                &c.subject_key,
                &c.not_before,
                &c.not_after,
                &c.sha256,
                &c.der,
                &c.issued,
                &c.requested_by,
                &c.revoked,
                &c.revoke_reason,
                &c.revoked_by,
            ],
        )?;
    }
    for s in &changes.schedules {
        let n = tx.execute(
            "UPDATE keys SET activates = $2, deactivates = $3, retires = $4, revoked = $5, revoke_reason = $6,
             not_after = $7 WHERE id = $1",
            &[&s.id, &s.activates, &s.deactivates, &s.retires, &s.revoked, &s.revoke_reason, &s.not_after],
        )?;
        if n != 1 {
            return Ok(Outcome::Conflict);
        }
    }
    for r in &changes.revocations {
        let n = tx.execute(
            "UPDATE certificates SET revoked = $2, revoke_reason = $3, revoked_by = $4
             WHERE serial = $1 AND revoked IS NULL",
            &[&r.serial, &r.at, &r.reason, &r.by],
        )?;
        if n != 1 {
            return Ok(Outcome::Conflict);
        }
    }
    for crl in &changes.crls {
        tx.execute(
            "INSERT INTO crls (issuer_key, number, this_update, next_update, der) VALUES ($1, $2, $3, $4, $5)",
            &[&crl.issuer_key, &crl.number, &crl.this_update, &crl.next_update, &crl.der],
        )?;
    }
    for uri in &changes.forget_orphans {
        tx.execute("DELETE FROM orphans WHERE uri = $1", &[uri])?;
    }
    tx.commit()?;
    Ok(Outcome::Done)
}

impl Engine for PgEngine {
    fn describe(&self) -> String {
        format!("PostgreSQL state database ({})", self.cfg.describe)
    }

    fn shared(&self) -> bool {
        true
    }

    fn begin_read(&self) -> Result<(), StoreError> {
        self.read(|c| c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))?;
        self.in_read.set(true);
        Ok(())
    }

    fn end_read(&self) {
        // Nothing to commit; a lost connection ended the transaction anyway.
        let _ = self.run(|c| c.batch_execute("COMMIT"));
        self.in_read.set(false);
    }

    fn schema_version(&self) -> Result<i64, StoreError> {
        self.read(|c| c.query_one("SELECT version FROM schema_version WHERE id = 1", &[]).map(|r| r.get(0)))
    }

    fn generation(&self) -> Result<i64, StoreError> {
        self.read(|c| c.query_one("SELECT value FROM generation WHERE id = 1", &[]).map(|r| r.get(0)))
    }

    fn meta(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.read(|c| c.query_opt("SELECT value FROM meta WHERE name = $1", &[&name]).map(|r| r.map(|r| r.get(0))))
    }

    fn apply(&mut self, changes: &ChangeSet) -> Result<(), StoreError> {
        let o = self.run(|c| apply_in(c, changes));
        self.outcome(o)
    }

    fn record_orphans(&mut self, orphans: &[Orphan]) -> Result<(), StoreError> {
        self.run(|c| {
            let mut tx = c.transaction()?;
            for o in orphans {
                tx.execute(
                    "INSERT INTO orphans (uri, backend, created, cause) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (uri) DO UPDATE SET backend = excluded.backend, created = excluded.created,
                         cause = excluded.cause",
                    &[&o.uri, &o.backend, &o.created, &o.cause],
                )?;
            }
            tx.commit()
        })
    }

    fn orphans(&self) -> Result<Vec<Orphan>, StoreError> {
        self.read(|c| {
            let rows = c.query("SELECT uri, backend, created, cause FROM orphans ORDER BY created", &[])?;
            Ok(rows
                .iter()
                .map(|r| Orphan { uri: r.get(0), backend: r.get(1), created: r.get(2), cause: r.get(3) })
                .collect())
        })
    }

    fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let (rows, certs) = self.read(|c| {
            let rows = c.query(&format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY created, id"), &[])?;
            let certs = c.query(
                "SELECT subject_key, der FROM certificates WHERE subject_key IS NOT NULL ORDER BY issued, ord",
                &[],
            )?;
            Ok((rows, certs))
        })?;
        let mut keys = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.get(0);
            let role: String = r.get(4);
            keys.push(KeyRecord {
                role: parse_role(&role, &id, || self.describe())?,
                id,
                backend: r.get(1),
                uri: r.get(2),
                algorithm: r.get(3),
                created: r.get(5),
                activates: r.get(6),
                deactivates: r.get(7),
                retires: r.get(8),
                revoked: r.get(9),
                revoke_reason: r.get(10),
                not_after: r.get(11),
                certificates: Vec::new(),
            });
        }
        attach_certificates(&mut keys, certs.iter().map(|r| (r.get(0), r.get(1))));
        Ok(keys)
    }

    fn record_bulk(&mut self, b: &BulkRecord) -> Result<(), StoreError> {
        self.run(|c| {
            c.execute(
                &format!("INSERT INTO bulk_tokens ({BULK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"),
                &[
                    &b.guid,
                    &b.lifetime,
                    &b.created,
                    &b.expires,
                    &b.creator,
                    &b.key_id,
                    &b.blocked,
                    &b.changed,
                    &b.changed_by,
                ],
            )
            .map(|_| ())
        })
    }

    fn bulk_tokens(&self) -> Result<Vec<BulkRecord>, StoreError> {
        self.read(|c| {
            let rows = c.query(&format!("SELECT {BULK_COLUMNS} FROM bulk_tokens ORDER BY created DESC, guid"), &[])?;
            Ok(rows.iter().map(bulk_row).collect())
        })
    }

    fn bulk_token(&self, guid: &str) -> Result<Option<BulkRecord>, StoreError> {
        self.read(|c| {
            let row = c.query_opt(&format!("SELECT {BULK_COLUMNS} FROM bulk_tokens WHERE guid = $1"), &[&guid])?;
            Ok(row.as_ref().map(bulk_row))
        })
    }

    fn set_bulk_blocked(&mut self, guid: &str, blocked: bool, by: &str, at: i64) -> Result<bool, StoreError> {
        self.run(|c| {
            c.execute(
                "UPDATE bulk_tokens SET blocked = $2, changed = $3, changed_by = $4 WHERE guid = $1",
                &[&guid, &blocked, &at, &by],
            )
            .map(|n| n == 1)
        })
    }

    fn certificates(&self) -> Result<Vec<CertRecord>, StoreError> {
        self.read(|c| {
            let rows = c.query(&format!("SELECT {CERT_COLUMNS} FROM certificates ORDER BY issued, ord"), &[])?;
            Ok(rows.iter().map(cert_row).collect())
        })
    }

    fn certificate(&self, serial: &str) -> Result<Option<CertRecord>, StoreError> {
        self.read(|c| {
            let row = c.query_opt(&format!("SELECT {CERT_COLUMNS} FROM certificates WHERE serial = $1"), &[&serial])?;
            Ok(row.as_ref().map(cert_row))
        })
    }

    fn audit_witness_of(&self, node: Option<&str>) -> Result<Option<crate::audit::Checkpoint>, StoreError> {
        let node = node.unwrap_or(&self.node);
        self.read(|c| {
            let row = c.query_opt(
                "SELECT seq, hash, time, key_id, signature FROM audit_witness WHERE node_id = $1",
                &[&node],
            )?;
            Ok(row.as_ref().map(checkpoint_row))
        })
    }

    fn witness_audit_head(&mut self, cp: &crate::audit::Checkpoint) -> Result<bool, StoreError> {
        let node = self.node.clone();
        self.run(|c| {
            c.execute(
                "INSERT INTO audit_witness (node_id, seq, hash, time, key_id, signature) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (node_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, time = excluded.time,
                     key_id = excluded.key_id, signature = excluded.signature
                 WHERE excluded.seq > audit_witness.seq",
                &[&node, &cp.seq, &cp.hash, &cp.time, &cp.key_id, &cp.signature],
            )
            .map(|n| n > 0)
        })
    }

    fn replace_audit_witness(&mut self, cp: &crate::audit::Checkpoint) -> Result<(), StoreError> {
        let node = self.node.clone();
        self.run(|c| {
            c.execute(
                "INSERT INTO audit_witness (node_id, seq, hash, time, key_id, signature) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (node_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, time = excluded.time,
                     key_id = excluded.key_id, signature = excluded.signature",
                &[&node, &cp.seq, &cp.hash, &cp.time, &cp.key_id, &cp.signature],
            )
            .map(|_| ())
        })
    }

    fn last_crl_number(&self) -> Result<i64, StoreError> {
        self.read(|c| c.query_one("SELECT coalesce(max(number), 0)::bigint FROM crls", &[]).map(|r| r.get(0)))
    }

    fn latest_crl(&self, issuer_key: &str) -> Result<Option<CrlRecord>, StoreError> {
        self.read(|c| {
            let row = c.query_opt(
                "SELECT issuer_key, number, this_update, next_update, der FROM crls WHERE issuer_key = $1
                 ORDER BY number DESC LIMIT 1",
                &[&issuer_key],
            )?;
            Ok(row.map(|r| CrlRecord {
                issuer_key: r.get(0),
                number: r.get(1),
                this_update: r.get(2),
                next_update: r.get(3),
                der: r.get(4),
            }))
        })
    }

    fn register_node(&mut self, node: &NodeRecord) -> Result<(), StoreError> {
        self.read(|c| {
            c.execute(
                "INSERT INTO nodes (id, address, version, started, last_seen) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET address = excluded.address, version = excluded.version,
                     started = excluded.started, last_seen = excluded.last_seen",
                &[&node.id, &node.address, &node.version, &node.started, &node.last_seen],
            )
            .map(|_| ())
        })
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.read(|c| {
            let rows = c.query("SELECT id, address, version, started, last_seen FROM nodes ORDER BY id", &[])?;
            Ok(rows
                .iter()
                .map(|r| NodeRecord {
                    id: r.get(0),
                    address: r.get(1),
                    version: r.get(2),
                    started: r.get(3),
                    last_seen: r.get(4),
                })
                .collect())
        })
    }
}
