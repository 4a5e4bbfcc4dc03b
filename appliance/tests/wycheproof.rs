//! Wycheproof's RSA PKCS#1 v1.5 SHA-256 (2048 and 3072) and ECDSA P-256 SHA-256 (P1363, the
//! encoding JWS uses) vectors through the token verifier's signature path: the public key read
//! from the vector's SubjectPublicKeyInfo the way a token-signing certificate's key is
//! ([`PublicKey::from_spki_der`]), then [`check_signature`]. Every "invalid" vector refused, every
//! "valid" accepted — except ES256 signatures with a high `s`, which verify but which sitesign
//! refuses as the second encoding of a token (SPEC §9): counted, and each checked to be one.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a panic is a failure")]

use hsm_adapters::{PublicKey, SignatureScheme};
use sitesign::token::verify::{SignatureCheck, check_signature};
use wycheproof::TestResult;

/// Counts of a run: vectors by expected result, and valid ones refused as high-S.
#[derive(Debug, Default)]
struct Counts {
    valid: usize,
    invalid: usize,
    acceptable: usize,
    valid_high_s: usize,
}

/// The key of a SubjectPublicKeyInfo as the verifier holds it; `None` if it cannot be read (an
/// invalid key: nothing signed with it may verify).
fn key(spki: &[u8], scheme: SignatureScheme) -> Option<Vec<u8>> {
    let key = PublicKey::from_spki_der(spki).ok()?;
    (key.algorithm().default_scheme() == scheme).then(|| key.subject_public_key_bytes().ok()).flatten()
}

fn run(
    scheme: SignatureScheme,
    groups: impl Iterator<Item = (Vec<u8>, Vec<(usize, TestResult, Vec<u8>, Vec<u8>)>)>,
) -> Counts {
    let mut counts = Counts::default();
    for (spki, tests) in groups {
        let public = key(&spki, scheme);
        for (id, result, msg, sig) in tests {
            let check = public.as_deref().map_or(SignatureCheck::Invalid, |p| check_signature(scheme, p, &msg, &sig));
            match result {
                TestResult::Valid => {
                    counts.valid += 1;
                    if check == SignatureCheck::HighS {
                        counts.valid_high_s += 1;
                        // Its low-S twin is the one sitesign accepts.
                        let mut twin = sig.clone();
                        hsm_adapters::checked::ecdsa_normalize_s(&mut twin).unwrap();
                        let twin = check_signature(scheme, public.as_deref().unwrap(), &msg, &twin);
                        assert_eq!(twin, SignatureCheck::Valid, "vector {id}'s low-S twin refused");
                    } else {
                        assert_eq!(check, SignatureCheck::Valid, "{scheme:?} vector {id} (valid) refused");
                    }
                }
                TestResult::Invalid => {
                    counts.invalid += 1;
                    assert_eq!(check, SignatureCheck::Invalid, "{scheme:?} vector {id} (invalid) accepted");
                }
                TestResult::Acceptable => counts.acceptable += 1,
            }
        }
    }
    counts
}

#[test]
fn rsa_pkcs1_sha256_vectors() {
    use wycheproof::rsa_pkcs1_verify::{TestName, TestSet};
    for name in [TestName::Rsa2048Sha256, TestName::Rsa3072Sha256] {
        let set = TestSet::load(name).unwrap();
        let groups = set.test_groups.into_iter().map(|g| {
            let tests = g.tests.into_iter().map(|t| (t.tc_id, t.result, t.msg.to_vec(), t.sig.to_vec())).collect();
            (g.der.to_vec(), tests)
        });
        let counts = run(SignatureScheme::RsaPkcs1Sha256, groups);
        eprintln!("{name:?}: {counts:?}");
        assert!(counts.valid > 0 && counts.invalid > 100, "{counts:?}");
        assert_eq!(counts.valid_high_s, 0);
    }
}

#[test]
fn ecdsa_p256_sha256_p1363_vectors() {
    use wycheproof::ecdsa::{TestName, TestSet};
    let set = TestSet::load(TestName::EcdsaSecp256r1Sha256P1363).unwrap();
    let groups = set.test_groups.into_iter().map(|g| {
        let tests = g.tests.into_iter().map(|t| (t.tc_id, t.result, t.msg.to_vec(), t.sig.to_vec())).collect();
        (g.der.to_vec(), tests)
    });
    let counts = run(SignatureScheme::EcdsaP256Sha256, groups);
    eprintln!("EcdsaSecp256r1Sha256P1363: {counts:?}");
    assert!(counts.valid > 100 && counts.invalid > 50, "{counts:?}");
    // The high-S valid vectors: their low-S twins verify, and are what sitesign accepts.
    assert!(counts.valid_high_s > 0, "no high-S vector: the SPEC §9 refusal is not exercised");
}
