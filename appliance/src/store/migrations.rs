//! The state database's schema, as one ordered list of migrations, each in the dialect of both
//! engines: the version number means the same schema in SQLite and PostgreSQL.
//!
//! - SQLite: `PRAGMA user_version` counts those applied; each runs in its own transaction, with
//!   foreign-key enforcement off while tables are rebuilt and a `foreign_key_check` before it
//!   commits.
//! - PostgreSQL: `schema_version` counts them; all pending ones run in one transaction under an
//!   advisory lock (nodes starting together migrate once). Shared stores began at version 5: a new
//!   PostgreSQL database gets 1–4 as no-ops and 5 creates the whole schema of that version (no
//!   PostgreSQL store ever had an older one), plus what only a shared store has — the node
//!   registry's peers and every node's audit chain.

/// One schema step.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// In SQLite.
    pub sqlite: &'static str,
    /// In PostgreSQL (empty: nothing to do there).
    pub postgres: &'static str,
}

const fn sqlite_only(sqlite: &'static str) -> Migration {
    Migration { sqlite, postgres: "" }
}

/// Schema migrations, applied in order.
pub const MIGRATIONS: &[Migration] = &[
    sqlite_only(
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
    ),
    // 2: the bulk registration token registry (never the token itself).
    sqlite_only(
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
    ),
    // 3: the life of a key as a schedule (activates, deactivates, retires, revoked) instead of a
    // stored status; a key's certificates in `certificates` (several after an issuing-root
    // rotation) instead of one column; revocation of certificates; CRLs; keys left in a device
    // by a failed operation; and the change counter every running service watches.
    sqlite_only(
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
    ),
    // 4: the audit log's head as last witnessed (a signed checkpoint), outside the log: a log
    // found shorter than this, or without this record, is refused (SPEC §8). No trigger: a new
    // witness is not a change of the state the service follows. And since when ES256 signatures
    // are low-S: tokens issued before keep being accepted until they expire (no lock-out).
    sqlite_only(
        "INSERT INTO meta (name, value) VALUES ('low_s_since', CAST(strftime('%s', 'now') AS TEXT));
    CREATE TABLE audit_witness (
        id        INTEGER PRIMARY KEY CHECK (id = 1),
        seq       INTEGER NOT NULL,
        hash      TEXT NOT NULL,
        time      INTEGER NOT NULL,
        key_id    TEXT NOT NULL,
        signature TEXT NOT NULL
    );",
    ),
    // 5: the node registry (id, address, version, last seen; not a change the service follows).
    // In PostgreSQL, the whole schema of version 5 — the same tables in its types, the change
    // counter moved by row triggers (as in SQLite: a statement that changes no row moves
    // nothing) that also `NOTIFY sitesign_state` (delivered at commit), the witness per node —
    // and every node's audit chain and checkpoints.
    Migration {
        sqlite: "CREATE TABLE nodes (
            id        TEXT PRIMARY KEY,
            address   TEXT NOT NULL,
            version   TEXT NOT NULL,
            started   INTEGER NOT NULL,
            last_seen INTEGER NOT NULL
        );",
        postgres: POSTGRES_5,
    },
];

const POSTGRES_5: &str = "
    CREATE TABLE meta (
        name  TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE keys (
        id            TEXT PRIMARY KEY,
        backend       TEXT NOT NULL,
        uri           TEXT NOT NULL UNIQUE,
        algorithm     TEXT NOT NULL,
        role          TEXT NOT NULL CHECK (role IN ('issuing', 'token-signing', 'tls')),
        created       BIGINT NOT NULL,
        activates     BIGINT,
        deactivates   BIGINT,
        retires       BIGINT,
        revoked       BIGINT,
        revoke_reason TEXT,
        not_after     BIGINT NOT NULL
    );
    CREATE TABLE certificates (
        serial        TEXT PRIMARY KEY,
        profile       TEXT NOT NULL,
        subject       TEXT NOT NULL,
        issuer_key    TEXT NOT NULL REFERENCES keys(id),
        not_before    BIGINT NOT NULL,
        not_after     BIGINT NOT NULL,
        sha256        TEXT NOT NULL,
        der           BYTEA NOT NULL,
        issued        BIGINT NOT NULL,
        requested_by  TEXT NOT NULL,
        subject_key   TEXT REFERENCES keys(id),
        revoked       BIGINT,
        revoke_reason TEXT,
        revoked_by    TEXT,
        -- insertion order (SQLite's rowid): certificates issued in the same second stay in order
        ord           BIGINT GENERATED ALWAYS AS IDENTITY
    );
    CREATE INDEX certificates_subject_key ON certificates (subject_key);
    CREATE TABLE bulk_tokens (
        guid       TEXT PRIMARY KEY CHECK (length(guid) = 36 AND guid = lower(guid)),
        lifetime   BIGINT NOT NULL CHECK (lifetime BETWEEN 1 AND 10080),
        created    BIGINT NOT NULL,
        expires    BIGINT NOT NULL,
        creator    TEXT NOT NULL,
        key_id     TEXT NOT NULL REFERENCES keys(id),
        blocked    BOOLEAN NOT NULL DEFAULT false,
        changed    BIGINT,
        changed_by TEXT
    );
    CREATE TABLE crls (
        issuer_key  TEXT NOT NULL REFERENCES keys(id),
        number      BIGINT NOT NULL,
        this_update BIGINT NOT NULL,
        next_update BIGINT NOT NULL,
        der         BYTEA NOT NULL,
        PRIMARY KEY (issuer_key, number),
        -- one increasing cRLNumber for every root (they share a name): two nodes signing at
        -- once cannot both store the same number
        UNIQUE (number)
    );
    CREATE TABLE orphans (
        uri     TEXT PRIMARY KEY,
        backend TEXT NOT NULL,
        created BIGINT NOT NULL,
        cause   TEXT NOT NULL
    );
    CREATE TABLE generation (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        value BIGINT NOT NULL
    );
    INSERT INTO generation (id, value) VALUES (1, 1);
    CREATE FUNCTION sitesign_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        g BIGINT;
    BEGIN
        UPDATE generation SET value = value + 1 WHERE id = 1 RETURNING value INTO g;
        PERFORM pg_notify('sitesign_state', g::text);
        RETURN NULL;
    END
    $$;
    -- Row triggers (a statement that changes no row moves nothing), and TRUNCATE.
    DO $$
    DECLARE
        t TEXT;
    BEGIN
        FOREACH t IN ARRAY ARRAY['keys', 'certificates', 'bulk_tokens', 'crls', 'meta'] LOOP
            EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %I
                            FOR EACH ROW EXECUTE FUNCTION sitesign_changed()', t || '_changed', t);
            EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %I
                            FOR EACH STATEMENT EXECUTE FUNCTION sitesign_changed()', t || '_truncated', t);
        END LOOP;
    END
    $$;
    INSERT INTO meta (name, value) VALUES ('low_s_since', extract(epoch FROM now())::bigint::text);
    CREATE TABLE audit_witness (
        node_id   TEXT PRIMARY KEY,
        seq       BIGINT NOT NULL,
        hash      TEXT NOT NULL,
        time      BIGINT NOT NULL,
        key_id    TEXT NOT NULL,
        signature TEXT NOT NULL
    );
    CREATE TABLE nodes (
        id        TEXT PRIMARY KEY,
        address   TEXT NOT NULL,
        version   TEXT NOT NULL,
        started   BIGINT NOT NULL,
        last_seen BIGINT NOT NULL
    );
    CREATE TABLE audit (
        node_id TEXT NOT NULL,
        seq     BIGINT NOT NULL CHECK (seq > 0),
        time    BIGINT NOT NULL,
        caller  TEXT NOT NULL,
        kind    TEXT NOT NULL,
        subject TEXT NOT NULL,
        key_id  TEXT NOT NULL,
        sha256  TEXT NOT NULL,
        prev    TEXT NOT NULL,
        hash    TEXT NOT NULL,
        detail  TEXT,
        PRIMARY KEY (node_id, seq)
    );
    CREATE INDEX audit_sha256 ON audit (sha256);
    CREATE TABLE audit_checkpoints (
        node_id   TEXT NOT NULL,
        seq       BIGINT NOT NULL,
        hash      TEXT NOT NULL,
        time      BIGINT NOT NULL,
        key_id    TEXT NOT NULL,
        signature TEXT NOT NULL,
        PRIMARY KEY (node_id, seq)
    );
    CREATE TABLE audit_probe (
        node_id TEXT PRIMARY KEY,
        data    BYTEA NOT NULL
    );";
