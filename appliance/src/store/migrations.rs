//! The state database's schema, as one ordered list of migrations. `PRAGMA user_version` counts
//! those applied; each runs in its own transaction, with foreign-key enforcement off while tables
//! are rebuilt and a `foreign_key_check` before it commits.

/// Schema migrations, applied in order.
pub const MIGRATIONS: &[&str] = &[
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
    // 3: the life of a key as a schedule (activates, deactivates, retires, revoked) instead of a
    // stored status; a key's certificates in `certificates` (several after an issuing-root
    // rotation) instead of one column; revocation of certificates; CRLs; keys left in a device
    // by a failed operation; and the change counter every running service watches.
    "CREATE TABLE keys_v3 (
        id            TEXT PRIMARY KEY,
        backend       TEXT NOT NULL,
        uri           TEXT NOT NULL UNIQUE,
        algorithm     TEXT NOT NULL,
        role          TEXT NOT NULL CHECK (role IN ('issuing', 'token-signing', 'tls')),
        created       INTEGER NOT NULL,
        activates     INTEGER,
        deactivates   INTEGER,
        retires       INTEGER,
        revoked       INTEGER,
        revoke_reason TEXT,
        not_after     INTEGER NOT NULL
    );
    INSERT INTO keys_v3 (id, backend, uri, algorithm, role, created, activates, deactivates, retires, not_after)
        SELECT id, backend, uri, algorithm, role, created,
               CASE WHEN status = 'pending' THEN NULL ELSE coalesce(activated, created) END,
               -- a replaced key stopped signing; when exactly schema 2 did not record: at the latest
               -- now, which keeps it verify-only
               CASE WHEN status IN ('verify-only', 'retired') THEN coalesce(activated, created) END,
               CASE WHEN status = 'retired' THEN coalesce(activated, created)
                    WHEN status = 'verify-only' THEN retire_after END,
               coalesce((SELECT c.not_after FROM certificates c WHERE c.der = keys.certificate), retire_after, 0)
        FROM keys;
    ALTER TABLE certificates ADD COLUMN subject_key TEXT REFERENCES keys(id);
    ALTER TABLE certificates ADD COLUMN revoked INTEGER;
    ALTER TABLE certificates ADD COLUMN revoke_reason TEXT;
    ALTER TABLE certificates ADD COLUMN revoked_by TEXT;
    UPDATE certificates SET subject_key = (SELECT k.id FROM keys k WHERE k.certificate = certificates.der);
    DROP TABLE keys;
    ALTER TABLE keys_v3 RENAME TO keys;
    CREATE INDEX certificates_subject_key ON certificates (subject_key);
    CREATE TABLE crls (
        issuer_key  TEXT NOT NULL REFERENCES keys(id),
        number      INTEGER NOT NULL,
        this_update INTEGER NOT NULL,
        next_update INTEGER NOT NULL,
        der         BLOB NOT NULL,
        PRIMARY KEY (issuer_key, number)
    );
    CREATE TABLE orphans (
        uri     TEXT PRIMARY KEY,
        backend TEXT NOT NULL,
        created INTEGER NOT NULL,
        cause   TEXT NOT NULL
    );
    CREATE TABLE generation (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        value INTEGER NOT NULL
    );
    INSERT INTO generation (id, value) VALUES (1, 1);
    CREATE TRIGGER keys_ins AFTER INSERT ON keys BEGIN UPDATE generation SET value = value + 1; END;
    CREATE TRIGGER keys_upd AFTER UPDATE ON keys BEGIN UPDATE generation SET value = value + 1; END;
    CREATE TRIGGER keys_del AFTER DELETE ON keys BEGIN UPDATE generation SET value = value + 1; END;
    CREATE TRIGGER certificates_ins AFTER INSERT ON certificates BEGIN UPDATE generation SET value = value + 1; END;
    CREATE TRIGGER certificates_upd AFTER UPDATE ON certificates BEGIN UPDATE generation SET value = value + 1; END;
    CREATE TRIGGER certificates_del AFTER DELETE ON certificates BEGIN UPDATE generation SET value = value + 1; END;
    CREATE TRIGGER bulk_ins AFTER INSERT ON bulk_tokens BEGIN UPDATE generation SET value = value + 1; END;
    CREATE TRIGGER bulk_upd AFTER UPDATE ON bulk_tokens BEGIN UPDATE generation SET value = value + 1; END;
    CREATE TRIGGER bulk_del AFTER DELETE ON bulk_tokens BEGIN UPDATE generation SET value = value + 1; END;
    CREATE TRIGGER crls_ins AFTER INSERT ON crls BEGIN UPDATE generation SET value = value + 1; END;
    CREATE TRIGGER meta_ins AFTER INSERT ON meta BEGIN UPDATE generation SET value = value + 1; END;
    CREATE TRIGGER meta_upd AFTER UPDATE ON meta BEGIN UPDATE generation SET value = value + 1; END;",
    // 4: the audit log's head as last witnessed (a signed checkpoint), outside the log: a log
    // found shorter than this, or without this record, is refused (SPEC §8). No trigger: a new
    // witness is not a change of the state the service follows. And since when ES256 signatures
    // are low-S: tokens issued before keep being accepted until they expire (no lock-out).
    "INSERT INTO meta (name, value) VALUES ('low_s_since', CAST(strftime('%s', 'now') AS TEXT));
    CREATE TABLE audit_witness (
        id        INTEGER PRIMARY KEY CHECK (id = 1),
        seq       INTEGER NOT NULL,
        hash      TEXT NOT NULL,
        time      INTEGER NOT NULL,
        key_id    TEXT NOT NULL,
        signature TEXT NOT NULL
    );",
];
