//! `sitesign backup --out FILE` and `sitesign restore FILE` (the archive: `sitesign::backup`).

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::ExitCode;

use serde_json::json;
use sitesign::audit::AuditLog;
use sitesign::backup::{self, BackupError};
use sitesign::store::Store;
use sitesign::store::sqlite::{database_exists, set_aside_database};
use sitesign::time::{now_unix, rfc3339, stamp};

use crate::Confirm;
use crate::context::Context;
use crate::output::{CliError, Output};

impl From<BackupError> for CliError {
    fn from(e: BackupError) -> Self {
        CliError::new(e.code(), e.to_string())
    }
}

/// Backup and restore are of the embedded store: a shared PostgreSQL store (and the audit
/// chains in it) is backed up with the database's own tools.
fn sqlite_only(ctx: &Context) -> Result<(), CliError> {
    match ctx.config.store {
        sitesign::config::StoreConfig::Sqlite => Ok(()),
        _ => Err(CliError::new(
            "store_shared",
            "this appliance's state and audit chains are in PostgreSQL ([store] kind = \"postgres\"): back them up with pg_dump or the database's backup (README \"Several appliances\"); the key devices as before",
        )),
    }
}

/// `sitesign backup --out FILE`: an online copy of the state and the audit log, while the
/// service runs or not.
pub fn create(ctx: &Context, dest: &Path, out: Output) -> Result<ExitCode, CliError> {
    sqlite_only(ctx)?;
    let state_db = Store::path_in(&ctx.config.state_dir);
    let audit_db = AuditLog::path_in(&ctx.config.audit.dir);
    for db in [&state_db, &audit_db] {
        if !db.exists() {
            return Err(CliError::new(
                "not_initialised",
                format!("{} does not exist: nothing to back up (run `sitesign init` first)", db.display()),
            ));
        }
    }
    let mut steps = out.steps();
    let manifest = backup::create(&state_db, &audit_db, dest, now_unix(), &mut |s, d, t| steps.update(s, d, t))?;
    steps.finish();
    let sum = backup::checksum_path(dest);
    out.line(format!(
        "backup {} ({} + {} bytes: state, audit log), checksum in {}",
        dest.display(),
        manifest.state.bytes,
        manifest.audit.bytes,
        sum.display()
    ));
    out.line("it holds no key: the keys are backed up by the HSM's own means (docs/keys.md)");
    out.json(&json!({"backup": dest, "checksum": sum, "manifest": manifest}));
    Ok(ExitCode::SUCCESS)
}

/// `sitesign restore FILE [--force]`: refuses while the service runs; checks the archive's
/// checksums and the audit chain in it before it replaces anything; the state it replaces (with
/// `--force`) is set aside, never deleted.
pub fn restore(ctx: &Context, file: &Path, force: bool, confirm: Confirm, out: Output) -> Result<ExitCode, CliError> {
    sqlite_only(ctx)?;
    if crate::appliance::service_running(ctx) {
        return Err(CliError::new(
            "service_running",
            "stop sitesignd first (systemctl stop sitesignd): a restore replaces its databases",
        ));
    }
    let mut steps = out.steps();
    steps.update("checking", 0, 1);
    let unpacked = backup::unpack(file)?;
    backup::check_schema(&unpacked)?;
    // The audit chain in the backup, against the state in the backup (its checkpoints' keys and
    // its witnessed head).
    let mut config = ctx.config.clone();
    config.state_dir = unpacked.state_dir();
    config.audit.dir = unpacked.audit_dir();
    let intact = crate::audit::check(&config, None)?.map_err(|brk| {
        CliError::new(
            "backup_audit_broken",
            format!("the audit log in {} is not intact: {brk}; nothing restored", file.display()),
        )
    })?;
    steps.update("checking", 1, 1);
    steps.finish();

    let (state_db, audit_db) = (Store::path_in(&ctx.config.state_dir), AuditLog::path_in(&ctx.config.audit.dir));
    let existing = database_exists(&state_db) || database_exists(&audit_db);
    if existing && !force {
        return Err(CliError::new(
            "state_exists",
            format!(
                "{} already holds a state: restore onto a fresh appliance, or re-run with --force to set the current one aside (renamed, never deleted)",
                ctx.config.state_dir.display()
            ),
        ));
    }
    out.line(format!(
        "backup of {} by sitesign {:?}: audit log intact, {} records, head {}{}",
        rfc3339(unpacked.manifest.created),
        unpacked.manifest.version,
        intact.records,
        intact.head,
        if unpacked.archive_checksum {
            "; archive checksum matches"
        } else {
            "; no .sha256 beside it (members checked)"
        }
    ));
    if existing {
        out.line(format!("the current state in {} will be set aside", ctx.config.state_dir.display()));
    }
    if confirm.dry_run {
        out.json(&json!({"restored": false, "records": intact.records, "head": intact.head}));
        return Ok(ExitCode::SUCCESS);
    }
    out.confirm("restore this backup?", confirm.yes)?;
    // The files belong to whoever owns the state folder (the service user), also when root
    // restores. Both databases are staged beside their places first; only then is the current
    // state set aside and the staged files renamed in.
    let owner = std::fs::metadata(&ctx.config.state_dir).ok().map(|m| (m.uid(), m.gid()));
    let owner = owner.filter(|_| rustix::process::geteuid().is_root());
    let staged = backup::stage(&unpacked, &ctx.config.state_dir, &ctx.config.audit.dir, owner)?;
    if existing {
        // Unique among restores: the second and the process id.
        let suffix = format!("{}-{}", stamp(now_unix()), std::process::id());
        set_aside_database(&state_db, &suffix)?;
        set_aside_database(&audit_db, &suffix)?;
    }
    staged.commit()?;
    // The anchor file, if there is one, may have witnessed more than this backup holds.
    let mut warnings = Vec::new();
    if let Some(anchor) = ctx.config.audit.anchor_file.as_deref().filter(|a| a.exists()) {
        if let Err(brk) = crate::audit::check(&ctx.config, Some(anchor))? {
            warnings.push(format!(
                "the anchor file {} witnessed more than this backup holds ({brk}): sitesignd will refuse to start until `sitesign audit acknowledge-loss --reason …` records the loss",
                anchor.display()
            ));
        }
    }
    for w in &warnings {
        out.line(format!("warning: {w}"));
    }
    out.line(format!("restored into {}; start the service: systemctl start sitesignd", ctx.config.state_dir.display()));
    out.json(&json!({"restored": true, "records": intact.records, "head": intact.head, "warnings": warnings}));
    Ok(ExitCode::SUCCESS)
}
