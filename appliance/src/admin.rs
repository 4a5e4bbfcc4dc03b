//! Admin operations as requests and JSON answers — the one definition the CLI executes directly
//! (before the service exists) and the service's admin socket serves (once it runs, since a TPM
//! serves one client at a time and the service owns the device).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::audit::AuditLog;
use crate::config::Config;
use crate::ops::{self, Backends, OpsError, tokens};
use crate::pki::{self, ProfileKind};
use crate::store::Store;

/// An admin request (on the socket: one JSON object per line, `{"op":"bulk-new",…}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AdminRequest {
    /// Create a bulk registration token.
    BulkNew {
        /// Lifetime, minutes (1..=10080).
        lifetime_minutes: i64,
    },
    /// List the registered bulk tokens.
    BulkList,
    /// Block a bulk token.
    BulkBlock {
        /// Its GUID.
        guid: String,
    },
    /// Unblock a bulk token.
    BulkUnblock {
        /// Its GUID.
        guid: String,
    },
    /// Issue a role certificate from a PKCS#10 request.
    CertIssue {
        /// `mp-client` or `role-ssl`.
        profile: String,
        /// The request, PEM (or DER in base64url).
        csr: String,
    },
}

/// What an admin operation works on.
#[derive(Debug)]
pub struct AdminContext<'a> {
    /// The configuration.
    pub config: &'a Config,
    /// The state store.
    pub store: &'a mut Store,
    /// The opened backends.
    pub backends: &'a Backends,
    /// The audit log.
    pub audit: &'a AuditLog,
}

/// Executes `request` for `actor` at `now`; the answer is the JSON the CLI prints with `--json`.
pub fn execute(ctx: &mut AdminContext<'_>, request: &AdminRequest, actor: &str, now: i64) -> Result<Value, OpsError> {
    let store = &mut *ctx.store;
    Ok(match request {
        AdminRequest::BulkNew { lifetime_minutes } => {
            let made = tokens::bulk_new(store, ctx.backends, ctx.audit, *lifetime_minutes, actor, now)?;
            json!({
                "guid": made.record.guid,
                "expires": made.record.expires,
                "lifetime_minutes": made.record.lifetime,
                "token": made.token.token,
            })
        }
        AdminRequest::BulkList => json!({ "bulk_tokens": store.bulk_tokens()? }),
        AdminRequest::BulkBlock { guid } => {
            json!({ "bulk_token": tokens::bulk_set_blocked(store, guid, true, actor, now)? })
        }
        AdminRequest::BulkUnblock { guid } => {
            json!({ "bulk_token": tokens::bulk_set_blocked(store, guid, false, actor, now)? })
        }
        AdminRequest::CertIssue { profile, csr } => {
            let profile = match profile.as_str() {
                "mp-client" => ProfileKind::MpClient,
                "role-ssl" => ProfileKind::RoleSsl,
                other => return Err(OpsError::Config(format!("profile {other:?}: mp-client or role-ssl"))),
            };
            let pki_config = ctx.config.pki.as_ref().ok_or_else(|| OpsError::Config("no [pki] table".into()))?;
            let bytes = match crate::token::b64::decode(csr) {
                Some(der) => der,
                None => csr.as_bytes().to_vec(),
            };
            let issued = ops::issue_from_csr(pki_config, ctx.backends, store, ctx.audit, profile, &bytes, actor)?;
            json!({
                "profile": profile.as_str(),
                "subject": issued.subject,
                "serial": issued.serial,
                "not_after": issued.not_after,
                "pem": pki::pem("CERTIFICATE", &issued.der)?,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let r: AdminRequest = serde_json::from_str(r#"{"op":"bulk-new","lifetime_minutes":60}"#).unwrap();
        assert_eq!(r, AdminRequest::BulkNew { lifetime_minutes: 60 });
        assert_eq!(serde_json::to_string(&AdminRequest::BulkList).unwrap(), r#"{"op":"bulk-list"}"#);
        assert!(serde_json::from_str::<AdminRequest>(r#"{"op":"bulk-new","lifetime_minutes":60,"x":1}"#).is_err());
        assert!(serde_json::from_str::<AdminRequest>(r#"{"op":"sign-bytes"}"#).is_err());
    }
}
