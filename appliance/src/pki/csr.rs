//! PKCS#10 certificate requests: parsed, their self-signature verified (with `ring`), and turned
//! into a certification [`Request`] under a profile's policy.

use std::net::IpAddr;
use std::time::Duration;

use der::asn1::{Ia5String, OctetString};
use der::{Decode, DecodePem, Encode};
use hsm_adapters::PublicKey;
use hsm_adapters::key::{OID_ECDSA_WITH_SHA256, OID_SHA256_WITH_RSA};
use ring::signature::{ECDSA_P256_SHA256_ASN1, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey, VerificationAlgorithm};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::request::{CertReq, ExtensionReq};

use super::{PkiError, ProfileKind, Request, RoleProfile};

use const_oid::db::rfc4519::COMMON_NAME as ID_AT_COMMON_NAME;
use const_oid::db::rfc5912::{ID_CE_SUBJECT_ALT_NAME, ID_EXTENSION_REQ};

/// A parsed request whose signature verified.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    /// The request.
    pub request: CertReq,
    /// Its public key, checked to be RSA-2048/3072/4096 or P-256.
    pub public_key: PublicKey,
    /// The subject alternative names it asks for.
    pub alt_names: Vec<GeneralName>,
}

/// Parses a PEM or DER request and verifies its self-signature.
pub fn parse_and_verify(bytes: &[u8]) -> Result<VerifiedCsr, PkiError> {
    let malformed = |e: &dyn std::fmt::Display| PkiError::CsrMalformed(e.to_string());
    let request = if bytes.starts_with(b"-----BEGIN") {
        let text = std::str::from_utf8(bytes).map_err(|e| malformed(&e))?;
        CertReq::from_pem(text.trim()).map_err(|e| malformed(&e))?
    } else {
        CertReq::from_der(bytes).map_err(|e| malformed(&e))?
    };
    let spki_der = request.info.public_key.to_der().map_err(|e| malformed(&e))?;
    let public_key = PublicKey::from_spki_der(&spki_der).map_err(|e| PkiError::Policy {
        profile: "any",
        reason: format!("its key is not RSA-2048/3072/4096 or EC P-256 ({e})"),
    })?;
    let alg: &dyn VerificationAlgorithm = if request.algorithm.oid == OID_SHA256_WITH_RSA {
        &RSA_PKCS1_2048_8192_SHA256
    } else if request.algorithm.oid == OID_ECDSA_WITH_SHA256 {
        &ECDSA_P256_SHA256_ASN1
    } else {
        return Err(PkiError::Policy {
            profile: "any",
            reason: format!(
                "signature algorithm {} (use sha256WithRSAEncryption or ecdsa-with-SHA256)",
                request.algorithm.oid
            ),
        });
    };
    let info = request.info.to_der().map_err(|e| malformed(&e))?;
    let signature = request.signature.as_bytes().ok_or_else(|| malformed(&"signature bit string"))?;
    let key_bits = public_key.subject_public_key_bytes()?;
    UnparsedPublicKey::new(alg, key_bits).verify(&info, signature).map_err(|_| PkiError::CsrSignature)?;

    let mut alt_names = Vec::new();
    for attribute in request.info.attributes.iter().filter(|a| a.oid == ID_EXTENSION_REQ) {
        for value in attribute.values.iter() {
            let req: ExtensionReq = value.decode_as().map_err(|e| malformed(&e))?;
            for ext in req.0.iter().filter(|e| e.extn_id == ID_CE_SUBJECT_ALT_NAME) {
                let san = SubjectAltName::from_der(ext.extn_value.as_bytes()).map_err(|e| malformed(&e))?;
                alt_names.extend(san.0);
            }
        }
    }
    Ok(VerifiedCsr { request, public_key, alt_names })
}

/// Whether `name` is a DNS host name: LDH labels of 1–63 characters, 253 at most, no wildcard.
fn valid_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The subject alternative names for `names` (DNS names or IP addresses), checked.
pub fn alt_names_for(profile: ProfileKind, names: &[String]) -> Result<Vec<GeneralName>, PkiError> {
    names
        .iter()
        .map(|n| {
            if let Ok(ip) = n.parse::<IpAddr>() {
                let bytes = match ip {
                    IpAddr::V4(v4) => v4.octets().to_vec(),
                    IpAddr::V6(v6) => v6.octets().to_vec(),
                };
                Ok(GeneralName::IpAddress(OctetString::new(bytes).map_err(|e| PkiError::Encoding(e.to_string()))?))
            } else if valid_dns_name(n) {
                Ok(GeneralName::DnsName(Ia5String::new(n).map_err(|e| PkiError::Encoding(e.to_string()))?))
            } else {
                Err(PkiError::Policy {
                    profile: profile.as_str(),
                    reason: format!("{n:?} is not a DNS name or IP address"),
                })
            }
        })
        .collect()
}

impl VerifiedCsr {
    /// The certification request for `profile`, after its policy:
    ///
    /// - `mp-client`: the subject must have a common name (the management point's FQDN); any
    ///   alternative names must be DNS names.
    /// - `role-ssl`: at least one alternative name; DNS names (no wildcards) and IP addresses
    ///   only.
    ///
    /// Other kinds of name (e-mail, URI, directory names) are refused, not silently dropped.
    pub fn to_request(&self, role: RoleProfile, validity: Duration) -> Result<Request, PkiError> {
        let profile = ProfileKind::from(role);
        let refuse = |reason: String| PkiError::Policy { profile: profile.as_str(), reason };
        let subject = self.request.info.subject.clone();
        let has_cn = subject.iter().any(|atv| atv.oid == ID_AT_COMMON_NAME);
        if !has_cn {
            return Err(refuse("the subject has no common name (CN=); put the system's FQDN there".into()));
        }
        for name in &self.alt_names {
            match name {
                GeneralName::DnsName(d) if valid_dns_name(d.as_str()) => {}
                GeneralName::DnsName(d) => {
                    return Err(refuse(format!("DNS name {:?} is not a host name (no wildcards)", d.as_str())));
                }
                GeneralName::IpAddress(_) if profile == ProfileKind::RoleSsl => {}
                other => return Err(refuse(format!("alternative name {other:?} is not allowed"))),
            }
        }
        if profile == ProfileKind::RoleSsl && self.alt_names.is_empty() {
            return Err(refuse("a TLS server certificate needs subject alternative names (DNS or IP)".into()));
        }
        Ok(Request {
            profile,
            subject,
            public_key: self.request.info.public_key.clone(),
            alt_names: self.alt_names.clone(),
            validity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_are_checked() {
        assert!(valid_dns_name("mp01.contoso.com"));
        assert!(!valid_dns_name("*.contoso.com"));
        assert!(!valid_dns_name("-bad.contoso.com"));
        assert!(!valid_dns_name("a..b"));
        assert!(alt_names_for(ProfileKind::RoleSsl, &["127.0.0.1".into(), "localhost".into()]).unwrap().len() == 2);
        assert_eq!(alt_names_for(ProfileKind::RoleSsl, &["bad name".into()]).unwrap_err().code(), "csr_policy");
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for input in [
            &b""[..],
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            b"\x30\x03\x02\x01\x00",
        ] {
            assert_eq!(parse_and_verify(input).unwrap_err().code(), "csr_malformed");
        }
    }
}
