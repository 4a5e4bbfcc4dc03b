//! sitesign's certificate authority: the certificate profiles of SPEC §2, issuance through a
//! device key (the private key never leaves the backend), and PKCS#10 requests. Every certificate
//! is verified against its issuer's public key, with an implementation independent of the device
//! (`ring`), right after it is signed.

pub mod crl;
pub mod csr;
mod profile;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use der::{Decode, Encode};
use hsm_adapters::{SigningKey, X509Signature, X509Signer};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use sha2::{Digest, Sha256};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::Certificate;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

pub use profile::{ProfileKind, RoleProfile};

/// A day, the unit of every configured validity.
pub const DAY: Duration = Duration::from_secs(86_400);

/// Why a certificate could not be issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The signing device failed.
    #[error(transparent)]
    Backend(#[from] hsm_adapters::Error),
    /// A PKCS#10 request could not be parsed.
    #[error("the certificate request is malformed: {0}")]
    CsrMalformed(String),
    /// A PKCS#10 request's signature does not verify with its own public key.
    #[error(
        "the certificate request's signature does not verify with its public key; it was altered or made with another key"
    )]
    CsrSignature,
    /// A request asks for something the profile does not allow.
    #[error("the certificate request is refused by the {profile} profile: {reason}")]
    Policy {
        /// The profile.
        profile: &'static str,
        /// What is not allowed.
        reason: String,
    },
    /// Building or encoding the certificate failed.
    #[error("certificate encoding failed: {0}")]
    Encoding(String),
    /// The certificate the device signed does not verify with the issuer's public key.
    #[error(
        "the {profile} certificate signed by {key} does not verify with the issuer's public key; nothing was issued"
    )]
    BadSignature {
        /// The profile.
        profile: &'static str,
        /// The issuing key.
        key: String,
    },
}

impl PkiError {
    /// A stable identifier for logs and API errors.
    pub fn code(&self) -> &'static str {
        match self {
            PkiError::Backend(e) => e.code(),
            PkiError::CsrMalformed(_) => "csr_malformed",
            PkiError::CsrSignature => "csr_signature",
            PkiError::Policy { .. } => "csr_policy",
            PkiError::Encoding(_) => "certificate_encoding",
            PkiError::BadSignature { .. } => "certificate_bad_signature",
        }
    }
}

fn enc<E: std::fmt::Display>(e: E) -> PkiError {
    PkiError::Encoding(e.to_string())
}

/// The signer of a certificate: a device key and, unless it is self-signing, its certificate.
#[derive(Debug, Clone)]
pub struct Issuer<'a> {
    /// The issuing key.
    pub key: Arc<dyn SigningKey>,
    /// The issuer's certificate; `None` for a self-signed root.
    pub certificate: Option<&'a Certificate>,
}

/// What to certify.
#[derive(Debug, Clone)]
pub struct Request {
    /// The profile.
    pub profile: ProfileKind,
    /// The subject name.
    pub subject: Name,
    /// The subject's public key.
    pub public_key: SubjectPublicKeyInfoOwned,
    /// Subject alternative names (DNS names, IP addresses).
    pub alt_names: Vec<GeneralName>,
    /// How long the certificate is valid (capped by the issuer's own certificate).
    pub validity: Duration,
}

/// A certificate just issued, with what the inventory records of it.
#[derive(Debug, Clone, Serialize)]
pub struct Issued {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// Subject, RFC 4514.
    pub subject: String,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
    /// SHA-256 of the DER, lower-case hex.
    pub sha256: String,
    /// The certificate.
    #[serde(skip)]
    pub certificate: Certificate,
    /// Its DER.
    #[serde(skip)]
    pub der: Vec<u8>,
}

fn unix(t: &Time) -> i64 {
    t.to_unix_duration().as_secs() as i64
}

/// A random, positive, 16-byte serial number (RFC 5280 §4.1.2.2: at most 20 octets, positive).
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).map_err(|_| PkiError::Encoding("no randomness".into()))?;
    bytes[0] = (bytes[0] & 0x7f).max(1);
    SerialNumber::new(&bytes).map_err(enc)
}

/// Issues a certificate for `request`, signed in the device by `issuer`, and verifies it.
///
/// Fails without a certificate if the device fails or the result does not verify; the caller
/// records nothing in that case.
pub fn issue(request: &Request, issuer: &Issuer<'_>) -> Result<Issued, PkiError> {
    let now = SystemTime::now();
    // Back-date by a minute so clients with a slightly slow clock accept a fresh certificate.
    let not_before = now.checked_sub(Duration::from_secs(60)).unwrap_or(now);
    let mut not_after = now + request.validity;
    if let Some(parent) = issuer.certificate {
        // A certificate never outlives the certificate of the key that signed it.
        not_after = not_after.min(parent.tbs_certificate().validity().not_after.to_system_time());
    }
    let validity = Validity::new(Time::try_from(not_before).map_err(enc)?, Time::try_from(not_after).map_err(enc)?);
    let issuer_name = match issuer.certificate {
        Some(c) => c.tbs_certificate().subject().clone(),
        None => request.subject.clone(),
    };
    let profile = profile::Profile {
        kind: request.profile,
        subject: request.subject.clone(),
        issuer: issuer_name,
        alt_names: request.alt_names.clone(),
        rsa_subject: request.public_key.algorithm.oid == hsm_adapters::key::OID_RSA_ENCRYPTION,
    };
    let builder =
        CertificateBuilder::new(profile, random_serial()?, validity, request.public_key.clone()).map_err(enc)?;
    let signer = X509Signer::new(Arc::clone(&issuer.key));
    let certificate = builder.build::<_, X509Signature>(&signer).map_err(|e| match e {
        x509_cert::builder::Error::Signature(s) => {
            match std::error::Error::source(&s).and_then(|x| x.downcast_ref::<hsm_adapters::Error>()) {
                Some(b) => PkiError::Encoding(format!("the device failed to sign: {b}")),
                None => PkiError::Encoding(s.to_string()),
            }
        }
        other => enc(other),
    })?;
    if !verify_signed_by(&certificate, issuer.key.public_key()) {
        return Err(PkiError::BadSignature { profile: request.profile.as_str(), key: issuer.key.uri().to_string() });
    }
    let der = certificate.to_der().map_err(enc)?;
    let tbs = certificate.tbs_certificate();
    Ok(Issued {
        serial: hex::encode(tbs.serial_number().as_bytes()),
        subject: tbs.subject().to_string(),
        not_before: unix(&tbs.validity().not_before),
        not_after: unix(&tbs.validity().not_after),
        sha256: hex::encode(Sha256::digest(&der)),
        certificate,
        der,
    })
}

/// Whether `certificate`'s signature verifies with `issuer` (checked with `ring`).
pub fn verify_signed_by(certificate: &Certificate, issuer: &hsm_adapters::PublicKey) -> bool {
    let Ok(tbs) = certificate.tbs_certificate().to_der() else { return false };
    let Some(sig) = certificate.signature().as_bytes() else { return false };
    verify_signature(&certificate.signature_algorithm().oid, &tbs, sig, issuer)
}

/// Whether an X.509 signature (`sha256WithRSAEncryption` or `ecdsa-with-SHA256`, DER) over
/// `signed` verifies with `key` (checked with `ring`). Other algorithms never verify.
pub fn verify_signature(
    algorithm: &spki::ObjectIdentifier,
    signed: &[u8],
    signature: &[u8],
    key: &hsm_adapters::PublicKey,
) -> bool {
    use ring::signature::{
        ECDSA_P256_SHA256_ASN1, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey, VerificationAlgorithm,
    };
    let alg: &dyn VerificationAlgorithm = if *algorithm == hsm_adapters::key::OID_SHA256_WITH_RSA {
        &RSA_PKCS1_2048_8192_SHA256
    } else if *algorithm == hsm_adapters::key::OID_ECDSA_WITH_SHA256 {
        &ECDSA_P256_SHA256_ASN1
    } else {
        return false;
    };
    match key.subject_public_key_bytes() {
        Ok(bytes) => UnparsedPublicKey::new(alg, bytes).verify(signed, signature).is_ok(),
        Err(_) => false,
    }
}

/// Parses a DER certificate.
pub fn parse_certificate(der: &[u8]) -> Result<Certificate, PkiError> {
    Certificate::from_der(der).map_err(enc)
}

/// A PEM block of `der` with `label` (`CERTIFICATE`, …).
pub fn pem(label: &str, der: &[u8]) -> Result<String, PkiError> {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der).map_err(enc)
}

/// `x5t`: base64url(SHA-1(DER)) without padding (SPEC §2).
pub fn x5t(der: &[u8]) -> String {
    use sha1::Digest as _;
    crate::token::b64::encode(&sha1::Sha1::digest(der))
}

/// `x5t#S256`: base64url(SHA-256(DER)) without padding.
pub fn x5t_s256(der: &[u8]) -> String {
    crate::token::b64::encode(&Sha256::digest(der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_positive_and_16_bytes() {
        for _ in 0..256 {
            let s = random_serial().unwrap();
            let b = s.as_bytes();
            // Top bit clear and the first byte never zero: exactly 16 content bytes, positive,
            // with no leading zero octet.
            assert_eq!(b.len(), 16, "{b:?}");
            assert!(b[0] & 0x80 == 0 && b[0] != 0, "{b:?}");
        }
    }
}
