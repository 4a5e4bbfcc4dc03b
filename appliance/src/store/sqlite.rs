//! The embedded SQLite engine of the state store: one database file (WAL, `synchronous=FULL`,
//! foreign keys on) in the state folder, for quickstart and single appliances.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use super::migrations::MIGRATIONS;
use super::*;
use crate::keys::{KeyRecord, KeyRole};

/// The SQLite engine.
#[derive(Debug)]
pub struct SqliteEngine {
    conn: Connection,
    path: PathBuf,
}

/// The files of the SQLite database `db`: itself and its WAL files.
fn database_files(db: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    ["", "-wal", "-shm"].into_iter().map(move |ext| PathBuf::from(format!("{}{ext}", db.display())))
}

/// Whether any file of the SQLite database `db` (itself or its WAL files) exists.
pub fn database_exists(db: &Path) -> bool {
    database_files(db).any(|f| f.exists())
}

/// Sets the SQLite database `db` aside — renamed `DB.set-aside-SUFFIX`, with its WAL files (also a
/// WAL file left without its database, which SQLite would otherwise apply to a new one), never
/// deleted; returns the new name, or `None` if there was nothing to move.
pub fn set_aside_database(db: &Path, suffix: &str) -> Result<Option<PathBuf>, StoreError> {
    let aside = PathBuf::from(format!("{}.set-aside-{suffix}", db.display()));
    let mut moved = false;
    for (from, to) in database_files(db).zip(database_files(&aside)) {
        if from.exists() {
            std::fs::rename(&from, &to).map_err(|source| StoreError::Io { path: from.clone(), source })?;
            moved = true;
        }
    }
    Ok(moved.then_some(aside))
}

impl SqliteEngine {
    /// Opens (creating if needed) the database in `state_dir` and applies pending migrations.
    pub fn open(state_dir: &Path) -> Result<SqliteEngine, StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|source| StoreError::Io { path: state_dir.to_owned(), source })?;
        let path = Store::path_in(state_dir);
        let err = |source| StoreError::Sqlite { path: path.clone(), source };
        let conn = Connection::open(&path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
        let mut store = SqliteEngine { conn, path };
        store.migrate()?;
        store.conn.pragma_update(None, "foreign_keys", "ON").map_err(store.err())?;
        Ok(store)
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sqlite { path: self.path.clone(), source }
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite { path: path.clone(), source };
        let known = MIGRATIONS.len() as i64;
        // Tables are rebuilt by some migrations: enforce foreign keys after each, not during.
        self.conn.pragma_update(None, "foreign_keys", "OFF").map_err(err)?;
        loop {
            // The version is read inside the write transaction: two programs opening the same
            // database at once (the CLI and the service) migrate it once, one after the other.
            let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(err)?;
            let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(err)?;
            if version > known {
                return Err(StoreError::TooNew { path: path.clone(), found: version, known });
            }
            let Some(sql) = MIGRATIONS.get(version as usize).map(|m| m.sqlite) else { break };
            let i = version as usize;
            tx.execute_batch(sql).map_err(err)?;
            let violations: i64 =
                tx.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| r.get(0)).map_err(err)?;
            if violations > 0 {
                return Err(StoreError::Corrupt {
                    path: path.clone(),
                    what: format!("migration {} left {violations} broken references; nothing was changed", i + 1),
                });
            }
            tx.pragma_update(None, "user_version", i as i64 + 1).map_err(err)?;
            tx.commit().map_err(err)?;
        }
        Ok(())
    }
}

impl Engine for SqliteEngine {
    fn describe(&self) -> String {
        format!("state database {}", self.path.display())
    }

    fn begin_read(&self) -> Result<(), StoreError> {
        self.conn.execute_batch("BEGIN DEFERRED").map_err(self.err())
    }

    fn end_read(&self) {
        // A read transaction has nothing to commit; ending it can only fail if it is gone.
        let _ = self.conn.execute_batch("COMMIT");
    }

    /// The schema version.
    fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(self.err())
    }

    /// The change counter: it moves with every change of keys, certificates, CRLs, bulk tokens
    /// and metadata (SQLite triggers, so no writer can forget it).
    fn generation(&self) -> Result<i64, StoreError> {
        self.conn.query_row("SELECT value FROM generation WHERE id = 1", [], |r| r.get(0)).map_err(self.err())
    }

    /// A metadata value.
    fn meta(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| r.get(0))
            .optional()
            .map_err(self.err())
    }

    /// Applies `changes` in one transaction: all of it lands, or none.
    fn apply(&mut self, changes: &ChangeSet) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(err)?;
        if let Some(expected) = changes.expect_generation {
            let now: i64 = tx.query_row("SELECT value FROM generation WHERE id = 1", [], |r| r.get(0)).map_err(err)?;
            if now != expected {
                return Err(StoreError::Conflict);
            }
        }
        for (name, value) in &changes.meta {
            tx.execute(
                "INSERT INTO meta (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params![name, value],
            )
            .map_err(err)?;
        }
        for k in &changes.new_keys {
            tx.execute(
                &format!("INSERT INTO keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
                params![
                    k.id,
                    k.backend,
                    k.uri,
                    k.algorithm,
                    k.role.as_str(),
                    k.created,
                    k.activates,
                    k.deactivates,
                    k.retires,
                    k.revoked,
                    k.revoke_reason,
                    k.not_after
                ],
            )
            .map_err(err)?;
        }
        for c in &changes.certificates {
            tx.execute(
                &format!(
                    "INSERT INTO certificates ({CERT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
                ),
                params![
                    c.serial,
                    c.profile,
                    c.subject,
                    c.issuer_key,
                    c.subject_key,
                    c.not_before,
                    c.not_after,
                    c.sha256,
                    c.der,
                    c.issued,
                    c.requested_by,
                    c.revoked,
                    c.revoke_reason,
                    c.revoked_by
                ],
            )
            .map_err(err)?;
        }
        for s in &changes.schedules {
            let n = tx
                .execute(
                    "UPDATE keys SET activates = ?2, deactivates = ?3, retires = ?4, revoked = ?5, revoke_reason = ?6,
                     not_after = ?7 WHERE id = ?1",
                    params![s.id, s.activates, s.deactivates, s.retires, s.revoked, s.revoke_reason, s.not_after],
                )
                .map_err(err)?;
            if n != 1 {
                return Err(StoreError::Conflict);
            }
        }
        for r in &changes.revocations {
            let n = tx
                .execute(
                    "UPDATE certificates SET revoked = ?2, revoke_reason = ?3, revoked_by = ?4
                     WHERE serial = ?1 AND revoked IS NULL",
                    params![r.serial, r.at, r.reason, r.by],
                )
                .map_err(err)?;
            if n != 1 {
                return Err(StoreError::Conflict);
            }
        }
        for crl in &changes.crls {
            tx.execute(
                "INSERT INTO crls (issuer_key, number, this_update, next_update, der) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![crl.issuer_key, crl.number, crl.this_update, crl.next_update, crl.der],
            )
            .map_err(err)?;
        }
        for uri in &changes.forget_orphans {
            tx.execute("DELETE FROM orphans WHERE uri = ?1", [uri]).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Notes keys a failed operation left in a device (best effort: called after a failure).
    fn record_orphans(&mut self, orphans: &[Orphan]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(err)?;
        for o in orphans {
            tx.execute(
                "INSERT OR REPLACE INTO orphans (uri, backend, created, cause) VALUES (?1, ?2, ?3, ?4)",
                params![o.uri, o.backend, o.created, o.cause],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Keys left in devices by failed operations.
    fn orphans(&self) -> Result<Vec<Orphan>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT uri, backend, created, cause FROM orphans ORDER BY created")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| Ok(Orphan { uri: r.get(0)?, backend: r.get(1)?, created: r.get(2)?, cause: r.get(3)? }))
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    /// Every key with its certificates, oldest first.
    fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let mut stmt =
            self.conn.prepare(&format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY created, id")).map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                let role: String = r.get(4)?;
                Ok((
                    role,
                    KeyRecord {
                        id: r.get(0)?,
                        backend: r.get(1)?,
                        uri: r.get(2)?,
                        algorithm: r.get(3)?,
                        role: KeyRole::Issuing,
                        created: r.get(5)?,
                        activates: r.get(6)?,
                        deactivates: r.get(7)?,
                        retires: r.get(8)?,
                        revoked: r.get(9)?,
                        revoke_reason: r.get(10)?,
                        not_after: r.get(11)?,
                        certificates: Vec::new(),
                    },
                ))
            })
            .map_err(self.err())?;
        let mut keys = Vec::new();
        for row in rows {
            let (role, mut key) = row.map_err(self.err())?;
            key.role = parse_role(&role, &key.id, || self.path.display().to_string())?;
            keys.push(key);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT subject_key, der FROM certificates WHERE subject_key IS NOT NULL ORDER BY issued, rowid")
            .map_err(self.err())?;
        let certs =
            stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))).map_err(self.err())?;
        attach_certificates(&mut keys, certs.collect::<Result<Vec<_>, _>>().map_err(self.err())?);
        Ok(keys)
    }

    /// Registers a bulk token (before the token is released).
    fn record_bulk(&mut self, b: &BulkRecord) -> Result<(), StoreError> {
        self.conn
            .execute(
                &format!("INSERT INTO bulk_tokens ({BULK_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![
                    b.guid,
                    b.lifetime,
                    b.created,
                    b.expires,
                    b.creator,
                    b.key_id,
                    b.blocked,
                    b.changed,
                    b.changed_by
                ],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Every registered bulk token, newest first.
    fn bulk_tokens(&self) -> Result<Vec<BulkRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {BULK_COLUMNS} FROM bulk_tokens ORDER BY created DESC, guid"))
            .map_err(self.err())?;
        let rows = stmt.query_map([], bulk_row).map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    /// The bulk token `guid` (lower case), if registered.
    fn bulk_token(&self, guid: &str) -> Result<Option<BulkRecord>, StoreError> {
        self.conn
            .query_row(&format!("SELECT {BULK_COLUMNS} FROM bulk_tokens WHERE guid = ?1"), [guid], bulk_row)
            .optional()
            .map_err(self.err())
    }

    /// Blocks or unblocks the bulk token `guid`; `false` if no such token is registered.
    fn set_bulk_blocked(&mut self, guid: &str, blocked: bool, by: &str, at: i64) -> Result<bool, StoreError> {
        self.conn
            .execute(
                "UPDATE bulk_tokens SET blocked = ?2, changed = ?3, changed_by = ?4 WHERE guid = ?1",
                params![guid, blocked, at, by],
            )
            .map(|n| n == 1)
            .map_err(self.err())
    }

    /// Every issued certificate, oldest first.
    fn certificates(&self) -> Result<Vec<CertRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {CERT_COLUMNS} FROM certificates ORDER BY issued, rowid"))
            .map_err(self.err())?;
        let rows = stmt.query_map([], cert_row).map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    /// The certificate with `serial` (lower-case hex), if issued here.
    fn certificate(&self, serial: &str) -> Result<Option<CertRecord>, StoreError> {
        self.conn
            .query_row(&format!("SELECT {CERT_COLUMNS} FROM certificates WHERE serial = ?1"), [serial], cert_row)
            .optional()
            .map_err(self.err())
    }

    fn audit_witness_of(&self, _node: Option<&str>) -> Result<Option<crate::audit::Checkpoint>, StoreError> {
        // One appliance, one chain.
        self.conn
            .query_row("SELECT seq, hash, time, key_id, signature FROM audit_witness WHERE id = 1", [], |r| {
                Ok(crate::audit::Checkpoint {
                    seq: r.get(0)?,
                    hash: r.get(1)?,
                    time: r.get(2)?,
                    key_id: r.get(3)?,
                    signature: r.get(4)?,
                })
            })
            .optional()
            .map_err(self.err())
    }

    /// Records `cp` as the audit log's witnessed head, unless a later one is recorded already
    /// (the witness never goes back; see [`Store::replace_audit_witness`]); whether it did.
    fn witness_audit_head(&mut self, cp: &crate::audit::Checkpoint) -> Result<bool, StoreError> {
        self.conn
            .execute(
                "INSERT INTO audit_witness (id, seq, hash, time, key_id, signature) VALUES (1, ?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, time = excluded.time,
                     key_id = excluded.key_id, signature = excluded.signature
                 WHERE excluded.seq > audit_witness.seq",
                params![cp.seq, cp.hash, cp.time, cp.key_id, cp.signature],
            )
            .map(|changed| changed > 0)
            .map_err(self.err())
    }

    /// Sets the witness to `cp` even if it is earlier: only `sitesign audit acknowledge-loss`,
    /// after recording the loss in the log.
    fn replace_audit_witness(&mut self, cp: &crate::audit::Checkpoint) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO audit_witness (id, seq, hash, time, key_id, signature) VALUES (1, ?1, ?2, ?3, ?4, ?5)",
                params![cp.seq, cp.hash, cp.time, cp.key_id, cp.signature],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// The highest `cRLNumber` of any CRL stored: every SMS Issuing root carries the same name,
    /// so their CRLs share one increasing sequence (RFC 5280 §5.2.3).
    fn last_crl_number(&self) -> Result<i64, StoreError> {
        self.conn.query_row("SELECT coalesce(max(number), 0) FROM crls", [], |r| r.get(0)).map_err(self.err())
    }

    /// The newest CRL signed by `issuer_key`.
    fn latest_crl(&self, issuer_key: &str) -> Result<Option<CrlRecord>, StoreError> {
        self.conn
            .query_row(
                "SELECT issuer_key, number, this_update, next_update, der FROM crls WHERE issuer_key = ?1
                 ORDER BY number DESC LIMIT 1",
                [issuer_key],
                |r| {
                    Ok(CrlRecord {
                        issuer_key: r.get(0)?,
                        number: r.get(1)?,
                        this_update: r.get(2)?,
                        next_update: r.get(3)?,
                        der: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(self.err())
    }

    fn register_node(&mut self, node: &NodeRecord) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO nodes (id, address, version, started, last_seen) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE SET address = excluded.address, version = excluded.version,
                     started = excluded.started, last_seen = excluded.last_seen",
                params![node.id, node.address, node.version, node.started, node.last_seen],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, address, version, started, last_seen FROM nodes ORDER BY id")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                Ok(NodeRecord {
                    id: r.get(0)?,
                    address: r.get(1)?,
                    version: r.get(2)?,
                    started: r.get(3)?,
                    last_seen: r.get(4)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }
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

fn cert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CertRecord> {
    Ok(CertRecord {
        serial: r.get(0)?,
        profile: r.get(1)?,
        subject: r.get(2)?,
        issuer_key: r.get(3)?,
        subject_key: r.get(4)?,
        not_before: r.get(5)?,
        not_after: r.get(6)?,
        sha256: r.get(7)?,
        der: r.get(8)?,
        issued: r.get(9)?,
        requested_by: r.get(10)?,
        revoked: r.get(11)?,
        revoke_reason: r.get(12)?,
        revoked_by: r.get(13)?,
    })
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
            created: 1,
            activates: Some(1),
            deactivates: None,
            retires: None,
            revoked: None,
            revoke_reason: None,
            not_after: 100,
            certificates: Vec::new(),
        }
    }

    fn cert(serial: &str, subject_key: &str, issued: i64) -> CertRecord {
        CertRecord {
            serial: serial.into(),
            profile: "token-signing".into(),
            subject: "CN=x".into(),
            issuer_key: "root".into(),
            subject_key: Some(subject_key.into()),
            not_before: 0,
            not_after: 100,
            sha256: String::new(),
            der: serial.as_bytes().to_vec(),
            issued,
            requested_by: "test".into(),
            revoked: None,
            revoke_reason: None,
            revoked_by: None,
        }
    }

    #[test]
    fn migrates_in_wal_mode_and_round_trips_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteEngine::open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let mode: String = store.conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = store.conn.pragma_query_value(None, "synchronous", |r| r.get(0)).unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        let fk: i64 = store.conn.pragma_query_value(None, "foreign_keys", |r| r.get(0)).unwrap();
        assert_eq!(fk, 1, "foreign keys enforced");
        store
            .apply(&ChangeSet {
                meta: vec![("hierarchy".into(), "x".into())],
                new_keys: vec![key("root", KeyRole::Issuing), key("ts", KeyRole::TokenSigning)],
                certificates: vec![cert("01", "root", 1), cert("02", "ts", 1), cert("03", "ts", 2)],
                ..ChangeSet::default()
            })
            .unwrap();
        drop(store);
        let store = SqliteEngine::open(dir.path()).unwrap();
        let keys = store.keys().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].role, KeyRole::TokenSigning);
        assert_eq!(keys[1].certificates, [b"02".to_vec(), b"03".to_vec()], "oldest first");
        assert_eq!(store.meta("hierarchy").unwrap().as_deref(), Some("x"));
    }

    #[test]
    fn a_change_set_is_all_or_nothing_and_moves_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteEngine::open(dir.path()).unwrap();
        let g0 = store.generation().unwrap();
        // The second key reuses the first one's URI: the whole transaction must roll back.
        let mut dup = key("b", KeyRole::TokenSigning);
        dup.uri = "pkcs11:object=a".into();
        let bad = ChangeSet {
            meta: vec![("m".into(), "v".into())],
            new_keys: vec![key("a", KeyRole::Issuing), dup],
            ..ChangeSet::default()
        };
        assert!(store.apply(&bad).is_err());
        assert!(store.keys().unwrap().is_empty());
        assert_eq!(store.meta("m").unwrap(), None);
        assert_eq!(store.generation().unwrap(), g0, "nothing changed");
        store.apply(&ChangeSet { new_keys: vec![key("a", KeyRole::Issuing)], ..ChangeSet::default() }).unwrap();
        let g1 = store.generation().unwrap();
        assert!(g1 > g0);
        // A change prepared against an older generation is refused.
        let stale =
            ChangeSet { expect_generation: Some(g0), meta: vec![("m".into(), "v".into())], ..Default::default() };
        assert!(matches!(store.apply(&stale), Err(StoreError::Conflict)));
        let fresh =
            ChangeSet { expect_generation: Some(g1), meta: vec![("m".into(), "v".into())], ..Default::default() };
        store.apply(&fresh).unwrap();
        assert!(store.generation().unwrap() > g1);
        // A direct edit of a watched table moves it too (a trigger, not the writer's goodwill).
        let g2 = store.generation().unwrap();
        store.conn.execute("UPDATE keys SET retires = 5", []).unwrap();
        assert!(store.generation().unwrap() > g2);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteEngine::open(dir.path()).unwrap());
        let conn = Connection::open(Store::path_in(dir.path())).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(matches!(SqliteEngine::open(dir.path()), Err(StoreError::TooNew { found: 99, .. })));
    }

    #[test]
    fn the_previous_schema_migrates_keeping_the_inventory_bulk_tokens_and_revocations() {
        // What a package upgrade from the release before meets: a schema-3 store with its keys,
        // a revoked MP certificate, a blocked bulk token and a CRL.
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(Store::path_in(dir.path())).unwrap();
        let previous = MIGRATIONS.len() - 1;
        for (i, sql) in MIGRATIONS[..previous].iter().enumerate() {
            conn.execute_batch(sql.sqlite).unwrap();
            conn.pragma_update(None, "user_version", i as i64 + 1).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO keys (id, backend, uri, algorithm, role, created, activates, not_after)
                VALUES ('root', 'hsm', 'pkcs11:object=root', 'rsa-3072', 'issuing', 10, 10, 900);
             INSERT INTO keys (id, backend, uri, algorithm, role, created, activates, deactivates, retires, not_after)
                VALUES ('ts0', 'hsm', 'pkcs11:object=ts0', 'rsa-2048', 'token-signing', 5, 5, 11, 700, 700);
             INSERT INTO keys (id, backend, uri, algorithm, role, created, activates, not_after)
                VALUES ('ts', 'hsm', 'pkcs11:object=ts', 'ec-p256', 'token-signing', 11, 11, 800);
             INSERT INTO certificates (serial, profile, subject, issuer_key, not_before, not_after, sha256, der, issued,
                    requested_by, subject_key, revoked, revoke_reason, revoked_by)
                VALUES ('dd', 'mp-client', 'CN=mp1', 'root', 0, 500, 'h', x'04', 12, 'cli', NULL, 13, 'keyCompromise', 'cli');
             INSERT INTO bulk_tokens (guid, lifetime, created, expires, creator, key_id, blocked, changed, changed_by)
                VALUES ('0d2b7c6e-1f3a-4b5c-9d8e-7f6a5b4c3d2e', 60, 12, 3612, 'cli', 'ts', 1, 14, 'cli');
             INSERT INTO crls (issuer_key, number, this_update, next_update, der) VALUES ('root', 1, 13, 617, x'05');",
        )
        .unwrap();
        drop(conn);
        let store = SqliteEngine::open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let keys = store.keys().unwrap();
        assert_eq!(keys.len(), 3);
        let key = |id: &str| keys.iter().find(|k| k.id == id).unwrap();
        assert_eq!((key("ts0").deactivates, key("ts0").retires), (Some(11), Some(700)));
        assert_eq!(key("ts").algorithm, "ec-p256");
        assert_eq!(store.latest_crl("root").unwrap().unwrap().next_update, 617);
        let certs = store.certificates().unwrap();
        let mp = certs.iter().find(|c| c.serial == "dd").unwrap();
        assert_eq!((mp.revoked, mp.revoke_reason.as_deref()), (Some(13), Some("keyCompromise")));
        assert!(store.audit_witness().unwrap().is_none(), "no witness yet: the first checkpoint makes one");
        assert!(store.meta("low_s_since").unwrap().is_some());
        let bulk = store.bulk_tokens().unwrap();
        assert_eq!(bulk.len(), 1);
        assert!(bulk[0].blocked);
    }

    #[test]
    fn a_schema_2_database_migrates_with_its_keys_and_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(Store::path_in(dir.path())).unwrap();
        for (i, sql) in MIGRATIONS[..2].iter().enumerate() {
            conn.execute_batch(sql.sqlite).unwrap();
            conn.pragma_update(None, "user_version", i as i64 + 1).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO keys VALUES ('root', 'hsm', 'pkcs11:object=root', 'rsa-3072', 'issuing', 'active', 10, 10, 900, x'01');
             INSERT INTO keys VALUES ('ts', 'hsm', 'pkcs11:object=ts', 'rsa-2048', 'token-signing', 'active', 11, 11, 800, x'02');
             INSERT INTO keys VALUES ('ts0', 'hsm', 'pkcs11:object=ts0', 'rsa-2048', 'token-signing', 'verify-only', 5, 5, 700, x'03');
             INSERT INTO certificates VALUES ('aa', 'sms-issuing', 'CN=SMS Issuing', 'root', 0, 900, 'h', x'01', 10, 'cli');
             INSERT INTO certificates VALUES ('bb', 'token-signing', 'CN=SMS Token Signing', 'root', 0, 800, 'h', x'02', 11, 'cli');
             INSERT INTO certificates VALUES ('cc', 'token-signing', 'CN=SMS Token Signing', 'root', 0, 750, 'h', x'03', 5, 'cli');
             INSERT INTO bulk_tokens (guid, lifetime, created, expires, creator, key_id)
                VALUES ('0d2b7c6e-1f3a-4b5c-9d8e-7f6a5b4c3d2e', 60, 12, 3612, 'cli', 'ts');",
        )
        .unwrap();
        drop(conn);
        let store = SqliteEngine::open(dir.path()).unwrap();
        let keys = store.keys().unwrap();
        assert_eq!(keys.len(), 3);
        let key = |id: &str| keys.iter().find(|k| k.id == id).unwrap();
        assert_eq!((key("root").activates, key("root").not_after), (Some(10), 900));
        assert_eq!(key("ts").certificates, [vec![2u8]]);
        assert_eq!(key("ts").status_at(100), crate::keys::KeyStatus::Active);
        // A replaced key stays verify-only (never a second active key) until its retire-after.
        assert_eq!(key("ts0").status_at(100), crate::keys::KeyStatus::VerifyOnly);
        assert_eq!(key("ts0").retires, Some(700));
        assert_eq!(key("ts0").not_after, 750, "from its certificate");
        assert_eq!(crate::keys::active(&keys, KeyRole::TokenSigning, 100).unwrap().id, "ts");
        assert_eq!(store.bulk_tokens().unwrap().len(), 1);
        let certs = store.certificates().unwrap();
        assert_eq!(certs.iter().find(|c| c.serial == "bb").unwrap().subject_key.as_deref(), Some("ts"));
    }
}
