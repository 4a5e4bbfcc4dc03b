//! `sitesign cert issue|list|revoke|crl|export`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;
use sitesign::admin::{AdminRequest, AdminResponse, CertView, RevocationReason};
use sitesign::keys::{self, KeyRole};
use sitesign::pki::{self, RoleProfile};
use sitesign::state::State;

use crate::Confirm;
use crate::admin_client::{call, unexpected};
use crate::context::Context;
use crate::output::{CliError, Output};

fn write(path: &Path, bytes: impl AsRef<[u8]>) -> Result<(), CliError> {
    std::fs::write(path, bytes).map_err(|e| CliError::new("io", format!("cannot write {}: {e}", path.display())))
}

/// `sitesign cert issue --profile P --csr FILE [--out FILE]`.
pub fn issue(
    ctx: &Context,
    profile: RoleProfile,
    csr: &Path,
    dest: Option<&Path>,
    out: Output,
) -> Result<ExitCode, CliError> {
    let bytes = std::fs::read(csr).map_err(|e| CliError::new("io", format!("cannot read {}: {e}", csr.display())))?;
    let csr = match std::str::from_utf8(&bytes) {
        Ok(text) if text.contains("-----BEGIN") => text.to_owned(),
        _ => sitesign::token::b64::encode(&bytes),
    };
    let (certificate, pem) = match call(ctx, &AdminRequest::CertIssue { profile, csr })? {
        AdminResponse::CertificateIssued { certificate, pem } => (certificate, pem),
        other => return Err(unexpected(&other)),
    };
    match dest {
        Some(path) => {
            write(path, &pem)?;
            out.line(format!(
                "issued {} certificate {} (serial {}) to {}",
                certificate.profile,
                certificate.subject,
                certificate.serial,
                path.display()
            ));
        }
        None if !out.is_json() => print!("{pem}"),
        None => {}
    }
    out.json(&json!({"certificate": certificate, "pem": pem}));
    Ok(ExitCode::SUCCESS)
}

/// `sitesign cert list`.
pub fn list(ctx: &Context, out: Output) -> Result<ExitCode, CliError> {
    let now = sitesign::time::now_unix();
    let certificates: Vec<CertView> = ctx.store()?.certificates()?.iter().map(|c| CertView::of(c, now)).collect();
    out.line(format!("{:<34} {:<18} {:<8} {:<21} SUBJECT", "SERIAL", "PROFILE", "STATUS", "NOT AFTER"));
    for c in &certificates {
        out.line(format!("{:<34} {:<18} {:<8} {:<21} {}", c.serial, c.profile, c.status, c.not_after, c.subject));
    }
    out.json(&json!({"certificates": certificates}));
    Ok(ExitCode::SUCCESS)
}

/// `sitesign cert revoke SERIAL [--reason R]`.
pub fn revoke(
    ctx: &Context,
    serial: &str,
    reason: RevocationReason,
    confirm: Confirm,
    out: Output,
) -> Result<ExitCode, CliError> {
    let request = |dry_run| AdminRequest::CertRevoke { serial: serial.to_owned(), reason: Some(reason), dry_run };
    let (plan, _) = match call(ctx, &request(true))? {
        AdminResponse::Plan { plan, done } => (plan, done),
        other => return Err(unexpected(&other)),
    };
    out.line(format!("plan: {}", plan.action));
    for s in &plan.steps {
        out.line(format!("  - {s}"));
    }
    for w in &plan.warnings {
        out.line(format!("  ! {w}"));
    }
    if confirm.dry_run {
        out.line("dry run: nothing was changed");
        out.json(&json!({"plan": plan, "done": false}));
        return Ok(ExitCode::SUCCESS);
    }
    out.confirm("Revoke it?", confirm.yes)?;
    let (plan, done) = match call(ctx, &request(false))? {
        AdminResponse::Plan { plan, done } => (plan, done),
        other => return Err(unexpected(&other)),
    };
    out.line("revoked");
    out.json(&json!({"plan": plan, "done": done}));
    Ok(ExitCode::SUCCESS)
}

/// `sitesign cert crl [--out FILE]`: signs fresh CRLs (through the service when it runs).
pub fn crl(ctx: &Context, dest: Option<&Path>, out: Output) -> Result<ExitCode, CliError> {
    let crls = match call(ctx, &AdminRequest::CertCrl)? {
        AdminResponse::Crls { crls } => crls,
        other => return Err(unexpected(&other)),
    };
    let active =
        crls.iter().find(|c| c.active).ok_or_else(|| CliError::new("not_initialised", "no active SMS Issuing root"))?;
    let der = sitesign::token::b64::decode(&active.der)
        .ok_or_else(|| CliError::new("encoding", "the CRL is not base64url"))?;
    match dest {
        Some(path) => {
            write(path, &der)?;
            out.line(format!(
                "wrote CRL {} of {} ({} revoked, next update {}) to {}",
                active.number,
                active.issuer_key,
                active.revoked,
                active.next_update,
                path.display()
            ));
        }
        None if !out.is_json() => print!("{}", pki::pem("X509 CRL", &der)?),
        None => {}
    }
    for other in crls.iter().filter(|c| !c.active) {
        out.line(format!(
            "also signed: CRL {} of the previous root {} ({} revoked)",
            other.number, other.issuer_key, other.revoked
        ));
    }
    out.json(&json!({"crls": crls}));
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

/// Writes into `dir`: `sms-issuing.pem` (the active root), `<key-id>.pem` for every other
/// published certificate (older roots, token-signing certificates, one file per certificate of a
/// key certified twice: `<key-id>.<n>.pem`), `cross-<serial>.pem` for the cross-certificates
/// between roots, and `trust-bundle.pem` with all of them.
pub fn export(state: &State, dir: &Path) -> Result<Vec<Exported>, CliError> {
    std::fs::create_dir_all(dir).map_err(|e| CliError::new("io", format!("cannot create {}: {e}", dir.display())))?;
    let active_root = state.active(KeyRole::Issuing).map(|k| k.id.clone());
    let mut files = Vec::new();
    let mut bundle = String::new();
    let mut add = |name: String, der: &[u8], files: &mut Vec<Exported>| -> Result<(), CliError> {
        let cert = pki::parse_certificate(der)?;
        let pem = pki::pem("CERTIFICATE", der)?;
        let path = dir.join(name);
        write(&path, &pem)?;
        bundle.push_str(&pem);
        files.push(Exported { path, subject: cert.tbs_certificate().subject().to_string(), x5t: pki::x5t(der) });
        Ok(())
    };
    for p in keys::published(&state.keys, state.at) {
        let name = match (p.key.role, p.current) {
            (KeyRole::Issuing, true) if Some(&p.key.id) == active_root.as_ref() => "sms-issuing.pem".to_owned(),
            (_, true) => format!("{}.pem", p.key.id),
            (_, false) => format!("{}.{}.pem", p.key.id, &pki::x5t(p.der)[..8]),
        };
        add(name, p.der, &mut files)?;
    }
    for (_, der) in &state.cross_certificates {
        let serial = pki::parse_certificate(der)?.tbs_certificate().serial_number().to_string();
        add(format!("cross-{}.pem", serial.replace(':', "").to_ascii_lowercase()), der, &mut files)?;
    }
    if files.is_empty() {
        return Err(CliError::new("not_initialised", "no certificates to export: run `sitesign init` first"));
    }
    let path = dir.join("trust-bundle.pem");
    write(&path, bundle)?;
    files.push(Exported { path, subject: "trust bundle".into(), x5t: String::new() });
    Ok(files)
}

/// `sitesign cert export [--out DIR]`.
pub fn export_command(ctx: &Context, dir: &Path, out: Output) -> Result<ExitCode, CliError> {
    let files = export(&ctx.state()?, dir)?;
    for f in &files {
        out.line(format!("wrote {} ({}, x5t {})", f.path.display(), f.subject, f.x5t));
    }
    out.json(&json!({"files": files}));
    Ok(ExitCode::SUCCESS)
}
