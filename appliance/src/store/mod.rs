//! The state store: the single source of truth every program follows — the key inventory and its
//! schedule, every certificate issued and its revocation, CRLs, the bulk-token registry, and a
//! change counter ([`Store::generation`]) that moves with every change, which the running
//! service watches to pick changes up within a second.
//!
//! Two engines implement it ([`Engine`]), with the same schema from one list of [`migrations`]:
//! - [`sqlite`]: an embedded database in the state folder (WAL, `synchronous=FULL`, foreign keys
//!   on) — quickstart and single appliances;
//! - [`postgres`]: a PostgreSQL database several `sitesignd` nodes share (SPEC §10), which also
//!   holds each node's audit chain; its change counter is announced with `NOTIFY`.
//!
//! Writes that belong together go through [`Engine::apply`], one transaction for a whole
//! [`ChangeSet`], optionally conditional on the generation the caller read (optimistic
//! concurrency: two admins rotating at once — on one node or two — cannot both win).

pub mod migrations;
pub mod postgres;
pub mod sqlite;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::keys::{KeyRecord, KeyRole};

/// A state store error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened, read or written.
    #[error("state database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The state folder could not be created or used.
    #[error("state folder {path}: {source}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The database was written by a newer sitesign.
    #[error("state database {path} has schema version {found}, newer than this sitesign ({known}); upgrade sitesign")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
    /// A conditional change found the state changed since it was read.
    #[error(
        "the state changed while this operation was prepared (another admin or appliance changed it); run it again"
    )]
    Conflict,
    /// The PostgreSQL database could not be reached, read or written.
    #[error("PostgreSQL state database ({database}): {reason}")]
    Postgres {
        /// Where (host, database, user; never the password).
        database: String,
        /// What failed.
        reason: String,
    },
    /// A stored value is not one this build understands.
    #[error("state database {path}: {what}")]
    Corrupt {
        /// The database.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// One issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertRecord {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// The profile it was issued under (`mp-client`, `token-signing`, `cross-certificate`, …).
    pub profile: String,
    /// Its subject, RFC 4514.
    pub subject: String,
    /// The key that signed it.
    pub issuer_key: String,
    /// The inventory key it certifies, for sitesign's own keys (`None` for role certificates,
    /// whose keys belong to their holders).
    pub subject_key: Option<String>,
    /// Validity start, Unix time.
    pub not_before: i64,
    /// Validity end, Unix time.
    pub not_after: i64,
    /// SHA-256 of the DER, hex.
    pub sha256: String,
    /// The DER.
    #[serde(skip)]
    pub der: Vec<u8>,
    /// When it was issued, Unix time.
    pub issued: i64,
    /// Who asked for it.
    pub requested_by: String,
    /// When it was revoked, Unix time.
    pub revoked: Option<i64>,
    /// Why (an RFC 5280 reason name).
    pub revoke_reason: Option<String>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
}

/// One registered bulk registration token (SPEC §3: its GUID, lifetime, creator and blocked
/// flag are kept; the token is not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct BulkRecord {
    /// The token's GUID (`UniqueId`), lower case.
    pub guid: String,
    /// Lifetime asked for, minutes.
    pub lifetime: i64,
    /// Unix time it was created (`nbf`).
    pub created: i64,
    /// Unix time it expires (`exp`).
    pub expires: i64,
    /// Who created it.
    pub creator: String,
    /// The key that signed it.
    pub key_id: String,
    /// Whether it is blocked.
    pub blocked: bool,
    /// Unix time of the last block/unblock.
    pub changed: Option<i64>,
    /// Who last blocked/unblocked it.
    pub changed_by: Option<String>,
}

/// A CRL signed by an issuing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlRecord {
    /// The issuing key that signed it.
    pub issuer_key: String,
    /// Its `cRLNumber`.
    pub number: i64,
    /// `thisUpdate`, Unix time.
    pub this_update: i64,
    /// `nextUpdate`, Unix time.
    pub next_update: i64,
    /// The DER.
    pub der: Vec<u8>,
}

/// A key generated in a device by an operation that then failed: nothing records it but this
/// list, shown by `sitesign keys list` so that it can be deleted from the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Orphan {
    /// Its URI.
    pub uri: String,
    /// Its backend.
    pub backend: String,
    /// When it was generated.
    pub created: i64,
    /// What failed.
    pub cause: String,
}

/// The schedule of an existing key, replaced as a whole by a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySchedule {
    /// The key.
    pub id: String,
    /// See [`KeyRecord::activates`].
    pub activates: Option<i64>,
    /// See [`KeyRecord::deactivates`].
    pub deactivates: Option<i64>,
    /// See [`KeyRecord::retires`].
    pub retires: Option<i64>,
    /// See [`KeyRecord::revoked`].
    pub revoked: Option<i64>,
    /// See [`KeyRecord::revoke_reason`].
    pub revoke_reason: Option<String>,
    /// See [`KeyRecord::not_after`].
    pub not_after: i64,
}

impl From<&KeyRecord> for KeySchedule {
    fn from(k: &KeyRecord) -> Self {
        KeySchedule {
            id: k.id.clone(),
            activates: k.activates,
            deactivates: k.deactivates,
            retires: k.retires,
            revoked: k.revoked,
            revoke_reason: k.revoke_reason.clone(),
            not_after: k.not_after,
        }
    }
}

/// A certificate revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The certificate's serial, lower-case hex.
    pub serial: String,
    /// When.
    pub at: i64,
    /// Why (an RFC 5280 reason name).
    pub reason: String,
    /// Who.
    pub by: String,
}

/// Changes that land together or not at all.
#[derive(Debug, Clone, Default)]
pub struct ChangeSet {
    /// Apply only if the store's generation is still this one (see [`Store::generation`]).
    pub expect_generation: Option<i64>,
    /// Metadata to set.
    pub meta: Vec<(String, String)>,
    /// New keys (their `certificates` are ignored: certificates go in `certificates`).
    pub new_keys: Vec<KeyRecord>,
    /// New certificates (of new or existing keys, and role certificates).
    pub certificates: Vec<CertRecord>,
    /// New schedules of existing keys.
    pub schedules: Vec<KeySchedule>,
    /// Certificates to mark revoked.
    pub revocations: Vec<Revocation>,
    /// CRLs to store.
    pub crls: Vec<CrlRecord>,
    /// Orphaned keys that were deleted from their device (or acknowledged): forget them.
    pub forget_orphans: Vec<String>,
}

/// A `sitesignd` node as it last reported itself (the node registry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct NodeRecord {
    /// Its id (`[node] id`).
    pub id: String,
    /// Where its API listens.
    pub address: String,
    /// Its sitesign version.
    pub version: String,
    /// When it started, Unix time.
    pub started: i64,
    /// When it last reported, Unix time.
    pub last_seen: i64,
}

/// What a state store engine does. Reads take `&self`; each is one statement unless inside
/// [`Store::read`], whose queries all see one committed state.
pub trait Engine: Send + std::fmt::Debug {
    /// Which database, for messages (never a password).
    fn describe(&self) -> String;
    /// Whether several appliances share it (PostgreSQL).
    fn shared(&self) -> bool {
        false
    }
    /// Starts a read transaction (see [`Store::read`]).
    fn begin_read(&self) -> Result<(), StoreError>;
    /// Ends it.
    fn end_read(&self);
    /// The schema version: migrations applied.
    fn schema_version(&self) -> Result<i64, StoreError>;
    /// The change counter: it moves with every change of keys, certificates, CRLs, bulk tokens
    /// and metadata (triggers, so no writer can forget it).
    fn generation(&self) -> Result<i64, StoreError>;
    /// A metadata value.
    fn meta(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// Applies `changes` in one transaction: all of it lands, or none.
    fn apply(&mut self, changes: &ChangeSet) -> Result<(), StoreError>;
    /// Notes keys a failed operation left in a device (best effort: called after a failure).
    fn record_orphans(&mut self, orphans: &[Orphan]) -> Result<(), StoreError>;
    /// Keys left in devices by failed operations.
    fn orphans(&self) -> Result<Vec<Orphan>, StoreError>;
    /// Every key with its certificates, oldest first.
    fn keys(&self) -> Result<Vec<KeyRecord>, StoreError>;
    /// Registers a bulk token (before the token is released).
    fn record_bulk(&mut self, b: &BulkRecord) -> Result<(), StoreError>;
    /// Every registered bulk token, newest first.
    fn bulk_tokens(&self) -> Result<Vec<BulkRecord>, StoreError>;
    /// The bulk token `guid` (lower case), if registered.
    fn bulk_token(&self, guid: &str) -> Result<Option<BulkRecord>, StoreError>;
    /// Blocks or unblocks the bulk token `guid`; `false` if no such token is registered.
    fn set_bulk_blocked(&mut self, guid: &str, blocked: bool, by: &str, at: i64) -> Result<bool, StoreError>;
    /// Every issued certificate, oldest first.
    fn certificates(&self) -> Result<Vec<CertRecord>, StoreError>;
    /// The certificate with `serial` (lower-case hex), if issued here.
    fn certificate(&self, serial: &str) -> Result<Option<CertRecord>, StoreError>;
    /// This node's audit log's head as last witnessed, if any.
    fn audit_witness(&self) -> Result<Option<crate::audit::Checkpoint>, StoreError> {
        self.audit_witness_of(None)
    }
    /// The witnessed head of node `node`'s audit chain (`None`: this node's).
    fn audit_witness_of(&self, node: Option<&str>) -> Result<Option<crate::audit::Checkpoint>, StoreError>;
    /// Records `cp` as this node's witnessed head, unless a later one is recorded already (the
    /// witness never goes back; see [`Engine::replace_audit_witness`]); whether it did.
    fn witness_audit_head(&mut self, cp: &crate::audit::Checkpoint) -> Result<bool, StoreError>;
    /// Sets the witness to `cp` even if it is earlier: only `sitesign audit acknowledge-loss`,
    /// after recording the loss in the log.
    fn replace_audit_witness(&mut self, cp: &crate::audit::Checkpoint) -> Result<(), StoreError>;
    /// The highest `cRLNumber` of any CRL stored: every SMS Issuing root carries the same name,
    /// so their CRLs share one increasing sequence (RFC 5280 §5.2.3).
    fn last_crl_number(&self) -> Result<i64, StoreError>;
    /// The newest CRL signed by `issuer_key`.
    fn latest_crl(&self, issuer_key: &str) -> Result<Option<CrlRecord>, StoreError>;
    /// Records that `node` is alive (the node registry; not a change the service follows).
    fn register_node(&mut self, node: &NodeRecord) -> Result<(), StoreError>;
    /// Every node that ever reported, by id.
    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
}

/// The state store: one of the [`Engine`]s, chosen by `[store] kind`.
#[derive(Debug)]
pub struct Store(Box<dyn Engine>);

impl std::ops::Deref for Store {
    type Target = dyn Engine;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl std::ops::DerefMut for Store {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut *self.0
    }
}

impl Store {
    /// The SQLite database file inside `state_dir`.
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join("state.db")
    }

    /// Opens (creating if needed) the SQLite database in `state_dir` and applies pending
    /// migrations.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        Ok(Store(Box::new(sqlite::SqliteEngine::open(state_dir)?)))
    }

    /// A store on `engine`.
    pub fn from_engine(engine: Box<dyn Engine>) -> Store {
        Store(engine)
    }

    /// Opens the store `config` names: SQLite in the state folder, or the shared PostgreSQL
    /// database (migrated if needed).
    pub fn connect(config: &crate::config::Config) -> Result<Store, StoreError> {
        match &config.store {
            crate::config::StoreConfig::Sqlite => Self::open(&config.state_dir),
            crate::config::StoreConfig::Postgres(pg) => {
                Ok(Store(Box::new(postgres::PgEngine::open((**pg).clone(), &config.node.id)?)))
            }
        }
    }

    /// Sets the SQLite database in `state_dir` aside (renamed with `suffix`, with its WAL files,
    /// never deleted) so that a new hierarchy can start; returns the new name, or `None` if there
    /// was no database.
    pub fn set_aside(state_dir: &Path, suffix: &str) -> Result<Option<PathBuf>, StoreError> {
        sqlite::set_aside_database(&Self::path_in(state_dir), suffix)
    }

    /// Runs `read` inside one read transaction: every query sees the same committed state, so a
    /// snapshot built from several queries is never half of one change and half of the next.
    pub fn read<T>(&self, read: impl FnOnce(&Store) -> Result<T, StoreError>) -> Result<T, StoreError> {
        /// Ends the read transaction however `read` ends — a panic too: a transaction left open
        /// would answer every later question from its old snapshot.
        struct End<'a>(&'a dyn Engine);
        impl Drop for End<'_> {
            fn drop(&mut self) {
                self.0.end_read();
            }
        }
        self.0.begin_read()?;
        let _end = End(&*self.0);
        read(self)
    }
}

/// The columns of `keys`, `certificates` and `bulk_tokens` in the order both engines read and
/// write them.
const KEY_COLUMNS: &str =
    "id, backend, uri, algorithm, role, created, activates, deactivates, retires, revoked, revoke_reason, not_after";
const CERT_COLUMNS: &str = "serial, profile, subject, issuer_key, subject_key, not_before, not_after, sha256, der, issued, \
     requested_by, revoked, revoke_reason, revoked_by";
const BULK_COLUMNS: &str = "guid, lifetime, created, expires, creator, key_id, blocked, changed, changed_by";

/// Attaches each certificate (owner key id, DER; oldest first) to its key.
fn attach_certificates(keys: &mut [KeyRecord], certs: impl IntoIterator<Item = (String, Vec<u8>)>) {
    for (owner, der) in certs {
        if let Some(k) = keys.iter_mut().find(|k| k.id == owner) {
            k.certificates.push(der);
        }
    }
}

/// A key's role as stored.
fn parse_role(role: &str, key: &str, describe: impl FnOnce() -> String) -> Result<KeyRole, StoreError> {
    KeyRole::parse(role).ok_or_else(|| StoreError::Corrupt {
        path: PathBuf::from(describe()),
        what: format!("key {key} has unknown role {role:?}"),
    })
}
