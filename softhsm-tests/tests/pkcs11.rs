//! The PKCS#11 backend against real SoftHSM2 tokens, one fresh token per test, each test in its own
//! process (see the `softhsm_tests` harness). Signatures are checked with `ring` and `openssl`,
//! protection attributes with raw cryptoki calls that do not go through sitesign's code.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a panic is a failure"
)]

use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use der::{Decode, EncodePem};
use hsm_adapters::pkcs11::Pkcs11Backend;
use hsm_adapters::pkcs11::token::initialize_token;
use hsm_adapters::{
    Error, ErrorClass, KeyAlgorithm, KeyBackend, KeyUri, PinSource, SignatureScheme, SigningKey,
    X509Signer,
};
use softhsm_tests::verify::{openssl_verify, ring_verify};
use softhsm_tests::{Helper, HelperEnv, SoftHsm, TOKEN_LABEL, Test, write_secret_file};

const TESTS: &[Test] = &[
    Test {
        name: "generated_keys_have_exactly_the_required_protection",
        run: generated_keys_have_exactly_the_required_protection,
    },
    Test {
        name: "private_key_material_cannot_be_read",
        run: private_key_material_cannot_be_read,
    },
    Test {
        name: "signatures_verify_with_ring_and_openssl",
        run: signatures_verify_with_ring_and_openssl,
    },
    Test {
        name: "rsa_3072_and_4096_keys_sign_and_verify",
        run: rsa_3072_and_4096_keys_sign_and_verify,
    },
    Test {
        name: "keys_are_found_by_uri",
        run: keys_are_found_by_uri,
    },
    Test {
        name: "existing_key_names_and_bad_requests_are_refused",
        run: existing_key_names_and_bad_requests_are_refused,
    },
    Test {
        name: "wrong_pin_gives_a_clear_error",
        run: wrong_pin_gives_a_clear_error,
    },
    Test {
        name: "pin_file_problems_give_clear_errors",
        run: pin_file_problems_give_clear_errors,
    },
    Test {
        name: "unknown_token_and_module_give_clear_errors",
        run: unknown_token_and_module_give_clear_errors,
    },
    Test {
        name: "threads_sign_concurrently_with_a_bounded_session_pool",
        run: threads_sign_concurrently_with_a_bounded_session_pool,
    },
    Test {
        name: "survives_token_reinitialised_while_open",
        run: survives_token_reinitialised_while_open,
    },
    Test {
        name: "survives_token_removed_and_restored",
        run: survives_token_removed_and_restored,
    },
    Test {
        name: "survives_being_logged_out_behind_its_back",
        run: survives_being_logged_out_behind_its_back,
    },
    Test {
        name: "x509_certificate_signed_in_the_token_verifies_with_openssl",
        run: x509_certificate_signed_in_the_token_verifies_with_openssl,
    },
];

const HELPERS: &[Helper] = &[Helper {
    name: "recreate-token-with-new-key",
    run: recreate_token_with_new_key,
}];

fn main() -> ExitCode {
    softhsm_tests::main(TESTS, HELPERS)
}

const MESSAGE: &[u8] = b"eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0ZXN0In0";

fn assert_verifies(
    hsm: &SoftHsm,
    key: &dyn SigningKey,
    scheme: SignatureScheme,
    message: &[u8],
    sig: &[u8],
) {
    ring_verify(key.public_key(), scheme, message, sig).unwrap();
    openssl_verify(hsm.work_dir(), key.public_key(), scheme, message, sig).unwrap();
}

fn generated_keys_have_exactly_the_required_protection(hsm: &SoftHsm) {
    let backend = hsm.backend();
    for (name, alg) in [("rsa", KeyAlgorithm::Rsa2048), ("ec", KeyAlgorithm::EcP256)] {
        let key = backend.generate_key(name, alg).unwrap();
        assert_eq!(key.algorithm(), alg);
        let report = key.check_protection().unwrap();
        assert!(report.mismatches().is_empty(), "{report:?}");
        report.require_ok(name).unwrap();
        let names: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
        for required in [
            "CKA_TOKEN",
            "CKA_PRIVATE",
            "CKA_SENSITIVE",
            "CKA_ALWAYS_SENSITIVE",
            "CKA_EXTRACTABLE",
            "CKA_NEVER_EXTRACTABLE",
            "CKA_DECRYPT",
            "CKA_UNWRAP",
            "CKA_DERIVE",
        ] {
            assert!(
                names.contains(&required),
                "{required} not checked: {names:?}"
            );
        }
    }
    drop(backend);

    // Read the same attributes back with raw cryptoki, outside sitesign's code.
    let ctx = Pkcs11::new(softhsm_tests::module_path()).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label() == TOKEN_LABEL)
        .unwrap();
    let session = ctx.open_ro_session(slot).unwrap();
    session.login(UserType::User, Some(hsm.user_pin())).unwrap();
    let privs = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .unwrap();
    assert_eq!(privs.len(), 2);
    for h in privs {
        let attrs = session
            .get_attributes(
                h,
                &[
                    AttributeType::Token,
                    AttributeType::Private,
                    AttributeType::Sensitive,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                    AttributeType::Extractable,
                    AttributeType::Sign,
                    AttributeType::Decrypt,
                    AttributeType::Unwrap,
                    AttributeType::Derive,
                    AttributeType::Modifiable,
                ],
            )
            .unwrap();
        assert_eq!(
            attrs,
            vec![
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::AlwaysSensitive(true),
                Attribute::NeverExtractable(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Decrypt(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
                Attribute::Modifiable(false),
            ]
        );
        // Unmodifiable: nobody can later grant decrypt to a signing key.
        assert!(
            session
                .update_attributes(h, &[Attribute::Decrypt(true)])
                .is_err()
        );
    }
    ctx.finalize().unwrap();
}

fn private_key_material_cannot_be_read(hsm: &SoftHsm) {
    let backend = hsm.backend();
    let rsa = backend.generate_key("rsa", KeyAlgorithm::Rsa2048).unwrap();
    let ec = backend.generate_key("ec", KeyAlgorithm::EcP256).unwrap();
    for key in [&rsa, &ec] {
        let check = key.check_protection().unwrap();
        let material = check
            .checks
            .iter()
            .find(|c| c.name.ends_with("readable"))
            .unwrap();
        assert_eq!(material.actual, Some(false), "{material:?}");
    }
    drop((rsa, ec, backend));

    let ctx = Pkcs11::new(softhsm_tests::module_path()).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx.get_slots_with_initialized_token().unwrap()[0];
    let session = ctx.open_ro_session(slot).unwrap();
    session.login(UserType::User, Some(hsm.user_pin())).unwrap();
    for (label, secret) in [
        ("rsa", AttributeType::PrivateExponent),
        ("ec", AttributeType::Value),
    ] {
        let h = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(label.into()),
            ])
            .unwrap()[0];
        let info = session
            .get_attribute_info(h, &[secret, AttributeType::Prime1])
            .unwrap();
        assert!(
            matches!(info[0], AttributeInfo::Sensitive),
            "{label}: {secret:?} must be sensitive"
        );
        assert!(
            session.get_attributes(h, &[secret]).unwrap().is_empty(),
            "{label}: {secret:?} was returned"
        );
    }
    ctx.finalize().unwrap();
}

fn signatures_verify_with_ring_and_openssl(hsm: &SoftHsm) {
    let backend = hsm.backend();
    let caps = backend.capabilities();
    assert!(
        caps.host_side_hashing,
        "SoftHSM offers CKM_RSA_PKCS and CKM_ECDSA: {caps:?}"
    );
    let rsa = backend.generate_key("rsa", KeyAlgorithm::Rsa2048).unwrap();
    let ec = backend.generate_key("ec", KeyAlgorithm::EcP256).unwrap();
    for (key, scheme) in [
        (&rsa, SignatureScheme::RsaPkcs1Sha256),
        (&rsa, SignatureScheme::RsaPssSha256),
        (&ec, SignatureScheme::EcdsaP256Sha256),
    ] {
        let sig = key.sign(scheme, MESSAGE).unwrap();
        assert_eq!(sig.len(), key.algorithm().signature_len());
        assert_verifies(hsm, key.as_ref(), scheme, MESSAGE, &sig);
        // A signature over other bytes must not verify: the checks can fail.
        assert!(ring_verify(key.public_key(), scheme, b"other message", &sig).is_err());
        assert!(
            openssl_verify(
                hsm.work_dir(),
                key.public_key(),
                scheme,
                b"other message",
                &sig
            )
            .is_err()
        );
    }
    // RS256 is deterministic: the same input gives the same signature.
    assert_eq!(
        rsa.sign(SignatureScheme::RsaPkcs1Sha256, MESSAGE).unwrap(),
        rsa.sign(SignatureScheme::RsaPkcs1Sha256, MESSAGE).unwrap()
    );
    let err = ec
        .sign(SignatureScheme::RsaPkcs1Sha256, MESSAGE)
        .unwrap_err();
    assert_eq!(err.code(), "unsupported", "{err}");
}

fn rsa_3072_and_4096_keys_sign_and_verify(hsm: &SoftHsm) {
    let backend = hsm.backend();
    for (name, alg) in [
        ("r3072", KeyAlgorithm::Rsa3072),
        ("r4096", KeyAlgorithm::Rsa4096),
    ] {
        let key = backend.generate_key(name, alg).unwrap();
        assert_eq!(key.public_key().algorithm(), alg);
        let sig = key.sign(SignatureScheme::RsaPkcs1Sha256, MESSAGE).unwrap();
        assert_eq!(sig.len(), alg.rsa_bits().unwrap() as usize / 8);
        assert_verifies(
            hsm,
            key.as_ref(),
            SignatureScheme::RsaPkcs1Sha256,
            MESSAGE,
            &sig,
        );
        key.check_protection().unwrap().require_ok(name).unwrap();
    }
}

fn keys_are_found_by_uri(hsm: &SoftHsm) {
    let backend = hsm.backend();
    let made = backend
        .generate_key("ts-2026-11", KeyAlgorithm::Rsa2048)
        .unwrap();
    assert_eq!(
        made.uri().to_string(),
        format!("pkcs11:token={TOKEN_LABEL};object=ts-2026-11;type=private")
    );
    let ec = backend
        .generate_key("ec-key", KeyAlgorithm::EcP256)
        .unwrap();

    for (uri, want) in [
        (made.uri().to_string(), &made),
        ("pkcs11:object=ts-2026-11".to_owned(), &made),
        (
            format!("pkcs11:token={TOKEN_LABEL};object=ec-key;type=private"),
            &ec,
        ),
    ] {
        let found = backend.find_key(&KeyUri::from_str(&uri).unwrap()).unwrap();
        assert_eq!(found.public_key(), want.public_key(), "{uri}");
        let sig = found
            .sign(want.algorithm().default_scheme(), MESSAGE)
            .unwrap();
        ring_verify(
            want.public_key(),
            want.algorithm().default_scheme(),
            MESSAGE,
            &sig,
        )
        .unwrap();
    }
    let missing = backend
        .find_key(&"pkcs11:object=nope".parse().unwrap())
        .unwrap_err();
    assert!(matches!(missing, Error::KeyNotFound { .. }), "{missing}");
    assert!(missing.to_string().contains("object=nope"), "{missing}");
    let other_token = backend
        .find_key(&"pkcs11:token=elsewhere;object=ts-2026-11".parse().unwrap())
        .unwrap_err();
    assert_eq!(other_token.code(), "invalid_key_uri", "{other_token}");
    let public = backend
        .find_key(&"pkcs11:object=ts-2026-11;type=public".parse().unwrap())
        .unwrap_err();
    assert_eq!(public.code(), "invalid_key_uri", "{public}");
}

fn existing_key_names_and_bad_requests_are_refused(hsm: &SoftHsm) {
    let backend = hsm.backend();
    let first = backend.generate_key("dup", KeyAlgorithm::EcP256).unwrap();
    let err = backend
        .generate_key("dup", KeyAlgorithm::Rsa2048)
        .unwrap_err();
    assert!(matches!(err, Error::KeyExists { .. }), "{err}");
    // The refused request changed nothing: the first key is still the only one and still signs.
    let found = backend.find_key(first.uri()).unwrap();
    assert_eq!(found.public_key(), first.public_key());
    assert!(backend.generate_key("", KeyAlgorithm::EcP256).is_err());
}

fn wrong_pin_gives_a_clear_error(hsm: &SoftHsm) {
    let wrong = hsm.work_dir().join("wrong.pin");
    write_secret_file(&wrong, b"not-the-pin");
    let mut config = hsm.config(1);
    config.pin = PinSource::File(wrong.clone());
    let err = Pkcs11Backend::open(config).unwrap_err();
    assert!(matches!(err, Error::PinIncorrect { .. }), "{err:?}");
    assert_eq!(err.code(), "pin_incorrect");
    assert_eq!(err.class(), ErrorClass::Fatal);
    let msg = err.to_string();
    assert!(msg.contains(&wrong.display().to_string()), "{msg}");
    assert!(!msg.contains("not-the-pin"), "PIN in message: {msg}");
    // The right PIN still works afterwards (one failure does not lock SoftHSM).
    hsm.backend()
        .generate_key("k", KeyAlgorithm::EcP256)
        .unwrap();
}

fn pin_file_problems_give_clear_errors(hsm: &SoftHsm) {
    use std::os::unix::fs::PermissionsExt;
    let loose = hsm.work_dir().join("loose.pin");
    std::fs::write(&loose, std::fs::read(hsm.pin_file()).unwrap()).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (path, expect) in [
        (loose, "chmod 600"),
        (hsm.work_dir().join("missing.pin"), "No such file"),
    ] {
        let mut config = hsm.config(1);
        config.pin = PinSource::File(path.clone());
        let err = Pkcs11Backend::open(config).unwrap_err();
        assert_eq!(err.code(), "pin_file", "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(expect) && msg.contains(&path.display().to_string()),
            "{msg}"
        );
    }
}

fn unknown_token_and_module_give_clear_errors(hsm: &SoftHsm) {
    let mut config = hsm.config(1);
    config.token = hsm_adapters::TokenSelector::Label("no-such-token".into());
    let err = Pkcs11Backend::open(config).unwrap_err();
    assert_eq!(err.code(), "token_not_found");
    assert!(
        err.to_string().contains(TOKEN_LABEL),
        "lists the tokens it saw: {err}"
    );

    let mut config = hsm.config(1);
    config.module = "/bin/true".into();
    let err = Pkcs11Backend::open(config).unwrap_err();
    assert_eq!(err.code(), "backend_module", "{err}");
    assert!(err.to_string().contains("/bin/true"), "{err}");
}

fn threads_sign_concurrently_with_a_bounded_session_pool(hsm: &SoftHsm) {
    let backend = Arc::new(Pkcs11Backend::open(hsm.config(2)).unwrap());
    let rsa = backend.generate_key("rsa", KeyAlgorithm::Rsa2048).unwrap();
    let ec = backend.generate_key("ec", KeyAlgorithm::EcP256).unwrap();
    let results: Vec<(usize, Vec<u8>, Vec<u8>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|t| {
                let (rsa, ec, backend) = (Arc::clone(&rsa), Arc::clone(&ec), Arc::clone(&backend));
                s.spawn(move || {
                    let mut out = Vec::new();
                    for i in 0..40 {
                        let n = t * 1000 + i;
                        let msg = format!("message {n}").into_bytes();
                        let a = rsa.sign(SignatureScheme::RsaPkcs1Sha256, &msg).unwrap();
                        let b = ec.sign(SignatureScheme::EcdsaP256Sha256, &msg).unwrap();
                        assert!(backend.sessions_open() <= 2);
                        out.push((n, a, b));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(results.len(), 240);
    for (n, a, b) in &results {
        let msg = format!("message {n}").into_bytes();
        ring_verify(rsa.public_key(), SignatureScheme::RsaPkcs1Sha256, &msg, a).unwrap();
        ring_verify(ec.public_key(), SignatureScheme::EcdsaP256Sha256, &msg, b).unwrap();
    }
    assert_eq!(
        backend.sessions_open(),
        2,
        "the pool opens at most the configured sessions"
    );
}

/// Helper process: deletes the test token and creates a new one with the same label, PINs and a
/// new key under the same name — what an operator re-initialising the HSM would do.
fn recreate_token_with_new_key(env: &HelperEnv) {
    for entry in std::fs::read_dir(&env.token_root).unwrap() {
        std::fs::remove_dir_all(entry.unwrap().path()).unwrap();
    }
    initialize_token(&env.module, TOKEN_LABEL, &env.so_pin, &env.user_pin).unwrap();
    let pin_file = env.work_dir.join("user.pin");
    let backend = Pkcs11Backend::open(hsm_adapters::Pkcs11Config {
        module: env.module.clone(),
        token: hsm_adapters::TokenSelector::Label(TOKEN_LABEL.into()),
        pin: PinSource::File(pin_file),
        sessions: std::num::NonZeroUsize::MIN,
    })
    .unwrap();
    backend.generate_key("ts", KeyAlgorithm::Rsa2048).unwrap();
}

fn survives_token_reinitialised_while_open(hsm: &SoftHsm) {
    let backend = hsm.backend();
    let old = backend.generate_key("ts", KeyAlgorithm::Rsa2048).unwrap();
    old.sign(SignatureScheme::RsaPkcs1Sha256, MESSAGE).unwrap();

    hsm.run_helper("recreate-token-with-new-key");

    // The old key is gone. The next call fails cleanly (a typed error, no panic, no signature by
    // another key) or — never — signs with a key other than the one the caller holds.
    match old.sign(SignatureScheme::RsaPkcs1Sha256, MESSAGE) {
        Ok(sig) => panic!("signed after the key was destroyed: {} bytes", sig.len()),
        Err(e) => {
            let text = e.to_string();
            assert!(
                matches!(
                    e.code(),
                    "key_not_found" | "key_protection_mismatch" | "backend_unavailable"
                ),
                "unexpected error {}: {text}",
                e.code()
            );
        }
    }
    assert!(
        backend.reinitialisations() >= 1,
        "recovery re-initialised the module"
    );
    // The backend itself recovered: the new key under the same name is found and signs, and
    // later calls keep working.
    let new = backend.find_key(old.uri()).unwrap();
    assert_ne!(new.public_key(), old.public_key());
    for i in 0..5 {
        let msg = format!("after recovery {i}");
        let sig = new
            .sign(SignatureScheme::RsaPkcs1Sha256, msg.as_bytes())
            .unwrap();
        assert_verifies(
            hsm,
            new.as_ref(),
            SignatureScheme::RsaPkcs1Sha256,
            msg.as_bytes(),
            &sig,
        );
    }
    backend.generate_key("after", KeyAlgorithm::EcP256).unwrap();
}

fn survives_token_removed_and_restored(hsm: &SoftHsm) {
    let backend = hsm.backend();
    let key = backend.generate_key("ts", KeyAlgorithm::Rsa2048).unwrap();
    key.sign(SignatureScheme::RsaPkcs1Sha256, MESSAGE).unwrap();

    // "Unplug" the token: move its directory out of SoftHSM's token directory.
    let token_dir = std::fs::read_dir(hsm.token_root())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let parked = hsm.work_dir().join("parked-token");
    std::fs::rename(&token_dir, &parked).unwrap();
    let err = key
        .sign(SignatureScheme::RsaPkcs1Sha256, MESSAGE)
        .unwrap_err();
    // While it is out, calls fail cleanly, saying the token is not there.
    assert_eq!(err.code(), "backend_unavailable", "{err}");
    assert!(err.to_string().contains(TOKEN_LABEL), "{err}");
    let after_unplug = backend.reinitialisations();
    assert!(after_unplug >= 1, "recovery re-initialised the module");

    // "Plug it back in": the same key signs again, with no new backend.
    std::fs::rename(&parked, &token_dir).unwrap();
    for i in 0..5 {
        let msg = format!("after restore {i}");
        let sig = key
            .sign(SignatureScheme::RsaPkcs1Sha256, msg.as_bytes())
            .unwrap();
        assert_verifies(
            hsm,
            key.as_ref(),
            SignatureScheme::RsaPkcs1Sha256,
            msg.as_bytes(),
            &sig,
        );
    }
    assert_eq!(
        backend.reinitialisations(),
        after_unplug + 1,
        "one more re-initialisation found the token again"
    );
}

fn x509_certificate_signed_in_the_token_verifies_with_openssl(hsm: &SoftHsm) {
    use x509_cert::builder::{Builder, CertificateBuilder, profile::cabf::Root};
    use x509_cert::name::Name;
    use x509_cert::serial_number::SerialNumber;
    use x509_cert::spki::SubjectPublicKeyInfo;
    use x509_cert::time::Validity;

    let backend = hsm.backend();
    for (name, alg) in [
        ("root-rsa", KeyAlgorithm::Rsa3072),
        ("root-ec", KeyAlgorithm::EcP256),
    ] {
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
        let cert = builder
            .build::<_, hsm_adapters::X509Signature>(&signer)
            .unwrap();
        let pem_path = hsm.work_dir().join(format!("{name}.pem"));
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

fn survives_being_logged_out_behind_its_back(hsm: &SoftHsm) {
    let backend = hsm.backend();
    let key = backend.generate_key("ts", KeyAlgorithm::EcP256).unwrap();
    key.sign(SignatureScheme::EcdsaP256Sha256, MESSAGE).unwrap();

    // Log the application out through a second handle on the same (process-wide) module: every
    // session of the backend is now unauthenticated and C_Sign answers CKR_USER_NOT_LOGGED_IN.
    let raw = Pkcs11::new(softhsm_tests::module_path()).unwrap();
    let _ = raw.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = raw.get_slots_with_initialized_token().unwrap()[0];
    let session = raw.open_ro_session(slot).unwrap();
    session.logout().unwrap();
    drop(session);

    // Session-level recovery logs in again; no module re-initialisation is needed.
    for i in 0..5 {
        let msg = format!("after logout {i}");
        let sig = key
            .sign(SignatureScheme::EcdsaP256Sha256, msg.as_bytes())
            .unwrap();
        assert_verifies(
            hsm,
            key.as_ref(),
            SignatureScheme::EcdsaP256Sha256,
            msg.as_bytes(),
            &sig,
        );
    }
    assert_eq!(backend.reinitialisations(), 0);
}
