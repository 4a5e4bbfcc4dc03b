//! Administration: every operation that changes the appliance's keys, certificates or
//! registries, as a typed request and a typed answer — the one definition the CLI executes
//! directly (before the service exists, or while it is stopped) and the service's admin socket
//! serves (once it runs: the service owns the devices, and a TPM serves one client at a time).
//!
//! - [`init`]: the hierarchy (SMS Issuing root, first token-signing key, TLS key);
//! - [`keys`]: the life of a key — rotation, retirement, revocation — each planned first;
//! - [`certs`]: role certificates from PKCS#10 requests, their revocation, CRLs;
//! - [`bulk`]: bulk registration tokens and their block list.
//!
//! Each operation touches the devices first and records in the store last, in one transaction,
//! after its audit records are durable: a failure leaves the state as it was, and any key
//! already generated is reported (and listed by `keys list`) as an orphan to delete.

pub mod bulk;
pub mod certs;
mod change;
pub mod init;
pub mod keys;

use serde::{Deserialize, Serialize};

use crate::audit::{AuditError, AuditLog};
use crate::backends::{BackendError, Backends};
use crate::config::Config;
use crate::keys::KeyRole;
use crate::pki::{PkiError, RoleProfile};
use crate::selftest::SelfTestError;
use crate::state::{State, StateError};
use crate::store::{Orphan, Store, StoreError};
use crate::time::{TimeError, When};
use crate::token::issue::IssueError;

pub use bulk::NewBulkToken;
pub use certs::{CertView, CrlView, RevocationReason};
pub use change::Plan;
pub use keys::KeyView;

/// Why an administrative operation failed. Nothing was changed unless the error says so
/// ([`AdminError::Orphans`] names keys left in a device).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// A device failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Issuing a certificate or CRL failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A new key failed its self-test.
    #[error(transparent)]
    SelfTest(#[from] SelfTestError),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The state could not be read.
    #[error(transparent)]
    State(#[from] StateError),
    /// The configuration lacks what the operation needs.
    #[error("{0}")]
    Config(String),
    /// `init` on a state that is already initialised.
    #[error(
        "already initialised on {since}; refusing to create a second hierarchy (use --force to set the old state aside)"
    )]
    AlreadyInitialised {
        /// When the state was initialised.
        since: String,
    },
    /// A token could not be issued.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// The audit record could not be made durable: nothing was released or changed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A time or duration argument was not understood.
    #[error(transparent)]
    Time(#[from] TimeError),
    /// A GUID argument that is not a GUID.
    #[error("{0:?} is not a GUID: give it as xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (see `sitesign bulk-token list`)")]
    InvalidGuid(String),
    /// No bulk token has this GUID.
    #[error("no bulk token {0} is registered (see `sitesign bulk-token list`)")]
    BulkTokenNotFound(String),
    /// No key has this id.
    #[error("no key {0:?} in the inventory (see `sitesign keys list`)")]
    UnknownKey(String),
    /// No certificate has this serial.
    #[error("no certificate with serial {0:?} was issued here (see `sitesign cert list`)")]
    UnknownCertificate(String),
    /// The operation is refused as it stands; the message says what to do instead.
    #[error("{message}")]
    Refused {
        /// A stable code (`rotation_pending`, `only_active_key`, `tokens_still_valid`, …).
        code: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// Keys were generated in a device but the operation failed before recording them.
    #[error("{cause}; nothing was recorded, and these keys were left in the device (delete them, or leave them unused; `sitesign keys list` lists them): {}", orphans.join(", "))]
    Orphans {
        /// What failed.
        cause: Box<AdminError>,
        /// URIs of the keys left in the device.
        orphans: Vec<String>,
    },
}

impl AdminError {
    /// A stable identifier for the CLI, the admin socket and logs.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::Backend(e) => e.code(),
            AdminError::Pki(e) => e.code(),
            AdminError::SelfTest(e) => e.code(),
            AdminError::Store(StoreError::Conflict) => "state_changed",
            AdminError::Store(_) => "state_store",
            AdminError::State(StateError::NotInitialised) => "not_initialised",
            AdminError::State(_) => "state_store",
            AdminError::Config(_) => "config",
            AdminError::AlreadyInitialised { .. } => "already_initialised",
            AdminError::Issue(e) => e.code(),
            AdminError::Audit(_) => "audit_unavailable",
            AdminError::Time(_) => "invalid_time",
            AdminError::InvalidGuid(_) => "invalid_guid",
            AdminError::BulkTokenNotFound(_) => "bulk_token_not_found",
            AdminError::UnknownKey(_) => "unknown_key",
            AdminError::UnknownCertificate(_) => "unknown_certificate",
            AdminError::Refused { code, .. } => code,
            AdminError::Orphans { cause, .. } => cause.code(),
        }
    }

    pub(crate) fn refused(code: &'static str, message: impl Into<String>) -> AdminError {
        AdminError::Refused { code, message: message.into() }
    }

    /// The error with the keys generated so far named as orphans (and recorded as such, best
    /// effort, so that `keys list` shows them).
    pub(crate) fn with_orphans(self, store: &mut Store, orphans: &[Orphan]) -> AdminError {
        if orphans.is_empty() {
            return self;
        }
        let noted: Vec<Orphan> = orphans.iter().map(|o| Orphan { cause: self.to_string(), ..o.clone() }).collect();
        if let Err(e) = store.record_orphans(&noted) {
            tracing::warn!(error = %e, "could not list the orphaned keys in the state store");
        }
        AdminError::Orphans { cause: Box::new(self), orphans: orphans.iter().map(|o| o.uri.clone()).collect() }
    }
}

/// What to rotate (`sitesign rotate …`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// Which key.
    pub role: KeyRole,
    /// Algorithm of the new key (token signing: `rsa-2048` or `ec-p256`); default the
    /// configured one.
    #[serde(default)]
    pub algorithm: Option<hsm_adapters::KeyAlgorithm>,
    /// Token signing: publish this many seconds before activating (default 24 h).
    #[serde(default)]
    pub publish_ahead_seconds: Option<i64>,
    /// Token signing: when the new key starts signing.
    #[serde(default)]
    pub activate_at: Option<When>,
    /// Only plan.
    #[serde(default)]
    pub dry_run: bool,
    /// Carry the plan out only if the state is still the one it was made on.
    #[serde(default)]
    pub expect_generation: Option<i64>,
}

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
        profile: RoleProfile,
        /// The request, PEM (or DER in base64url).
        csr: String,
    },
    /// List every certificate issued.
    CertList,
    /// Revoke a role certificate.
    CertRevoke {
        /// Its serial, hex.
        serial: String,
        /// Why.
        #[serde(default)]
        reason: Option<RevocationReason>,
        /// Only plan.
        #[serde(default)]
        dry_run: bool,
    },
    /// Sign a fresh CRL for every SMS Issuing root that still verifies.
    CertCrl,
    /// The key inventory.
    KeysList,
    /// Rotate a key.
    Rotate(RotateRequest),
    /// Retire a key.
    KeyRetire {
        /// Its id.
        key: String,
        /// Retire even while tokens it signed are still valid.
        #[serde(default)]
        force: bool,
        /// Only plan.
        #[serde(default)]
        dry_run: bool,
        /// See [`RotateRequest::expect_generation`].
        #[serde(default)]
        expect_generation: Option<i64>,
    },
    /// Revoke a key (emergency).
    KeyRevoke {
        /// Its id.
        key: String,
        /// Why (recorded and shown).
        reason: String,
        /// Only plan.
        #[serde(default)]
        dry_run: bool,
        /// See [`RotateRequest::expect_generation`].
        #[serde(default)]
        expect_generation: Option<i64>,
    },
}

/// An admin answer; with `--json` the CLI prints it as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum AdminResponse {
    /// A new bulk token.
    BulkTokenCreated(NewBulkToken),
    /// The bulk-token registry.
    BulkTokens {
        /// Newest first.
        bulk_tokens: Vec<crate::store::BulkRecord>,
    },
    /// A bulk token after a block or unblock.
    BulkToken {
        /// Its registry entry.
        bulk_token: crate::store::BulkRecord,
    },
    /// A certificate just issued.
    CertificateIssued {
        /// The certificate.
        certificate: CertView,
        /// Its PEM.
        pem: String,
    },
    /// Every certificate issued.
    Certificates {
        /// Oldest first.
        certificates: Vec<CertView>,
    },
    /// CRLs just signed.
    Crls {
        /// One per root.
        crls: Vec<CrlView>,
    },
    /// The key inventory.
    Keys {
        /// Every key, oldest first.
        keys: Vec<KeyView>,
        /// Keys left in devices by failed operations.
        orphans: Vec<Orphan>,
    },
    /// What an operation will do, or did.
    Plan {
        /// The plan.
        plan: Plan,
        /// Whether it was carried out (false for `--dry-run`).
        done: bool,
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
    /// Who acts (`cli:uid=N`, `admin:uid=N`).
    pub actor: &'a str,
    /// When, Unix time.
    pub now: i64,
}

impl AdminContext<'_> {
    /// The state as of now.
    pub fn state(&self) -> Result<State, AdminError> {
        Ok(State::load(self.store, self.config, self.now)?)
    }

    /// The `[pki]` table, which key operations need.
    pub fn pki(&self) -> Result<&crate::config::PkiConfig, AdminError> {
        self.config.pki.as_ref().ok_or_else(|| AdminError::Config("the configuration has no [pki] table".into()))
    }
}

/// Signs and witnesses a checkpoint of the audit log's head after a change ([`crate::witness`]),
/// so that the records the change wrote cannot be cut from the log unnoticed. Best effort: the
/// change is done; a failure is logged, and the service's next checkpoint tries again.
pub fn witness_head(ctx: &mut AdminContext<'_>) {
    let result = (|| -> Result<(), String> {
        let state = ctx.state().map_err(|e| e.to_string())?;
        let Some(record) = state.active(KeyRole::TokenSigning) else { return Ok(()) };
        let key = ctx.backends.key(record).map_err(|e| e.to_string())?;
        let (id, scheme) = (record.id.clone(), key.algorithm().default_scheme());
        let sign: crate::audit::CheckpointSigner =
            Box::new(move |statement| key.sign(scheme, statement).map(|s| (id, s)).map_err(|e| e.to_string()));
        crate::witness::checkpoint(ctx.audit, ctx.store, ctx.config.audit.anchor_file.as_deref(), sign)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })();
    if let Err(e) = result {
        tracing::warn!(error = %e, "the audit head could not be witnessed after this change");
    }
}

/// Executes `request`; after a change, witnesses the audit log's new head.
pub fn execute(ctx: &mut AdminContext<'_>, request: &AdminRequest) -> Result<AdminResponse, AdminError> {
    let response = apply(ctx, request)?;
    if changed(request, &response) {
        witness_head(ctx);
    }
    Ok(response)
}

/// Whether `request`, answered `response`, changed something (and wrote audit records).
pub fn changed(request: &AdminRequest, response: &AdminResponse) -> bool {
    let listing = matches!(request, AdminRequest::BulkList | AdminRequest::CertList | AdminRequest::KeysList);
    !listing && !matches!(response, AdminResponse::Plan { done: false, .. })
}

/// Whether `request` takes authority away (a bulk token blocked, a certificate or key revoked,
/// a key retired): the service records and takes it up with its signing workers held off.
pub fn restricts(request: &AdminRequest) -> bool {
    matches!(
        request,
        AdminRequest::BulkBlock { .. }
            | AdminRequest::CertRevoke { dry_run: false, .. }
            | AdminRequest::KeyRevoke { dry_run: false, .. }
            | AdminRequest::KeyRetire { dry_run: false, .. }
    )
}

/// Executes `request` without witnessing the audit head afterwards ([`execute`] does both).
pub fn apply(ctx: &mut AdminContext<'_>, request: &AdminRequest) -> Result<AdminResponse, AdminError> {
    Ok(match request {
        AdminRequest::BulkNew { lifetime_minutes } => {
            AdminResponse::BulkTokenCreated(bulk::new(ctx, *lifetime_minutes)?)
        }
        AdminRequest::BulkList => AdminResponse::BulkTokens { bulk_tokens: ctx.store.bulk_tokens()? },
        AdminRequest::BulkBlock { guid } => {
            AdminResponse::BulkToken { bulk_token: bulk::set_blocked(ctx, guid, true)? }
        }
        AdminRequest::BulkUnblock { guid } => {
            AdminResponse::BulkToken { bulk_token: bulk::set_blocked(ctx, guid, false)? }
        }
        AdminRequest::CertIssue { profile, csr } => {
            let bytes = crate::token::b64::decode(csr).unwrap_or_else(|| csr.as_bytes().to_vec());
            let (certificate, pem) = certs::issue_from_csr(ctx, *profile, &bytes)?;
            AdminResponse::CertificateIssued { certificate, pem }
        }
        AdminRequest::CertList => AdminResponse::Certificates { certificates: certs::list(ctx)? },
        AdminRequest::CertRevoke { serial, reason, dry_run } => {
            let (plan, done) = certs::revoke(ctx, serial, reason.unwrap_or(RevocationReason::Unspecified), *dry_run)?;
            AdminResponse::Plan { plan, done }
        }
        AdminRequest::CertCrl => AdminResponse::Crls { crls: certs::sign_crls(ctx)? },
        AdminRequest::KeysList => {
            AdminResponse::Keys { keys: keys::list(&ctx.state()?), orphans: ctx.store.orphans()? }
        }
        AdminRequest::Rotate(r) => {
            let (plan, done) = keys::rotate(ctx, r)?;
            AdminResponse::Plan { plan, done }
        }
        AdminRequest::KeyRetire { key, force, dry_run, expect_generation } => {
            let (plan, done) = keys::retire(ctx, key, *force, *dry_run, *expect_generation)?;
            AdminResponse::Plan { plan, done }
        }
        AdminRequest::KeyRevoke { key, reason, dry_run, expect_generation } => {
            let (plan, done) = keys::revoke(ctx, key, reason, *dry_run, *expect_generation)?;
            AdminResponse::Plan { plan, done }
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
        let r: AdminRequest =
            serde_json::from_str(r#"{"op":"rotate","role":"token-signing","activate_at":"now"}"#).unwrap();
        let AdminRequest::Rotate(r) = r else { panic!("{r:?}") };
        assert_eq!((r.role, r.activate_at, r.dry_run), (KeyRole::TokenSigning, Some(When::Now), false));
        let r: AdminRequest = serde_json::from_str(r#"{"op":"cert-issue","profile":"mp-client","csr":"x"}"#).unwrap();
        assert!(matches!(r, AdminRequest::CertIssue { profile: RoleProfile::MpClient, .. }));
        assert!(
            serde_json::from_str::<AdminRequest>(r#"{"op":"cert-issue","profile":"sms-issuing","csr":"x"}"#).is_err()
        );
    }
}
