//! Role certificates (SPEC §2, §7): issuance from a PKCS#10 request, the list, revocation, and
//! the CRLs of every SMS Issuing root that still verifies. A revocation is honoured by the
//! running service on the next handshake (its client-certificate verifier follows the store) and
//! listed on a fresh CRL signed in the same operation.

use std::sync::Arc;

use der::Decode;
use serde::{Deserialize, Serialize};
use x509_cert::ext::pkix::CrlReason;

use super::change::{IssuerRef, Plan, Work, active_issuer, certify, commit, issuer_of};
use super::{AdminContext, AdminError};
use crate::audit::AuditEvent;
use crate::keys::{KeyRecord, KeyRole};
use crate::pki::crl::{self, RevokedEntry};
use crate::pki::{self, DAY, PkiError, RoleProfile};
use crate::state::State;
use crate::store::{CertRecord, ChangeSet, CrlRecord, Revocation, Store};
use crate::time::rfc3339;

/// Why a certificate is revoked (RFC 5280 §5.3.1; `certificateHold` is not offered: a revocation
/// here is final).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum RevocationReason {
    /// No reason given.
    Unspecified,
    /// The holder's private key was (or may have been) stolen.
    KeyCompromise,
    /// The holder changed (a management point renamed or moved).
    AffiliationChanged,
    /// Replaced by a new certificate.
    Superseded,
    /// The system was decommissioned.
    CessationOfOperation,
    /// The holder may no longer act in its role.
    PrivilegeWithdrawn,
}

impl RevocationReason {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "key-compromise",
            RevocationReason::AffiliationChanged => "affiliation-changed",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessation-of-operation",
            RevocationReason::PrivilegeWithdrawn => "privilege-withdrawn",
        }
    }

    /// The CRL reason code of a stored reason name; `None` for "unspecified" (left out).
    fn crl_reason(name: &str) -> Option<CrlReason> {
        match name {
            "key-compromise" => Some(CrlReason::KeyCompromise),
            "ca-compromise" => Some(CrlReason::CaCompromise),
            "affiliation-changed" => Some(CrlReason::AffiliationChanged),
            "superseded" => Some(CrlReason::Superseded),
            "cessation-of-operation" => Some(CrlReason::CessationOfOperation),
            "privilege-withdrawn" => Some(CrlReason::PrivilegeWithdrawn),
            _ => None,
        }
    }
}

/// A certificate as `sitesign cert list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertView {
    /// Serial, hex.
    pub serial: String,
    /// Profile.
    pub profile: String,
    /// Subject.
    pub subject: String,
    /// The issuing key.
    pub issuer_key: String,
    /// `valid`, `expired` or `revoked`.
    pub status: String,
    /// Validity end (RFC 3339).
    pub not_after: String,
    /// When it was issued.
    pub issued: String,
    /// Who asked for it.
    pub requested_by: String,
    /// When it was revoked.
    pub revoked: Option<String>,
    /// Why.
    pub revoke_reason: Option<String>,
    /// SHA-256 of the DER, hex.
    pub sha256: String,
}

impl CertView {
    /// The view of `c` at `now`.
    pub fn of(c: &CertRecord, now: i64) -> CertView {
        let status = if c.revoked.is_some() {
            "revoked"
        } else if c.not_after <= now {
            "expired"
        } else {
            "valid"
        };
        CertView {
            serial: c.serial.clone(),
            profile: c.profile.clone(),
            subject: c.subject.clone(),
            issuer_key: c.issuer_key.clone(),
            status: status.into(),
            not_after: rfc3339(c.not_after),
            issued: rfc3339(c.issued),
            requested_by: c.requested_by.clone(),
            revoked: c.revoked.map(rfc3339),
            revoke_reason: c.revoke_reason.clone(),
            sha256: c.sha256.clone(),
        }
    }
}

/// A CRL as the admin answer carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrlView {
    /// The SMS Issuing key that signed it.
    pub issuer_key: String,
    /// Whether that key is the active root (its CRL is the one `/v1/crl` serves).
    pub active: bool,
    /// `cRLNumber`.
    pub number: i64,
    /// `thisUpdate`.
    pub this_update: String,
    /// `nextUpdate`.
    pub next_update: String,
    /// Serials listed.
    pub revoked: usize,
    /// The DER, base64url.
    pub der: String,
}

/// Issues a role certificate (`mp-client` or `role-ssl`) from a PKCS#10 request, signed by the
/// active SMS Issuing key; the request's signature and the profile's policy are checked before
/// any device is touched.
pub fn issue_from_csr(
    ctx: &mut AdminContext<'_>,
    profile: RoleProfile,
    csr: &[u8],
) -> Result<(CertView, String), AdminError> {
    let verified = pki::csr::parse_and_verify(csr)?;
    let request = verified.to_request(profile, DAY * ctx.pki()?.role_validity_days)?;
    let state = ctx.state()?;
    let issuer = active_issuer(ctx, &state)?;
    let (issued, record) = certify(ctx, &issuer, &request, None)?;
    ctx.audit.append(vec![AuditEvent::certificate(&record, ctx.actor)])?;
    ctx.store.apply(&ChangeSet { certificates: vec![record.clone()], ..ChangeSet::default() })?;
    Ok((CertView::of(&record, ctx.now), pki::pem("CERTIFICATE", &issued.der)?))
}

/// Every certificate issued, oldest first.
pub fn list(ctx: &AdminContext<'_>) -> Result<Vec<CertView>, AdminError> {
    Ok(ctx.store.certificates()?.iter().map(|c| CertView::of(c, ctx.now)).collect())
}

/// A serial as given (`0A1B…`, `0a:1b:…`) in the stored form (lower-case hex, no separators).
fn normalise_serial(serial: &str) -> String {
    serial.trim().to_ascii_lowercase().replace([':', ' '], "")
}

/// Revokes a role certificate: the running service refuses it from its next handshake, and a
/// fresh CRL signed now lists it.
pub fn revoke(
    ctx: &mut AdminContext<'_>,
    serial: &str,
    reason: RevocationReason,
    dry_run: bool,
) -> Result<(Plan, bool), AdminError> {
    let serial = normalise_serial(serial);
    let state = ctx.state()?;
    let cert = ctx.store.certificate(&serial)?.ok_or_else(|| AdminError::UnknownCertificate(serial.clone()))?;
    if !matches!(cert.profile.as_str(), "mp-client" | "role-ssl") {
        return Err(AdminError::refused(
            "not_a_role_certificate",
            format!(
                "certificate {serial} is sitesign's own {} certificate; revoke its key instead (`sitesign keys revoke KEY`)",
                cert.profile
            ),
        ));
    }
    if let Some(at) = cert.revoked {
        return Err(AdminError::refused(
            "already_revoked",
            format!("certificate {serial} was revoked at {}", rfc3339(at)),
        ));
    }
    let issuer = state.key(&cert.issuer_key).ok_or_else(|| AdminError::UnknownKey(cert.issuer_key.clone()))?.clone();
    let mut plan = Plan {
        action: format!("cert revoke {serial}"),
        steps: vec![
            format!(
                "{}: revoke {} certificate {serial} ({}), reason {}",
                rfc3339(ctx.now),
                cert.profile,
                cert.subject,
                reason.as_str()
            ),
            "the running service refuses it from its next TLS handshake".into(),
            format!("sign a new CRL of {} listing it (served at /v1/crl)", issuer.id),
        ],
        warnings: Vec::new(),
        new_keys: Vec::new(),
        generation: state.generation,
    };
    if cert.not_after <= ctx.now {
        plan.warnings.push(format!("it expired at {} already", rfc3339(cert.not_after)));
    }
    if dry_run {
        return Ok((plan, false));
    }
    let revocation =
        Revocation { serial: serial.clone(), at: ctx.now, reason: reason.as_str().into(), by: ctx.actor.to_owned() };
    // The CRL is signed with the revocation included, before anything is recorded — by a root
    // that still verifies (a revoked or retired root's certificates are not trusted at all).
    let mut events = vec![AuditEvent::transition(
        ctx.now,
        ctx.actor,
        "certificate-revoked",
        &cert.subject,
        &cert.issuer_key,
        format!("serial {serial}; {}", reason.as_str()),
    )];
    let mut crls = Vec::new();
    if issuer.status_at(ctx.now).verifies() {
        let issuer_ref = issuer_of(ctx, &issuer)?;
        let crl = build_crl(ctx.store, &issuer_ref, ctx.now, std::slice::from_ref(&revocation), 0)?;
        events.push(crl_event(ctx.now, ctx.actor, &crl));
        plan.steps.push(format!("CRL {} of {} lists it", crl.number, issuer.id));
        crls.push(crl);
    }
    let changes = ChangeSet {
        expect_generation: Some(state.generation),
        revocations: vec![revocation],
        crls,
        ..ChangeSet::default()
    };
    commit(ctx, &Work::default(), events, &changes)?;
    Ok((plan, true))
}

/// The audit record of a signed CRL.
pub(crate) fn crl_event(_now: i64, actor: &str, crl: &CrlRecord) -> AuditEvent {
    AuditEvent {
        time: crl.this_update,
        caller: actor.to_owned(),
        kind: "crl".into(),
        subject: format!("CRL {} of {}", crl.number, crl.issuer_key),
        key_id: crl.issuer_key.clone(),
        sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&crl.der)),
        detail: None,
    }
}

/// Signs the next CRL of `issuer` at `now`: every certificate it issued that is revoked (with
/// `extra`, revocations about to be recorded in the same change) and not yet expired. CRL numbers
/// run in one sequence across all roots, which share one name; `number_after` is the highest
/// number already used (in the store, or earlier in the same change).
pub(crate) fn build_crl(
    store: &Store,
    issuer: &IssuerRef,
    now: i64,
    extra: &[Revocation],
    number_after: i64,
) -> Result<CrlRecord, AdminError> {
    let cert = issuer.cert.as_ref().ok_or(crate::state::StateError::NotInitialised)?;
    let mut entries = Vec::new();
    for c in store.certificates()?.iter().filter(|c| c.issuer_key == issuer.id && c.not_after > now) {
        let (at, reason) = match (&c.revoked, extra.iter().find(|r| r.serial == c.serial)) {
            (Some(at), _) => (*at, c.revoke_reason.clone().unwrap_or_default()),
            (None, Some(r)) => (r.at, r.reason.clone()),
            (None, None) => continue,
        };
        let serial = hex::decode(&c.serial).map_err(|e| PkiError::Encoding(format!("serial {}: {e}", c.serial)))?;
        entries.push(RevokedEntry { serial, at, reason: RevocationReason::crl_reason(&reason) });
    }
    let number = number_after.max(store.last_crl_number()?) + 1;
    let der = crl::sign(cert, Arc::clone(&issuer.key), number, now, &entries)?;
    Ok(CrlRecord {
        issuer_key: issuer.id.clone(),
        number,
        this_update: now,
        next_update: now + crl::CRL_VALIDITY.as_secs() as i64,
        der,
    })
}

/// The SMS Issuing keys whose CRLs matter: every root that still verifies, the active first.
pub(crate) fn crl_issuers(state: &State) -> Vec<&KeyRecord> {
    let mut roots: Vec<&KeyRecord> =
        state.keys.iter().filter(|k| k.role == KeyRole::Issuing && k.status_at(state.at).verifies()).collect();
    roots.sort_by_key(|k| std::cmp::Reverse(k.activates));
    roots
}

/// `sitesign cert crl`: signs a fresh CRL for every SMS Issuing root that still verifies.
pub fn sign_crls(ctx: &mut AdminContext<'_>) -> Result<Vec<CrlView>, AdminError> {
    let state = ctx.state()?;
    let active = state.active(KeyRole::Issuing).map(|k| k.id.clone());
    let mut out = Vec::new();
    for root in crl_issuers(&state) {
        let issuer = issuer_of(ctx, root)?;
        let crl = build_crl(ctx.store, &issuer, ctx.now, &[], 0)?;
        let event = crl_event(ctx.now, ctx.actor, &crl);
        // Another node signing one at once takes the number first: this one is recorded as
        // aborted and refused, never stored beside it.
        super::change::commit(
            ctx,
            &Default::default(),
            vec![event],
            &ChangeSet { crls: vec![crl.clone()], ..ChangeSet::default() },
        )?;
        out.push(crl_view(&crl, active.as_deref() == Some(&root.id))?);
    }
    Ok(out)
}

/// Signs a CRL for every root that still verifies whose newest CRL is missing or past half its
/// validity; returns how many were signed. The running service calls it at start-up and
/// periodically, so `/v1/crl` always has a CRL well before its `nextUpdate`.
pub fn refresh_crls(ctx: &mut AdminContext<'_>) -> Result<usize, AdminError> {
    let state = ctx.state()?;
    let half = crl::CRL_VALIDITY.as_secs() as i64 / 2;
    let mut signed = 0;
    for root in crl_issuers(&state) {
        let fresh = ctx.store.latest_crl(&root.id)?.is_some_and(|c| c.this_update + half > ctx.now);
        if fresh {
            continue;
        }
        let issuer = issuer_of(ctx, root)?;
        let crl = build_crl(ctx.store, &issuer, ctx.now, &[], 0)?;
        let event = crl_event(ctx.now, ctx.actor, &crl);
        super::change::commit(
            ctx,
            &Default::default(),
            vec![event],
            &ChangeSet { crls: vec![crl], ..ChangeSet::default() },
        )?;
        signed += 1;
    }
    Ok(signed)
}

/// The view of a stored CRL.
pub fn crl_view(crl: &CrlRecord, active: bool) -> Result<CrlView, AdminError> {
    let parsed = x509_cert::crl::CertificateList::<x509_cert::certificate::Rfc5280>::from_der(&crl.der)
        .map_err(|e| PkiError::Encoding(e.to_string()))?;
    Ok(CrlView {
        issuer_key: crl.issuer_key.clone(),
        active,
        number: crl.number,
        this_update: rfc3339(crl.this_update),
        next_update: rfc3339(crl.next_update),
        revoked: parsed.tbs_cert_list.revoked_certificates.map_or(0, |r| r.len()),
        der: crate::token::b64::encode(&crl.der),
    })
}
