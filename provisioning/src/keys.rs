//! `sitesign keys list|retire|revoke` and `sitesign rotate token-signing|issuing|tls`. A change is
//! planned first (the plan printed), then — unless `--dry-run` — confirmed and carried out on the
//! state the plan was made on.

use std::process::ExitCode;

use hsm_adapters::KeyAlgorithm;
use serde_json::json;
use sitesign::admin::{AdminRequest, AdminResponse, Plan, RotateRequest};
use sitesign::keys::KeyRole;
use sitesign::time::{When, parse_duration};

use crate::Confirm;
use crate::admin_client::{call, unexpected};
use crate::context::Context;
use crate::output::{CliError, Output};

/// `sitesign keys list`.
pub fn list(ctx: &Context, out: Output) -> Result<ExitCode, CliError> {
    let state = ctx.state()?;
    let keys = sitesign::admin::keys::list(&state);
    let orphans = ctx.store()?.orphans()?;
    let w = keys.iter().map(|k| k.id.len()).max().unwrap_or(0).max(2);
    out.line(format!(
        "{:<w$} {:<14} {:<12} {:<9} {:<21} {:<21} {:<28} URI",
        "ID", "ROLE", "STATUS", "ALGORITHM", "ACTIVATES", "RETIRES", "X5T"
    ));
    for k in &keys {
        out.line(format!(
            "{:<w$} {:<14} {:<12} {:<9} {:<21} {:<21} {:<28} {}",
            k.id,
            k.role.as_str(),
            k.status.as_str(),
            k.algorithm,
            k.activates.as_deref().unwrap_or("-"),
            k.retires.as_deref().unwrap_or("-"),
            k.x5t.as_deref().unwrap_or("-"),
            k.uri
        ));
        if let Some(reason) = &k.revoke_reason {
            out.line(format!("{:<w$} revoked {}: {reason}", "", k.revoked.as_deref().unwrap_or("")));
        }
    }
    for o in &orphans {
        out.line(format!(
            "orphan (generated, never recorded: delete it from backend {:?}) {} — {}",
            o.backend, o.uri, o.cause
        ));
    }
    out.json(&json!({"keys": keys, "orphans": orphans}));
    Ok(ExitCode::SUCCESS)
}

/// The rotation request from the command line's words.
pub fn rotate_request(
    role: KeyRole,
    algorithm: Option<KeyAlgorithm>,
    publish_ahead: Option<&str>,
    activate_at: Option<&str>,
) -> Result<RotateRequest, CliError> {
    let bad = |e: sitesign::time::TimeError| CliError::new("invalid_time", e.to_string());
    Ok(RotateRequest {
        role,
        algorithm,
        publish_ahead_seconds: publish_ahead.map(parse_duration).transpose().map_err(bad)?,
        activate_at: activate_at.map(When::parse).transpose().map_err(bad)?,
        dry_run: true,
        expect_generation: None,
    })
}

fn print_plan(out: Output, plan: &Plan, done: bool) {
    out.line(format!("plan: {}", plan.action));
    for step in &plan.steps {
        out.line(format!("  - {step}"));
    }
    for w in &plan.warnings {
        out.line(format!("  ! {w}"));
    }
    if done {
        for k in &plan.new_keys {
            out.line(format!("new key: {k}"));
        }
        out.line("done");
    }
}

fn plan_of(response: AdminResponse) -> Result<(Plan, bool), CliError> {
    match response {
        AdminResponse::Plan { plan, done } => Ok((plan, done)),
        other => Err(unexpected(&other)),
    }
}

/// Plans `request` (sent with `dry_run`), prints the plan, and — unless `--dry-run` — asks and
/// carries it out with `again(generation)`, the same request on the state the plan was made on.
fn plan_then_do(
    ctx: &Context,
    planned: &AdminRequest,
    again: impl FnOnce(i64) -> AdminRequest,
    confirm: Confirm,
    out: Output,
) -> Result<ExitCode, CliError> {
    let (plan, _) = plan_of(call(ctx, planned)?)?;
    if confirm.dry_run {
        print_plan(out, &plan, false);
        out.line("dry run: nothing was changed");
        out.json(&json!({"plan": plan, "done": false}));
        return Ok(ExitCode::SUCCESS);
    }
    print_plan(out, &plan, false);
    out.confirm("Carry this out?", confirm.yes)?;
    let working = out.working("working: keys are generated and certificates signed in the device");
    let result = call(ctx, &again(plan.generation));
    drop(working);
    let (plan, done) = plan_of(result?)?;
    if done {
        for k in &plan.new_keys {
            out.line(format!("new key: {k}"));
        }
        out.line("done");
    }
    out.json(&json!({"plan": plan, "done": done}));
    Ok(ExitCode::SUCCESS)
}

/// `sitesign rotate …`.
pub fn rotate(ctx: &Context, request: RotateRequest, confirm: Confirm, out: Output) -> Result<ExitCode, CliError> {
    let planned = AdminRequest::Rotate(RotateRequest { dry_run: true, ..request.clone() });
    let again = |generation| {
        AdminRequest::Rotate(RotateRequest { dry_run: false, expect_generation: Some(generation), ..request })
    };
    plan_then_do(ctx, &planned, again, confirm, out)
}

/// `sitesign keys retire KEY [--force]`.
pub fn retire(ctx: &Context, key: &str, force: bool, confirm: Confirm, out: Output) -> Result<ExitCode, CliError> {
    let planned = AdminRequest::KeyRetire { key: key.to_owned(), force, dry_run: true, expect_generation: None };
    let again = |generation| AdminRequest::KeyRetire {
        key: key.to_owned(),
        force,
        dry_run: false,
        expect_generation: Some(generation),
    };
    plan_then_do(ctx, &planned, again, confirm, out)
}

/// `sitesign keys revoke KEY --reason TEXT`.
pub fn revoke(ctx: &Context, key: &str, reason: &str, confirm: Confirm, out: Output) -> Result<ExitCode, CliError> {
    let planned = AdminRequest::KeyRevoke {
        key: key.to_owned(),
        reason: reason.to_owned(),
        dry_run: true,
        expect_generation: None,
    };
    let again = |generation| AdminRequest::KeyRevoke {
        key: key.to_owned(),
        reason: reason.to_owned(),
        dry_run: false,
        expect_generation: Some(generation),
    };
    plan_then_do(ctx, &planned, again, confirm, out)
}
