//! The configured commands: `init`, `status`, `keys list`, `cert issue`, `cert export`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;
use sitesign::admin::AdminRequest;
use sitesign::ops::{self, Backends};
use sitesign::pki::{self, ProfileKind};
use sitesign::store::{KeyRole, KeyStatus, Store};

use crate::context::{Context, actor};
use crate::{CliError, Output};

fn date(unix: i64) -> String {
    ops::utc_rfc3339(unix)
}

/// `sitesign init [--force]`.
pub fn init(ctx: &Context, force: bool, out: Output) -> Result<ExitCode, CliError> {
    if let Some(code) = ctx.rerun {
        return Ok(code);
    }
    let pki_config = ctx.pki()?;
    let db = Store::path_in(&ctx.config.state_dir);
    if force && db.exists() {
        // Never delete state: set it aside with its WAL files.
        let aside = ctx.config.state_dir.join(format!("state.db.set-aside-{}", ops::utc_stamp(pki::now_unix())));
        for suffix in ["", "-wal", "-shm"] {
            let from = PathBuf::from(format!("{}{suffix}", db.display()));
            if from.exists() {
                let to = PathBuf::from(format!("{}{suffix}", aside.display()));
                std::fs::rename(&from, &to)
                    .map_err(|e| CliError::new("io", format!("cannot set {} aside: {e}", from.display())))?;
            }
        }
        out.progress(format!("previous state set aside as {}", aside.display()));
    }
    let mut store = ctx.store()?;
    if let Some(since) = store.meta("initialized_at")? {
        return Err(CliError::new(
            "already_initialised",
            format!(
                "{} was initialised on {since}; refusing to create a second hierarchy. \
                 Re-run with --force to set that state aside (keys in the devices are never deleted)",
                db.display()
            ),
        ));
    }
    out.progress("opening backends");
    let backends = ctx.backends()?;
    out.progress(format!(
        "generating keys in the devices (SMS Issuing {}, token signing {}, TLS {})",
        pki_config.issuing.algorithm, pki_config.token_signing.algorithm, pki_config.tls.algorithm
    ));
    let audit = ctx.audit()?;
    let report = ops::init(pki_config, &backends, &mut store, &audit, &actor())?;
    for (key, cert) in report.keys.iter().zip(&report.certificates) {
        out.line(format!("{:<14} {} ({}, {})", key.role.as_str(), key.uri, key.algorithm, key.backend));
        out.line(format!("               certificate {} valid until {}", cert.subject, date(cert.not_after)));
    }
    for t in &report.selftests {
        out.line(format!("self-test      {} {}: protection as required, signature verified", t.key, t.scheme));
    }
    out.line(format!("initialised; state in {}", db.display()));
    out.json(&json!({"initialised": true, "keys": report.keys, "certificates": report.certificates, "selftests": report.selftests}));
    Ok(ExitCode::SUCCESS)
}

/// `sitesign status`: the state, then every backend and active key checked.
pub fn status(ctx: &Context, out: Output) -> Result<ExitCode, CliError> {
    if let Some(code) = ctx.rerun {
        return Ok(code);
    }
    let store = ctx.store()?;
    let keys = store.keys()?;
    let initialised = store.meta("initialized_at")?;
    out.line(format!("config        {}", ctx.path.display()));
    out.line(format!(
        "state         {} (schema {})",
        Store::path_in(&ctx.config.state_dir).display(),
        store.schema_version()?
    ));
    out.line(format!("initialised   {}", initialised.as_deref().unwrap_or("no — run `sitesign init`")));
    let hierarchy = store.meta("hierarchy_id")?;
    if let Some(h) = &hierarchy {
        out.line(format!("hierarchy     {h} (TenantId of every token)"));
    }
    let mut healthy = initialised.is_some();
    let mut backend_reports = Vec::new();
    let backends = match Backends::open(&ctx.config) {
        Ok(b) => {
            for (name, backend) in b.iter() {
                out.line(format!("backend       {name}: ok — {}", backend.capabilities().device));
                backend_reports.push(json!({"name": name, "ok": true, "device": backend.capabilities().device}));
            }
            Some(b)
        }
        Err(e) => {
            healthy = false;
            out.line(format!("backend       FAILED [{}]: {e}", e.code()));
            backend_reports.push(json!({"ok": false, "error": {"code": e.code(), "message": e.to_string()}}));
            None
        }
    };
    let mut key_reports = Vec::new();
    for key in keys.iter().filter(|k| k.status != KeyStatus::Retired) {
        let check = match &backends {
            Some(b) => b.key(key).and_then(|k| {
                k.check_protection()
                    .map_err(|source| ops::OpsError::Backend { backend: key.backend.clone(), source })
                    .and_then(|r| {
                        r.require_ok(&key.uri)
                            .map_err(|source| ops::OpsError::Backend { backend: key.backend.clone(), source })
                    })
            }),
            None => Err(ops::OpsError::Config("backend not open".into())),
        };
        let until = key.retire_after.map(date).unwrap_or_else(|| "-".into());
        match &check {
            Ok(()) => out.line(format!(
                "key           {} {} {} until {until}: protection ok",
                key.role.as_str(),
                key.status.as_str(),
                key.uri
            )),
            Err(e) => {
                healthy = false;
                out.line(format!(
                    "key           {} {} {}: FAILED [{}]: {e}",
                    key.role.as_str(),
                    key.status.as_str(),
                    key.uri,
                    e.code()
                ));
            }
        }
        key_reports.push(json!({"key": key, "ok": check.is_ok(), "error": check.err().map(|e| json!({"code": e.code(), "message": e.to_string()}))}));
    }
    out.json(&json!({
        "config": ctx.path,
        "initialised": initialised,
        "hierarchy_id": hierarchy,
        "healthy": healthy,
        "backends": backend_reports,
        "keys": key_reports,
    }));
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `sitesign keys list`.
pub fn keys_list(ctx: &Context, out: Output) -> Result<ExitCode, CliError> {
    if let Some(code) = ctx.rerun {
        return Ok(code);
    }
    let keys = ctx.store()?.keys()?;
    out.line(format!("{:<26} {:<14} {:<12} {:<9} {:<24} URI", "ID", "ROLE", "STATUS", "ALGORITHM", "RETIRE AFTER"));
    let mut rows = Vec::new();
    for k in &keys {
        let x5t = k.certificate.as_deref().map(pki::x5t);
        out.line(format!(
            "{:<26} {:<14} {:<12} {:<9} {:<24} {}",
            k.id,
            k.role.as_str(),
            k.status.as_str(),
            k.algorithm,
            k.retire_after.map(date).unwrap_or_else(|| "-".into()),
            k.uri
        ));
        rows.push(json!({"key": k, "x5t": x5t}));
    }
    out.json(&json!({"keys": rows}));
    Ok(ExitCode::SUCCESS)
}

/// `sitesign cert issue --profile P --csr FILE [--out FILE]`.
pub fn cert_issue(
    ctx: &Context,
    profile: &str,
    csr: &Path,
    dest: Option<&Path>,
    out: Output,
) -> Result<ExitCode, CliError> {
    if let Some(code) = ctx.rerun {
        return Ok(code);
    }
    let profile = match profile {
        "mp-client" => ProfileKind::MpClient,
        "role-ssl" => ProfileKind::RoleSsl,
        other => return Err(CliError::new("usage", format!("unknown profile {other:?}"))),
    };
    let bytes = std::fs::read(csr).map_err(|e| CliError::new("io", format!("cannot read {}: {e}", csr.display())))?;
    // Check the request before touching any device.
    pki::csr::parse_and_verify(&bytes)?.to_request(profile, pki::DAY)?;
    ctx.pki()?;
    let csr = match std::str::from_utf8(&bytes) {
        Ok(text) if text.contains("-----BEGIN") => text.to_owned(),
        _ => sitesign::token::b64::encode(&bytes),
    };
    let issued = crate::admin_client::call(ctx, &AdminRequest::CertIssue { profile: profile.as_str().into(), csr })?;
    let pem = issued["pem"].as_str().unwrap_or_default().to_owned();
    match dest {
        Some(path) => {
            std::fs::write(path, &pem)
                .map_err(|e| CliError::new("io", format!("cannot write {}: {e}", path.display())))?;
            out.line(format!(
                "issued {} certificate {} (serial {}) to {}",
                profile.as_str(),
                issued["subject"].as_str().unwrap_or_default(),
                issued["serial"].as_str().unwrap_or_default(),
                path.display()
            ));
        }
        None if !out.is_json() => print!("{pem}"),
        None => {}
    }
    out.json(&issued);
    Ok(ExitCode::SUCCESS)
}

/// `sitesign cert export [--out DIR]`.
pub fn cert_export(ctx: &Context, dir: &Path, out: Output) -> Result<ExitCode, CliError> {
    if let Some(code) = ctx.rerun {
        return Ok(code);
    }
    let files = export(&ctx.store()?, dir)?;
    for f in &files {
        out.line(format!("wrote {} ({}, x5t {})", f.path.display(), f.subject, f.x5t));
    }
    out.json(&json!({"files": files}));
    Ok(ExitCode::SUCCESS)
}

/// One exported file.
#[derive(Debug, serde::Serialize)]
pub struct Exported {
    /// Where.
    pub path: PathBuf,
    /// Whose certificate (or "trust bundle").
    pub subject: String,
    /// `x5t` of the certificate (empty for the bundle).
    pub x5t: String,
}

/// Writes the SMS Issuing certificate, every non-retired token-signing certificate and a trust
/// bundle of them all into `dir`.
pub fn export(store: &Store, dir: &Path) -> Result<Vec<Exported>, CliError> {
    std::fs::create_dir_all(dir).map_err(|e| CliError::new("io", format!("cannot create {}: {e}", dir.display())))?;
    let keys = store.keys()?;
    let wanted = keys.iter().filter(|k| {
        k.status != KeyStatus::Retired
            && matches!(k.role, KeyRole::Issuing | KeyRole::TokenSigning)
            && k.certificate.is_some()
    });
    let mut files = Vec::new();
    let mut bundle = String::new();
    for k in wanted {
        let der = k.certificate.as_deref().unwrap_or_default();
        let cert = pki::parse_certificate(der)?;
        let name = match k.role {
            KeyRole::Issuing if k.status == KeyStatus::Active => "sms-issuing.pem".to_owned(),
            _ => format!("{}.pem", k.id),
        };
        let pem = pki::pem("CERTIFICATE", der)?;
        let path = dir.join(name);
        std::fs::write(&path, &pem)
            .map_err(|e| CliError::new("io", format!("cannot write {}: {e}", path.display())))?;
        bundle.push_str(&pem);
        files.push(Exported { path, subject: cert.tbs_certificate().subject().to_string(), x5t: pki::x5t(der) });
    }
    if files.is_empty() {
        return Err(CliError::new("not_initialised", "no certificates to export: run `sitesign init` first"));
    }
    let path = dir.join("trust-bundle.pem");
    std::fs::write(&path, bundle).map_err(|e| CliError::new("io", format!("cannot write {}: {e}", path.display())))?;
    files.push(Exported { path, subject: "trust bundle".into(), x5t: String::new() });
    Ok(files)
}

/// `sitesign audit verify`: recomputes the hash chain; exit 1 at the first break.
pub fn audit_verify(ctx: &Context, out: Output) -> Result<ExitCode, CliError> {
    if let Some(code) = ctx.rerun {
        return Ok(code);
    }
    let records = sitesign::audit::read_all(&ctx.config.audit.dir)?;
    let checkpoints = sitesign::audit::read_checkpoints(&ctx.config.audit.dir)?;
    let path = sitesign::audit::AuditLog::path_in(&ctx.config.audit.dir);
    // Checkpoint signatures are checked with the token-signing certificates in the state store.
    let keys = ops::tokens::key_ring(&ctx.store()?)?;
    let check_signature =
        |key_id: &str, statement: &[u8], signature: &[u8]| keys.verifies(key_id, statement, signature);
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
pub fn audit_export(ctx: &Context, dest: Option<&Path>) -> Result<ExitCode, CliError> {
    if let Some(code) = ctx.rerun {
        return Ok(code);
    }
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
