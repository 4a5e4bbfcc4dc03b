//! Known-answer test: RFC 7520 §4.1's RSA key imported into a SoftHSM token (a test-only path —
//! sitesign itself never imports keys) must reproduce the RFC's RS256 signature byte for byte
//! through sitesign's backend: host-side SHA-256, DigestInfo, CKM_RSA_PKCS in the token.

use base64::Engine as _;
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use der::Decode;
use der::asn1::UintRef;
use device_tests::{SoftHsm, TOKEN_LABEL};
use hsm_adapters::{KeyBackend, SignatureScheme};

/// RFC 7520 §4.1.1: base64url(protected header) "." base64url(payload).
const SIGNING_INPUT: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImJpbGJvLmJhZ2dpbnNAaG9iYml0b24uZXhhbXBsZSJ9.SXTigJlzIGEgZGFuZ2Vyb3VzIGJ1c2luZXNzLCBGcm9kbywgZ29pbmcgb3V0IHlvdXIgZG9vci4gWW91IHN0ZXAgb250byB0aGUgcm9hZCwgYW5kIGlmIHlvdSBkb24ndCBrZWVwIHlvdXIgZmVldCwgdGhlcmXigJlzIG5vIGtub3dpbmcgd2hlcmUgeW91IG1pZ2h0IGJlIHN3ZXB0IG9mZiB0by4";
/// RFC 7520 §4.1.3: the expected signature, base64url.
const SIGNATURE: &str = "MRjdkly7_-oTPTS3AXP41iQIGKa80A0ZmTuV5MEaHoxnW2e5CZ5NlKtainoFmKZopdHM1O2U4mwzJdQx996ivp83xuglII7PNDi84wnB-BDkoBwA78185hX-Es4JIwmDLJK3lfWRa-XtL0RnltuYv746iYTh_qHRD68BNt1uSNCrUCTJDt5aAE6x8wW1Kt9eRo4QPocSadnHXFxnt8Is9UzpERV0ePPQdLuW3IS_de3xyIrDaLGdjluPxUAhb6L2aXic1U12podGU0KLUQSE_oI-ZnmKJ3F4uOZDnd6QZWJushZ41Axf_fcIe8u9ipH84ogoree7vjbU5y18kDquDg";

const KEY_PEM: &str = include_str!("../../data/rfc7520-rsa-key.pem");

/// PKCS#1 RSAPrivateKey (RFC 8017 A.1.2), two-prime.
#[derive(der::Sequence)]
struct RsaPrivateKey<'a> {
    version: UintRef<'a>,
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
    private_exponent: UintRef<'a>,
    prime1: UintRef<'a>,
    prime2: UintRef<'a>,
    exponent1: UintRef<'a>,
    exponent2: UintRef<'a>,
    coefficient: UintRef<'a>,
}

pub fn rfc7520_signature_is_reproduced_by_an_imported_key(hsm: &SoftHsm) {
    let der = der::pem::decode_vec(KEY_PEM.as_bytes()).unwrap().1;
    let key = RsaPrivateKey::from_der(&der).unwrap();
    assert_eq!(key.version.as_bytes(), [0]);

    // Import it with raw cryptoki, sensitive and sign-only like a generated key.
    let session = hsm.raw_session(true);
    let bytes = |u: &UintRef<'_>| u.as_bytes().to_vec();
    session
        .create_object(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::RSA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Label(b"rfc7520".to_vec()),
            Attribute::Modulus(bytes(&key.modulus)),
            Attribute::PublicExponent(bytes(&key.public_exponent)),
            Attribute::PrivateExponent(bytes(&key.private_exponent)),
            Attribute::Prime1(bytes(&key.prime1)),
            Attribute::Prime2(bytes(&key.prime2)),
            Attribute::Exponent1(bytes(&key.exponent1)),
            Attribute::Exponent2(bytes(&key.exponent2)),
            Attribute::Coefficient(bytes(&key.coefficient)),
        ])
        .unwrap();
    drop(session);

    // Sign through sitesign's backend, as a token is signed.
    let backend = hsm.backend();
    let key =
        backend.find_key(&format!("pkcs11:token={TOKEN_LABEL};object=rfc7520;type=private").parse().unwrap()).unwrap();
    let signature = key.sign(SignatureScheme::RsaPkcs1Sha256, SIGNING_INPUT.as_bytes()).unwrap();
    let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(SIGNATURE).unwrap();
    assert_eq!(signature, expected, "RFC 7520 §4.1.3 signature, byte for byte");
}
