//! The conformance suite: one set of tests, written against the backend trait only, that every
//! backend must pass. Each runs as `softhsm::NAME` and `swtpm::NAME`.

use std::str::FromStr;
use std::sync::Arc;

use der::{Decode, EncodePem};
use device_tests::Fixture;
use device_tests::verify::{openssl_verify, ring_verify};
use hsm_adapters::{ErrorClass, KeyAlgorithm, KeyUri, SignatureScheme, SigningKey, X509Signer};

use super::MESSAGE;

/// Verifies with `ring` and with `openssl`.
pub fn assert_verifies(
    dir: &std::path::Path,
    key: &dyn SigningKey,
    scheme: SignatureScheme,
    message: &[u8],
    sig: &[u8],
) {
    ring_verify(key.public_key(), scheme, message, sig).unwrap();
    openssl_verify(dir, key.public_key(), scheme, message, sig).unwrap();
}

pub fn generated_keys_report_the_required_protection(f: &dyn Fixture) {
    let backend = f.open();
    let caps = backend.capabilities();
    for alg in f.algorithms() {
        assert!(caps.key_algorithms.contains(&alg), "{}: {alg} missing from {caps:?}", f.kind());
        let key = backend.generate_key(&format!("prot-{alg}"), alg).unwrap();
        assert_eq!(key.algorithm(), alg);
        let report = key.check_protection().unwrap();
        assert!(report.mismatches().is_empty(), "{report:?}");
        report.require_ok("k").unwrap();
        let names: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
        let required: &[&str] = match f.kind() {
            "softhsm" | "opencryptoki" | "kryoptic" => {
                &["CKA_SENSITIVE", "CKA_EXTRACTABLE", "CKA_NEVER_EXTRACTABLE", "CKA_DECRYPT", "CKA_UNWRAP"]
            }
            _ => &["fixedTPM", "fixedParent", "sensitiveDataOrigin", "userWithAuth", "sign", "decrypt"],
        };
        for r in required {
            assert!(names.contains(r), "{r} not checked: {names:?}");
        }
    }
}

pub fn public_keys_export_and_signatures_verify_independently(f: &dyn Fixture) {
    let backend = f.open();
    assert!(backend.capabilities().host_side_hashing);
    let (alt, alt_scheme) = f.alt();
    let rsa = backend.generate_key("rsa", KeyAlgorithm::Rsa2048).unwrap();
    let ec = backend.generate_key("ec", alt).unwrap();
    // The exported SPKI parses back to the same key.
    for key in [&rsa, &ec] {
        let again = hsm_adapters::PublicKey::from_spki_der(key.public_key().spki_der()).unwrap();
        assert_eq!(&again, key.public_key());
    }
    for (key, scheme) in
        [(&rsa, SignatureScheme::RsaPkcs1Sha256), (&rsa, SignatureScheme::RsaPssSha256), (&ec, alt_scheme)]
    {
        let sig = key.sign(scheme, MESSAGE).unwrap();
        assert_eq!(sig.len(), key.algorithm().signature_len());
        assert_verifies(f.work_dir(), key.as_ref(), scheme, MESSAGE, &sig);
        // The checks can fail: a signature over other bytes does not verify.
        assert!(ring_verify(key.public_key(), scheme, b"other message", &sig).is_err());
        assert!(openssl_verify(f.work_dir(), key.public_key(), scheme, b"other message", &sig).is_err());
    }
    // RS256 is deterministic.
    assert_eq!(
        rsa.sign(SignatureScheme::RsaPkcs1Sha256, MESSAGE).unwrap(),
        rsa.sign(SignatureScheme::RsaPkcs1Sha256, MESSAGE).unwrap()
    );
    if alt == KeyAlgorithm::EcP256 {
        let err = ec.sign(SignatureScheme::RsaPkcs1Sha256, MESSAGE).unwrap_err();
        assert_eq!(err.code(), "unsupported", "{err}");
    }
}

pub fn keys_are_found_by_uri(f: &dyn Fixture) {
    let backend = f.open();
    let made = backend.generate_key("ts-2026-11", KeyAlgorithm::Rsa2048).unwrap();
    let ec = backend.generate_key("ec-key", f.alt().0).unwrap();
    for key in [&made, &ec] {
        // Through the URI's text form, as a config file holds it, and from a fresh backend.
        let uri = KeyUri::from_str(&key.uri().to_string()).unwrap();
        let found = f.open().find_key(&uri).unwrap();
        assert_eq!(found.public_key(), key.public_key());
        let scheme = key.algorithm().default_scheme();
        let sig = found.sign(scheme, MESSAGE).unwrap();
        ring_verify(key.public_key(), scheme, MESSAGE, &sig).unwrap();
    }
    let missing: KeyUri = match f.kind() {
        "swtpm" => "tpm:object=nope".parse().unwrap(),
        _ => "pkcs11:object=nope".parse().unwrap(),
    };
    let err = backend.find_key(&missing).unwrap_err();
    assert_eq!(err.code(), "key_not_found", "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
    let other_kind: KeyUri = match f.kind() {
        "swtpm" => "pkcs11:object=ts-2026-11".parse().unwrap(),
        _ => "tpm:object=ts-2026-11".parse().unwrap(),
    };
    assert_eq!(backend.find_key(&other_kind).unwrap_err().code(), "invalid_key_uri");
}

pub fn existing_key_names_are_refused(f: &dyn Fixture) {
    let backend = f.open();
    let first = backend.generate_key("dup", f.alt().0).unwrap();
    let err = backend.generate_key("dup", KeyAlgorithm::Rsa2048).unwrap_err();
    assert_eq!(err.code(), "key_exists", "{err}");
    // The refusal changed nothing.
    let found = backend.find_key(first.uri()).unwrap();
    assert_eq!(found.public_key(), first.public_key());
    found.sign(f.alt().1, MESSAGE).unwrap();
    assert!(backend.generate_key("", f.alt().0).is_err());
}

pub fn a_wrong_secret_fails_closed_with_a_clear_error(f: &dyn Fixture) {
    let (uri, public) = {
        let key = f.open().generate_key("k", f.alt().0).unwrap();
        (key.uri().clone(), key.public_key().clone())
    };
    // Every backend with the right secret is closed now: PKCS#11 logins are per process, so an
    // open one would let a second login through without checking its PIN.
    let wrong = b"wrong-secret-1234";
    let attempt = f.open_with_secret(wrong).and_then(|b| b.find_key(&uri)).and_then(|k| k.sign(f.alt().1, MESSAGE));
    let err = attempt.expect_err("a wrong PIN or auth value must not sign");
    assert!(matches!(err.code(), "pin_incorrect" | "tpm_auth_failed"), "{}: {err}", err.code());
    assert_eq!(err.class(), ErrorClass::Fatal, "never retried: {err}");
    let msg = err.to_string();
    assert!(!msg.contains("wrong-secret-1234"), "secret in message: {msg}");
    assert!(msg.contains("PIN") || msg.contains("auth"), "says what is wrong: {msg}");
    // The right secret still works: one failure does not lock the device.
    let sig = f.open().find_key(&uri).unwrap().sign(f.alt().1, MESSAGE).unwrap();
    ring_verify(&public, f.alt().1, MESSAGE, &sig).unwrap();
}

pub fn concurrent_callers_all_get_valid_signatures(f: &dyn Fixture) {
    let backend = f.open();
    let (alt, alt_scheme) = f.alt();
    let rsa = backend.generate_key("rsa", KeyAlgorithm::Rsa2048).unwrap();
    let ec = backend.generate_key("ec", alt).unwrap();
    let per_thread = if f.kind() == "swtpm" { 10 } else { 40 };
    let results: Vec<(usize, Vec<u8>, Vec<u8>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|t| {
                let (rsa, ec) = (Arc::clone(&rsa), Arc::clone(&ec));
                s.spawn(move || {
                    (0..per_thread)
                        .map(|i| {
                            let n = t * 1000 + i;
                            let msg = format!("message {n}").into_bytes();
                            let a = rsa.sign(SignatureScheme::RsaPkcs1Sha256, &msg).unwrap();
                            let b = ec.sign(alt_scheme, &msg).unwrap();
                            (n, a, b)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.len(), 6 * per_thread);
    for (n, a, b) in &results {
        let msg = format!("message {n}").into_bytes();
        ring_verify(rsa.public_key(), SignatureScheme::RsaPkcs1Sha256, &msg, a).unwrap();
        ring_verify(ec.public_key(), alt_scheme, &msg, b).unwrap();
    }
}

pub fn a_device_restart_is_survived_without_reopening(f: &dyn Fixture) {
    let backend = f.open();
    let key = backend.generate_key("ts", KeyAlgorithm::Rsa2048).unwrap();
    key.sign(SignatureScheme::RsaPkcs1Sha256, MESSAGE).unwrap();

    f.device_down();
    // While the device is away, calls fail cleanly: a typed error saying it is unavailable.
    let err = key.sign(SignatureScheme::RsaPkcs1Sha256, MESSAGE).unwrap_err();
    assert_eq!(err.code(), "backend_unavailable", "{err}");

    f.device_up();
    // The same key object signs again, and keeps signing; no new backend was opened.
    for i in 0..5 {
        let msg = format!("after restart {i}");
        let sig = key.sign(SignatureScheme::RsaPkcs1Sha256, msg.as_bytes()).unwrap();
        assert_verifies(f.work_dir(), key.as_ref(), SignatureScheme::RsaPkcs1Sha256, msg.as_bytes(), &sig);
    }
    backend.generate_key("after", f.alt().0).unwrap();
}

pub fn x509_certificates_signed_in_the_device_verify_with_openssl(f: &dyn Fixture) {
    use x509_cert::builder::{Builder, CertificateBuilder, profile::cabf::Root};
    use x509_cert::name::Name;
    use x509_cert::serial_number::SerialNumber;
    use x509_cert::spki::SubjectPublicKeyInfo;
    use x509_cert::time::Validity;

    let backend = f.open();
    for (name, alg) in [("root-rsa", KeyAlgorithm::Rsa3072), ("root-ec", KeyAlgorithm::EcP256)] {
        if !f.algorithms().contains(&alg) {
            continue;
        }
        let key = backend.generate_key(name, alg).unwrap();
        let signer = X509Signer::new(Arc::clone(&key));
        let subject = Name::from_str("CN=sitesign test root,O=sitesign,C=US").unwrap();
        let builder = CertificateBuilder::new(
            Root::new(false, subject).unwrap(),
            SerialNumber::new(&[0x42, 0x01]).unwrap(),
            Validity::from_now(std::time::Duration::from_secs(3600)).unwrap(),
            SubjectPublicKeyInfo::from_der(key.public_key().spki_der()).unwrap(),
        )
        .unwrap();
        let cert = builder.build::<_, hsm_adapters::X509Signature>(&signer).unwrap();
        let pem_path = f.work_dir().join(format!("{name}.pem"));
        std::fs::write(&pem_path, cert.to_pem(der::pem::LineEnding::LF).unwrap()).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["verify", "-x509_strict", "-check_ss_sig", "-CAfile"])
            .arg(&pem_path)
            .arg(&pem_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: openssl verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A device key whose signatures are tampered with on the way out: every `flip`th byte of each
/// signature flipped, or signed by `other` while reporting `inner`'s public key (a key restored
/// next to the wrong certificate, or a device that signs with another key than it reports).
#[derive(Debug)]
struct Tampered {
    inner: Arc<dyn SigningKey>,
    other: Option<Arc<dyn SigningKey>>,
}

impl SigningKey for Tampered {
    fn uri(&self) -> &KeyUri {
        self.inner.uri()
    }

    fn public_key(&self) -> &hsm_adapters::PublicKey {
        self.inner.public_key()
    }

    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> hsm_adapters::Result<Vec<u8>> {
        match &self.other {
            Some(other) => other.sign(scheme, message),
            None => {
                let mut sig = self.inner.sign(scheme, message)?;
                sig[7] ^= 0x10;
                Ok(sig)
            }
        }
    }

    fn check_protection(&self) -> hsm_adapters::Result<hsm_adapters::ProtectionReport> {
        self.inner.check_protection()
    }
}

pub fn every_signature_is_checked_on_the_host_and_ecdsa_is_low_s(f: &dyn Fixture) {
    use hsm_adapters::checked::{CheckedKey, ecdsa_is_low_s};
    let backend = f.open();
    let (alt, alt_scheme) = f.alt();
    let rsa = backend.generate_key("chk-rsa", KeyAlgorithm::Rsa2048).unwrap();
    let ec = backend.generate_key("chk-ec", alt).unwrap();
    let ec2 = backend.generate_key("chk-ec2", alt).unwrap();
    for (key, scheme) in [(&rsa, SignatureScheme::RsaPkcs1Sha256), (&ec, alt_scheme)] {
        // A corrupted signature (a faulty RSA-CRT result, say) never leaves the check.
        let faulty = CheckedKey::new(Arc::new(Tampered { inner: Arc::clone(key), other: None })).unwrap();
        let err = faulty.sign(scheme, MESSAGE).unwrap_err();
        assert_eq!(err.code(), "faulty_signature", "{err}");
        assert!(err.to_string().contains(key.uri().to_string().as_str()), "{err}");
    }
    // A device that signs with another key than the one it reported.
    let foreign =
        CheckedKey::new(Arc::new(Tampered { inner: Arc::clone(&ec), other: Some(Arc::clone(&ec2)) })).unwrap();
    assert_eq!(foreign.sign(alt_scheme, MESSAGE).unwrap_err().code(), "faulty_signature");
    // Through the checked key, every ECDSA signature is low-S and verifies with ring and openssl.
    let dir = tempfile::tempdir().unwrap();
    if alt == KeyAlgorithm::EcP256 {
        let checked = CheckedKey::new(Arc::clone(&ec)).unwrap();
        for i in 0..24u8 {
            let message = [MESSAGE, &[i]].concat();
            let sig = checked.sign(SignatureScheme::EcdsaP256Sha256, &message).unwrap();
            assert!(ecdsa_is_low_s(&sig), "signature {i} is high-S");
            assert_verifies(dir.path(), &checked, SignatureScheme::EcdsaP256Sha256, &message, &sig);
        }
    }
    // An RSA signature that passes the check is the device's own, unchanged.
    let sig = CheckedKey::new(Arc::clone(&rsa)).unwrap().sign(SignatureScheme::RsaPkcs1Sha256, MESSAGE).unwrap();
    assert_verifies(dir.path(), rsa.as_ref(), SignatureScheme::RsaPkcs1Sha256, MESSAGE, &sig);
}
