//! Each node's audit chain in the shared PostgreSQL store: `audit (node_id, seq, …)`, its
//! checkpoints in `audit_checkpoints`, written by that node's group-commit writer.
//!
//! A commit takes an advisory lock on its node's chain and reads the head inside the transaction
//! — the service and the CLI of one node may both append, one after the other — and inserts the
//! whole group in one statement (`unnest` of arrays: one round trip, however many records).

use ::postgres::Client;

use super::{AuditEvent, AuditRecord, Checkpoint, GENESIS, Sink, chain};
use crate::config::PgConfig;
use crate::store::postgres::{connect, error_text};

/// The advisory-lock class of audit chains (the other key is the node id's hash).
const CHAIN_LOCK: i32 = 0x5173_5167;

/// A node's chain as its writer sees it.
pub(super) struct PgSink {
    db: PgConfig,
    node: String,
    client: Option<Client>,
}

impl PgSink {
    /// Connects for node `node`.
    pub(super) fn open(db: &PgConfig, node: &str) -> Result<PgSink, String> {
        let client = connect(db).map_err(|e| e.to_string())?;
        Ok(PgSink { db: db.clone(), node: node.to_owned(), client: Some(client) })
    }

    /// Runs `f` on the connection, connecting again if it was lost.
    fn run<T>(&mut self, f: impl FnOnce(&mut Client, &str) -> Result<T, ::postgres::Error>) -> Result<T, String> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.client = Some(connect(&self.db).map_err(|e| e.to_string())?);
        }
        let Some(client) = self.client.as_mut() else { return Err("no connection".into()) };
        let result = f(client, &self.node);
        if result.is_err() && client.is_closed() {
            self.client = None;
        }
        result.map_err(|e| error_text(&e))
    }
}

fn head_in<C: ::postgres::GenericClient>(c: &mut C, node: &str) -> Result<(i64, String), ::postgres::Error> {
    Ok(c.query_opt("SELECT seq, hash FROM audit WHERE node_id = $1 ORDER BY seq DESC LIMIT 1", &[&node])?
        .map_or_else(|| (0, GENESIS.to_owned()), |r| (r.get(0), r.get(1))))
}

impl Sink for PgSink {
    fn commit(&mut self, events: &[&AuditEvent]) -> Result<i64, String> {
        self.run(|c, node| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&CHAIN_LOCK, &node])?;
            let (seq, prev) = head_in(&mut tx, node)?;
            let records = chain(events, seq, &prev);
            let col = |f: fn(&AuditRecord) -> &str| records.iter().map(f).collect::<Vec<&str>>();
            let seqs: Vec<i64> = records.iter().map(|r| r.seq).collect();
            let times: Vec<i64> = records.iter().map(|r| r.event.time).collect();
            let details: Vec<Option<&str>> = records.iter().map(|r| r.event.detail.as_deref()).collect();
            tx.execute(
                "INSERT INTO audit (node_id, seq, time, caller, kind, subject, key_id, sha256, prev, hash, detail)
                 SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[],
                                          $8::text[], $9::text[], $10::text[], $11::text[])",
                &[
                    &node,
                    &seqs,
                    &times,
                    &col(|r| &r.event.caller),
                    &col(|r| &r.event.kind),
                    &col(|r| &r.event.subject),
                    &col(|r| &r.event.key_id),
                    &col(|r| &r.event.sha256),
                    &col(|r| &r.prev),
                    &col(|r| &r.hash),
                    &details,
                ],
            )?;
            tx.commit()?;
            Ok(seq + 1)
        })
    }

    fn probe(&mut self) -> Result<(), String> {
        self.run(|c, node| {
            c.execute(
                "INSERT INTO audit_probe (node_id, data) VALUES ($1, '\\x00') ON CONFLICT (node_id) DO UPDATE SET data = excluded.data",
                &[&node],
            )?;
            c.execute("DELETE FROM audit_probe WHERE node_id = $1", &[&node]).map(|_| ())
        })
    }

    fn head(&mut self) -> Result<(i64, String), String> {
        self.run(head_in)
    }

    fn last_checkpoint(&mut self) -> Result<Option<i64>, String> {
        self.run(|c, node| {
            c.query_one("SELECT max(seq) FROM audit_checkpoints WHERE node_id = $1", &[&node]).map(|r| r.get(0))
        })
    }

    fn add_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), String> {
        self.run(|c, node| {
            c.execute(
                "INSERT INTO audit_checkpoints (node_id, seq, hash, time, key_id, signature) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&node, &cp.seq, &cp.hash, &cp.time, &cp.key_id, &cp.signature],
            )
            .map(|_| ())
        })
    }
}

/// Runs `f` on a connection of its own (the CLI's and start-up's reads).
fn read<T>(db: &PgConfig, f: impl FnOnce(&mut Client) -> Result<T, ::postgres::Error>) -> Result<T, String> {
    let mut client = connect(db).map_err(|e| e.to_string())?;
    f(&mut client).map_err(|e| error_text(&e))
}

fn record_of(r: &::postgres::Row) -> AuditRecord {
    AuditRecord {
        seq: r.get(0),
        event: AuditEvent {
            time: r.get(1),
            caller: r.get(2),
            kind: r.get(3),
            subject: r.get(4),
            key_id: r.get(5),
            sha256: r.get(6),
            detail: r.get(9),
        },
        prev: r.get(7),
        hash: r.get(8),
    }
}

const RECORD_COLUMNS: &str = "seq, time, caller, kind, subject, key_id, sha256, prev, hash, detail";

/// Every record of `node`'s chain, in `seq` order.
pub(super) fn read_all(db: &PgConfig, node: &str) -> Result<Vec<AuditRecord>, String> {
    read(db, |c| {
        let rows = c.query(&format!("SELECT {RECORD_COLUMNS} FROM audit WHERE node_id = $1 ORDER BY seq"), &[&node])?;
        Ok(rows.iter().map(record_of).collect())
    })
}

/// Every checkpoint of `node`'s chain, in `seq` order.
pub(super) fn read_checkpoints(db: &PgConfig, node: &str) -> Result<Vec<Checkpoint>, String> {
    read(db, |c| {
        let rows = c.query(
            "SELECT seq, hash, time, key_id, signature FROM audit_checkpoints WHERE node_id = $1 ORDER BY seq",
            &[&node],
        )?;
        Ok(rows
            .iter()
            .map(|r| Checkpoint {
                seq: r.get(0),
                hash: r.get(1),
                time: r.get(2),
                key_id: r.get(3),
                signature: r.get(4),
            })
            .collect())
    })
}

/// See [`super::records_around`].
pub(super) fn records_around(db: &PgConfig, node: &str, seq: i64) -> Result<(i64, i64, Vec<AuditRecord>), String> {
    read(db, |c| {
        let r = c.query_one(
            "SELECT count(*)::bigint, coalesce(max(seq), 0)::bigint FROM audit WHERE node_id = $1",
            &[&node],
        )?;
        let rows = c.query(
            &format!("SELECT {RECORD_COLUMNS} FROM audit WHERE node_id = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq"),
            &[&node, &(seq - 1), &seq],
        )?;
        Ok((r.get(0), r.get(1), rows.iter().map(record_of).collect()))
    })
}

/// Every node with a chain, a witnessed head or a registration, by id.
pub(super) fn nodes(db: &PgConfig) -> Result<Vec<String>, String> {
    read(db, |c| {
        let rows = c.query(
            "SELECT DISTINCT node_id FROM audit UNION SELECT node_id FROM audit_checkpoints
             UNION SELECT node_id FROM audit_witness UNION SELECT id FROM nodes ORDER BY 1",
            &[],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    })
}

/// Whether any node's chain records a token with this SHA-256.
pub(super) fn issued(client: &mut Client, sha256_hex: &str) -> Result<bool, String> {
    client
        .query_one("SELECT EXISTS (SELECT 1 FROM audit WHERE sha256 = $1)", &[&sha256_hex])
        .map(|r| r.get(0))
        .map_err(|e| error_text(&e))
}
