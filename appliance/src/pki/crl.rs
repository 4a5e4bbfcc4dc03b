//! Certificate revocation lists (RFC 5280 §5): signed in the device by an SMS Issuing key, with
//! `nextUpdate`, `cRLNumber`, the authority key identifier and a reason code per entry, and
//! verified on the host before anyone gets them.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use der::Encode;
use hsm_adapters::{SigningKey, X509Signature, X509Signer};
use x509_cert::Certificate;
use x509_cert::builder::{Builder, CrlBuilder};
use x509_cert::crl::{CertificateList, RevokedCert};
use x509_cert::ext::ToExtension;
use x509_cert::ext::pkix::{CrlNumber, CrlReason};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Time;

use super::PkiError;

/// How long a CRL is valid: its `nextUpdate` is this long after its `thisUpdate`.
pub const CRL_VALIDITY: Duration = Duration::from_secs(7 * 86_400);

/// One revoked certificate.
#[derive(Debug, Clone)]
pub struct RevokedEntry {
    /// Its serial number, big-endian bytes.
    pub serial: Vec<u8>,
    /// When it was revoked, Unix time.
    pub at: i64,
    /// Why; `None` for "unspecified", whose reason code RFC 5280 §5.3.1 says SHOULD be absent.
    pub reason: Option<CrlReason>,
}

fn time(unix: i64) -> Result<Time, PkiError> {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    Time::try_from(t).map_err(|e| PkiError::Encoding(e.to_string()))
}

/// Signs a CRL number `number` for `issuer` (its certificate and its key in the device) listing
/// `revoked`, valid from `this_update` for [`CRL_VALIDITY`]; returns its DER.
pub fn sign(
    issuer_cert: &Certificate,
    issuer_key: Arc<dyn SigningKey>,
    number: i64,
    this_update: i64,
    revoked: &[RevokedEntry],
) -> Result<Vec<u8>, PkiError> {
    let enc = |e: &dyn std::fmt::Display| PkiError::Encoding(e.to_string());
    let number = der::asn1::Uint::new(&number.max(1).to_be_bytes()).map_err(|e| enc(&e))?;
    let next_update = this_update + CRL_VALIDITY.as_secs() as i64;
    let issuer_name = issuer_cert.tbs_certificate().subject().clone();
    let mut entries = Vec::with_capacity(revoked.len());
    for r in revoked {
        let extensions = match r.reason {
            Some(reason) => Some(vec![reason.to_extension(&issuer_name, &[]).map_err(|e| enc(&e))?]),
            None => None,
        };
        entries.push(RevokedCert {
            serial_number: SerialNumber::new(&r.serial).map_err(|e| enc(&e))?,
            revocation_date: time(r.at)?,
            crl_entry_extensions: extensions,
        });
    }
    let mut builder = CrlBuilder::new_with_this_update(issuer_cert, CrlNumber(number), time(this_update)?)
        .map_err(|e| enc(&e))?
        .with_next_update(Some(time(next_update)?));
    // An empty list is absent, not an empty SEQUENCE (RFC 5280 §5.1.2.6).
    if !entries.is_empty() {
        builder = builder.with_certificates(entries.into_iter());
    }
    let signer = X509Signer::new(Arc::clone(&issuer_key));
    let crl: CertificateList = builder.build::<_, X509Signature>(&signer).map_err(|e| enc(&e))?;
    if !verify_signed_by(&crl, issuer_key.public_key()) {
        return Err(PkiError::BadSignature { profile: "crl", key: issuer_key.uri().to_string() });
    }
    crl.to_der().map_err(|e| enc(&e))
}

/// Whether `crl`'s signature verifies with `issuer` (checked with `ring`).
pub fn verify_signed_by(crl: &CertificateList, issuer: &hsm_adapters::PublicKey) -> bool {
    let Ok(tbs) = crl.tbs_cert_list.to_der() else { return false };
    let Some(sig) = crl.signature.as_bytes() else { return false };
    super::verify_signature(&crl.signature_algorithm.oid, &tbs, sig, issuer)
}
