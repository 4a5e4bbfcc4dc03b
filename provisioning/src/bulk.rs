//! `sitesign bulk-token`: the bulk registration token lifecycle, in sitesign's spelling
//! (`new [--lifetime MIN]`, `list`, `block GUID`, `unblock GUID`) and in ConfigMgr's
//! `BulkRegistrationTokenTool.exe` spelling (`/new`, `/lifetime N`, `/?`). The lifetime and GUIDs
//! are checked by the appliance, like everything else.

use std::ffi::OsString;
use std::process::ExitCode;

use serde_json::json;
use sitesign::admin::{AdminRequest, AdminResponse};
use sitesign::store::BulkRecord;
use sitesign::time::rfc3339;
use sitesign::token::BULK_DEFAULT_LIFETIME_MINUTES;

use crate::admin_client::{call, unexpected};
use crate::context::Context;
use crate::output::{CliError, Output};

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

fn state_of(record: &BulkRecord, now: i64) -> &'static str {
    if record.blocked {
        "blocked"
    } else if record.expires <= now {
        "expired"
    } else {
        "active"
    }
}

/// `sitesign bulk-token …`.
pub fn run(ctx: &Context, command: &BulkCommand, out: Output) -> Result<ExitCode, CliError> {
    match command {
        BulkCommand::New { lifetime } => {
            let made = match call(ctx, &AdminRequest::BulkNew { lifetime_minutes: *lifetime })? {
                AdminResponse::BulkTokenCreated(made) => made,
                other => return Err(unexpected(&other)),
            };
            out.line(format!("Bulk registration token GUID: {}", made.guid));
            out.line(format!("Token is valid until {}.", rfc3339(made.expires)));
            out.line(&made.token);
            out.json(&json!({"guid": made.guid, "expires": made.expires, "token": made.token}));
        }
        BulkCommand::List => {
            let records = match call(ctx, &AdminRequest::BulkList)? {
                AdminResponse::BulkTokens { bulk_tokens } => bulk_tokens,
                other => return Err(unexpected(&other)),
            };
            let now = sitesign::time::now_unix();
            if records.is_empty() {
                out.line("no bulk registration tokens");
            }
            for r in &records {
                out.line(format!(
                    "{}  {:<7}  created {}  valid until {}  ({} min)  by {}",
                    r.guid,
                    state_of(r, now),
                    rfc3339(r.created),
                    rfc3339(r.expires),
                    r.lifetime,
                    r.creator,
                ));
            }
            let with_state: Vec<serde_json::Value> = records
                .iter()
                .map(|r| {
                    let mut v = json!(r);
                    v["state"] = json!(state_of(r, now));
                    v
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
            let record = match call(ctx, &request)? {
                AdminResponse::BulkToken { bulk_token } => bulk_token,
                other => return Err(unexpected(&other)),
            };
            out.line(format!(
                "bulk token {} is now {}",
                record.guid,
                if block { "blocked: registrations with it are refused" } else { "unblocked" }
            ));
            out.json(&json!({"bulk_token": record}));
        }
    }
    Ok(ExitCode::SUCCESS)
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
