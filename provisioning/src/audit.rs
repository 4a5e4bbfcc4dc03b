//! `sitesign audit verify|export`.

use std::path::Path;
use std::process::ExitCode;

use serde_json::json;
use sitesign::audit::{AuditPlace, Checkpoint};
use sitesign::witness;

use crate::Confirm;
use crate::context::Context;
use crate::output::{CliError, Output};

/// What [`check`] found in an intact log.
#[derive(Debug)]
pub struct Intact {
    /// Records.
    pub records: usize,
    /// Signed checkpoints.
    pub checkpoints: usize,
    /// The head's hash.
    pub head: String,
    /// The last checkpoint's seq.
    pub last_checkpoint: Option<i64>,
    /// The head the state store witnessed.
    pub witnessed_seq: Option<i64>,
    /// Checkpoints in the anchor file.
    pub anchored: usize,
}

/// Recomputes the hash chain of this node's audit log (`config`'s), checks its signed
/// checkpoints (with the token-signing certificates of `config`'s state store) and holds it
/// against its witnesses — the head the state store witnessed and every checkpoint of `anchor`.
/// The inner error is the first break.
pub fn check(
    config: &sitesign::config::Config,
    anchor: Option<&Path>,
) -> Result<Result<Intact, sitesign::audit::ChainBreak>, CliError> {
    let store = sitesign::store::Store::connect(config)?;
    let state = sitesign::state::State::load(&store, config, sitesign::time::now_unix())?;
    check_chain(&AuditPlace::of(config), &store, &state, anchor)
}

/// [`check`] of the chain at `place` (one of several nodes' in a shared store).
fn check_chain(
    place: &AuditPlace,
    store: &sitesign::store::Store,
    state: &sitesign::state::State,
    anchor: Option<&Path>,
) -> Result<Result<Intact, sitesign::audit::ChainBreak>, CliError> {
    let records = sitesign::audit::read_all(place)?;
    let checkpoints = sitesign::audit::read_checkpoints(place)?;
    let witness = store.audit_witness_of(place.node())?;
    let anchored = match anchor {
        Some(a) => witness::anchored(&witness::read_anchor(a)?),
        None => Vec::new(),
    };
    let check_signature =
        |key_id: &str, statement: &[u8], signature: &[u8]| state.ring.verifies(key_id, statement, signature);
    // The witnesses' checkpoints are checked like the log's own: signed, and present in the log.
    let mut witnessed: Vec<Checkpoint> = witness.iter().cloned().collect();
    witnessed.extend(anchored.iter().cloned());
    let result = sitesign::audit::verify(&records)
        .and_then(|n| sitesign::audit::verify_checkpoints(&records, &checkpoints, check_signature).map(|c| (n, c)))
        .and_then(|found| {
            sitesign::audit::verify_checkpoints(&records, &witnessed, check_signature).map_err(|mut brk| {
                brk.problem = format!("against its witnesses (the state store, the anchor file): {}", brk.problem);
                brk
            })?;
            Ok(found)
        });
    Ok(result.map(|(n, c)| Intact {
        records: n,
        checkpoints: c,
        head: records.last().map(|r| r.hash.clone()).unwrap_or_else(|| sitesign::audit::GENESIS.into()),
        last_checkpoint: checkpoints.last().map(|cp| cp.seq),
        witnessed_seq: witness.as_ref().map(|w| w.seq),
        anchored: anchored.len(),
    }))
}

/// `sitesign audit verify [--anchor FILE]`: [`check`] on the configured log — in a shared store,
/// on every node's chain, each named — exit 1 if any breaks. The anchor file is this node's.
pub fn verify(ctx: &Context, anchor: Option<&Path>, out: Output) -> Result<ExitCode, CliError> {
    let anchor = anchor.or(ctx.config.audit.anchor_file.as_deref());
    let here = AuditPlace::of(&ctx.config);
    let store = ctx.store()?;
    let state = sitesign::state::State::load(&store, &ctx.config, sitesign::time::now_unix())?;
    let mut reports = Vec::new();
    let mut intact = true;
    for place in here.chains()? {
        let own = place.node() == here.node();
        let path = place.name();
        let who = place.node().map(|n| format!("node {n}: ")).unwrap_or_default();
        let report = match check_chain(&place, &store, &state, anchor.filter(|_| own))? {
            Ok(i) => {
                out.line(format!(
                    "{who}audit chain intact: {} records in {}; head {}; {} signed checkpoint(s){}; witnessed head {}{}",
                    i.records,
                    path.display(),
                    i.head,
                    i.checkpoints,
                    i.last_checkpoint.map(|s| format!(", the last at seq {s}")).unwrap_or_default(),
                    i.witnessed_seq.map_or_else(|| "none yet".to_owned(), |s| format!("at seq {s}")),
                    anchor
                        .filter(|_| own)
                        .map(|a| format!("; {} anchored checkpoint(s) in {}", i.anchored, a.display()))
                        .unwrap_or_default()
                ));
                json!({"node": place.node(), "intact": true, "records": i.records, "head": i.head,
                    "checkpoints": i.checkpoints, "last_checkpoint": i.last_checkpoint,
                    "witnessed_seq": i.witnessed_seq, "anchored": i.anchored, "path": path})
            }
            Err(brk) => {
                intact = false;
                let records = sitesign::audit::read_all(&place)?.len();
                let witness_seq = store.audit_witness_of(place.node())?.map(|w| w.seq);
                out.line(format!("{who}AUDIT LOG NOT INTACT in {}: {brk}", path.display()));
                json!({"node": place.node(), "intact": false, "records": records, "break": brk,
                    "witnessed_seq": witness_seq, "path": path})
            }
        };
        reports.push(report);
    }
    match (&here, reports.as_slice()) {
        // One appliance: its one chain's report, as it always was.
        (AuditPlace::Local { .. }, [one]) => out.json(one),
        _ => out.json(&json!({"intact": intact, "chains": reports})),
    }
    Ok(if intact { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `sitesign audit acknowledge-loss --reason TEXT`: the administrator's explicit, recorded
/// taking-up of a log that was lost.
pub fn acknowledge_loss(ctx: &Context, reason: &str, confirm: Confirm, out: Output) -> Result<ExitCode, CliError> {
    if crate::appliance::service_running(ctx) {
        return Err(CliError::new("service_running", "stop sitesignd first: it refuses to run on this log anyway"));
    }
    if reason.trim().is_empty() {
        return Err(CliError::new("invalid_reason", "give the reason the log was lost (--reason)"));
    }
    let mut store = ctx.store()?;
    match witness::check(&ctx.config, &store) {
        Ok(()) => {
            return Err(CliError::new(
                "audit_intact",
                "the audit log reaches its witnessed head: there is no loss to acknowledge",
            ));
        }
        Err(e @ witness::WitnessError::Truncated { .. }) => out.line(format!("{e}")),
        Err(e) => return Err(e.into()),
    }
    out.line("this records the loss in the audit log and makes what is left of it the witnessed head");
    if confirm.dry_run {
        out.line("dry run: nothing was changed");
        out.json(&json!({"done": false}));
        return Ok(ExitCode::SUCCESS);
    }
    out.confirm("Acknowledge the loss?", confirm.yes)?;
    let state = ctx.state()?;
    let record = state
        .active(sitesign::keys::KeyRole::TokenSigning)
        .ok_or_else(|| CliError::new("no_active_key", "no token-signing key is active to sign the checkpoint"))?;
    let key = ctx.backends()?.key(record)?;
    let (id, scheme) = (record.id.clone(), key.algorithm().default_scheme());
    let sign: sitesign::audit::CheckpointSigner =
        Box::new(move |statement| key.sign(scheme, statement).map(|s| (id, s)).map_err(|e| e.to_string()));
    let cp = witness::acknowledge_loss(&ctx.config, &mut store, &crate::context::actor(), reason, sign)?;
    out.line(format!("loss recorded; the witnessed head is now record {} ({})", cp.seq, cp.hash));
    out.json(&json!({"done": true, "witnessed_seq": cp.seq, "head": cp.hash}));
    Ok(ExitCode::SUCCESS)
}

/// `sitesign audit export [--out FILE]`: every record as a JSON line — in a shared store, every
/// node's, each with its `node`.
pub fn export(ctx: &Context, dest: Option<&Path>) -> Result<ExitCode, CliError> {
    use std::io::Write as _;
    let mut text = String::new();
    for place in AuditPlace::of(&ctx.config).chains()? {
        for r in &sitesign::audit::read_all(&place)? {
            let mut line = serde_json::to_value(r).map_err(|e| CliError::new("encoding", e.to_string()))?;
            if let (Some(node), Some(fields)) = (place.node(), line.as_object_mut()) {
                fields.insert("node".into(), node.into());
            }
            text.push_str(&line.to_string());
            text.push('\n');
        }
    }
    match dest {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| CliError::new("io", format!("cannot write {}: {e}", path.display())))?,
        None => {
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
        }
    }
    Ok(ExitCode::SUCCESS)
}
