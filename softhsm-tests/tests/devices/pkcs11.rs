//! PKCS#11 specifics against SoftHSM2: attributes read back with raw cryptoki (outside sitesign's
//! code), PIN handling, token re-initialisation and logout behind the backend's back.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
use device_tests::{HelperEnv, SoftHsm, TOKEN_LABEL, write_secret_file};
use hsm_adapters::pkcs11::Pkcs11Backend;
use hsm_adapters::pkcs11::token::initialize_token;
use hsm_adapters::{Error, ErrorClass, KeyAlgorithm, KeyBackend, PinSource, SignatureScheme, SigningKey};

use super::MESSAGE;
use super::conformance::assert_verifies as verify_in;

fn assert_verifies(hsm: &SoftHsm, key: &dyn SigningKey, scheme: SignatureScheme, message: &[u8], sig: &[u8]) {
    verify_in(hsm.work_dir(), key, scheme, message, sig);
}

pub fn generated_keys_have_exactly_the_required_protection(hsm: &SoftHsm) {
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
            assert!(names.contains(&required), "{required} not checked: {names:?}");
        }
    }
    drop(backend);

    // Read the same attributes back with raw cryptoki, outside sitesign's code.
    let session = hsm.raw_session(false);
    let privs = session.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)]).unwrap();
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
        assert!(session.update_attributes(h, &[Attribute::Decrypt(true)]).is_err());
    }
    drop(session);
}

pub fn private_key_material_cannot_be_read(hsm: &SoftHsm) {
    let backend = hsm.backend();
    let rsa = backend.generate_key("rsa", KeyAlgorithm::Rsa2048).unwrap();
    let ec = backend.generate_key("ec", KeyAlgorithm::EcP256).unwrap();
    for key in [&rsa, &ec] {
        let check = key.check_protection().unwrap();
        let material = check.checks.iter().find(|c| c.name.ends_with("readable")).unwrap();
        assert_eq!(material.actual, Some(false), "{material:?}");
    }
    drop((rsa, ec, backend));

    let session = hsm.raw_session(false);
    for (label, secret) in [("rsa", AttributeType::PrivateExponent), ("ec", AttributeType::Value)] {
        let h = session
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Label(label.into())])
            .unwrap()[0];
        let info = session.get_attribute_info(h, &[secret, AttributeType::Prime1]).unwrap();
        assert!(matches!(info[0], AttributeInfo::Sensitive), "{label}: {secret:?} must be sensitive");
        assert!(session.get_attributes(h, &[secret]).unwrap().is_empty(), "{label}: {secret:?} was returned");
    }
    drop(session);
}

pub fn rsa_3072_and_4096_keys_sign_and_verify(hsm: &SoftHsm) {
    let backend = hsm.backend();
    for (name, alg) in [("r3072", KeyAlgorithm::Rsa3072), ("r4096", KeyAlgorithm::Rsa4096)] {
        let key = backend.generate_key(name, alg).unwrap();
        assert_eq!(key.public_key().algorithm(), alg);
        let sig = key.sign(SignatureScheme::RsaPkcs1Sha256, MESSAGE).unwrap();
        assert_eq!(sig.len(), alg.rsa_bits().unwrap() as usize / 8);
        assert_verifies(hsm, key.as_ref(), SignatureScheme::RsaPkcs1Sha256, MESSAGE, &sig);
        key.check_protection().unwrap().require_ok(name).unwrap();
    }
}

pub fn wrong_pin_gives_a_clear_error(hsm: &SoftHsm) {
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
    hsm.backend().generate_key("k", KeyAlgorithm::EcP256).unwrap();
}

pub fn pin_file_problems_give_clear_errors(hsm: &SoftHsm) {
    use std::os::unix::fs::PermissionsExt;
    let loose = hsm.work_dir().join("loose.pin");
    std::fs::write(&loose, std::fs::read(hsm.pin_file()).unwrap()).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (path, expect) in [(loose, "chmod 600"), (hsm.work_dir().join("missing.pin"), "No such file")] {
        let mut config = hsm.config(1);
        config.pin = PinSource::File(path.clone());
        let err = Pkcs11Backend::open(config).unwrap_err();
        assert_eq!(err.code(), "pin_file", "{err}");
        let msg = err.to_string();
        assert!(msg.contains(expect) && msg.contains(&path.display().to_string()), "{msg}");
    }
}

pub fn unknown_token_and_module_give_clear_errors(hsm: &SoftHsm) {
    let mut config = hsm.config(1);
    config.token = hsm_adapters::TokenSelector::Label("no-such-token".into());
    let err = Pkcs11Backend::open(config).unwrap_err();
    assert_eq!(err.code(), "token_not_found");
    assert!(err.to_string().contains(TOKEN_LABEL), "lists the tokens it saw: {err}");

    let mut config = hsm.config(1);
    config.module = "/bin/true".into();
    let err = Pkcs11Backend::open(config).unwrap_err();
    assert_eq!(err.code(), "backend_module", "{err}");
    assert!(err.to_string().contains("/bin/true"), "{err}");
}

/// Helper process: deletes the test token and creates a new one with the same label, PINs and a
/// new key under the same name — what an operator re-initialising the HSM would do.
pub fn recreate_token_with_new_key(env: &HelperEnv) {
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
        environment: Vec::new(),
    })
    .unwrap();
    backend.generate_key("ts", KeyAlgorithm::Rsa2048).unwrap();
}

pub fn survives_token_reinitialised_while_open(hsm: &SoftHsm) {
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
                matches!(e.code(), "key_not_found" | "key_protection_mismatch" | "backend_unavailable"),
                "unexpected error {}: {text}",
                e.code()
            );
        }
    }
    assert!(backend.reinitialisations() >= 1, "recovery re-initialised the module");
    // The backend itself recovered: the new key under the same name is found and signs, and
    // later calls keep working.
    let new = backend.find_key(old.uri()).unwrap();
    assert_ne!(new.public_key(), old.public_key());
    for i in 0..5 {
        let msg = format!("after recovery {i}");
        let sig = new.sign(SignatureScheme::RsaPkcs1Sha256, msg.as_bytes()).unwrap();
        assert_verifies(hsm, new.as_ref(), SignatureScheme::RsaPkcs1Sha256, msg.as_bytes(), &sig);
    }
    backend.generate_key("after", KeyAlgorithm::EcP256).unwrap();
}

pub fn survives_being_logged_out_behind_its_back(hsm: &SoftHsm) {
    let backend = hsm.backend();
    let key = backend.generate_key("ts", KeyAlgorithm::EcP256).unwrap();
    key.sign(SignatureScheme::EcdsaP256Sha256, MESSAGE).unwrap();

    // Log the application out through a second handle on the same (process-wide) module: every
    // session of the backend is now unauthenticated and C_Sign answers CKR_USER_NOT_LOGGED_IN.
    let raw = Pkcs11::new(device_tests::module_path()).unwrap();
    let _ = raw.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = raw.get_slots_with_initialized_token().unwrap()[0];
    let session = raw.open_ro_session(slot).unwrap();
    session.logout().unwrap();
    drop(session);

    // Session-level recovery logs in again; no module re-initialisation is needed.
    for i in 0..5 {
        let msg = format!("after logout {i}");
        let sig = key.sign(SignatureScheme::EcdsaP256Sha256, msg.as_bytes()).unwrap();
        assert_verifies(hsm, key.as_ref(), SignatureScheme::EcdsaP256Sha256, msg.as_bytes(), &sig);
    }
    assert_eq!(backend.reinitialisations(), 0);
}

pub fn a_second_lane_has_sessions_of_its_own_and_recovers_with_the_first(hsm: &SoftHsm) {
    let backend = hsm.backend();
    let lane = backend.another_lane(1);
    let key = backend.generate_key("ts", KeyAlgorithm::EcP256).unwrap();
    let in_lane = lane.find_key(key.uri()).unwrap();
    // Both sign at once from many threads; each stays within its own sessions.
    std::thread::scope(|scope| {
        for t in 0..8 {
            let k = if t % 2 == 0 { std::sync::Arc::clone(&key) } else { std::sync::Arc::clone(&in_lane) };
            scope.spawn(move || {
                for i in 0..20 {
                    let msg = format!("thread {t} message {i}");
                    let sig = k.sign(SignatureScheme::EcdsaP256Sha256, msg.as_bytes()).unwrap();
                    device_tests::verify::ring_verify(
                        k.public_key(),
                        SignatureScheme::EcdsaP256Sha256,
                        msg.as_bytes(),
                        &sig,
                    )
                    .unwrap();
                }
            });
        }
    });
    assert!(backend.sessions_open() <= 2, "{}", backend.sessions_open());
    assert_eq!(lane.sessions_open(), 1);
    // The token re-initialised behind both: one recovery (one module re-initialisation, the
    // device's) serves both lanes, and neither finalises the module under the other.
    hsm.run_helper("recreate-token-with-new-key");
    let _ = key.sign(SignatureScheme::EcdsaP256Sha256, MESSAGE);
    let new = backend.find_key(key.uri()).unwrap();
    let new_in_lane = lane.find_key(new.uri()).unwrap();
    assert_eq!(new.public_key(), new_in_lane.public_key());
    let sig = new_in_lane.sign(SignatureScheme::RsaPkcs1Sha256, MESSAGE).unwrap();
    assert_verifies(hsm, new_in_lane.as_ref(), SignatureScheme::RsaPkcs1Sha256, MESSAGE, &sig);
    assert_eq!(backend.reinitialisations(), lane.reinitialisations(), "one device, one recovery count");
}
