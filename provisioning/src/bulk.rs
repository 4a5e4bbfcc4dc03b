//! `sitesign bulk-token`: the bulk registration token lifecycle, in sitesign's spelling
//! (`new [--lifetime MIN]`, `list`, `block GUID`, `unblock GUID`) and in ConfigMgr's
//! `BulkRegistrationTokenTool.exe` spelling (`/new`, `/lifetime N`, `/?`), plus
//! `sitesign token verify`, which reads a token on standard input (a bearer token never goes in
//! argv) and prints the verdict.

use std::ffi::OsString;
use std::io::Read;
use std::process::ExitCode;

use serde_json::{Value, json};
use sitesign::admin::AdminRequest;
use sitesign::ops::{self, tokens};
use sitesign::pki;
use sitesign::token::{BULK_DEFAULT_LIFETIME_MINUTES, BULK_MAX_LIFETIME_MINUTES, TokenKind};

use crate::context::Context;
use crate::{CliError, Output};

/// The usage text `/?` prints, as the original tool's.
pub const CONFIGMGR_USAGE: &str = "\
sitesign bulk-token — creates bulk registration tokens, like ConfigMgr's BulkRegistrationTokenTool.exe

Usage: sitesign bulk-token /new [/lifetime MINUTES]
       sitesign bulk-token /?

  /?          Display this usage information.
  /new        Create a new bulk registration token. Shows the GUID the site tracks the token
              by, its validity period and the token. The token is not stored anywhere: copy it
              now and keep it in a secure location.
  /lifetime   Use with /new: the token's validity period in minutes. Default 4320 (three
              days), maximum 10080 (seven days).

sitesign's own spelling: sitesign bulk-token new [--lifetime MIN] | list | block GUID | unblock GUID
";

/// Rewrites ConfigMgr's spelling after `bulk-token` into sitesign's: `/new` → `new`,
/// `/lifetime N` → `--lifetime N` (and implies `new`, as in the tool's documented example),
/// `/?` → `--configmgr-usage`. Switches are case-insensitive, as on Windows. Other arguments
/// pass unchanged.
pub fn configmgr_spelling(args: Vec<OsString>) -> Vec<OsString> {
    let Some(at) = args.iter().position(|a| a == "bulk-token") else { return args };
    let (head, tail) = args.split_at(at + 1);
    let lower: Vec<Option<String>> = tail.iter().map(|a| a.to_str().map(str::to_ascii_lowercase)).collect();
    let is = |i: usize, s: &str| lower[i].as_deref() == Some(s);
    if !(0..tail.len()).any(|i| is(i, "/new") || is(i, "/lifetime") || is(i, "/?")) {
        return args;
    }
    let mut out = head.to_vec();
    if (0..tail.len()).any(|i| is(i, "/?")) {
        out.push("--configmgr-usage".into());
        return out;
    }
    out.push("new".into());
    for (i, a) in tail.iter().enumerate() {
        if is(i, "/new") {
            continue;
        }
        out.push(if is(i, "/lifetime") { "--lifetime".into() } else { a.clone() });
    }
    out
}

/// `sitesign bulk-token` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum BulkCommand {
    /// Create a bulk registration token: prints its GUID, its expiry and the token (which is not
    /// stored anywhere).
    New {
        /// Validity in minutes: 1 to 10080 (7 days).
        #[arg(long, default_value_t = BULK_DEFAULT_LIFETIME_MINUTES, allow_negative_numbers = true)]
        lifetime: i64,
    },
    /// List every bulk token the site tracks, with its state.
    List,
    /// Block a bulk token: devices can no longer register with it, from now on.
    Block {
        /// The token's GUID.
        guid: String,
    },
    /// Unblock a bulk token.
    Unblock {
        /// The token's GUID.
        guid: String,
    },
}

use crate::admin_client::call;

fn state_of(record: &Value, now: i64) -> &'static str {
    if record["blocked"] == true {
        "blocked"
    } else if record["expires"].as_i64().is_some_and(|e| e <= now) {
        "expired"
    } else {
        "active"
    }
}

/// `sitesign bulk-token …`.
pub fn run(ctx: &Context, command: &BulkCommand, out: Output) -> Result<ExitCode, CliError> {
    if let Some(code) = ctx.rerun {
        return Ok(code);
    }
    match command {
        BulkCommand::New { lifetime } => {
            if !(1..=BULK_MAX_LIFETIME_MINUTES).contains(lifetime) {
                return Err(CliError::new(
                    "invalid_lifetime",
                    format!(
                        "lifetime {lifetime} minutes is out of range: give 1 to {BULK_MAX_LIFETIME_MINUTES} minutes (default {BULK_DEFAULT_LIFETIME_MINUTES}, 3 days); no token was created"
                    ),
                ));
            }
            let made = call(ctx, &AdminRequest::BulkNew { lifetime_minutes: *lifetime })?;
            let expires = made["expires"].as_i64().unwrap_or_default();
            out.line(format!("Bulk registration token GUID: {}", made["guid"].as_str().unwrap_or_default()));
            out.line(format!("Token is valid until {}.", ops::utc_rfc3339(expires)));
            out.line(made["token"].as_str().unwrap_or_default());
            out.json(&json!({"guid": made["guid"], "expires": made["expires"], "token": made["token"]}));
        }
        BulkCommand::List => {
            let listed = call(ctx, &AdminRequest::BulkList)?;
            let now = pki::now_unix();
            let empty = Vec::new();
            let records = listed["bulk_tokens"].as_array().unwrap_or(&empty);
            if records.is_empty() {
                out.line("no bulk registration tokens");
            }
            for r in records {
                out.line(format!(
                    "{}  {:<7}  created {}  valid until {}  ({} min)  by {}",
                    r["guid"].as_str().unwrap_or_default(),
                    state_of(r, now),
                    ops::utc_rfc3339(r["created"].as_i64().unwrap_or_default()),
                    ops::utc_rfc3339(r["expires"].as_i64().unwrap_or_default()),
                    r["lifetime"],
                    r["creator"].as_str().unwrap_or_default(),
                ));
            }
            let with_state: Vec<Value> = records
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    r["state"] = json!(state_of(&r, now));
                    r
                })
                .collect();
            out.json(&json!({"bulk_tokens": with_state}));
        }
        BulkCommand::Block { guid } | BulkCommand::Unblock { guid } => {
            let block = matches!(command, BulkCommand::Block { .. });
            let request = if block {
                AdminRequest::BulkBlock { guid: guid.clone() }
            } else {
                AdminRequest::BulkUnblock { guid: guid.clone() }
            };
            let done = call(ctx, &request)?;
            let record = &done["bulk_token"];
            out.line(format!(
                "bulk token {} is now {}",
                record["guid"].as_str().unwrap_or_default(),
                if block { "blocked: registrations with it are refused" } else { "unblocked" }
            ));
            out.json(&done);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `sitesign token verify [--thumbprint T] [--kind K]`: the token on standard input.
pub fn verify(ctx: &Context, thumbprint: Option<&str>, kind: Option<&str>, out: Output) -> Result<ExitCode, CliError> {
    if let Some(code) = ctx.rerun {
        return Ok(code);
    }
    let mut token = String::new();
    std::io::stdin()
        .take(sitesign::token::MAX_TOKEN_BYTES as u64 + 1)
        .read_to_string(&mut token)
        .map_err(|e| CliError::new("io", format!("cannot read the token from standard input: {e}")))?;
    let expect = match kind {
        None => None,
        Some("bulk") => Some(TokenKind::Bulk),
        Some("client") => Some(TokenKind::Client),
        Some("access") => Some(TokenKind::Access),
        Some(other) => return Err(CliError::new("usage", format!("--kind {other:?}: bulk, client or access"))),
    };
    let store = ctx.store()?;
    match tokens::verify_token(&store, &ctx.config, token.trim(), thumbprint, expect, pki::now_unix())? {
        Ok(v) => {
            out.line(format!("valid {} token, signed by {}", v.kind.as_str(), v.key_id));
            out.line(serde_json::to_string_pretty(&v.claims).unwrap_or_default());
            out.json(&json!({"valid": true, "kind": v.kind, "claims": v.claims}));
            Ok(ExitCode::SUCCESS)
        }
        Err(r) => {
            out.line(format!("invalid: {} — {}", r.reason.code(), r.detail));
            out.json(&json!({"valid": false, "reason": r.reason.code(), "detail": r.detail}));
            Ok(ExitCode::from(2))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(args: &[&str]) -> Vec<String> {
        configmgr_spelling(args.iter().map(OsString::from).collect())
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn configmgr_spelling_maps_onto_subcommands() {
        assert_eq!(rewrite(&["sitesign", "bulk-token", "/new"]), ["sitesign", "bulk-token", "new"]);
        assert_eq!(
            rewrite(&["sitesign", "--json", "bulk-token", "/NEW", "/Lifetime", "10080"]),
            ["sitesign", "--json", "bulk-token", "new", "--lifetime", "10080"]
        );
        assert_eq!(
            rewrite(&["sitesign", "bulk-token", "/lifetime", "60"]),
            ["sitesign", "bulk-token", "new", "--lifetime", "60"]
        );
        assert_eq!(rewrite(&["sitesign", "bulk-token", "/?"]), ["sitesign", "bulk-token", "--configmgr-usage"]);
        assert_eq!(rewrite(&["sitesign", "bulk-token", "list"]), ["sitesign", "bulk-token", "list"]);
        assert_eq!(rewrite(&["sitesign", "status"]), ["sitesign", "status"]);
    }
}
