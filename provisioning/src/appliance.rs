//! `sitesign init` and `sitesign status`: the hierarchy, made and checked.

use std::process::ExitCode;

use serde_json::json;
use sitesign::admin::{self, AdminContext, KeyView};
use sitesign::backends::Backends;
use sitesign::keys::KeyStatus;
use sitesign::store::Store;
use sitesign::time::{now_unix, rfc3339, stamp};

use crate::context::{Context, actor};
use crate::output::{CliError, Output};

/// Whether a sitesignd serves this configuration's admin socket now.
pub fn service_running(ctx: &Context) -> bool {
    std::os::unix::net::UnixStream::connect(&ctx.config.service.admin_socket).is_ok()
}

/// Creates the auth value file of every TPM backend that names one that does not exist yet: a
/// random secret, mode 0600, before any key exists that would need it.
fn create_tpm_auth(ctx: &Context, out: Output) -> Result<(), CliError> {
    for (name, backend) in &ctx.config.backends {
        if let hsm_adapters::BackendConfig::Tpm(t) = backend
            && let Some(hsm_adapters::PinSource::File(path)) = &t.auth
            && !path.exists()
        {
            let secret = hsm_adapters::random_secret()?;
            crate::softhsm::write_private(path, secrecy::ExposeSecret::expose_secret(&secret).as_bytes())?;
            out.progress(format!(
                "created the auth value of backend {name:?}'s TPM keys in {} (mode 0600): back it up with the key blobs",
                path.display()
            ));
        }
    }
    Ok(())
}

/// `sitesign init [--force]`: works on the devices directly (the service does not exist yet).
pub fn init(ctx: &Context, force: bool, out: Output) -> Result<ExitCode, CliError> {
    if service_running(ctx) {
        return Err(CliError::new(
            "service_running",
            "sitesignd is running on this state; `init` makes a new hierarchy and needs it stopped",
        ));
    }
    if force && let Some(aside) = Store::set_aside(&ctx.config.state_dir, &stamp(now_unix()))? {
        out.progress(format!("previous state set aside as {} (the old keys stay in the devices)", aside.display()));
    }
    let mut store = ctx.store()?;
    if let Some(since) = store.meta("initialized_at")? {
        return Err(CliError::new(
            "already_initialised",
            format!(
                "{} was initialised on {since}; refusing to create a second hierarchy. \
                 Re-run with --force to set that state aside (keys in the devices are never deleted)",
                Store::path_in(&ctx.config.state_dir).display()
            ),
        ));
    }
    create_tpm_auth(ctx, out)?;
    out.progress("opening backends");
    let backends = ctx.backends()?;
    let pki = ctx
        .config
        .pki
        .as_ref()
        .ok_or_else(|| CliError::new("config", format!("{} has no [pki] table", ctx.path.display())))?;
    out.progress(format!(
        "generating keys in the devices (SMS Issuing {}, token signing {}, TLS {})",
        pki.issuing.algorithm, pki.token_signing.algorithm, pki.tls.algorithm
    ));
    let audit = ctx.audit()?;
    let actor = actor();
    let mut admin_ctx = AdminContext {
        config: &ctx.config,
        store: &mut store,
        backends: &backends,
        audit: &audit,
        actor: &actor,
        now: now_unix(),
    };
    let report = admin::init::init(&mut admin_ctx)?;
    admin::witness_head(&mut admin_ctx);
    for (key, cert) in report.keys.iter().zip(&report.certificates) {
        out.line(format!("{:<14} {} ({}, {})", key.role.as_str(), key.uri, key.algorithm, key.backend));
        out.line(format!("               certificate {} valid until {}", cert.subject, rfc3339(cert.not_after)));
    }
    for t in &report.selftests {
        out.line(format!("self-test      {} {}: protection as required, signature verified", t.key, t.scheme));
    }
    out.line(format!("hierarchy      {} (the TenantId of every token)", report.hierarchy_id));
    out.line(format!("initialised; state in {}", Store::path_in(&ctx.config.state_dir).display()));
    out.json(&json!({"initialised": true, "keys": report.keys, "certificates": report.certificates, "selftests": report.selftests, "hierarchy_id": report.hierarchy_id}));
    Ok(ExitCode::SUCCESS)
}

/// `sitesign status`: the state, then every backend and every key that is not retired checked
/// in its device.
pub fn status(ctx: &Context, out: Output) -> Result<ExitCode, CliError> {
    let store = ctx.store()?;
    let initialised = store.meta("initialized_at")?;
    out.line(format!("config        {}", ctx.path.display()));
    let where_ = match &ctx.config.store {
        sitesign::config::StoreConfig::Sqlite => Store::path_in(&ctx.config.state_dir).display().to_string(),
        sitesign::config::StoreConfig::Postgres(_) => store.describe(),
    };
    out.line(format!(
        "state         {where_} (schema {}, generation {})",
        store.schema_version()?,
        store.generation()?
    ));
    // The node registry: every sitesignd that reported to this store, and when it last did.
    let nodes = store.nodes()?;
    let now = sitesign::time::now_unix();
    for n in &nodes {
        let here = if n.id == ctx.config.node.id { " (this node)" } else { "" };
        out.line(format!(
            "node          {}{here}: {} sitesign {}, last seen {} s ago",
            n.id,
            n.address,
            n.version,
            now - n.last_seen
        ));
    }
    out.line(format!("initialised   {}", initialised.as_deref().unwrap_or("no — run `sitesign init`")));
    let hierarchy = store.meta("hierarchy_id")?;
    if let Some(h) = &hierarchy {
        out.line(format!("hierarchy     {h} (TenantId of every token)"));
    }
    out.line(format!("service       {}", if service_running(ctx) { "running" } else { "not running" }));
    let mut healthy = initialised.is_some();
    let mut backend_reports = Vec::new();
    let backends = match Backends::open(&ctx.config) {
        Ok(b) => {
            for (name, backend) in b.iter() {
                let caps = backend.capabilities();
                out.line(format!("backend       {name}: ok — {}", caps.device));
                for (fact, value) in &caps.facts {
                    out.line(format!("              {fact}: {value}"));
                }
                let facts: serde_json::Map<String, serde_json::Value> =
                    caps.facts.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
                backend_reports.push(json!({"name": name, "ok": true, "device": caps.device, "facts": facts}));
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
    let now = now_unix();
    let keys = if initialised.is_some() { store.keys()? } else { Vec::new() };
    let mut key_reports = Vec::new();
    for key in keys.iter().filter(|k| !matches!(k.status_at(now), KeyStatus::Retired | KeyStatus::Revoked)) {
        let view = KeyView::of(key, now);
        let check = match &backends {
            Some(b) => b
                .key(key)
                .map_err(CliError::from)
                .and_then(|k| k.check_protection().and_then(|r| r.require_ok(&key.uri)).map_err(CliError::from)),
            None => Err(CliError::new("backend_unavailable", "backend not open")),
        };
        match &check {
            Ok(()) => out.line(format!(
                "key           {} {} {} until {}: protection ok",
                key.role.as_str(),
                view.status.as_str(),
                key.uri,
                view.not_after
            )),
            Err(e) => {
                healthy = false;
                out.line(format!(
                    "key           {} {} {}: FAILED [{}]: {}",
                    key.role.as_str(),
                    view.status.as_str(),
                    key.uri,
                    e.code,
                    e.message
                ));
            }
        }
        key_reports.push(json!({"key": view, "ok": check.is_ok(), "error": check.err().map(|e| json!({"code": e.code, "message": e.message}))}));
    }
    out.json(&json!({
        "config": ctx.path,
        "initialised": initialised,
        "hierarchy_id": hierarchy,
        "node": ctx.config.node.id,
        "nodes": nodes,
        "healthy": healthy,
        "backends": backend_reports,
        "keys": key_reports,
    }));
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
