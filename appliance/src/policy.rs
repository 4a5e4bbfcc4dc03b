//! Policy: whether a request may have a token (request → **policy** → pipeline → backend → audit
//! → response). The service and the CLI ask here and nowhere else.
//!
//! - a client token needs a proof: the MP vouches for the device on the internal network, a bulk
//!   registration token that is registered and not blocked, or the device's current client token
//!   (renewal, SPEC §7: from `[tokens] renew_after_days` of age if its key is active; at any age
//!   if its key is verify-only, retired or revoked — that is how a fleet moves to a new key — and
//!   for a revoked key only if this site's audit log shows it issued that very token, since whoever
//!   stole the key can sign tokens but cannot make sitesign have issued them);
//! - an access token needs a valid client token bound to the presented client certificate;
//! - verification answers from the same [`State`] the service signs on.

use serde::Deserialize;

use crate::keys::KeyStatus;
use crate::state::State;
use crate::token::claims;
use crate::token::{Guid, Presented, Purpose, Reason, Rejection, TokenKind, Verified, VerifyError};

/// The proof that a device may have a client token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Proof {
    /// The MP vouches the device registered on the internal network. (A struct variant: serde
    /// refuses unknown fields in an internally tagged enum's struct variants, not in its unit
    /// variants — `{"kind":"internal","x":1}` would otherwise pass.)
    Internal {},
    /// A bulk registration token.
    Bulk {
        /// The token.
        token: String,
    },
    /// The device's current client token.
    Renew {
        /// The token.
        token: String,
    },
}

/// A request for a client token (`POST /v1/client-tokens`, one batch line).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTokenRequest {
    /// `GUID:<SMS client GUID>`.
    pub device_id: String,
    /// `x5t#S256` of the client's certificate.
    pub client_cert_thumbprint: String,
    /// Why the device may have a token.
    pub proof: Proof,
}

/// A request for an access token (`POST /v1/access-tokens`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessTokenRequest {
    /// The device's client token.
    pub token: String,
    /// `x5t#S256` of the certificate the device presented.
    pub client_cert_thumbprint: String,
}

/// A request to verify a token (`POST /v1/tokens:verify`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The token.
    pub token: String,
    /// `x5t#S256` of the client certificate, for client and access tokens.
    pub client_cert_thumbprint: Option<String>,
}

/// How a token request was authorised: what the audit record says, and what must still hold
/// when the token is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    /// The MP vouched for the device (internal network).
    Internal,
    /// A bulk registration token: it must still be unblocked when the token is signed.
    Bulk(Guid),
    /// Renewal of the client token `UniqueId`.
    Renewal(String),
    /// An access token for the client token `UniqueId`.
    Access(String),
}

impl Authorization {
    /// The audit record's "authorised by" text: `internal`, `bulk:<guid>`, `renew:<UniqueId>`,
    /// `client-token:<UniqueId>`.
    pub fn audit_detail(&self) -> String {
        match self {
            Authorization::Internal => "internal".into(),
            Authorization::Bulk(g) => format!("bulk:{}", g.lower()),
            Authorization::Renewal(id) => format!("renew:{id}"),
            Authorization::Access(id) => format!("client-token:{id}"),
        }
    }

    /// Whether it still holds in `state` (a bulk token blocked since: no) — asked of the shared
    /// store itself when there is one ([`State::bulk_live`]); an error if it cannot be asked.
    pub fn still_holds(&self, state: &State) -> Result<bool, String> {
        match self {
            Authorization::Bulk(g) => Ok(crate::token::BulkRegistry::bulk_blocked(state, *g)? == Some(false)),
            _ => Ok(true),
        }
    }
}

/// `text` cut to its first 64 characters (marked with `…`): what an error message may echo of a
/// client's input — so that an answer is never much larger than the question, whatever was sent.
pub fn clip(text: &str) -> String {
    clip_to(text, 64)
}

/// `text` cut to its first `n` characters (marked with `…`).
pub fn clip_to(text: &str, n: usize) -> String {
    match text.char_indices().nth(n) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Why a request may not have a token.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The device id is not `GUID:<guid>`.
    #[error("device id {0:?} is not GUID:xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (the SMS client GUID)")]
    DeviceId(String),
    /// The thumbprint is not base64url(SHA-256).
    #[error(
        "client certificate thumbprint {0:?} is not an x5t#S256 (43 base64url characters: SHA-256 of the certificate)"
    )]
    Thumbprint(String),
    /// The proof (or presented token) was refused.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// A renewal before `renew_after_days`: the old token stays valid.
    #[error(
        "the client token is renewable from {renewable_at} (unix time; [tokens] renew_after_days after it was issued); it stays valid until then"
    )]
    RenewalTooEarly {
        /// When it becomes renewable.
        renewable_at: i64,
    },
    /// Something the decision needs could not be read: no verdict.
    #[error("{0}")]
    Unavailable(String),
}

impl From<VerifyError> for PolicyError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Rejected(r) => PolicyError::Rejected(r),
            VerifyError::Registry(e) => PolicyError::Unavailable(format!("bulk-token registry unavailable: {e}")),
        }
    }
}

/// Whether this site issued a token: its SHA-256 (hex) is in the audit log.
pub trait IssuedTokens {
    /// `Ok(true)` if a token with this SHA-256 was issued here; `Err` if the log cannot be read.
    fn issued(&self, sha256_hex: &str) -> Result<bool, String>;
}

fn check_binding(device_id: &str, thumbprint: &str) -> Result<(), PolicyError> {
    if claims::device_id(device_id).is_none() {
        return Err(PolicyError::DeviceId(clip(device_id)));
    }
    if !claims::valid_thumbprint(thumbprint) {
        return Err(PolicyError::Thumbprint(clip(thumbprint)));
    }
    Ok(())
}

/// Decides a client-token request at Unix time `now`: the device id and thumbprint, then the
/// proof, fully verified.
pub fn authorize_client(
    state: &State,
    issued: &dyn IssuedTokens,
    req: &ClientTokenRequest,
    now: i64,
) -> Result<Authorization, PolicyError> {
    check_binding(&req.device_id, &req.client_cert_thumbprint)?;
    match &req.proof {
        Proof::Internal {} => Ok(Authorization::Internal),
        Proof::Bulk { token } => {
            let presented = Presented { token, thumbprint: None, expect: Some(TokenKind::Bulk), purpose: Purpose::Use };
            let v = state.verify(presented, now)?;
            let guid = Guid::parse(v.claims.unique_id())
                .ok_or_else(|| Rejection::new(Reason::BadClaim, "UniqueId is not a GUID"))?;
            Ok(Authorization::Bulk(guid))
        }
        Proof::Renew { token } => {
            let presented = Presented {
                token,
                thumbprint: Some(&req.client_cert_thumbprint),
                expect: Some(TokenKind::Client),
                purpose: Purpose::Renewal,
            };
            let current = state.verify(presented, now)?;
            if claims::device_id(&req.device_id).as_deref() != current.claims.device_id() {
                return Err(Rejection::new(
                    Reason::BindingMismatch,
                    "the token presented for renewal belongs to another device",
                )
                .into());
            }
            renewal_rules(state, issued, token, &current, now)?;
            Ok(Authorization::Renewal(current.claims.unique_id().to_owned()))
        }
    }
}

/// SPEC §7's renewal rules for a verified current token.
fn renewal_rules(
    state: &State,
    issued: &dyn IssuedTokens,
    token: &str,
    current: &Verified,
    now: i64,
) -> Result<(), PolicyError> {
    let iat = current.claims.issued_at().unwrap_or(now);
    if current.key_status == KeyStatus::Active {
        let renewable_at = iat.saturating_add(state.renew_after);
        if now < renewable_at {
            return Err(PolicyError::RenewalTooEarly { renewable_at });
        }
        return Ok(());
    }
    // A key that stopped signing: a token that claims to be issued after it stopped is forged.
    let stopped = state.key(&current.key_id).and_then(|k| match (k.deactivates, k.revoked) {
        (Some(d), Some(r)) => Some(d.min(r)),
        (d, r) => d.or(r),
    });
    if let Some(stopped) = stopped
        && iat > stopped.saturating_add(state.policy.skew)
    {
        return Err(Rejection::new(
            Reason::BadClaim,
            format!("the token claims to be issued after key {} stopped signing", current.key_id),
        )
        .into());
    }
    // A key that was revoked (stolen, perhaps) or retired (every token it signed should have
    // expired): the token must be one this site issued — whoever holds the key can sign tokens,
    // but cannot make sitesign have issued them.
    if matches!(current.key_status, KeyStatus::Revoked | KeyStatus::Retired) {
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
        if !issued.issued(&sha256).map_err(PolicyError::Unavailable)? {
            let reason =
                if current.key_status == KeyStatus::Revoked { Reason::KeyRevoked } else { Reason::KeyNotUsable };
            return Err(Rejection::new(
                reason,
                format!(
                    "key {} is {} and this site's audit log has no record of issuing this token",
                    current.key_id,
                    current.key_status.as_str()
                ),
            )
            .into());
        }
    }
    Ok(())
}

/// Decides an access-token request: a client token that verifies, bound to the certificate.
pub fn authorize_access(
    state: &State,
    req: &AccessTokenRequest,
    now: i64,
) -> Result<(Authorization, String), PolicyError> {
    if !claims::valid_thumbprint(&req.client_cert_thumbprint) {
        return Err(PolicyError::Thumbprint(clip(&req.client_cert_thumbprint)));
    }
    let presented = Presented {
        token: &req.token,
        thumbprint: Some(&req.client_cert_thumbprint),
        expect: Some(TokenKind::Client),
        purpose: Purpose::Use,
    };
    let current = state.verify(presented, now)?;
    let device = current.claims.device_id().unwrap_or_default().to_owned();
    Ok((Authorization::Access(current.claims.unique_id().to_owned()), device))
}

/// Verifies a token for `POST /v1/tokens:verify` and `sitesign token verify`.
pub fn verify(
    state: &State,
    req: &VerifyRequest,
    expect: Option<TokenKind>,
    now: i64,
) -> Result<Verified, PolicyError> {
    let presented = Presented {
        token: &req.token,
        thumbprint: req.client_cert_thumbprint.as_deref(),
        expect,
        purpose: Purpose::Use,
    };
    Ok(state.verify(presented, now)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipped_echoes_stay_short() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(10_000);
        assert_eq!(clip(&long).chars().count(), 65);
        assert!(clip(&long).ends_with('…'));
    }

    #[test]
    fn every_proof_kind_refuses_unknown_fields() {
        let parse = |s: &str| serde_json::from_str::<Proof>(s);
        assert_eq!(parse(r#"{"kind":"internal"}"#).unwrap(), Proof::Internal {});
        assert_eq!(parse(r#"{"kind":"bulk","token":"t"}"#).unwrap(), Proof::Bulk { token: "t".into() });
        for extra in [
            r#"{"kind":"internal","x":1}"#,
            r#"{"kind":"bulk","token":"t","x":1}"#,
            r#"{"kind":"renew","token":"t","x":1}"#,
            r#"{"kind":"other"}"#,
            r#"{"token":"t"}"#,
        ] {
            assert!(parse(extra).is_err(), "{extra} was taken");
        }
    }
}
