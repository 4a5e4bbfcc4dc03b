//! The PKCS#10 parser, `sitesign::pki::csr::parse_and_verify`, and the profile policy behind it,
//! `VerifiedCsr::to_request`: what an administrator's CSR for an `mp-client` or `role-ssl`
//! certificate goes through.
//!
//! Input byte 0 chooses the mode. 0: the rest is the request as sent (PEM or DER). 1: the rest is
//! a `CertificationRequestInfo`, which the target signs with the RFC 7515 A.3 P-256 key
//! (ecdsa-with-SHA256) into a complete request, so that infos carrying that key's
//! `SubjectPublicKeyInfo` (the seeds do) get past the self-signature to the attribute, SAN and
//! policy code behind it.
//!
//! Checked: no panic; a request that verifies has a supported key, re-encodes to DER that parses
//! and verifies again to the same names; a certification request the policy accepts has a common
//! name, a `role-ssl` one at least one alternative name, every alternative name a DNS host name
//! (no wildcard) or, for `role-ssl` only, an IP address.

#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use der::Encode;
use hsm_adapters::KeyAlgorithm;
use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use sitesign::pki::RoleProfile;
use sitesign::pki::csr::{alt_names_for, parse_and_verify};
use sitesign::token::b64;
use x509_cert::ext::pkix::name::GeneralName;

/// RFC 7515 A.3: the ES256 example key (`d`, then the point `04‖x‖y`).
const EC_D: &str = "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI";
const EC_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
const EC_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

/// `AlgorithmIdentifier` of ecdsa-with-SHA256 (1.2.840.10045.4.3.2, no parameters).
const ECDSA_WITH_SHA256: [u8; 12] = [0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];

/// The key is the target's own constant data: failing to load it is a broken target.
static KEY: LazyLock<(EcdsaKeyPair, SystemRandom)> = LazyLock::new(|| {
    let decode = |s: &str| b64::decode(s).expect("the RFC 7515 key is base64url");
    let point = [&[4u8][..], &decode(EC_X), &decode(EC_Y)].concat();
    let rng = SystemRandom::new();
    let key =
        EcdsaKeyPair::from_private_key_and_public_key(&ECDSA_P256_SHA256_ASN1_SIGNING, &decode(EC_D), &point, &rng)
            .expect("the RFC 7515 A.3 key is a P-256 key pair");
    (key, rng)
});

/// A DER header: `tag`, then the definite length of `len` content bytes.
fn header(tag: u8, len: usize) -> Vec<u8> {
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out
}

/// `info` signed into a `CertificationRequest`, or `None` if signing failed.
fn signed_request(info: &[u8]) -> Option<Vec<u8>> {
    let (key, rng) = &*KEY;
    let sig = key.sign(rng, info).ok()?;
    let mut bit_string = header(0x03, sig.as_ref().len() + 1);
    bit_string.push(0); // no unused bits
    bit_string.extend_from_slice(sig.as_ref());
    let content = [info, &ECDSA_WITH_SHA256, &bit_string].concat();
    Some([header(0x30, content.len()), content].concat())
}

fn host_name(name: &str) -> bool {
    alt_names_for(sitesign::pki::ProfileKind::MpClient, &[name.to_owned()])
        .is_ok_and(|names| matches!(names[..], [GeneralName::DnsName(_)]))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let request = match mode {
        0 => rest.to_vec(),
        1 => match signed_request(rest) {
            Some(r) => r,
            None => return,
        },
        _ => return,
    };
    let Ok(csr) = parse_and_verify(&request) else { return };

    assert!(
        matches!(
            csr.public_key.algorithm(),
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 | KeyAlgorithm::EcP256
        ),
        "accepted a {:?} key",
        csr.public_key.algorithm()
    );
    let again = csr.request.to_der().expect("a parsed request re-encodes");
    let reparsed = parse_and_verify(&again).expect("a verified request, re-encoded, verifies again");
    assert_eq!(reparsed.alt_names, csr.alt_names, "names changed on re-encoding");

    for role in [RoleProfile::MpClient, RoleProfile::RoleSsl] {
        let Ok(req) = csr.to_request(role, Duration::from_secs(86_400)) else { continue };
        let has_cn = req.subject.iter().any(|atv| atv.oid == const_oid::db::rfc4519::COMMON_NAME);
        assert!(has_cn, "{role:?}: accepted a subject without a common name");
        if role == RoleProfile::RoleSsl {
            assert!(!req.alt_names.is_empty(), "role-ssl: accepted a request without alternative names");
        }
        for name in &req.alt_names {
            match name {
                GeneralName::DnsName(d) => assert!(
                    host_name(d.as_str()) || d.as_str().parse::<std::net::IpAddr>().is_ok(),
                    "{role:?}: accepted DNS name {:?}",
                    d.as_str()
                ),
                GeneralName::IpAddress(_) => assert_eq!(role, RoleProfile::RoleSsl, "accepted an IP address"),
                other => panic!("{role:?}: accepted alternative name {other:?}"),
            }
        }
    }
});
