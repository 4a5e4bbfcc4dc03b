//! The operations the CLI (and later the admin socket) performs on the appliance's state: `init`,
//! certificate issuance from a request, export; [`tokens`] has the token operations. Each one
//! touches the devices first and records in the store last, in one transaction, so a failure
//! leaves the state as it was.

pub mod tokens;

use std::collections::BTreeMap;
use std::sync::Arc;

use hsm_adapters::{KeyBackend, KeyUri, SigningKey};
use serde::Serialize;
use x509_cert::Certificate;
use x509_cert::name::Name;

use crate::audit::{AuditError, AuditEvent, AuditLog};
use crate::config::{Config, KeyPlan, PkiConfig};
use crate::pki::{self, DAY, Issued, Issuer, PkiError, ProfileKind, Request};
use crate::selftest::{SelfTestError, SelfTestReport, check_key};
use crate::store::{CertRecord, KeyRecord, KeyRole, KeyStatus, Store, StoreError};

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// A device failed.
    #[error("backend {backend:?}: {source}")]
    Backend {
        /// The configured backend.
        backend: String,
        /// Its error.
        source: hsm_adapters::Error,
    },
    /// Issuing a certificate failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A key failed its self-test.
    #[error(transparent)]
    SelfTest(#[from] SelfTestError),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
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
    /// An operation that needs `init` first.
    #[error("not initialised: run `sitesign init` first")]
    NotInitialised,
    /// A token could not be issued.
    #[error(transparent)]
    Issue(#[from] crate::token::issue::IssueError),
    /// A token-signing key's record is unusable.
    #[error(transparent)]
    KeyRing(#[from] crate::token::verify::KeyRingError),
    /// A GUID argument that is not a GUID.
    #[error("{0:?} is not a GUID: give it as xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (see `sitesign bulk-token list`)")]
    InvalidGuid(String),
    /// The audit record could not be made durable: nothing is released.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The bulk-token registry could not be read.
    #[error("bulk-token registry unavailable: {0}")]
    Registry(String),
    /// No bulk token has this GUID.
    #[error("no bulk token {0} is registered (see `sitesign bulk-token list`)")]
    BulkTokenNotFound(String),
    /// Keys were created in a device but could not be recorded.
    #[error("{cause}; keys created in the device and not recorded (remove them or leave them unused): {}", orphans.join(", "))]
    Orphans {
        /// What failed.
        cause: Box<OpsError>,
        /// URIs of the keys left in the device.
        orphans: Vec<String>,
    },
}

impl OpsError {
    /// A stable identifier for logs and API errors.
    pub fn code(&self) -> &'static str {
        match self {
            OpsError::Backend { source, .. } => source.code(),
            OpsError::Pki(e) => e.code(),
            OpsError::SelfTest(e) => e.code(),
            OpsError::Store(_) => "state_store",
            OpsError::Config(_) => "config",
            OpsError::AlreadyInitialised { .. } => "already_initialised",
            OpsError::NotInitialised => "not_initialised",
            OpsError::Orphans { cause, .. } => cause.code(),
            OpsError::Issue(e) => e.code(),
            OpsError::KeyRing(_) => "signing_key_unusable",
            OpsError::InvalidGuid(_) => "invalid_guid",
            OpsError::Registry(_) => "state_store",
            OpsError::Audit(_) => "audit_unavailable",
            OpsError::BulkTokenNotFound(_) => "bulk_token_not_found",
        }
    }
}

/// The configured backends, opened.
#[derive(Debug, Default)]
pub struct Backends {
    open: BTreeMap<String, Arc<dyn KeyBackend>>,
}

impl Backends {
    /// Opens every backend the configuration names (each logs in / connects once).
    pub fn open(config: &Config) -> Result<Backends, OpsError> {
        let mut open = BTreeMap::new();
        for (name, backend) in &config.backends {
            let b =
                hsm_adapters::open(backend).map_err(|source| OpsError::Backend { backend: name.clone(), source })?;
            open.insert(name.clone(), b);
        }
        Ok(Backends { open })
    }

    /// The backend named `name`.
    pub fn get(&self, name: &str) -> Result<&Arc<dyn KeyBackend>, OpsError> {
        self.open.get(name).ok_or_else(|| OpsError::Config(format!("no backend named {name:?} is configured")))
    }

    /// Finds the key of a stored record.
    pub fn key(&self, record: &KeyRecord) -> Result<Arc<dyn SigningKey>, OpsError> {
        let wrap = |source| OpsError::Backend { backend: record.backend.clone(), source };
        let uri: KeyUri = record.uri.parse().map_err(wrap)?;
        self.get(&record.backend)?.find_key(&uri).map_err(wrap)
    }

    /// Every opened backend.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<dyn KeyBackend>)> {
        self.open.iter()
    }
}

/// A `YYYYMMDD-HHMMSS` UTC stamp for key names.
/// The suffix that makes a new key's name unique: the UTC time and 16 random bits, so two
/// hierarchies made within the same second (`init --force` right after `init`) never collide.
pub fn key_name_suffix() -> Result<String, OpsError> {
    let mut tag = [0u8; 2];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut tag)
        .map_err(|_| OpsError::Pki(PkiError::Encoding("the system has no randomness".into())))?;
    Ok(format!("{}-{}", utc_stamp(pki::now_unix()), hex::encode(tag)))
}

pub fn utc_stamp(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// An RFC 3339 UTC time, `2026-11-24T21:56:02Z`.
pub fn utc_rfc3339(unix: i64) -> String {
    let s = utc_stamp(unix);
    format!("{}-{}-{}T{}:{}:{}Z", &s[0..4], &s[4..6], &s[6..8], &s[9..11], &s[11..13], &s[13..15])
}

/// What `init` made.
#[derive(Debug, Serialize)]
pub struct InitReport {
    /// The keys, as recorded.
    pub keys: Vec<KeyRecord>,
    /// The certificates, as recorded.
    pub certificates: Vec<Issued>,
    /// The self-test of each key.
    pub selftests: Vec<SelfTestReport>,
}

fn name_for(subject_cn: &str, site: &str) -> Result<Name, PkiError> {
    format!("CN={subject_cn},O={site}").parse().map_err(|e: der::Error| PkiError::Encoding(e.to_string()))
}

/// What `init` has done so far: keys generated (orphans if the run fails) and their self-tests.
#[derive(Default)]
struct Progress {
    orphans: Vec<String>,
    selftests: Vec<SelfTestReport>,
}

struct Made {
    record: KeyRecord,
    key: Arc<dyn SigningKey>,
    issued: Issued,
}

/// Generates a key per `plan`, self-tests it and certifies it under `profile`.
fn make_key(
    backends: &Backends,
    plan: &KeyPlan,
    name: &str,
    role: KeyRole,
    request: impl FnOnce(&dyn SigningKey) -> Result<Request, OpsError>,
    issuer: Option<&Made>,
    progress: &mut Progress,
) -> Result<Made, OpsError> {
    let backend = backends.get(&plan.backend)?;
    let key = backend
        .generate_key(name, plan.algorithm)
        .map_err(|source| OpsError::Backend { backend: plan.backend.clone(), source })?;
    progress.orphans.push(key.uri().to_string());
    progress.selftests.push(check_key(key.as_ref(), plan.algorithm.default_scheme(), 3)?);
    let req = request(key.as_ref())?;
    let issued = match issuer {
        Some(parent) => {
            pki::issue(&req, &Issuer { key: Arc::clone(&parent.key), certificate: Some(&parent.issued.certificate) })?
        }
        None => pki::issue(&req, &Issuer { key: Arc::clone(&key), certificate: None })?,
    };
    let now = pki::now_unix();
    let record = KeyRecord {
        id: name.to_owned(),
        backend: plan.backend.clone(),
        uri: key.uri().to_string(),
        algorithm: plan.algorithm.to_string(),
        role,
        status: KeyStatus::Active,
        created: now,
        activated: Some(now),
        retire_after: Some(issued.not_after),
        certificate: Some(issued.der.clone()),
    };
    Ok(Made { record, key, issued })
}

fn spki_of(key: &dyn SigningKey) -> Result<spki::SubjectPublicKeyInfoOwned, OpsError> {
    use der::Decode;
    spki::SubjectPublicKeyInfoOwned::from_der(key.public_key().spki_der())
        .map_err(|e| PkiError::Encoding(e.to_string()).into())
}

fn cert_record(issued: &Issued, profile: ProfileKind, issuer_key: &str, actor: &str) -> CertRecord {
    CertRecord {
        serial: issued.serial.clone(),
        profile: profile.as_str().into(),
        subject: issued.subject.clone(),
        issuer_key: issuer_key.into(),
        not_before: issued.not_before,
        not_after: issued.not_after,
        sha256: issued.sha256.clone(),
        der: issued.der.clone(),
        issued: pki::now_unix(),
        requested_by: actor.into(),
    }
}

/// Creates the hierarchy: the SMS Issuing key and its self-signed root certificate, the first
/// token-signing key and its certificate, and the appliance's TLS key and certificate — each key
/// generated inside its backend and self-tested — then records everything in one transaction.
///
/// Refuses with [`OpsError::AlreadyInitialised`] if the store holds keys. If anything fails after
/// keys were generated, nothing is recorded and the error names the keys left in the devices.
pub fn init(
    pki_config: &PkiConfig,
    backends: &Backends,
    store: &mut Store,
    audit: &AuditLog,
    actor: &str,
) -> Result<InitReport, OpsError> {
    if let Some(since) = store.meta("initialized_at")? {
        return Err(OpsError::AlreadyInitialised { since });
    }
    let stamp = key_name_suffix()?;
    let hierarchy = match pki_config.hierarchy_id {
        Some(h) => h,
        None => crate::token::Guid::random().map_err(|e| OpsError::Pki(PkiError::Encoding(e.to_string())))?,
    };
    let mut progress = Progress::default();
    let result = (|| -> Result<(Made, Made, Made), OpsError> {
        let site = &pki_config.site_name;
        let issuing_plan = &pki_config.issuing;
        let root = make_key(
            backends,
            issuing_plan,
            &format!("sms-issuing-{stamp}"),
            KeyRole::Issuing,
            |k| {
                Ok(Request {
                    profile: ProfileKind::SmsIssuing,
                    subject: name_for("SMS Issuing", site)?,
                    public_key: spki_of(k)?,
                    alt_names: Vec::new(),
                    validity: DAY * issuing_plan.validity_days,
                })
            },
            None,
            &mut progress,
        )?;
        let ts_plan = &pki_config.token_signing;
        let ts = make_key(
            backends,
            ts_plan,
            &format!("ts-{stamp}"),
            KeyRole::TokenSigning,
            |k| {
                Ok(Request {
                    profile: ProfileKind::TokenSigning,
                    subject: name_for("SMS Token Signing", site)?,
                    public_key: spki_of(k)?,
                    alt_names: Vec::new(),
                    validity: DAY * ts_plan.validity_days,
                })
            },
            Some(&root),
            &mut progress,
        )?;
        let tls_plan = &pki_config.tls;
        let tls = make_key(
            backends,
            tls_plan,
            &format!("tls-{stamp}"),
            KeyRole::Tls,
            |k| {
                Ok(Request {
                    profile: ProfileKind::ApplianceTls,
                    subject: name_for("sitesign", site)?,
                    public_key: spki_of(k)?,
                    alt_names: pki::csr::alt_names_for(ProfileKind::ApplianceTls, &pki_config.tls_names)?,
                    validity: DAY * tls_plan.validity_days,
                })
            },
            Some(&root),
            &mut progress,
        )?;
        Ok((root, ts, tls))
    })();
    let (root, ts, tls) = result.map_err(|cause| with_orphans(cause, &progress.orphans))?;
    let root_id = root.record.id.clone();
    let certs = [
        cert_record(&root.issued, ProfileKind::SmsIssuing, &root_id, actor),
        cert_record(&ts.issued, ProfileKind::TokenSigning, &root_id, actor),
        cert_record(&tls.issued, ProfileKind::ApplianceTls, &root_id, actor),
    ];
    let meta = [
        ("initialized_at", utc_rfc3339(pki::now_unix())),
        ("initialized_by", actor.to_owned()),
        ("site_name", pki_config.site_name.clone()),
        ("hierarchy_id", hierarchy.upper()),
    ];
    let keys = vec![root.record, ts.record, tls.record];
    let events = certs.iter().map(|c| certificate_event(c, actor)).collect();
    audit.append(events).map_err(|e| with_orphans(e.into(), &progress.orphans))?;
    store.record_init(&meta, &keys, &certs).map_err(|e| with_orphans(e.into(), &progress.orphans))?;
    Ok(InitReport { keys, certificates: vec![root.issued, ts.issued, tls.issued], selftests: progress.selftests })
}

/// The audit event of an issued certificate.
fn certificate_event(c: &CertRecord, actor: &str) -> AuditEvent {
    AuditEvent {
        time: c.issued,
        caller: actor.to_owned(),
        kind: format!("certificate:{}", c.profile),
        subject: c.subject.clone(),
        key_id: c.issuer_key.clone(),
        sha256: c.sha256.clone(),
    }
}

fn with_orphans(cause: OpsError, orphans: &[String]) -> OpsError {
    if orphans.is_empty() { cause } else { OpsError::Orphans { cause: Box::new(cause), orphans: orphans.to_vec() } }
}

/// The active key with `role` and its certificate.
pub fn active_key(store: &Store, role: KeyRole) -> Result<(KeyRecord, Certificate), OpsError> {
    let record = store
        .keys()?
        .into_iter()
        .rev()
        .find(|k| k.role == role && k.status == KeyStatus::Active)
        .ok_or(OpsError::NotInitialised)?;
    let der = record.certificate.clone().ok_or(OpsError::NotInitialised)?;
    Ok((record, pki::parse_certificate(&der)?))
}

/// Issues a role certificate (`mp-client` or `role-ssl`) from a PKCS#10 request, signed by the
/// SMS Issuing key, and records it.
pub fn issue_from_csr(
    config: &PkiConfig,
    backends: &Backends,
    store: &mut Store,
    audit: &AuditLog,
    profile: ProfileKind,
    csr: &[u8],
    actor: &str,
) -> Result<Issued, OpsError> {
    let verified = pki::csr::parse_and_verify(csr)?;
    let request = verified.to_request(profile, DAY * config.role_validity_days)?;
    let (root_record, root_cert) = active_key(store, KeyRole::Issuing)?;
    let root_key = backends.key(&root_record)?;
    let issued = pki::issue(&request, &Issuer { key: root_key, certificate: Some(&root_cert) })?;
    let record = cert_record(&issued, profile, &root_record.id, actor);
    audit.append(vec![certificate_event(&record, actor)])?;
    store.record_certificate(&record)?;
    Ok(issued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(1_580_156_305), "20200127-201825");
        assert_eq!(utc_stamp(951_782_400), "20000229-000000");
        assert_eq!(utc_stamp(4_102_444_799), "20991231-235959");
        assert_eq!(utc_rfc3339(1_580_156_305), "2020-01-27T20:18:25Z");
    }
}
