//! The state store: an embedded SQLite database (WAL, `synchronous=FULL`, foreign keys on) with
//! schema migrations from the first version. It holds the key inventory and every certificate
//! issued, and the bulk-token registry; the audit log joins it later.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// Schema migrations, applied in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    // 1: key inventory, issued certificates, metadata.
    "CREATE TABLE meta (
        name  TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE keys (
        id           TEXT PRIMARY KEY,
        backend      TEXT NOT NULL,
        uri          TEXT NOT NULL UNIQUE,
        algorithm    TEXT NOT NULL,
        role         TEXT NOT NULL CHECK (role IN ('issuing', 'token-signing', 'tls')),
        status       TEXT NOT NULL CHECK (status IN ('pending', 'active', 'verify-only', 'retired')),
        created      INTEGER NOT NULL,
        activated    INTEGER,
        retire_after INTEGER,
        certificate  BLOB
    );
    CREATE TABLE certificates (
        serial       TEXT PRIMARY KEY,
        profile      TEXT NOT NULL,
        subject      TEXT NOT NULL,
        issuer_key   TEXT NOT NULL REFERENCES keys(id),
        not_before   INTEGER NOT NULL,
        not_after    INTEGER NOT NULL,
        sha256       TEXT NOT NULL,
        der          BLOB NOT NULL,
        issued       INTEGER NOT NULL,
        requested_by TEXT NOT NULL
    );",
    // 2: the bulk registration token registry (never the token itself).
    "CREATE TABLE bulk_tokens (
        guid       TEXT PRIMARY KEY CHECK (length(guid) = 36 AND guid = lower(guid)),
        lifetime   INTEGER NOT NULL CHECK (lifetime BETWEEN 1 AND 10080),
        created    INTEGER NOT NULL,
        expires    INTEGER NOT NULL,
        creator    TEXT NOT NULL,
        key_id     TEXT NOT NULL REFERENCES keys(id),
        blocked    INTEGER NOT NULL DEFAULT 0 CHECK (blocked IN (0, 1)),
        changed    INTEGER,
        changed_by TEXT
    );",
];

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
    /// The state folder could not be created.
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
}

/// What a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyRole {
    /// The SMS Issuing root: signs certificates only.
    Issuing,
    /// An SMS Token Signing key: signs tokens.
    TokenSigning,
    /// The appliance's own TLS server key.
    Tls,
}

impl KeyRole {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Issuing => "issuing",
            KeyRole::TokenSigning => "token-signing",
            KeyRole::Tls => "tls",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [KeyRole::Issuing, KeyRole::TokenSigning, KeyRole::Tls].into_iter().find(|r| r.as_str() == s)
    }
}

/// Where a key is in its life (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyStatus {
    /// Published, not yet used to sign.
    Pending,
    /// Signs.
    Active,
    /// Only verifies what it signed before.
    VerifyOnly,
    /// Neither signs nor verifies.
    Retired,
}

impl KeyStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Pending => "pending",
            KeyStatus::Active => "active",
            KeyStatus::VerifyOnly => "verify-only",
            KeyStatus::Retired => "retired",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [KeyStatus::Pending, KeyStatus::Active, KeyStatus::VerifyOnly, KeyStatus::Retired]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// One key of the inventory.
#[derive(Debug, Clone, Serialize)]
pub struct KeyRecord {
    /// Short id (the key's name in its device).
    pub id: String,
    /// The configured backend it lives in.
    pub backend: String,
    /// Its URI.
    pub uri: String,
    /// Its algorithm (`rsa-2048`, …).
    pub algorithm: String,
    /// What it is for.
    pub role: KeyRole,
    /// Where it is in its life.
    pub status: KeyStatus,
    /// Unix time it was created.
    pub created: i64,
    /// Unix time it became active.
    pub activated: Option<i64>,
    /// Unix time after which it must not be used (nothing it signs may outlive this).
    pub retire_after: Option<i64>,
    /// DER of its own certificate.
    #[serde(skip)]
    pub certificate: Option<Vec<u8>>,
}

/// One issued certificate.
#[derive(Debug, Clone, Serialize)]
pub struct CertRecord {
    /// Serial number, hex.
    pub serial: String,
    /// The profile it was issued under.
    pub profile: String,
    /// Its subject, RFC 4514.
    pub subject: String,
    /// The key that signed it.
    pub issuer_key: String,
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
}

/// One registered bulk registration token (SPEC §3: its GUID, lifetime, creator and blocked
/// flag are kept; the token is not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// The state database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// The database file inside `state_dir`.
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join("state.db")
    }

    /// Opens (creating if needed) the database in `state_dir` and applies pending migrations.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|source| StoreError::Io { path: state_dir.to_owned(), source })?;
        let path = Self::path_in(state_dir);
        let err = |source| StoreError::Sqlite { path: path.clone(), source };
        let conn = Connection::open(&path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
        let mut store = Store { conn, path };
        store.migrate()?;
        Ok(store)
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sqlite { path: self.path.clone(), source }
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite { path: path.clone(), source };
        let version: i64 = self.conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(err)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew { path: path.clone(), found: version, known });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.transaction().map_err(err)?;
            tx.execute_batch(sql).map_err(err)?;
            tx.pragma_update(None, "user_version", i as i64 + 1).map_err(err)?;
            tx.commit().map_err(err)?;
        }
        Ok(())
    }

    /// The schema version.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(self.err())
    }

    /// A metadata value.
    pub fn meta(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| r.get(0))
            .optional()
            .map_err(self.err())
    }

    /// Records the result of `init` in one transaction: metadata, keys and certificates all land
    /// or none does.
    pub fn record_init(
        &mut self,
        meta: &[(&str, String)],
        keys: &[KeyRecord],
        certs: &[CertRecord],
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(err)?;
        for (name, value) in meta {
            tx.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)", params![name, value])
                .map_err(err)?;
        }
        for k in keys {
            insert_key(&tx, k).map_err(err)?;
        }
        for c in certs {
            insert_cert(&tx, c).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Records one issued certificate.
    pub fn record_certificate(&mut self, cert: &CertRecord) -> Result<(), StoreError> {
        insert_cert(&self.conn, cert).map(|_| ()).map_err(self.err())
    }

    /// Every key, oldest first.
    pub fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, backend, uri, algorithm, role, status, created, activated, retire_after, certificate
                 FROM keys ORDER BY created, id",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                let role: String = r.get(4)?;
                let status: String = r.get(5)?;
                Ok(KeyRecord {
                    id: r.get(0)?,
                    backend: r.get(1)?,
                    uri: r.get(2)?,
                    algorithm: r.get(3)?,
                    role: KeyRole::parse(&role).ok_or_else(|| bad_value(4, &role))?,
                    status: KeyStatus::parse(&status).ok_or_else(|| bad_value(5, &status))?,
                    created: r.get(6)?,
                    activated: r.get(7)?,
                    retire_after: r.get(8)?,
                    certificate: r.get(9)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    /// Registers a bulk token (before the token is released).
    pub fn record_bulk(&mut self, b: &BulkRecord) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO bulk_tokens (guid, lifetime, created, expires, creator, key_id, blocked)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![b.guid, b.lifetime, b.created, b.expires, b.creator, b.key_id, b.blocked],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Every registered bulk token, newest first.
    pub fn bulk_tokens(&self) -> Result<Vec<BulkRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT guid, lifetime, created, expires, creator, key_id, blocked, changed, changed_by
                 FROM bulk_tokens ORDER BY created DESC, guid",
            )
            .map_err(self.err())?;
        let rows = stmt.query_map([], bulk_row).map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    /// The bulk token `guid` (lower case), if registered.
    pub fn bulk_token(&self, guid: &str) -> Result<Option<BulkRecord>, StoreError> {
        self.conn
            .query_row(
                "SELECT guid, lifetime, created, expires, creator, key_id, blocked, changed, changed_by
                 FROM bulk_tokens WHERE guid = ?1",
                [guid],
                bulk_row,
            )
            .optional()
            .map_err(self.err())
    }

    /// Blocks or unblocks the bulk token `guid`; `false` if no such token is registered.
    pub fn set_bulk_blocked(&mut self, guid: &str, blocked: bool, by: &str, at: i64) -> Result<bool, StoreError> {
        self.conn
            .execute(
                "UPDATE bulk_tokens SET blocked = ?2, changed = ?3, changed_by = ?4 WHERE guid = ?1",
                params![guid, blocked, at, by],
            )
            .map(|n| n == 1)
            .map_err(self.err())
    }

    /// Every issued certificate, oldest first.
    pub fn certificates(&self) -> Result<Vec<CertRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT serial, profile, subject, issuer_key, not_before, not_after, sha256, der, issued, requested_by
                 FROM certificates ORDER BY issued, serial",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                Ok(CertRecord {
                    serial: r.get(0)?,
                    profile: r.get(1)?,
                    subject: r.get(2)?,
                    issuer_key: r.get(3)?,
                    not_before: r.get(4)?,
                    not_after: r.get(5)?,
                    sha256: r.get(6)?,
                    der: r.get(7)?,
                    issued: r.get(8)?,
                    requested_by: r.get(9)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }
}

fn bad_value(column: usize, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Text,
        format!("unknown value {value:?}").into(),
    )
}

fn bulk_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BulkRecord> {
    Ok(BulkRecord {
        guid: r.get(0)?,
        lifetime: r.get(1)?,
        created: r.get(2)?,
        expires: r.get(3)?,
        creator: r.get(4)?,
        key_id: r.get(5)?,
        blocked: r.get(6)?,
        changed: r.get(7)?,
        changed_by: r.get(8)?,
    })
}

impl crate::token::BulkRegistry for Store {
    fn bulk_blocked(&self, guid: crate::token::Guid) -> Result<Option<bool>, String> {
        self.bulk_token(&guid.lower()).map(|b| b.map(|b| b.blocked)).map_err(|e| e.to_string())
    }
}

fn insert_key(conn: &Connection, k: &KeyRecord) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO keys (id, backend, uri, algorithm, role, status, created, activated, retire_after, certificate)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            k.id,
            k.backend,
            k.uri,
            k.algorithm,
            k.role.as_str(),
            k.status.as_str(),
            k.created,
            k.activated,
            k.retire_after,
            k.certificate
        ],
    )
}

fn insert_cert(conn: &Connection, c: &CertRecord) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO certificates (serial, profile, subject, issuer_key, not_before, not_after, sha256, der, issued, requested_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![c.serial, c.profile, c.subject, c.issuer_key, c.not_before, c.not_after, c.sha256, c.der, c.issued, c.requested_by],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, role: KeyRole) -> KeyRecord {
        KeyRecord {
            id: id.into(),
            backend: "hsm".into(),
            uri: format!("pkcs11:object={id}"),
            algorithm: "rsa-2048".into(),
            role,
            status: KeyStatus::Active,
            created: 1,
            activated: Some(1),
            retire_after: None,
            certificate: Some(vec![1, 2, 3]),
        }
    }

    #[test]
    fn migrates_in_wal_mode_and_round_trips_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let mode: String = store.conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = store.conn.pragma_query_value(None, "synchronous", |r| r.get(0)).unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        store
            .record_init(
                &[("hierarchy", "x".into())],
                &[key("root", KeyRole::Issuing), key("ts", KeyRole::TokenSigning)],
                &[],
            )
            .unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let keys = store.keys().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].role, KeyRole::TokenSigning);
        assert_eq!(keys[0].certificate.as_deref(), Some(&[1u8, 2, 3][..]));
        assert_eq!(store.meta("hierarchy").unwrap().as_deref(), Some("x"));
    }

    #[test]
    fn init_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        // The second key reuses the first one's URI: the whole transaction must roll back.
        let mut dup = key("b", KeyRole::TokenSigning);
        dup.uri = "pkcs11:object=a".into();
        assert!(store.record_init(&[("m", "v".into())], &[key("a", KeyRole::Issuing), dup], &[]).is_err());
        assert!(store.keys().unwrap().is_empty());
        assert_eq!(store.meta("m").unwrap(), None);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conn = Connection::open(Store::path_in(dir.path())).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(matches!(Store::open(dir.path()), Err(StoreError::TooNew { found: 99, .. })));
    }
}
