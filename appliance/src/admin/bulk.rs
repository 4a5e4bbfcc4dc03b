//! Bulk registration tokens (SPEC §3): created like ConfigMgr's `BulkRegistrationTokenTool.exe
//! /new`, registered by GUID (never the token itself), blocked and unblocked. A block is
//! honoured from the next verification — and re-checked when a token authorised by it is
//! signed.

use serde::{Deserialize, Serialize};

use super::{AdminContext, AdminError};
use crate::audit::AuditEvent;
use crate::keys::KeyRole;
use crate::store::BulkRecord;
use crate::token::issue::IssueError;
use crate::token::{BULK_MAX_LIFETIME_MINUTES, Guid, TokenSigner};

/// A new bulk registration token: its registry entry and the token, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewBulkToken {
    /// The token's GUID.
    pub guid: String,
    /// `exp`, Unix time.
    pub expires: i64,
    /// The lifetime asked for, minutes.
    pub lifetime_minutes: i64,
    /// The token (never stored).
    pub token: String,
}

/// Creates a bulk registration token valid `lifetime_minutes` (1..=10080) from now: checks the
/// lifetime before anything is signed, signs, makes the audit record durable and registers the
/// GUID before the token is returned — if either write fails, the token is dropped.
pub fn new(ctx: &mut AdminContext<'_>, lifetime_minutes: i64) -> Result<NewBulkToken, AdminError> {
    if !(1..=BULK_MAX_LIFETIME_MINUTES).contains(&lifetime_minutes) {
        return Err(IssueError::Lifetime(lifetime_minutes).into());
    }
    let state = ctx.state()?;
    let record = state.active(KeyRole::TokenSigning).ok_or(crate::state::StateError::NotInitialised)?;
    let signer = TokenSigner::for_record(record, ctx.backends.key(record)?, state.policy.hierarchy)?;
    let guid = Guid::random().map_err(IssueError::from)?;
    let token = signer.bulk(guid, lifetime_minutes, ctx.now)?;
    let entry = BulkRecord {
        guid: guid.lower(),
        lifetime: lifetime_minutes,
        created: ctx.now,
        expires: token.expires,
        creator: ctx.actor.to_owned(),
        key_id: token.key_id.clone(),
        blocked: false,
        changed: None,
        changed_by: None,
    };
    ctx.audit.append(vec![AuditEvent::token(&token, ctx.actor, &entry.guid, "admin".into())])?;
    ctx.store.record_bulk(&entry)?;
    Ok(NewBulkToken { guid: entry.guid, expires: entry.expires, lifetime_minutes, token: token.token })
}

/// Blocks (or unblocks) the bulk token `guid`; verification refuses it from the next call on.
pub fn set_blocked(ctx: &mut AdminContext<'_>, guid: &str, blocked: bool) -> Result<BulkRecord, AdminError> {
    let parsed = Guid::parse(guid.trim()).ok_or_else(|| AdminError::InvalidGuid(guid.to_owned()))?;
    let key = parsed.lower();
    let existing = ctx.store.bulk_token(&key)?.ok_or_else(|| AdminError::BulkTokenNotFound(key.clone()))?;
    let kind = if blocked { "bulk-token-blocked" } else { "bulk-token-unblocked" };
    ctx.audit.append(vec![AuditEvent::transition(ctx.now, ctx.actor, kind, &key, &existing.key_id, String::new())])?;
    if !ctx.store.set_bulk_blocked(&key, blocked, ctx.actor, ctx.now)? {
        return Err(AdminError::BulkTokenNotFound(key));
    }
    ctx.store.bulk_token(&key)?.ok_or(AdminError::BulkTokenNotFound(key))
}
