//! `sitesign audit verify|export`.

use std::path::Path;
use std::process::ExitCode;

use serde_json::json;

use crate::context::Context;
use crate::output::{CliError, Output};

/// `sitesign audit verify`: recomputes the hash chain and checks the signed checkpoints; exit 1
/// at the first break.
pub fn verify(ctx: &Context, out: Output) -> Result<ExitCode, CliError> {
    let dir = &ctx.config.audit.dir;
    let records = sitesign::audit::read_all(dir)?;
    let checkpoints = sitesign::audit::read_checkpoints(dir)?;
    let path = sitesign::audit::AuditLog::path_in(dir);
    // Checkpoint signatures are checked with the token-signing certificates in the state store.
    let state = ctx.state()?;
    let check_signature =
        |key_id: &str, statement: &[u8], signature: &[u8]| state.ring.verifies(key_id, statement, signature);
    let result = sitesign::audit::verify(&records)
        .and_then(|n| sitesign::audit::verify_checkpoints(&records, &checkpoints, check_signature).map(|c| (n, c)));
    match result {
        Ok((n, c)) => {
            let head = records.last().map(|r| r.hash.clone()).unwrap_or_else(|| sitesign::audit::GENESIS.into());
            let last = checkpoints.last().map(|cp| cp.seq);
            out.line(format!(
                "audit chain intact: {n} records in {}; head {head}; {c} signed checkpoint(s){}",
                path.display(),
                last.map(|s| format!(", the last at seq {s}")).unwrap_or_default()
            ));
            out.json(&json!({"intact": true, "records": n, "head": head, "checkpoints": c, "last_checkpoint": last, "path": path}));
            Ok(ExitCode::SUCCESS)
        }
        Err(brk) => {
            out.line(format!("AUDIT CHAIN BROKEN in {}: {brk}", path.display()));
            out.json(&json!({"intact": false, "records": records.len(), "break": brk, "path": path}));
            Ok(ExitCode::FAILURE)
        }
    }
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
