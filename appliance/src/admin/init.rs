//! `sitesign init`: the hierarchy — the SMS Issuing key and its self-signed root certificate, the
//! first token-signing key and the appliance's TLS key, each generated inside its backend,
//! self-tested and certified — recorded in one transaction after the audit records.

use std::sync::Arc;

use serde::Serialize;

use super::change::{Generated, IssuerRef, Work, certify, check_plan, commit, generate, key_name_suffix, own_request};
use super::keys::KeyView;
use super::{AdminContext, AdminError};
use crate::audit::AuditEvent;
use crate::keys::KeyRole;
use crate::pki::ProfileKind;
use crate::selftest::SelfTestReport;
use crate::store::{CertRecord, ChangeSet};
use crate::time::rfc3339;

/// What `init` made.
#[derive(Debug, Serialize)]
pub struct InitReport {
    /// The keys, as recorded.
    pub keys: Vec<KeyView>,
    /// The certificates, as recorded.
    pub certificates: Vec<CertRecord>,
    /// The self-test of each key.
    pub selftests: Vec<SelfTestReport>,
    /// The hierarchy GUID every token carries.
    pub hierarchy_id: String,
}

/// Creates the hierarchy. Refuses with [`AdminError::AlreadyInitialised`] if the store holds one.
/// If anything fails after keys were generated, nothing is recorded and the error names the keys
/// left in the devices.
pub fn init(ctx: &mut AdminContext<'_>) -> Result<InitReport, AdminError> {
    // Recorded only if nothing changed meanwhile: two appliances initialising one shared store
    // at once make one hierarchy, not two (the second is refused as a conflict).
    let generation = ctx.store.generation()?;
    if let Some(since) = ctx.store.meta("initialized_at")? {
        return Err(AdminError::AlreadyInitialised { since });
    }
    let pki_config = ctx.pki()?.clone();
    let hierarchy = match pki_config.hierarchy_id {
        Some(h) => h,
        None => crate::token::Guid::random().map_err(|e| crate::pki::PkiError::Encoding(e.to_string()))?,
    };
    // Every key's backend must be able to make it before the first is made.
    for plan in [&pki_config.issuing, &pki_config.token_signing, &pki_config.tls] {
        check_plan(ctx, plan)?;
    }
    let suffix = key_name_suffix(ctx.now)?;
    let mut work = Work::default();
    let made = (|| {
        let root = generate(ctx, &mut work, &pki_config.issuing, KeyRole::Issuing, &suffix)?;
        let self_signed = IssuerRef { id: root.record.id.clone(), key: Arc::clone(&root.key), cert: None };
        let request = own_request(ctx, KeyRole::Issuing, root.key.as_ref(), ProfileKind::SmsIssuing)?;
        let (root_issued, root_cert) = certify(ctx, &self_signed, &request, Some(&root.record.id))?;
        let issuer =
            IssuerRef { id: root.record.id.clone(), key: Arc::clone(&root.key), cert: Some(root_issued.certificate) };
        let mut made = vec![(root, root_cert)];
        for (plan, role, profile) in [
            (&pki_config.token_signing, KeyRole::TokenSigning, ProfileKind::TokenSigning),
            (&pki_config.tls, KeyRole::Tls, ProfileKind::ApplianceTls),
        ] {
            let key = generate(ctx, &mut work, plan, role, &suffix)?;
            let request = own_request(ctx, role, key.key.as_ref(), profile)?;
            let (_, cert) = certify(ctx, &issuer, &request, Some(&key.record.id))?;
            made.push((key, cert));
        }
        Ok::<Vec<(Generated, CertRecord)>, AdminError>(made)
    })();
    let made = made.map_err(|e| e.with_orphans(ctx.store, &work.orphans))?;
    let mut keys = Vec::new();
    let mut certificates = Vec::new();
    for (generated, cert) in made {
        let mut record = generated.record;
        record.activates = Some(ctx.now);
        record.not_after = cert.not_after;
        record.certificates = vec![cert.der.clone()];
        keys.push(record);
        certificates.push(cert);
    }
    let changes = ChangeSet {
        expect_generation: Some(generation),
        meta: vec![
            ("initialized_at".into(), rfc3339(ctx.now)),
            ("initialized_by".into(), ctx.actor.to_owned()),
            ("site_name".into(), pki_config.site_name.clone()),
            ("hierarchy_id".into(), hierarchy.upper()),
        ],
        new_keys: keys.clone(),
        certificates: certificates.clone(),
        ..ChangeSet::default()
    };
    let events = certificates.iter().map(|c| AuditEvent::certificate(c, ctx.actor)).collect();
    commit(ctx, &work, events, &changes)?;
    Ok(InitReport {
        keys: keys.iter().map(|k| KeyView::of(k, ctx.now)).collect(),
        certificates,
        selftests: work.selftests,
        hierarchy_id: hierarchy.upper(),
    })
}
