//! Unit tests of the token engine above the backend trait. The signing key here is a software
//! key (`ring`), allowed only in unit tests of code above the backend; the device paths are
//! covered by `softhsm-tests` and the CLI tests. Every attack case gets its own test.

use std::collections::HashMap;
use std::sync::Arc;

use hsm_adapters::{KeyUri, ProtectionReport, PublicKey, SignatureScheme, SigningKey};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::json;

use super::claims::{BulkClaims, Claims};
use super::issue::{encode_claims, encode_header};
use super::verify::{BulkRegistry, KeyRing, verify};
use super::*;
use crate::keys::{KeyRecord, KeyRole, KeyStatus};
use crate::pki::{self, DAY, Issuer, ProfileKind, Request};

const RFC7520_KEY: &str = include_str!("../../../softhsm-tests/data/rfc7520-rsa-key.pem");
const NOW: i64 = 1_795_600_000;
const HIERARCHY: &str = "CDCC5E91-0ADF-4A24-82D0-196667F1C081";
const CLIENT_CERT: &str = "q1MKE5hX1uWoOlxMqk1B7v4HnpnZz3jOhP1ZbpQ6sGA";

#[derive(Debug)]
enum Soft {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

#[derive(Debug)]
struct SoftKey {
    uri: KeyUri,
    public: PublicKey,
    soft: Soft,
}

impl SigningKey for SoftKey {
    fn uri(&self) -> &KeyUri {
        &self.uri
    }
    fn public_key(&self) -> &PublicKey {
        &self.public
    }
    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> hsm_adapters::Result<Vec<u8>> {
        let rng = SystemRandom::new();
        match (&self.soft, scheme) {
            (Soft::Rsa(k), SignatureScheme::RsaPkcs1Sha256) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &rng, message, &mut sig).unwrap();
                Ok(sig)
            }
            (Soft::Ec(k), SignatureScheme::EcdsaP256Sha256) => Ok(k.sign(&rng, message).unwrap().as_ref().to_vec()),
            _ => Err(hsm_adapters::Error::Unsupported { what: format!("{scheme:?}") }),
        }
    }
    fn check_protection(&self) -> hsm_adapters::Result<ProtectionReport> {
        unreachable!("not used by the token engine")
    }
}

/// A test key as the appliance gets every device key: its signatures checked (and ECDSA made
/// low-S) on the host.
fn checked(key: SoftKey) -> Arc<dyn SigningKey> {
    Arc::new(hsm_adapters::checked::CheckedKey::new(Arc::new(key)).unwrap())
}

fn rsa_key() -> Arc<dyn SigningKey> {
    let der = der::pem::decode_vec(RFC7520_KEY.as_bytes()).unwrap().1;
    let pair = RsaKeyPair::from_der(&der).unwrap();
    let public = {
        let c = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
        PublicKey::from_rsa_components(&c.n, &c.e).unwrap()
    };
    checked(SoftKey { uri: "pkcs11:object=rfc7520".parse().unwrap(), public, soft: Soft::Rsa(pair) })
}

fn ec_key() -> Arc<dyn SigningKey> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let public = PublicKey::from_p256_point(pair.public_key().as_ref()).unwrap();
    checked(SoftKey { uri: "pkcs11:object=ec".parse().unwrap(), public, soft: Soft::Ec(pair) })
}

/// A self-signed certificate for `key` (the verifier only needs its public key and thumbprint).
fn certificate(key: &Arc<dyn SigningKey>, cn: &str) -> Vec<u8> {
    use der::Decode;
    let request = Request {
        profile: ProfileKind::TokenSigning,
        subject: format!("CN={cn}").parse().unwrap(),
        public_key: spki::SubjectPublicKeyInfoOwned::from_der(key.public_key().spki_der()).unwrap(),
        alt_names: Vec::new(),
        validity: DAY * 30,
    };
    pki::issue(&request, &Issuer { key: Arc::clone(key), certificate: None }).unwrap().der
}

#[derive(Default)]
struct Registry(HashMap<Guid, bool>);

impl BulkRegistry for Registry {
    fn bulk_blocked(&self, guid: Guid) -> Result<Option<bool>, String> {
        Ok(self.0.get(&guid).copied())
    }
}

struct Fixture {
    key: Arc<dyn SigningKey>,
    signer: TokenSigner,
    cert: Vec<u8>,
    ring: KeyRing,
    registry: Registry,
    policy: VerifyPolicy,
}

/// A token-signing key record whose schedule puts it in `status` at [`NOW`].
fn record(id: &str, status: KeyStatus, cert: &[u8]) -> KeyRecord {
    let (activates, deactivates, retires, revoked) = match status {
        KeyStatus::Pending => (None, None, None, None),
        KeyStatus::Active => (Some(0), None, None, None),
        KeyStatus::VerifyOnly => (Some(0), Some(1), None, None),
        KeyStatus::Retired => (Some(0), Some(1), Some(2), None),
        KeyStatus::Revoked => (Some(0), None, None, Some(1)),
    };
    let r = KeyRecord {
        id: id.into(),
        backend: "test".into(),
        uri: format!("pkcs11:object={id}"),
        algorithm: "rsa-2048".into(),
        role: KeyRole::TokenSigning,
        created: 0,
        activates,
        deactivates,
        retires,
        revoked,
        revoke_reason: revoked.map(|_| "test".into()),
        not_after: i64::MAX,
        certificates: vec![cert.to_vec()],
    };
    assert_eq!(r.status_at(NOW), status);
    r
}

fn fixture_with(key: Arc<dyn SigningKey>, status: KeyStatus) -> Fixture {
    let cert = certificate(&key, "SMS Token Signing");
    let hierarchy = Guid::parse(HIERARCHY).unwrap();
    let signer = TokenSigner::new(Arc::clone(&key), "ts-1", &cert, i64::MAX, hierarchy).unwrap();
    let ring = KeyRing::from_records(&[record("ts-1", status, &cert)]).unwrap();
    Fixture {
        key,
        signer,
        cert,
        ring,
        registry: Registry::default(),
        policy: VerifyPolicy { hierarchy, skew: DEFAULT_SKEW, high_s_before: None },
    }
}

fn fixture() -> Fixture {
    fixture_with(rsa_key(), KeyStatus::Active)
}

impl Fixture {
    fn bulk(&mut self) -> (Guid, String) {
        let guid = Guid::random().unwrap();
        self.registry.0.insert(guid, false);
        (guid, self.signer.bulk(guid, BULK_DEFAULT_LIFETIME_MINUTES, NOW).unwrap().token)
    }

    fn client(&self) -> String {
        self.signer.client("GUID:8d2b7c6e-1f3a-4b5c-9d8e-7f6a5b4c3d2e", CLIENT_CERT, NOW).unwrap().token
    }

    fn verifier(&self) -> Verifier<'_> {
        Verifier { policy: &self.policy, keys: &self.ring, registry: &self.registry }
    }

    fn check_for(&self, token: &str, thumbprint: Option<&str>, now: i64, purpose: Purpose) -> Result<Verified, Reason> {
        let presented = Presented { token, thumbprint, expect: None, purpose };
        verify(self.verifier(), presented, now).map_err(|e| match e {
            VerifyError::Rejected(r) => r.reason,
            VerifyError::Registry(e) => panic!("{e}"),
        })
    }

    fn check(&self, token: &str, thumbprint: Option<&str>, now: i64) -> Result<Verified, Reason> {
        self.check_for(token, thumbprint, now, Purpose::Use)
    }

    fn refuse(&self, token: &str, reason: Reason) {
        assert_eq!(self.check(token, Some(CLIENT_CERT), NOW + 60).map(|v| v.kind), Err(reason), "{token}");
    }

    /// A token with exactly this header and payload text, validly signed by the fixture's key:
    /// whatever is refused is refused by the parser and policy, not for a bad signature.
    fn forge(&self, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64::encode(header.as_bytes()), b64::encode(payload.as_bytes()));
        let sig = self.key.sign(self.signer.scheme(), input.as_bytes()).unwrap();
        format!("{input}.{}", b64::encode(&sig))
    }

    fn header(&self) -> String {
        format!(r#"{{"typ":"JWT","alg":"{}","x5t":"{}"}}"#, self.signer.scheme().jws_alg(), pki::x5t(&self.cert))
    }
}

fn parts(token: &str) -> Vec<String> {
    token.split('.').map(|p| String::from_utf8(b64::decode(p).unwrap_or_default()).unwrap_or_default()).collect()
}

fn bulk_payload(guid: Guid, exp: i64) -> String {
    let h = Guid::parse(HIERARCHY).unwrap();
    format!(
        r#"{{"SCCMTokenCategory":"SCCMPreAuthToken","Authority":"SCCM","License":"SCCM","Type":"BulkRegistration","TenantId":"{}","UniqueId":"{}","iss":"urn:sccm:oauth2:{}","aud":"urn:sccm:service","exp":{exp},"nbf":{NOW}}}"#,
        h.upper(),
        guid.lower(),
        h.lower()
    )
}

// ---- Layout -------------------------------------------------------------------------------

/// The two published bulk tokens (`reference/vectors.md`): the same values through sitesign's
/// encoders give the same bytes, header and claims.
#[test]
fn bulk_layout_matches_the_published_samples_byte_for_byte() {
    let samples = [
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiIsIng1dCI6Ik9Tbzh2Tmd5VldRUjlDYVh5T2lacHFlMDlXNCJ9.eyJTQ0NNVG9rZW5DYXRlZ29yeSI6IlNDQ01QcmVBdXRoVG9rZW4iLCJBdXRob3JpdHkiOiJTQ0NNIiwiTGljZW5zZSI6IlNDQ00iLCJUeXBlIjoiQnVsa1JlZ2lzdHJhdGlvbiIsIlRlbmFudElkIjoiQ0RDQzVFOTEtMEFERi00QTI0LTgyRDAtMTk2NjY3RjFDMDgxIiwiVW5pcXVlSWQiOiJkYjU5MWUzMy0wNmZkLTRjNWItODJmMy1iZjY3M2U1YmQwYTIiLCJpc3MiOiJ1cm46c2NjbTpvYXV0aDI6Y2RjYzVlOTEtMGFkZi00YTI0LTgyZDAtMTk2NjY3ZjFjMDgxIiwiYXVkIjoidXJuOnNjY206c2VydmljZSIsImV4cCI6MTU4MDQxNTUwNSwibmJmIjoxNTgwMTU2MzA1fQ",
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiIsIng1dCI6Ik1XUldSbUtVQlZjNlJDSGpCTjQyZnhvZUdEMCJ9.eyJTQ0NNVG9rZW5DYXRlZ29yeSI6IlNDQ01QcmVBdXRoVG9rZW4iLCJBdXRob3JpdHkiOiJTQ0NNIiwiTGljZW5zZSI6IlNDQ00iLCJUeXBlIjoiQnVsa1JlZ2lzdHJhdGlvbiIsIlRlbmFudElkIjoiN0IwQzM4MDYtRDI4Qy00QTQ1LUFEQjItRkI5Rjk0QTQ2MkY4IiwiVW5pcXVlSWQiOiJlYTJmYzUxMC1hM2JlLTRjZWYtOTBiMC0yYTA1MTVjNGU0MGMiLCJpc3MiOiJ1cm46c2NjbTpvYXV0aDI6N2IwYzM4MDYtZDI4Yy00YTQ1LWFkYjItZmI5Zjk0YTQ2MmY4IiwiYXVkIjoidXJuOnNjY206c2VydmljZSIsImV4cCI6MTU4OTcwMTUxOCwibmJmIjoxNTg5NDQyMzE4fQ",
    ];
    for sample in samples {
        let (h, c) = sample.split_once('.').unwrap();
        let header: serde_json::Value = serde_json::from_slice(&b64::decode(h).unwrap()).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&b64::decode(c).unwrap()).unwrap();
        let tenant = Guid::parse(claims["TenantId"].as_str().unwrap()).unwrap();
        let unique = Guid::parse(claims["UniqueId"].as_str().unwrap()).unwrap();
        let ours = Claims::Bulk(BulkClaims {
            category: TokenKind::Bulk.category().into(),
            authority: claims::SCCM.into(),
            license: claims::SCCM.into(),
            type_name: TokenKind::Bulk.type_name().into(),
            tenant_id: tenant.upper(),
            unique_id: unique.lower(),
            iss: claims::issuer_for(tenant),
            aud: claims::AUDIENCE.into(),
            exp: claims["exp"].as_i64().unwrap(),
            nbf: claims["nbf"].as_i64().unwrap(),
        });
        assert_eq!(encode_header("RS256", header["x5t"].as_str().unwrap()).unwrap(), h);
        assert_eq!(encode_claims(&ours).unwrap(), c);
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["nbf"].as_i64().unwrap(),
            BULK_DEFAULT_LIFETIME_MINUTES * 60
        );
    }
}

/// A bulk token sitesign issues has the samples' shape: members in order, GUID cases, integer
/// times, a 20-byte x5t, a 256-byte RS256 signature.
#[test]
fn issued_bulk_tokens_have_the_sample_shape() {
    let mut f = fixture();
    let (guid, token) = f.bulk();
    let p = parts(&token);
    let x5t = pki::x5t(&f.cert);
    assert_eq!(p[0], format!(r#"{{"typ":"JWT","alg":"RS256","x5t":"{x5t}"}}"#));
    assert_eq!(p[1], bulk_payload(guid, NOW + 4320 * 60));
    assert_eq!(b64::decode(token.rsplit('.').next().unwrap()).unwrap().len(), 256);
    assert!(!token.contains('='));
}

#[test]
fn client_and_access_tokens_follow_spec_order_and_verify() {
    let f = fixture();
    let token = f.client();
    let p = parts(&token);
    let v: serde_json::Value = serde_json::from_str(&p[1]).unwrap();
    let names: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        names,
        [
            "SCCMTokenCategory",
            "Authority",
            "License",
            "Type",
            "TenantId",
            "UniqueId",
            "DeviceId",
            "cnf",
            "iss",
            "aud",
            "iat",
            "nbf",
            "exp"
        ]
    );
    assert_eq!(v["DeviceId"], "GUID:8D2B7C6E-1F3A-4B5C-9D8E-7F6A5B4C3D2E");
    assert_eq!(v["cnf"], json!({"x5t#S256": CLIENT_CERT}));
    assert_eq!(v["exp"].as_i64().unwrap() - v["iat"].as_i64().unwrap(), CLIENT_LIFETIME);
    assert_eq!(f.check(&token, Some(CLIENT_CERT), NOW).unwrap().kind, TokenKind::Client);

    let access = f.signer.access("GUID:8d2b7c6e-1f3a-4b5c-9d8e-7f6a5b4c3d2e", CLIENT_CERT, NOW).unwrap();
    let v: serde_json::Value = serde_json::from_str(&parts(&access.token)[1]).unwrap();
    let names: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    assert_eq!(names, ["SCCMTokenCategory", "Type", "DeviceId", "cnf", "UniqueId", "iss", "aud", "iat", "nbf", "exp"]);
    assert_eq!(access.expires - NOW, ACCESS_LIFETIME);
    assert_eq!(f.check(&access.token, Some(CLIENT_CERT), NOW + 3600).unwrap().kind, TokenKind::Access);
}

#[test]
fn es256_keys_sign_and_verify_with_raw_r_s() {
    let mut f = fixture_with(ec_key(), KeyStatus::Active);
    let (_, token) = f.bulk();
    assert!(parts(&token)[0].contains(r#""alg":"ES256""#));
    assert_eq!(b64::decode(token.rsplit('.').next().unwrap()).unwrap().len(), 64);
    assert_eq!(f.check(&token, None, NOW).unwrap().kind, TokenKind::Bulk);
}

/// `s` replaced by `n − s`: the other valid ECDSA signature of the same token.
fn high_s_twin(token: &str) -> String {
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut sig = b64::decode(sig).unwrap();
    let n = hex::decode("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551").unwrap();
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(n[i]) - i16::from(sig[32 + i]) - borrow;
        borrow = i16::from(d < 0);
        sig[32 + i] = d.rem_euclid(256) as u8;
    }
    format!("{input}.{}", b64::encode(&sig))
}

#[test]
fn es256_is_low_s_and_high_s_is_refused_except_on_tokens_from_before_low_s() {
    let mut f = fixture_with(ec_key(), KeyStatus::Active);
    for _ in 0..8 {
        let (_, token) = f.bulk();
        let sig = b64::decode(token.rsplit('.').next().unwrap()).unwrap();
        assert!(hsm_adapters::checked::ecdsa_is_low_s(&sig), "sitesign signs low-S");
        let twin = high_s_twin(&token);
        assert_eq!(f.check(&twin, None, NOW).unwrap_err(), Reason::NonCanonicalSignature);
        // A token issued (nbf) before the appliance's signatures became low-S keeps working.
        f.policy.high_s_before = Some(NOW + 1);
        assert_eq!(f.check(&twin, None, NOW).unwrap().kind, TokenKind::Bulk);
        f.policy.high_s_before = Some(NOW);
        assert_eq!(f.check(&twin, None, NOW).unwrap_err(), Reason::NonCanonicalSignature);
        f.policy.high_s_before = None;
    }
}

#[test]
fn no_token_outlives_its_signing_key() {
    let f = fixture();
    let hierarchy = Guid::parse(HIERARCHY).unwrap();
    let signer = TokenSigner::new(Arc::clone(&f.key), "ts-1", &f.cert, NOW + 86_400, hierarchy).unwrap();
    let t = signer.client("GUID:8d2b7c6e-1f3a-4b5c-9d8e-7f6a5b4c3d2e", CLIENT_CERT, NOW).unwrap();
    assert_eq!(t.expires, NOW + 86_400, "clamped to the key's retirement");
    let late = signer.bulk(Guid::random().unwrap(), 60, NOW + 86_400 - 30).unwrap_err();
    assert_eq!(late.code(), "signing_key_retiring");
}

#[test]
fn bulk_lifetime_bounds() {
    let f = fixture();
    for bad in [0, -1, 10_081, i64::MAX] {
        assert_eq!(f.signer.bulk(Guid::random().unwrap(), bad, NOW).unwrap_err().code(), "invalid_lifetime");
    }
    for good in [1, 4320, 10_080] {
        assert_eq!(f.signer.bulk(Guid::random().unwrap(), good, NOW).unwrap().expires, NOW + good * 60);
    }
}

#[test]
fn malformed_device_ids_and_thumbprints_are_refused_at_issuance() {
    let f = fixture();
    assert_eq!(
        f.signer.client("8d2b7c6e-1f3a-4b5c-9d8e-7f6a5b4c3d2e", CLIENT_CERT, NOW).unwrap_err().code(),
        "invalid_device_id"
    );
    assert_eq!(
        f.signer.client("GUID:8d2b7c6e-1f3a-4b5c-9d8e-7f6a5b4c3d2e", "abc", NOW).unwrap_err().code(),
        "invalid_thumbprint"
    );
}

// ---- The attack catalogue ----------------------------------------------------------------

#[test]
fn alg_none_is_refused() {
    let mut f = fixture();
    let (guid, _) = f.bulk();
    let header = format!(r#"{{"typ":"JWT","alg":"none","x5t":"{}"}}"#, pki::x5t(&f.cert));
    let input = format!("{}.{}", b64::encode(header.as_bytes()), b64::encode(bulk_payload(guid, NOW + 60).as_bytes()));
    f.refuse(&format!("{input}."), Reason::AlgorithmMismatch);
}

#[test]
fn hs256_with_the_public_key_as_secret_is_refused() {
    let mut f = fixture();
    let (guid, _) = f.bulk();
    let header = format!(r#"{{"typ":"JWT","alg":"HS256","x5t":"{}"}}"#, pki::x5t(&f.cert));
    let input = format!("{}.{}", b64::encode(header.as_bytes()), b64::encode(bulk_payload(guid, NOW + 600).as_bytes()));
    for secret in [f.key.public_key().spki_der().to_vec(), f.cert.clone()] {
        let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret), input.as_bytes());
        f.refuse(&format!("{input}.{}", b64::encode(tag.as_ref())), Reason::AlgorithmMismatch);
    }
}

#[test]
fn an_algorithm_other_than_the_keys_is_refused() {
    let mut f = fixture();
    let (guid, _) = f.bulk();
    for alg in ["ES256", "PS256", "RS512", "rs256"] {
        let header = format!(r#"{{"typ":"JWT","alg":"{alg}","x5t":"{}"}}"#, pki::x5t(&f.cert));
        f.refuse(&f.forge(&header, &bulk_payload(guid, NOW + 600)), Reason::AlgorithmMismatch);
    }
}

#[test]
fn header_supplied_keys_and_key_references_are_refused() {
    let mut f = fixture();
    let (guid, _) = f.bulk();
    let x5t = pki::x5t(&f.cert);
    for extra in [
        r#""jwk":{"kty":"RSA","n":"AQAB","e":"AQAB"}"#,
        r#""jku":"https://attacker.example/jwks.json""#,
        r#""x5u":"https://attacker.example/cert.pem""#,
        r#""x5c":["MIIB"]"#,
        r#""kid":"../../etc/passwd""#,
    ] {
        let header = format!(r#"{{"typ":"JWT","alg":"RS256","x5t":"{x5t}",{extra}}}"#);
        f.refuse(&f.forge(&header, &bulk_payload(guid, NOW + 600)), Reason::ForbiddenHeader);
    }
}

#[test]
fn crit_is_refused() {
    let mut f = fixture();
    let (guid, _) = f.bulk();
    let header = format!(r#"{{"typ":"JWT","alg":"RS256","x5t":"{}","crit":["exp"]}}"#, pki::x5t(&f.cert));
    f.refuse(&f.forge(&header, &bulk_payload(guid, NOW + 600)), Reason::ForbiddenHeader);
}

#[test]
fn unknown_header_members_are_refused() {
    let mut f = fixture();
    let (guid, _) = f.bulk();
    let header = format!(r#"{{"typ":"JWT","alg":"RS256","x5t":"{}","cty":"JWT"}}"#, pki::x5t(&f.cert));
    f.refuse(&f.forge(&header, &bulk_payload(guid, NOW + 600)), Reason::UnknownHeader);
}

#[test]
fn typ_other_than_jwt_is_refused() {
    let mut f = fixture();
    let (guid, _) = f.bulk();
    let header = format!(r#"{{"typ":"at+jwt","alg":"RS256","x5t":"{}"}}"#, pki::x5t(&f.cert));
    f.refuse(&f.forge(&header, &bulk_payload(guid, NOW + 600)), Reason::BadHeader);
}

#[test]
fn duplicate_header_members_are_refused() {
    let mut f = fixture();
    let (guid, _) = f.bulk();
    let header = format!(r#"{{"typ":"JWT","alg":"RS256","alg":"none","x5t":"{}"}}"#, pki::x5t(&f.cert));
    f.refuse(&f.forge(&header, &bulk_payload(guid, NOW + 600)), Reason::DuplicateKey);
}

#[test]
fn duplicate_claims_are_refused() {
    let mut f = fixture();
    let (guid, _) = f.bulk();
    let payload = bulk_payload(guid, NOW + 600).replace(r#""aud":"#, r#""exp":99999999999,"aud":"#);
    f.refuse(&f.forge(&f.header(), &payload), Reason::DuplicateKey);
}

#[test]
fn non_canonical_base64url_is_refused() {
    let mut f = fixture();
    let (_, token) = f.bulk();
    let p: Vec<&str> = token.split('.').collect();
    // Padding, the standard alphabet, whitespace, and a last character with non-zero spare bits
    // (decodes to the same bytes in lenient decoders).
    let padded = format!("{}=.{}.{}", p[0], p[1], p[2]);
    let standard = token.replace('-', "+").replace('_', "/");
    let spaced = format!("{}.{} .{}", p[0], p[1], p[2]);
    let sig = p[2];
    let last = sig.chars().last().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let idx = alphabet.find(last).unwrap();
    let sibling = alphabet.chars().nth(idx ^ 1).unwrap(); // differs only in a spare bit (256 bytes: 2 spare bits)
    let tweaked = format!("{}.{}.{}{sibling}", p[0], p[1], &sig[..sig.len() - 1]);
    for bad in [padded, spaced, tweaked] {
        f.refuse(&bad, Reason::NonCanonicalEncoding);
    }
    if standard != token {
        f.refuse(&standard, Reason::NonCanonicalEncoding);
    }
}

#[test]
fn oversized_tokens_are_refused_before_parsing() {
    let f = fixture();
    let huge = format!("{}.{}.{}", "a".repeat(8000), "b".repeat(8000), "c".repeat(1000));
    f.refuse(&huge, Reason::TooLarge);
}

#[test]
fn wrong_shapes_are_malformed() {
    let mut f = fixture();
    let (_, token) = f.bulk();
    let p: Vec<&str> = token.split('.').collect();
    for bad in [
        String::new(),
        p[0].to_owned(),
        format!("{}.{}", p[0], p[1]),
        format!("{token}.x"),
        format!("{}.{}.{}.{}.{}", p[0], p[1], p[2], p[1], p[2]),
    ] {
        f.refuse(&bad, Reason::Malformed);
    }
    let not_json = f.forge(&f.header(), "not json");
    f.refuse(&not_json, Reason::Malformed);
    let array = f.forge(&f.header(), "[1,2]");
    f.refuse(&array, Reason::Malformed);
}

#[test]
fn expired_and_not_yet_valid_tokens_are_refused_outside_the_skew() {
    let mut f = fixture();
    let (_, token) = f.bulk();
    let exp = NOW + 4320 * 60;
    assert!(f.check(&token, None, exp + DEFAULT_SKEW).is_ok(), "within the skew");
    assert_eq!(f.check(&token, None, exp + DEFAULT_SKEW + 1).map(|v| v.kind), Err(Reason::Expired));
    assert!(f.check(&token, None, NOW - DEFAULT_SKEW).is_ok(), "clock slightly behind");
    assert_eq!(f.check(&token, None, NOW - DEFAULT_SKEW - 1).map(|v| v.kind), Err(Reason::NotYetValid));
}

#[test]
fn impossible_lifetimes_are_refused() {
    let mut f = fixture();
    let (guid, _) = f.bulk();
    // Longer than a bulk token may live, and exp before nbf.
    f.refuse(&f.forge(&f.header(), &bulk_payload(guid, NOW + 10_081 * 60)), Reason::BadLifetime);
    f.refuse(&f.forge(&f.header(), &bulk_payload(guid, NOW - 1)), Reason::BadLifetime);
}

/// Found by review while writing the `token_verifier` fuzz target, and replayed by it (seed
/// `forged-regression-exp-near-i64-max`): `exp + skew` overflowed for an `exp` near `i64::MAX`
/// with an `nbf` within a lifetime of it — a panic where overflow checks are on, `expired` by
/// wrap-around where they are off. Such a token is not valid yet.
#[test]
fn times_near_the_end_of_i64_do_not_overflow() {
    let mut f = fixture();
    let (guid, _) = f.bulk();
    let payload =
        bulk_payload(guid, i64::MAX).replace(&format!(r#""nbf":{NOW}"#), &format!(r#""nbf":{}"#, i64::MAX - 60));
    f.refuse(&f.forge(&f.header(), &payload), Reason::NotYetValid);
}

#[test]
fn time_claims_must_be_integers() {
    let mut f = fixture();
    let (guid, _) = f.bulk();
    let exp = NOW + 600;
    for replacement in
        [format!(r#""exp":{exp}.5"#), format!(r#""exp":"{exp}""#), r#""exp":1e10"#.to_owned(), r#""exp":-5"#.to_owned()]
    {
        let payload = bulk_payload(guid, exp).replace(&format!(r#""exp":{exp}"#), &replacement);
        f.refuse(&f.forge(&f.header(), &payload), Reason::BadClaim);
    }
}

#[test]
fn issuer_mismatch_is_refused() {
    let mut f = fixture();
    let (guid, _) = f.bulk();
    let payload = bulk_payload(guid, NOW + 600).replace("urn:sccm:oauth2:cdcc5e91", "urn:sccm:oauth2:00005e91");
    f.refuse(&f.forge(&f.header(), &payload), Reason::WrongIssuer);
    // The same GUID in upper case is another issuer string: exact comparison.
    let payload = bulk_payload(guid, NOW + 600).replace(
        "urn:sccm:oauth2:cdcc5e91-0adf-4a24-82d0-196667f1c081",
        "urn:sccm:oauth2:CDCC5E91-0ADF-4A24-82D0-196667F1C081",
    );
    f.refuse(&f.forge(&f.header(), &payload), Reason::WrongIssuer);
}

#[test]
fn audience_mismatch_is_refused() {
    let mut f = fixture();
    let (guid, _) = f.bulk();
    let payload = bulk_payload(guid, NOW + 600).replace("urn:sccm:service", "urn:sccm:other");
    f.refuse(&f.forge(&f.header(), &payload), Reason::WrongAudience);
}

#[test]
fn tenant_mismatch_is_refused() {
    let mut f = fixture();
    let (guid, _) = f.bulk();
    let payload = bulk_payload(guid, NOW + 600).replace(r#""TenantId":"CDCC5E91"#, r#""TenantId":"00005E91"#);
    f.refuse(&f.forge(&f.header(), &payload), Reason::WrongTenant);
    let payload = bulk_payload(guid, NOW + 600).replace(
        r#""TenantId":"CDCC5E91-0ADF-4A24-82D0-196667F1C081"#,
        r#""TenantId":"cdcc5e91-0adf-4a24-82d0-196667f1c081"#,
    );
    f.refuse(&f.forge(&f.header(), &payload), Reason::WrongTenant);
}

#[test]
fn a_token_from_another_hierarchy_is_refused() {
    let mut f = fixture();
    let (_, token) = f.bulk();
    f.policy.hierarchy = Guid::random().unwrap();
    f.refuse(&token, Reason::WrongIssuer);
}

#[test]
fn unknown_signing_certificates_are_refused() {
    let mut f = fixture();
    let (_, token) = f.bulk();
    let other = certificate(&rsa_key(), "Another Token Signing");
    f.ring = KeyRing::from_records(&[record("ts-other", KeyStatus::Active, &other)]).unwrap();
    f.refuse(&token, Reason::UnknownKey);
    // A malformed x5t is a header problem.
    let header = r#"{"typ":"JWT","alg":"RS256","x5t":"not-a-thumbprint"}"#;
    let (guid, _) = f.bulk();
    f.refuse(&f.forge(header, &bulk_payload(guid, NOW + 600)), Reason::BadHeader);
}

#[test]
fn retired_and_pending_keys_do_not_verify_but_verify_only_keys_do() {
    let mut f = fixture();
    let (_, token) = f.bulk();
    for (status, expected) in [
        (KeyStatus::Retired, Err(Reason::KeyNotUsable)),
        (KeyStatus::Pending, Err(Reason::KeyNotUsable)),
        (KeyStatus::Revoked, Err(Reason::KeyRevoked)),
        (KeyStatus::VerifyOnly, Ok(TokenKind::Bulk)),
        (KeyStatus::Active, Ok(TokenKind::Bulk)),
    ] {
        f.ring = KeyRing::from_records(&[record("ts-1", status, &f.cert)]).unwrap();
        assert_eq!(f.check(&token, None, NOW).map(|v| v.kind), expected, "{status:?}");
    }
}

#[test]
fn a_renewal_accepts_tokens_of_retired_and_revoked_keys_but_still_checks_their_signature() {
    let mut f = fixture();
    let token = f.client();
    for (status, expected) in [
        (KeyStatus::Retired, Ok(KeyStatus::Retired)),
        (KeyStatus::Revoked, Ok(KeyStatus::Revoked)),
        (KeyStatus::VerifyOnly, Ok(KeyStatus::VerifyOnly)),
        (KeyStatus::Pending, Err(Reason::KeyNotUsable)),
    ] {
        f.ring = KeyRing::from_records(&[record("ts-1", status, &f.cert)]).unwrap();
        let got = f.check_for(&token, Some(CLIENT_CERT), NOW, Purpose::Renewal).map(|v| v.key_status);
        assert_eq!(got, expected, "{status:?}");
    }
    // A revoked key's token with a broken signature is refused even for renewal.
    f.ring = KeyRing::from_records(&[record("ts-1", KeyStatus::Revoked, &f.cert)]).unwrap();
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut bytes = b64::decode(sig).unwrap();
    bytes[7] ^= 1;
    let forged = format!("{input}.{}", b64::encode(&bytes));
    assert_eq!(
        f.check_for(&forged, Some(CLIENT_CERT), NOW, Purpose::Renewal).map(|v| v.kind),
        Err(Reason::BadSignature)
    );
}

#[test]
fn blocked_and_unknown_bulk_tokens_are_refused() {
    let mut f = fixture();
    let (guid, token) = f.bulk();
    assert!(f.check(&token, None, NOW).is_ok());
    f.registry.0.insert(guid, true);
    f.refuse(&token, Reason::Blocked);
    f.registry.0.insert(guid, false);
    assert!(f.check(&token, None, NOW).is_ok(), "unblocked");
    f.registry.0.remove(&guid);
    f.refuse(&token, Reason::UnknownBulkToken);
}

#[test]
fn binding_mismatch_and_missing_binding_are_refused() {
    let f = fixture();
    let token = f.client();
    assert_eq!(f.check(&token, None, NOW).map(|v| v.kind), Err(Reason::BindingRequired));
    let other = b64::encode(&[7u8; 32]);
    assert_eq!(f.check(&token, Some(&other), NOW).map(|v| v.kind), Err(Reason::BindingMismatch));
    assert!(f.check(&token, Some(CLIENT_CERT), NOW).is_ok());
}

#[test]
fn malformed_signatures_are_refused() {
    let mut f = fixture();
    let (_, token) = f.bulk();
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut bytes = b64::decode(sig).unwrap();
    bytes[100] ^= 1;
    f.refuse(&format!("{input}.{}", b64::encode(&bytes)), Reason::BadSignature);
    f.refuse(&format!("{input}.{}", b64::encode(&bytes[..255])), Reason::BadSignature);
    f.refuse(&format!("{input}."), Reason::BadSignature);
    f.refuse(&format!("{input}.{}", b64::encode(&[0u8; 512])), Reason::BadSignature);
    // A valid signature over other claims, spliced onto these.
    let (_, other) = f.bulk();
    f.refuse(&format!("{input}.{}", other.rsplit_once('.').unwrap().1), Reason::BadSignature);
}

#[test]
fn unknown_and_missing_claims_are_refused() {
    let mut f = fixture();
    let (guid, _) = f.bulk();
    let payload = bulk_payload(guid, NOW + 600).replace(r#""aud":"#, r#""admin":true,"aud":"#);
    f.refuse(&f.forge(&f.header(), &payload), Reason::UnknownClaim);
    let payload = bulk_payload(guid, NOW + 600).replace(r#""License":"SCCM","#, "");
    f.refuse(&f.forge(&f.header(), &payload), Reason::MissingClaim);
}

#[test]
fn wrong_category_or_type_is_refused() {
    let mut f = fixture();
    let (guid, token) = f.bulk();
    let payload = bulk_payload(guid, NOW + 600).replace("SCCMPreAuthToken", "SCCMSuperToken");
    f.refuse(&f.forge(&f.header(), &payload), Reason::WrongCategory);
    let payload = bulk_payload(guid, NOW + 600).replace("BulkRegistration", "Device");
    f.refuse(&f.forge(&f.header(), &payload), Reason::WrongCategory);
    // A bulk token offered where a client token is needed.
    let presented =
        Presented { token: &token, thumbprint: None, expect: Some(TokenKind::Client), purpose: Purpose::Use };
    let r = verify(f.verifier(), presented, NOW);
    assert!(matches!(r, Err(VerifyError::Rejected(Rejection { reason: Reason::WrongCategory, .. }))), "{r:?}");
}
