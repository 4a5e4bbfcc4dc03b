//! `sitesign audit verify|export`.

use std::path::Path;
use std::process::ExitCode;

use serde_json::json;
use sitesign::audit::Checkpoint;
use sitesign::witness;

use crate::Confirm;
use crate::context::Context;
use crate::output::{CliError, Output};

/// `sitesign audit verify [--anchor FILE]`: recomputes the hash chain, checks the signed
/// checkpoints, and holds the log against its witnesses — the head witnessed in the state store,
/// and every checkpoint in the anchor file; exit 1 at the first break.
pub fn verify(ctx: &Context, anchor: Option<&Path>, out: Output) -> Result<ExitCode, CliError> {
    let dir = &ctx.config.audit.dir;
    let records = sitesign::audit::read_all(dir)?;
    let checkpoints = sitesign::audit::read_checkpoints(dir)?;
    let path = sitesign::audit::AuditLog::path_in(dir);
    // Checkpoint signatures are checked with the token-signing certificates in the state store.
    let state = ctx.state()?;
    let witness = ctx.store()?.audit_witness()?;
    let anchor = anchor.or(ctx.config.audit.anchor_file.as_deref());
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
    let witness_seq = witness.as_ref().map(|w| w.seq);
    match result {
        Ok((n, c)) => {
            let head = records.last().map(|r| r.hash.clone()).unwrap_or_else(|| sitesign::audit::GENESIS.into());
            let last = checkpoints.last().map(|cp| cp.seq);
            out.line(format!(
                "audit chain intact: {n} records in {}; head {head}; {c} signed checkpoint(s){}; witnessed head {}{}",
                path.display(),
                last.map(|s| format!(", the last at seq {s}")).unwrap_or_default(),
                witness_seq.map_or_else(|| "none yet".to_owned(), |s| format!("at seq {s}")),
                anchor
                    .map(|a| format!("; {} anchored checkpoint(s) in {}", anchored.len(), a.display()))
                    .unwrap_or_default()
            ));
            out.json(&json!({"intact": true, "records": n, "head": head, "checkpoints": c, "last_checkpoint": last,
                "witnessed_seq": witness_seq, "anchored": anchored.len(), "path": path}));
            Ok(ExitCode::SUCCESS)
        }
        Err(brk) => {
            out.line(format!("AUDIT LOG NOT INTACT in {}: {brk}", path.display()));
            out.json(&json!({"intact": false, "records": records.len(), "break": brk, "witnessed_seq": witness_seq, "path": path}));
            Ok(ExitCode::FAILURE)
        }
    }
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

/// `sitesign audit export [--out FILE]`: every record as a JSON line.
pub fn export(ctx: &Context, dest: Option<&Path>) -> Result<ExitCode, CliError> {
    use std::io::Write as _;
    let records = sitesign::audit::read_all(&ctx.config.audit.dir)?;
    let mut text = String::new();
    for r in &records {
        text.push_str(&serde_json::to_string(r).map_err(|e| CliError::new("encoding", e.to_string()))?);
        text.push('\n');
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
