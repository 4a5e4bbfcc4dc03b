//! The audit log's head, witnessed outside the log (SPEC §8).
//!
//! The hash chain shows an edit, a deletion or a reordering inside the log — not records cut
//! from its end, nor a log emptied, deleted or replaced by a shorter one. So every signed
//! checkpoint of the head is also written where the log's own database cannot change it:
//! - the state store (`audit_witness`): the service refuses to start, and the CLI to append, on
//!   a log that does not reach it — the record at the witnessed `seq` must be there, with the
//!   witnessed hash;
//! - the service's log (the journal): one line per checkpoint;
//! - if `[audit] anchor_file` is set, a file of one JSON line per checkpoint — best on another
//!   filesystem, an append-only mount or a share another machine owns — that `sitesign audit
//!   verify --anchor FILE` holds the whole log against.
//!
//! A log that really was lost (a dead disk without a backup) is taken up again only by an
//! administrator's explicit, recorded `sitesign audit acknowledge-loss`: never silently.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::audit::{AuditError, AuditEvent, AuditLog, AuditPlace, AuditStats, Checkpoint, CheckpointSigner};
use crate::store::{Store, StoreError};

/// Why the log's head cannot be witnessed, or the log is not the one witnessed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WitnessError {
    /// The log failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The anchor file could not be read or written.
    #[error("audit anchor file {path}: {reason}")]
    Anchor {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The log does not reach its witnessed head: records were cut, or it was emptied or
    /// replaced.
    #[error(
        "the audit log {log} does not reach its witnessed head ({witness}: record {seq} with hash {hash}); it has {found}. Records were deleted from its end, or it was emptied or replaced: restore it from a backup. If it is lost for good, `sitesign audit acknowledge-loss --reason TEXT` records the loss and starts from what is there"
    )]
    Truncated {
        /// The log's database file.
        log: PathBuf,
        /// Which witness (`the state store`, `the anchor file …`).
        witness: String,
        /// The witnessed record.
        seq: i64,
        /// Its witnessed hash.
        hash: String,
        /// What the log holds instead.
        found: String,
    },
}

impl WitnessError {
    /// A stable code.
    pub fn code(&self) -> &'static str {
        match self {
            WitnessError::Audit(_) => "audit_unavailable",
            WitnessError::Store(StoreError::Conflict) => "state_changed",
            WitnessError::Store(_) => "state_store",
            WitnessError::Anchor { .. } => "audit_anchor",
            WitnessError::Truncated { .. } => "audit_truncated",
        }
    }
}

/// One line of an anchor file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "lowercase")]
pub enum AnchorEntry {
    /// A signed checkpoint of the log's head.
    Checkpoint(Checkpoint),
    /// An acknowledged loss: the checkpoints before it no longer apply.
    Loss {
        /// When it was acknowledged, Unix time.
        time: i64,
        /// The head witnessed before the loss.
        previous_seq: i64,
        /// Its hash.
        previous_hash: String,
        /// The administrator's reason.
        reason: String,
    },
}

/// Appends `entry` to the anchor file (created 0600 if absent) and makes it durable.
pub fn append_anchor(path: &Path, entry: &AnchorEntry) -> Result<(), WitnessError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let fail = |e: &dyn std::fmt::Display| WitnessError::Anchor { path: path.to_owned(), reason: e.to_string() };
    let mut line = serde_json::to_vec(entry).map_err(|e| fail(&e))?;
    line.push(b'\n');
    let mut file =
        std::fs::OpenOptions::new().append(true).create(true).mode(0o600).open(path).map_err(|e| fail(&e))?;
    file.write_all(&line).map_err(|e| fail(&e))?;
    file.sync_all().map_err(|e| fail(&e))
}

/// The anchor file's entries, in order. A file that does not exist has none.
pub fn read_anchor(path: &Path) -> Result<Vec<AnchorEntry>, WitnessError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(WitnessError::Anchor { path: path.to_owned(), reason: e.to_string() }),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| WitnessError::Anchor { path: path.to_owned(), reason: format!("line {}: {e}", i + 1) })
        })
        .collect()
}

/// The anchored checkpoints that apply: those after the last acknowledged loss.
pub fn anchored(entries: &[AnchorEntry]) -> Vec<Checkpoint> {
    let start = entries.iter().rposition(|e| matches!(e, AnchorEntry::Loss { .. })).map_or(0, |i| i + 1);
    entries[start..]
        .iter()
        .filter_map(|e| match e {
            AnchorEntry::Checkpoint(cp) => Some(cp.clone()),
            AnchorEntry::Loss { .. } => None,
        })
        .collect()
}

/// Checks that the chain at `place` reaches `cp`, as witnessed by `witness`: it has no gap (as many
/// records as its highest `seq`), at least `cp.seq` records, and record `cp.seq` is the one
/// witnessed — its hash recomputed from its content is `cp.hash`, and it chains to the record
/// before it. A few indexed reads: cheap enough for every start (`sitesign audit verify` checks
/// the whole chain).
pub fn check_reaches(place: &AuditPlace, cp: &Checkpoint, witness: &str) -> Result<(), WitnessError> {
    let (count, max, around) = crate::audit::records_around(place, cp.seq)?;
    let at = around.iter().find(|r| r.seq == cp.seq);
    let before = around.iter().find(|r| r.seq == cp.seq - 1);
    let found = if count != max {
        format!("{count} records numbered up to {max}: records were deleted from its middle")
    } else if count < cp.seq {
        format!("{count} records")
    } else {
        match at {
            None => format!("no record {} there", cp.seq),
            Some(r) if r.hash != cp.hash => format!("another record there (hash {}): it was rewritten", r.hash),
            Some(r) if crate::audit::chain_hash(r.seq, &r.event, &r.prev) != r.hash => {
                "a record there whose content does not match its hash: it was edited".to_owned()
            }
            Some(r) if cp.seq > 1 && before.is_none_or(|b| b.hash != r.prev) => {
                "a record there that does not chain to the one before it".to_owned()
            }
            Some(_) => return Ok(()),
        }
    };
    Err(WitnessError::Truncated {
        log: place.name(),
        witness: witness.to_owned(),
        seq: cp.seq,
        hash: cp.hash.clone(),
        found,
    })
}

/// Checks the log in `config`'s audit folder against every witness: the state store's, and the
/// anchor file's last checkpoint.
pub fn check(config: &crate::config::Config, store: &Store) -> Result<(), WitnessError> {
    let place = &AuditPlace::of(config);
    if let Some(cp) = store.audit_witness()? {
        check_reaches(place, &cp, "the state store")?;
    }
    // The anchor's furthest checkpoint: lines may land out of order when two checkpoints race.
    if let Some(path) = &config.audit.anchor_file
        && let Some(cp) = anchored(&read_anchor(path)?).into_iter().max_by_key(|cp| cp.seq)
    {
        check_reaches(place, &cp, &format!("the anchor file {}", path.display()))?;
    }
    Ok(())
}

/// Opens the audit log for appending — after checking it against its witnesses: nothing is
/// appended to a log that was cut short.
pub fn open_log(
    config: &crate::config::Config,
    store: &Store,
    stats: crate::audit::AuditStats,
) -> Result<AuditLog, WitnessError> {
    check(config, store)?;
    Ok(AuditLog::open_place(&AuditPlace::of(config), stats)?)
}

/// Signs a checkpoint of the log's head with `sign` (if records were added since the last) and
/// witnesses it ([`witness`]).
pub fn checkpoint(
    audit: &AuditLog,
    store: &mut Store,
    anchor: Option<&Path>,
    sign: CheckpointSigner,
) -> Result<Option<Checkpoint>, WitnessError> {
    let Some(cp) = audit.checkpoint(sign)? else { return Ok(None) };
    witness(store, anchor, &cp)?;
    Ok(Some(cp))
}

/// Witnesses a signed checkpoint outside the log: the state store, the journal, the anchor file.
pub fn witness(store: &mut Store, anchor: Option<&Path>, cp: &Checkpoint) -> Result<(), WitnessError> {
    if !store.witness_audit_head(cp)? {
        return Ok(()); // a later checkpoint was witnessed meanwhile
    }
    tracing::info!(seq = cp.seq, hash = %cp.hash, key = %cp.key_id, signature = %cp.signature, "audit head witnessed");
    if let Some(path) = anchor {
        append_anchor(path, &AnchorEntry::Checkpoint(cp.clone()))?;
    }
    Ok(())
}

/// Takes up a log that does not reach its witnessed head — lost for good — by recording the loss
/// in it (`audit-loss`, with the old head and `reason`) and making what is there the witnessed
/// head, in the store and the anchor file. The administrator's explicit act; never automatic.
pub fn acknowledge_loss(
    config: &crate::config::Config,
    store: &mut Store,
    actor: &str,
    reason: &str,
    sign: CheckpointSigner,
) -> Result<Checkpoint, WitnessError> {
    let place = AuditPlace::of(config);
    let previous = store.audit_witness()?;
    let (prev_seq, prev_hash) = previous.as_ref().map_or((0, String::new()), |cp| (cp.seq, cp.hash.clone()));
    let audit = AuditLog::open_place(&place, AuditStats::default())?;
    let now = crate::time::now_unix();
    let detail = format!("the log did not reach its witnessed head (record {prev_seq}, hash {prev_hash}): {reason}");
    audit.append(vec![AuditEvent::transition(now, actor, "audit-loss", "audit log", "", detail)])?;
    let cp = audit.checkpoint(sign)?.ok_or_else(|| WitnessError::Anchor {
        path: place.name(),
        reason: "no checkpoint could be made after recording the loss".into(),
    })?;
    store.replace_audit_witness(&cp)?;
    if let Some(path) = &config.audit.anchor_file {
        append_anchor(
            path,
            &AnchorEntry::Loss {
                time: now,
                previous_seq: prev_seq,
                previous_hash: prev_hash,
                reason: reason.to_owned(),
            },
        )?;
        append_anchor(path, &AnchorEntry::Checkpoint(cp.clone()))?;
    }
    tracing::warn!(seq = cp.seq, previous_seq = prev_seq, %reason, "audit log loss acknowledged");
    Ok(cp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(seq: i64) -> Checkpoint {
        Checkpoint { seq, hash: format!("h{seq}"), time: seq, key_id: "k".into(), signature: "s".into() }
    }

    #[test]
    fn anchored_checkpoints_start_after_the_last_loss() {
        let loss = AnchorEntry::Loss { time: 0, previous_seq: 2, previous_hash: "h2".into(), reason: "disk".into() };
        let entries =
            vec![AnchorEntry::Checkpoint(cp(1)), AnchorEntry::Checkpoint(cp(2)), loss, AnchorEntry::Checkpoint(cp(1))];
        assert_eq!(anchored(&entries), vec![cp(1)]);
        assert_eq!(anchored(&entries[..2]), vec![cp(1), cp(2)]);
    }

    #[test]
    fn anchor_lines_round_trip_and_a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("anchor");
        append_anchor(&path, &AnchorEntry::Checkpoint(cp(3))).unwrap();
        append_anchor(&path, &AnchorEntry::Checkpoint(cp(4))).unwrap();
        assert_eq!(anchored(&read_anchor(&path).unwrap()), vec![cp(3), cp(4)]);
        std::fs::write(&path, "{\"entry\":\"checkpoint\"}\n").unwrap();
        assert!(read_anchor(&path).unwrap_err().to_string().contains("line 1"));
        assert!(read_anchor(&dir.path().join("absent")).unwrap().is_empty());
    }
}
