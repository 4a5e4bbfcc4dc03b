//! `sitesign token verify`: reads a token on standard input (a bearer token never goes in argv,
//! where every user sees it) and prints the verdict — the same verification the service does.

use std::io::Read;
use std::process::ExitCode;

use serde_json::json;
use sitesign::policy::{self, PolicyError, VerifyRequest};
use sitesign::token::TokenKind;

use crate::context::Context;
use crate::output::{CliError, Output};

/// `sitesign token verify [--thumbprint T] [--kind K]`: exit 0 valid, 2 refused.
pub fn verify(
    ctx: &Context,
    thumbprint: Option<String>,
    kind: Option<TokenKind>,
    out: Output,
) -> Result<ExitCode, CliError> {
    let mut token = String::new();
    std::io::stdin()
        .take(sitesign::token::MAX_TOKEN_BYTES as u64 + 1)
        .read_to_string(&mut token)
        .map_err(|e| CliError::new("io", format!("cannot read the token from standard input: {e}")))?;
    let state = ctx.state()?;
    let request = VerifyRequest { token: token.trim().to_owned(), client_cert_thumbprint: thumbprint };
    match policy::verify(&state, &request, kind, sitesign::time::now_unix()) {
        Ok(v) => {
            out.line(format!("valid {} token, signed by {}", v.kind.as_str(), v.key_id));
            out.line(serde_json::to_string_pretty(&v.claims).unwrap_or_default());
            out.json(&json!({"valid": true, "kind": v.kind, "claims": v.claims}));
            Ok(ExitCode::SUCCESS)
        }
        Err(PolicyError::Rejected(r)) => {
            out.line(format!("invalid: {} — {}", r.reason.code(), r.detail));
            out.json(&json!({"valid": false, "reason": r.reason.code(), "detail": r.detail}));
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(CliError::new("state_store", e.to_string())),
    }
}
