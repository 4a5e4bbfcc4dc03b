//! The life of a key (SPEC §7): rotation of the token-signing key (published ahead, activated
//! later, the old key verify-only until its last token expires), of the SMS Issuing root
//! (cross-certified both ways, sitesign's own certificates re-issued under the new root), and of
//! the TLS key; retirement; revocation. Every operation makes a [`Plan`] first — what is
//! published, activated and retired when, which tokens stay valid until when — and stops there
//! with `dry_run`.
//!
//! Nothing here flips a state later: a plan writes the keys' schedules (`activates`,
//! `deactivates`, `retires`) and every reader computes the state from them (see [`crate::keys`]).

use std::sync::Arc;

use hsm_adapters::KeyAlgorithm;
use serde::{Deserialize, Serialize};

use super::change::{
    Generated, IssuerRef, Plan, Work, active_issuer, certify, commit, generate, issuer_of, key_name_suffix, own_request,
};
use super::{AdminContext, AdminError, RotateRequest};
use crate::audit::AuditEvent;
use crate::config::KeyPlan;
use crate::keys::{KeyRecord, KeyRole, KeyStatus};
use crate::pki::{self, Issued, ProfileKind, Request};
use crate::state::State;
use crate::store::{CertRecord, ChangeSet, CrlRecord, KeySchedule, Revocation};
use crate::time::rfc3339;
use crate::token::LONGEST_LIFETIME;

/// Default `--publish-ahead`: relying parties have a day to fetch the new key before it signs.
pub const DEFAULT_PUBLISH_AHEAD: i64 = 24 * 3600;
/// Below this lead time a rotation warns that relying parties may not have the new key yet
/// (the JWKS answer may be cached for 300 s).
const CACHE_SECONDS: i64 = 300;

/// A key as `sitesign keys list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    /// Its id.
    pub id: String,
    /// What it is for.
    pub role: KeyRole,
    /// Its backend.
    pub backend: String,
    /// Its URI.
    pub uri: String,
    /// Its algorithm.
    pub algorithm: String,
    /// Its state now.
    pub status: KeyStatus,
    /// When it was generated (RFC 3339).
    pub created: String,
    /// When it starts (started) signing.
    pub activates: Option<String>,
    /// When it stops (stopped) signing.
    pub deactivates: Option<String>,
    /// When it retires (retired).
    pub retires: Option<String>,
    /// When it was revoked.
    pub revoked: Option<String>,
    /// Why.
    pub revoke_reason: Option<String>,
    /// End of its current certificate.
    pub not_after: String,
    /// `x5t` of its current certificate.
    pub x5t: Option<String>,
    /// `x5t#S256` of its current certificate.
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: Option<String>,
    /// How many certificates it has (2 or more after an issuing-root rotation).
    pub certificates: usize,
}

impl KeyView {
    /// The view of `k` at time `at`.
    pub fn of(k: &KeyRecord, at: i64) -> KeyView {
        KeyView {
            id: k.id.clone(),
            role: k.role,
            backend: k.backend.clone(),
            uri: k.uri.clone(),
            algorithm: k.algorithm.clone(),
            status: k.status_at(at),
            created: rfc3339(k.created),
            activates: k.activates.map(rfc3339),
            deactivates: k.deactivates.map(rfc3339),
            retires: k.retires.map(rfc3339),
            revoked: k.revoked.map(rfc3339),
            revoke_reason: k.revoke_reason.clone(),
            not_after: rfc3339(k.not_after),
            x5t: k.x5t(),
            x5t_s256: k.x5t_s256(),
            certificates: k.certificates.len(),
        }
    }
}

/// The inventory, oldest first.
pub fn list(state: &State) -> Vec<KeyView> {
    state.keys.iter().map(|k| KeyView::of(k, state.at)).collect()
}

fn key_plan(ctx: &AdminContext<'_>, role: KeyRole, algorithm: Option<KeyAlgorithm>) -> Result<KeyPlan, AdminError> {
    let pki_config = ctx.pki()?;
    let mut plan = match role {
        KeyRole::Issuing => pki_config.issuing.clone(),
        KeyRole::TokenSigning => pki_config.token_signing.clone(),
        KeyRole::Tls => pki_config.tls.clone(),
    };
    if let Some(a) = algorithm {
        let allowed: &[KeyAlgorithm] = match role {
            KeyRole::TokenSigning => &[KeyAlgorithm::Rsa2048, KeyAlgorithm::EcP256],
            KeyRole::Issuing => &[KeyAlgorithm::Rsa2048, KeyAlgorithm::Rsa3072, KeyAlgorithm::Rsa4096],
            KeyRole::Tls => &KeyAlgorithm::ALL,
        };
        if !allowed.contains(&a) {
            let names: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
            return Err(AdminError::refused(
                "unsupported",
                format!("a {} key must be one of {}", role.as_str(), names.join(", ")),
            ));
        }
        plan.algorithm = a;
    }
    Ok(plan)
}

/// When a token-signing key that stops signing at `deactivates` retires: once every token it
/// signed has expired (never sooner than the longest lifetime it signs), plus the skew.
fn retirement_after(key: &KeyRecord, deactivates: i64, skew: i64) -> i64 {
    deactivates.saturating_add(LONGEST_LIFETIME).min(key.not_after).max(deactivates).saturating_add(skew)
}

fn transition(ctx: &AdminContext<'_>, kind: &str, key: &KeyRecord, detail: String) -> AuditEvent {
    AuditEvent::transition(ctx.now, ctx.actor, kind, &key.id, &key.id, detail)
}

/// What revoking `key` does to certificates: every certificate that certifies it — its own, and
/// for a root the cross-certificates other roots made for it — is revoked (keyCompromise) and
/// listed on a fresh CRL of each issuer that still verifies, all in the caller's change.
struct CertificateRevocations {
    revocations: Vec<Revocation>,
    crls: Vec<CrlRecord>,
    events: Vec<AuditEvent>,
}

fn revoke_certificates_of(
    ctx: &AdminContext<'_>,
    state: &State,
    key: &KeyRecord,
) -> Result<CertificateRevocations, AdminError> {
    let spki = key.certificate().and_then(|der| {
        let cert = pki::parse_certificate(der).ok()?;
        der::Encode::to_der(cert.tbs_certificate().subject_public_key_info()).ok()
    });
    let certifies_key = |c: &CertRecord| {
        c.subject_key.as_deref() == Some(key.id.as_str())
            || (c.profile == ProfileKind::CrossCertificate.as_str()
                && spki.is_some()
                && pki::parse_certificate(&c.der)
                    .ok()
                    .and_then(|cert| der::Encode::to_der(cert.tbs_certificate().subject_public_key_info()).ok())
                    == spki)
    };
    let mut out = CertificateRevocations { revocations: Vec::new(), crls: Vec::new(), events: Vec::new() };
    let certs = ctx.store.certificates()?;
    for c in certs.iter().filter(|c| c.revoked.is_none() && c.not_after > ctx.now && certifies_key(c)) {
        out.revocations.push(Revocation {
            serial: c.serial.clone(),
            at: ctx.now,
            reason: "key-compromise".into(),
            by: ctx.actor.to_owned(),
        });
        out.events.push(AuditEvent::transition(
            ctx.now,
            ctx.actor,
            "certificate-revoked",
            &c.subject,
            &c.issuer_key,
            format!("serial {}; key-compromise: key {} revoked", c.serial, key.id),
        ));
    }
    let mut issuers: Vec<&str> = certs
        .iter()
        .filter(|c| out.revocations.iter().any(|r| r.serial == c.serial))
        .map(|c| c.issuer_key.as_str())
        .collect();
    issuers.sort_unstable();
    issuers.dedup();
    let mut number = 0;
    for issuer in issuers {
        let Some(root) = state.key(issuer).filter(|r| r.id != key.id && r.status_at(ctx.now).verifies()) else {
            continue;
        };
        let crl = super::certs::build_crl(ctx.store, &issuer_of(ctx, root)?, ctx.now, &out.revocations, number)?;
        number = crl.number;
        out.events.push(super::certs::crl_event(ctx.now, ctx.actor, &crl));
        out.crls.push(crl);
    }
    Ok(out)
}

impl CertificateRevocations {
    fn into_change(self, changes: &mut ChangeSet, events: &mut Vec<AuditEvent>) {
        changes.revocations.extend(self.revocations);
        changes.crls.extend(self.crls);
        events.extend(self.events);
    }
}

/// `sitesign rotate ROLE`.
pub fn rotate(ctx: &mut AdminContext<'_>, req: &RotateRequest) -> Result<(Plan, bool), AdminError> {
    let state = ctx.state()?;
    if req.expect_generation.is_some_and(|g| g != state.generation) {
        return Err(crate::store::StoreError::Conflict.into());
    }
    match req.role {
        KeyRole::TokenSigning => rotate_token_signing(ctx, &state, req, None),
        KeyRole::Tls => {
            if req.activate_at.is_some() || req.publish_ahead_seconds.is_some() {
                return Err(AdminError::refused(
                    "usage",
                    "--activate-at and --publish-ahead are for token-signing keys",
                ));
            }
            replace_tls(ctx, &state, req.algorithm, req.dry_run, None)
        }
        KeyRole::Issuing => {
            if req.activate_at.is_some() || req.publish_ahead_seconds.is_some() {
                return Err(AdminError::refused(
                    "usage",
                    "--activate-at and --publish-ahead are for token-signing keys",
                ));
            }
            replace_issuing(ctx, &state, req.algorithm, req.dry_run, None)
        }
    }
}

/// Rotates the token-signing key — or, with `revoke`, replaces it at once and revokes the old.
fn rotate_token_signing(
    ctx: &mut AdminContext<'_>,
    state: &State,
    req: &RotateRequest,
    revoke: Option<&str>,
) -> Result<(Plan, bool), AdminError> {
    let now = ctx.now;
    let old = state.active(KeyRole::TokenSigning).ok_or(crate::state::StateError::NotInitialised)?.clone();
    if let Some(p) = crate::keys::pending(&state.keys, KeyRole::TokenSigning, now) {
        return Err(AdminError::refused(
            "rotation_pending",
            format!(
                "key {} is already waiting to become active at {}; cancel that rotation with `sitesign keys retire {}` first, or wait",
                p.id,
                p.activates.map(rfc3339).unwrap_or_else(|| "an unscheduled time".into()),
                p.id
            ),
        ));
    }
    let activates = match (req.activate_at, req.publish_ahead_seconds) {
        (Some(_), Some(_)) => {
            return Err(AdminError::refused("usage", "give --activate-at or --publish-ahead, not both"));
        }
        (Some(when), None) => when.resolve(now),
        (None, ahead) => now.saturating_add(ahead.unwrap_or(DEFAULT_PUBLISH_AHEAD)),
    };
    if activates < now {
        return Err(AdminError::refused(
            "activate_at_in_past",
            format!("--activate-at {} is in the past; give a later time, or `now`", rfc3339(activates)),
        ));
    }
    // The old key must be able to sign until the new one takes over, and the new one must be
    // able to sign once it does.
    let horizon = old.not_after.min(now.saturating_add(365 * 86_400));
    if activates >= horizon {
        return Err(AdminError::refused(
            "activate_at_too_late",
            format!(
                "the new key would activate at {}, but {} can sign only until {} (and a rotation is planned at most a year ahead); give an earlier time",
                rfc3339(activates),
                old.id,
                rfc3339(horizon)
            ),
        ));
    }
    let key_plan = key_plan(ctx, KeyRole::TokenSigning, req.algorithm)?;
    let backend = ctx.backends.get(&key_plan.backend)?;
    if !backend.capabilities().key_algorithms.contains(&key_plan.algorithm) {
        return Err(AdminError::refused(
            "unsupported",
            format!("backend {:?} cannot generate {} keys", key_plan.backend, key_plan.algorithm),
        ));
    }
    let skew = ctx.config.tokens.clock_skew_seconds;
    let retires = retirement_after(&old, activates, skew);
    let root = state.active(KeyRole::Issuing).ok_or(crate::state::StateError::NotInitialised)?;
    let action = match revoke {
        Some(_) => format!("keys revoke {}", old.id),
        None => "rotate token-signing".to_owned(),
    };
    let mut plan = Plan::new(action, state);
    plan.step(format!(
        "generate a new {} token-signing key in backend {:?} and certify it under SMS Issuing ({})",
        key_plan.algorithm, key_plan.backend, root.id
    ));
    plan.step(format!("{}: publish it (JWKS, /v1/certificates, cert export) — pending", rfc3339(now)));
    plan.step(format!("{}: it becomes active and signs every new token", rfc3339(activates)));
    match revoke {
        Some(reason) => plan.step(format!(
            "{}: {} is revoked ({reason}): its tokens are refused at once (key_revoked); devices renew them under the new key through the batch endpoint",
            rfc3339(now),
            old.id
        )),
        None => {
            plan.step(format!(
                "{}: {} becomes verify-only; the tokens it signed stay valid until their own exp",
                rfc3339(activates),
                old.id
            ));
            plan.step(format!(
                "{}: {} retires — every token it signed has expired by then (client tokens last 90 days); they can be renewed under the new key at any time before",
                rfc3339(retires),
                old.id
            ));
        }
    }
    if revoke.is_none() && activates - now < CACHE_SECONDS {
        plan.warnings.push(format!(
            "the new key activates {}: relying parties that cache the JWKS (up to {CACHE_SECONDS} s) may not have it yet and refuse its first tokens; use --publish-ahead for a planned rotation",
            if activates == now { "now".to_owned() } else { format!("in {} s", activates - now) }
        ));
    }
    if req.dry_run {
        return Ok((plan, false));
    }
    let (work, new, issued, cert) = successor(ctx, state, &key_plan, KeyRole::TokenSigning, ProfileKind::TokenSigning)?;
    let mut record = new.record;
    record.activates = Some(activates);
    record.not_after = issued.not_after;
    let mut old_schedule = KeySchedule::from(&old);
    let mut events = vec![
        AuditEvent::certificate(&cert, ctx.actor),
        transition(ctx, "key-scheduled", &record, format!("pending; activates {}", rfc3339(activates))),
    ];
    match revoke {
        Some(reason) => {
            old_schedule.revoked = Some(now);
            old_schedule.revoke_reason = Some(reason.to_owned());
            events.push(transition(ctx, "key-revoked", &old, format!("{reason}; replaced by {}", record.id)));
        }
        None => {
            old_schedule.deactivates = Some(activates);
            old_schedule.retires = Some(retires);
            events.push(transition(
                ctx,
                "key-scheduled",
                &old,
                format!(
                    "verify-only from {}; retires {}; replaced by {}",
                    rfc3339(activates),
                    rfc3339(retires),
                    record.id
                ),
            ));
        }
    }
    let revoked = revoke.is_some().then_some(&old);
    plan.new_keys.push(commit_successor(ctx, state, &work, events, record, cert, old_schedule, revoked)?);
    Ok((plan, true))
}

/// Generates the successor of a token-signing or TLS key and certifies it under the active SMS
/// Issuing root. On failure the generated key is recorded as an orphan, never left unaccounted.
fn successor(
    ctx: &mut AdminContext<'_>,
    state: &State,
    key_plan: &KeyPlan,
    role: KeyRole,
    profile: ProfileKind,
) -> Result<(Work, Generated, Issued, CertRecord), AdminError> {
    let mut work = Work::default();
    let suffix = key_name_suffix(ctx.now)?;
    let made = (|| {
        let new = generate(ctx, &mut work, key_plan, role, &suffix)?;
        let issuer = active_issuer(ctx, state)?;
        let request = own_request(ctx, role, new.key.as_ref(), profile)?;
        let (issued, cert) = certify(ctx, &issuer, &request, Some(&new.record.id))?;
        Ok::<_, AdminError>((new, issued, cert))
    })();
    let (new, issued, cert) = made.map_err(|e| e.with_orphans(ctx.store, &work.orphans))?;
    Ok((work, new, issued, cert))
}

/// Records a successor key, its certificate and its predecessor's new schedule in one change,
/// with the predecessor's certificates revoked (and the CRLs that list them) when `revoked` is
/// that predecessor. Returns the successor's id.
#[allow(clippy::too_many_arguments)] // one call per kind of replacement; a struct would only rename them
fn commit_successor(
    ctx: &mut AdminContext<'_>,
    state: &State,
    work: &Work,
    mut events: Vec<AuditEvent>,
    record: KeyRecord,
    cert: CertRecord,
    old_schedule: KeySchedule,
    revoked: Option<&KeyRecord>,
) -> Result<String, AdminError> {
    let mut changes = ChangeSet {
        expect_generation: Some(state.generation),
        new_keys: vec![record.clone()],
        certificates: vec![cert],
        schedules: vec![old_schedule],
        ..ChangeSet::default()
    };
    if let Some(old) = revoked {
        revoke_certificates_of(ctx, state, old)
            .map_err(|e| e.with_orphans(ctx.store, &work.orphans))?
            .into_change(&mut changes, &mut events);
    }
    commit(ctx, work, events, &changes)?;
    Ok(record.id)
}

/// Replaces the TLS key at once (`rotate tls`, or the revocation of the TLS key): new
/// connections get the new key; open ones finish with theirs.
fn replace_tls(
    ctx: &mut AdminContext<'_>,
    state: &State,
    algorithm: Option<KeyAlgorithm>,
    dry_run: bool,
    revoke: Option<(&KeyRecord, &str)>,
) -> Result<(Plan, bool), AdminError> {
    let now = ctx.now;
    let old = state.active(KeyRole::Tls).ok_or(crate::state::StateError::NotInitialised)?.clone();
    let key_plan = key_plan(ctx, KeyRole::Tls, algorithm)?;
    let action = match revoke {
        Some((k, _)) => format!("keys revoke {}", k.id),
        None => "rotate tls".into(),
    };
    let mut plan = Plan::new(action, state);
    plan.step(format!(
        "generate a new {} TLS key in backend {:?}, certified under SMS Issuing for {:?}",
        key_plan.algorithm,
        key_plan.backend,
        ctx.pki()?.tls_names
    ));
    plan.step(format!(
        "{}: new connections get the new key and certificate; open ones finish with the old",
        rfc3339(now)
    ));
    match revoke {
        Some((k, reason)) => plan.step(format!("{}: {} is revoked ({reason})", rfc3339(now), k.id)),
        None => plan.step(format!("{}: {} retires", rfc3339(now), old.id)),
    }
    if dry_run {
        return Ok((plan, false));
    }
    let (work, new, issued, cert) = successor(ctx, state, &key_plan, KeyRole::Tls, ProfileKind::ApplianceTls)?;
    let mut record = new.record;
    record.activates = Some(now);
    record.not_after = issued.not_after;
    let mut old_schedule = KeySchedule::from(&old);
    old_schedule.deactivates = Some(now);
    old_schedule.retires = Some(now);
    let mut events =
        vec![AuditEvent::certificate(&cert, ctx.actor), transition(ctx, "key-scheduled", &record, "active".into())];
    match revoke {
        Some((_, reason)) => {
            old_schedule.revoked = Some(now);
            old_schedule.revoke_reason = Some(reason.to_owned());
            events.push(transition(ctx, "key-revoked", &old, reason.to_owned()));
        }
        None => events.push(transition(ctx, "key-scheduled", &old, format!("retired; replaced by {}", record.id))),
    }
    let revoked = revoke.is_some().then_some(&old);
    plan.new_keys.push(commit_successor(ctx, state, &work, events, record, cert, old_schedule, revoked)?);
    Ok((plan, true))
}

/// Replaces the SMS Issuing root at once (`rotate issuing`, or its revocation): a new root key
/// and self-signed certificate; cross-certificates both ways (unless the old root is revoked: a
/// compromised key vouches for nothing); sitesign's own token-signing and TLS certificates
/// re-issued under the new root. The old root keeps verifying the role certificates it issued
/// until the last of them expires.
fn replace_issuing(
    ctx: &mut AdminContext<'_>,
    state: &State,
    algorithm: Option<KeyAlgorithm>,
    dry_run: bool,
    revoke: Option<(&KeyRecord, &str)>,
) -> Result<(Plan, bool), AdminError> {
    let now = ctx.now;
    let old = state.active(KeyRole::Issuing).ok_or(crate::state::StateError::NotInitialised)?.clone();
    let key_plan = key_plan(ctx, KeyRole::Issuing, algorithm)?;
    // Sitesign's own keys that need a certificate from the new root.
    let reissue: Vec<KeyRecord> = state
        .keys
        .iter()
        .filter(|k| match k.role {
            KeyRole::TokenSigning => {
                matches!(k.status_at(now), KeyStatus::Pending | KeyStatus::Active | KeyStatus::VerifyOnly)
            }
            KeyRole::Tls => k.status_at(now) == KeyStatus::Active,
            KeyRole::Issuing => false,
        })
        .cloned()
        .collect();
    let certs = ctx.store.certificates()?;
    let old_retires = certs
        .iter()
        .filter(|c| {
            c.issuer_key == old.id
                && c.revoked.is_none()
                && c.not_after > now
                && c.subject_key.as_deref() != Some(&old.id)
        })
        .map(|c| c.not_after)
        .max()
        .unwrap_or(now)
        .min(old.not_after);
    let action = match revoke {
        Some((k, _)) => format!("keys revoke {}", k.id),
        None => "rotate issuing".into(),
    };
    let mut plan = Plan::new(action, state);
    plan.step(format!(
        "generate a new {} SMS Issuing key in backend {:?} and its self-signed root certificate",
        key_plan.algorithm, key_plan.backend
    ));
    if revoke.is_none() {
        plan.step(format!("cross-certify: {} signs the new root, the new root signs {}", old.id, old.id));
    }
    for k in &reissue {
        plan.step(format!(
            "re-issue the {} certificate of {} under the new root (its old certificate stays valid)",
            k.role.as_str(),
            k.id
        ));
    }
    match revoke {
        Some((k, reason)) => {
            plan.step(format!("{}: {} is revoked ({reason}); certificates it issued are no longer trusted", rfc3339(now), k.id));
            plan.warnings.push(
                "management points whose certificates came from the revoked root cannot connect until they are re-enrolled (`sitesign cert issue`)"
                    .into(),
            );
        }
        None => plan.step(format!(
            "{}: {} becomes verify-only: certificates it issued (management points' among them) keep working until they expire; it retires {}",
            rfc3339(now),
            old.id,
            rfc3339(old_retires)
        )),
    }
    plan.warnings.push(
        "import the new trust bundle (`sitesign cert export`) where ConfigMgr and relying parties trust SMS Issuing"
            .into(),
    );
    if dry_run {
        return Ok((plan, false));
    }
    let mut work = Work::default();
    let suffix = key_name_suffix(now)?;
    let made = (|| {
        let new = generate(ctx, &mut work, &key_plan, KeyRole::Issuing, &suffix)?;
        let self_signed = IssuerRef { id: new.record.id.clone(), key: Arc::clone(&new.key), cert: None };
        let request = own_request(ctx, KeyRole::Issuing, new.key.as_ref(), ProfileKind::SmsIssuing)?;
        let (root_issued, root_cert) = certify(ctx, &self_signed, &request, Some(&new.record.id))?;
        let new_issuer = IssuerRef {
            id: new.record.id.clone(),
            key: Arc::clone(&new.key),
            cert: Some(root_issued.certificate.clone()),
        };
        let mut certificates = vec![root_cert];
        if revoke.is_none() {
            let old_issuer = issuer_of(ctx, &old)?;
            // The old root vouches for the new key (under the new root's name) …
            let mut cross = request.clone();
            cross.profile = ProfileKind::CrossCertificate;
            certificates.push(certify(ctx, &old_issuer, &cross, None)?.1);
            // … and the new root for the old key (under the old root's name).
            let old_cert = old_issuer.cert.as_ref().ok_or(crate::state::StateError::NotInitialised)?;
            // It vouches for the old key no longer than the old root's own certificate did.
            let old_left = u64::try_from(old.not_after.saturating_sub(now)).unwrap_or(0);
            let back = Request {
                profile: ProfileKind::CrossCertificate,
                subject: old_cert.tbs_certificate().subject().clone(),
                public_key: old_cert.tbs_certificate().subject_public_key_info().clone(),
                alt_names: Vec::new(),
                validity: request.validity.min(std::time::Duration::from_secs(old_left)),
            };
            certificates.push(certify(ctx, &new_issuer, &back, None)?.1);
        }
        let mut schedules = Vec::new();
        for k in &reissue {
            let key = ctx.backends.key(k)?;
            let profile = if k.role == KeyRole::Tls { ProfileKind::ApplianceTls } else { ProfileKind::TokenSigning };
            let request = own_request(ctx, k.role, key.as_ref(), profile)?;
            let (issued, cert) = certify(ctx, &new_issuer, &request, Some(&k.id))?;
            let mut s = KeySchedule::from(k);
            s.not_after = issued.not_after;
            schedules.push(s);
            certificates.push(cert);
        }
        Ok::<_, AdminError>((new, new_issuer, root_issued, certificates, schedules))
    })();
    let (new, new_issuer, root_issued, certificates, mut schedules) =
        made.map_err(|e| e.with_orphans(ctx.store, &work.orphans))?;
    let mut record = new.record;
    record.activates = Some(now);
    record.not_after = root_issued.not_after;
    let mut old_schedule = KeySchedule::from(&old);
    old_schedule.deactivates = Some(now);
    old_schedule.retires = Some(old_retires.max(now));
    let mut events: Vec<AuditEvent> = certificates.iter().map(|c| AuditEvent::certificate(c, ctx.actor)).collect();
    events.push(transition(ctx, "key-scheduled", &record, "active".into()));
    match revoke {
        Some((_, reason)) => {
            old_schedule.revoked = Some(now);
            old_schedule.revoke_reason = Some(reason.to_owned());
            events.push(transition(ctx, "key-revoked", &old, reason.to_owned()));
        }
        None => events.push(transition(
            ctx,
            "key-scheduled",
            &old,
            format!("verify-only; retires {}; replaced by {}", rfc3339(old_retires), record.id),
        )),
    }
    schedules.push(old_schedule);
    let mut changes = ChangeSet {
        expect_generation: Some(state.generation),
        new_keys: vec![record.clone()],
        certificates,
        schedules,
        ..ChangeSet::default()
    };
    let crls = (|| {
        if revoke.is_some() {
            revoke_certificates_of(ctx, state, &old)?.into_change(&mut changes, &mut events);
        }
        // The new root's first CRL, so that /v1/crl answers from the moment it is active.
        let after = changes.crls.iter().map(|c| c.number).max().unwrap_or(0);
        let crl = super::certs::build_crl(ctx.store, &new_issuer, now, &[], after)?;
        events.push(super::certs::crl_event(now, ctx.actor, &crl));
        changes.crls.push(crl);
        Ok::<_, AdminError>(())
    })();
    crls.map_err(|e| e.with_orphans(ctx.store, &work.orphans))?;
    commit(ctx, &work, events, &changes)?;
    plan.new_keys.push(record.id);
    Ok((plan, true))
}

/// `sitesign keys retire KEY [--force]`: a pending key is cancelled (its predecessor keeps
/// signing); a verify-only key retires once every token it signed has expired, or at once with
/// `force` (its remaining tokens are refused from then on); the active key cannot retire — rotate
/// instead.
pub fn retire(
    ctx: &mut AdminContext<'_>,
    id: &str,
    force: bool,
    dry_run: bool,
    expect_generation: Option<i64>,
) -> Result<(Plan, bool), AdminError> {
    let now = ctx.now;
    let state = ctx.state()?;
    if expect_generation.is_some_and(|g| g != state.generation) {
        return Err(crate::store::StoreError::Conflict.into());
    }
    let key = state.key(id).ok_or_else(|| AdminError::UnknownKey(id.to_owned()))?.clone();
    let mut plan = Plan::new(format!("keys retire {id}"), &state);
    let mut schedules = Vec::new();
    let mut events = Vec::new();
    let mut s = KeySchedule::from(&key);
    match key.status_at(now) {
        KeyStatus::Active => {
            return Err(AdminError::refused(
                "only_active_key",
                format!(
                    "{id} is the active {} key; rotate it (`sitesign rotate {}`) and it retires by itself once its tokens have expired",
                    key.role.as_str(),
                    key.role.as_str()
                ),
            ));
        }
        KeyStatus::Retired | KeyStatus::Revoked => {
            return Err(AdminError::refused(
                "already_retired",
                format!("{id} is {} already", key.status_at(now).as_str()),
            ));
        }
        KeyStatus::Pending => {
            // Cancel the rotation: the key it would have replaced keeps signing.
            plan.step(format!(
                "{}: cancel {id}, which would have become active at {}",
                rfc3339(now),
                key.activates.map(rfc3339).unwrap_or_default()
            ));
            schedules.extend(keep_predecessor(ctx, &state, &key, &mut plan, &mut events));
            s.activates = None;
            s.retires = Some(now);
        }
        KeyStatus::VerifyOnly => {
            let due = key.retires.unwrap_or(now);
            if due > now && !force {
                return Err(AdminError::refused(
                    "tokens_still_valid",
                    format!(
                        "tokens signed by {id} stay valid until {} (it retires then by itself); retiring it now refuses them — add --force to do so anyway",
                        rfc3339(due)
                    ),
                ));
            }
            plan.step(format!("{}: {id} retires; tokens it signed are refused from now on", rfc3339(now)));
            if due > now {
                plan.warnings.push(format!("tokens signed by {id} would have stayed valid until {}", rfc3339(due)));
            }
            s.retires = Some(now);
        }
    }
    if dry_run {
        return Ok((plan, false));
    }
    events.insert(0, transition(ctx, "key-retired", &key, plan.steps.join("; ")));
    schedules.push(s);
    let changes = ChangeSet { expect_generation: Some(state.generation), schedules, ..ChangeSet::default() };
    commit(ctx, &Work::default(), events, &changes)?;
    Ok((plan, true))
}

/// The schedules that keep the predecessor of a cancelled pending key active (its planned
/// hand-over and retirement are dropped).
fn keep_predecessor(
    ctx: &AdminContext<'_>,
    state: &State,
    pending: &KeyRecord,
    plan: &mut Plan,
    events: &mut Vec<AuditEvent>,
) -> Vec<KeySchedule> {
    let Some(at) = pending.activates else { return Vec::new() };
    state
        .keys
        .iter()
        .filter(|k| k.role == pending.role && k.deactivates == Some(at) && k.id != pending.id)
        .map(|prev| {
            plan.step(format!("{} stays active (its scheduled hand-over and retirement are cancelled)", prev.id));
            events.push(transition(ctx, "key-scheduled", prev, format!("stays active: {} cancelled", pending.id)));
            let mut p = KeySchedule::from(prev);
            p.deactivates = None;
            p.retires = None;
            p
        })
        .collect()
}

/// `sitesign keys revoke KEY --reason TEXT`: the emergency exit. The key's tokens are refused at
/// once (`key_revoked`; renewal under the new key stays possible for tokens this site issued).
/// Revoking the active key makes its successor in the same command: a pending key is activated
/// now, or a new key is generated and activated now.
pub fn revoke(
    ctx: &mut AdminContext<'_>,
    id: &str,
    reason: &str,
    dry_run: bool,
    expect_generation: Option<i64>,
) -> Result<(Plan, bool), AdminError> {
    let now = ctx.now;
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(AdminError::refused("usage", "say why the key is revoked: --reason TEXT"));
    }
    let state = ctx.state()?;
    if expect_generation.is_some_and(|g| g != state.generation) {
        return Err(crate::store::StoreError::Conflict.into());
    }
    let key = state.key(id).ok_or_else(|| AdminError::UnknownKey(id.to_owned()))?.clone();
    let status = key.status_at(now);
    if status == KeyStatus::Revoked {
        return Err(AdminError::refused("already_revoked", format!("{id} was revoked already")));
    }
    if status == KeyStatus::Active {
        match key.role {
            KeyRole::Tls => return replace_tls(ctx, &state, None, dry_run, Some((&key, reason))),
            KeyRole::Issuing => return replace_issuing(ctx, &state, None, dry_run, Some((&key, reason))),
            KeyRole::TokenSigning => {}
        }
    }
    let mut plan = Plan::new(format!("keys revoke {id}"), &state);
    let mut schedules = Vec::new();
    let mut events = Vec::new();
    if status == KeyStatus::Active {
        match crate::keys::pending(&state.keys, KeyRole::TokenSigning, now) {
            Some(p) => {
                plan.step(format!("{}: {} (pending) becomes active at once", rfc3339(now), p.id));
                let mut ps = KeySchedule::from(p);
                ps.activates = Some(now);
                schedules.push(ps);
                events.push(transition(ctx, "key-scheduled", p, format!("active at once: {id} revoked")));
            }
            None => {
                // No successor yet: make one, active now, in the same change as the revocation.
                let rotate = RotateRequest {
                    role: KeyRole::TokenSigning,
                    algorithm: None,
                    publish_ahead_seconds: None,
                    activate_at: Some(crate::time::When::Now),
                    dry_run,
                    expect_generation: Some(state.generation),
                };
                return rotate_token_signing(ctx, &state, &rotate, Some(reason));
            }
        }
    }
    if status == KeyStatus::Pending {
        schedules.extend(keep_predecessor(ctx, &state, &key, &mut plan, &mut events));
    }
    plan.step(format!(
        "{}: {id} is revoked ({reason}): tokens it signed are refused at once (key_revoked); devices renew them under the active key through the batch endpoint",
        rfc3339(now)
    ));
    if dry_run {
        return Ok((plan, false));
    }
    let mut s = KeySchedule::from(&key);
    s.revoked = Some(now);
    s.revoke_reason = Some(reason.to_owned());
    schedules.push(s);
    events.push(transition(ctx, "key-revoked", &key, reason.to_owned()));
    let mut changes = ChangeSet { expect_generation: Some(state.generation), schedules, ..ChangeSet::default() };
    revoke_certificates_of(ctx, &state, &key)?.into_change(&mut changes, &mut events);
    commit(ctx, &Work::default(), events, &changes)?;
    Ok((plan, true))
}
