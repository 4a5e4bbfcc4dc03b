//! Token operations on the appliance's state: the signer for the active token-signing key, the
//! verifier's keys and policy, and the bulk-token lifecycle (new, list, block, unblock).

use super::{Backends, OpsError, active_key};
use crate::audit::{AuditEvent, AuditLog};
use crate::config::Config;
use crate::store::{BulkRecord, KeyRole, Store};
use crate::token::issue::IssueError;
use crate::token::verify::{self, VerifyError};
use crate::token::{
    BULK_MAX_LIFETIME_MINUTES, Guid, IssuedToken, KeyRing, TokenKind, TokenSigner, Verified, VerifyPolicy,
};

/// The hierarchy GUID recorded at `init`.
pub fn hierarchy(store: &Store) -> Result<Guid, OpsError> {
    let text = store.meta("hierarchy_id")?.ok_or(OpsError::NotInitialised)?;
    Guid::parse(&text).ok_or_else(|| OpsError::Config(format!("the state's hierarchy_id {text:?} is not a GUID")))
}

/// A signer for the active token-signing key.
pub fn token_signer(store: &Store, backends: &Backends) -> Result<TokenSigner, OpsError> {
    let (record, _) = active_key(store, KeyRole::TokenSigning)?;
    let key = backends.key(&record)?;
    let der = record.certificate.clone().ok_or(OpsError::NotInitialised)?;
    let retire_after = record.retire_after.unwrap_or(i64::MAX);
    Ok(TokenSigner::new(key, &record.id, &der, retire_after, hierarchy(store)?)?)
}

/// The verifier's policy: this hierarchy, the configured skew.
pub fn verify_policy(store: &Store, config: &Config) -> Result<VerifyPolicy, OpsError> {
    Ok(VerifyPolicy { hierarchy: hierarchy(store)?, skew: config.tokens.clock_skew_seconds })
}

/// Every token-signing key, for verification.
pub fn key_ring(store: &Store) -> Result<KeyRing, OpsError> {
    Ok(KeyRing::from_records(&store.keys()?)?)
}

/// Verifies `token` against the state (keys, registry) as of `now`.
pub fn verify_token(
    store: &Store,
    config: &Config,
    token: &str,
    thumbprint: Option<&str>,
    expect: Option<TokenKind>,
    now: i64,
) -> Result<Result<Verified, crate::token::Rejection>, OpsError> {
    let policy = verify_policy(store, config)?;
    let keys = key_ring(store)?;
    match verify::verify(&policy, &keys, store, token, thumbprint, expect, now) {
        Ok(v) => Ok(Ok(v)),
        Err(VerifyError::Rejected(r)) => Ok(Err(r)),
        Err(VerifyError::Registry(e)) => Err(OpsError::Registry(e)),
    }
}

/// The audit event of an issued token: never the token, only its SHA-256.
pub fn token_event(token: &IssuedToken, caller: &str, subject: &str) -> AuditEvent {
    AuditEvent {
        time: token.claims.window().0,
        caller: caller.to_owned(),
        kind: format!("{}-token", token.claims.kind().as_str()),
        subject: subject.to_owned(),
        key_id: token.key_id.clone(),
        sha256: token.sha256.clone(),
    }
}

/// A new bulk registration token and its registry entry.
#[derive(Debug, Clone)]
pub struct NewBulkToken {
    /// The registry entry.
    pub record: BulkRecord,
    /// The token.
    pub token: IssuedToken,
}

/// Creates a bulk registration token valid `lifetime_minutes` (1..=10080) from `now`: checks the
/// lifetime before anything is signed, signs, makes the audit record durable and registers the
/// GUID before the token is returned — if either write fails, the token is dropped.
pub fn bulk_new(
    store: &mut Store,
    backends: &Backends,
    audit: &AuditLog,
    lifetime_minutes: i64,
    actor: &str,
    now: i64,
) -> Result<NewBulkToken, OpsError> {
    if !(1..=BULK_MAX_LIFETIME_MINUTES).contains(&lifetime_minutes) {
        return Err(IssueError::Lifetime(lifetime_minutes).into());
    }
    let signer = token_signer(store, backends)?;
    let guid = Guid::random().map_err(IssueError::from)?;
    let token = signer.bulk(guid, lifetime_minutes, now)?;
    let record = BulkRecord {
        guid: guid.lower(),
        lifetime: lifetime_minutes,
        created: now,
        expires: token.expires,
        creator: actor.to_owned(),
        key_id: token.key_id.clone(),
        blocked: false,
        changed: None,
        changed_by: None,
    };
    audit.append(vec![token_event(&token, actor, &record.guid)])?;
    store.record_bulk(&record)?;
    Ok(NewBulkToken { record, token })
}

/// Blocks (or unblocks) the bulk token `guid`; verification refuses it from the next call on.
pub fn bulk_set_blocked(
    store: &mut Store,
    guid: &str,
    blocked: bool,
    actor: &str,
    now: i64,
) -> Result<BulkRecord, OpsError> {
    let parsed = Guid::parse(guid.trim()).ok_or_else(|| OpsError::InvalidGuid(guid.to_owned()))?;
    let key = parsed.lower();
    if !store.set_bulk_blocked(&key, blocked, actor, now)? {
        return Err(OpsError::BulkTokenNotFound(key));
    }
    store.bulk_token(&key)?.ok_or(OpsError::BulkTokenNotFound(key))
}
