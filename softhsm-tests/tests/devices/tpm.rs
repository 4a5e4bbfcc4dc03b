//! TPM specifics against swtpm: keys checked and used by tpm2-tools (outside sitesign's code),
//! persistent-handle keys, the few transient slots of a TPM without resource manager, and an
//! unreachable TPM.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use device_tests::TpmEnv;
use device_tests::verify::ring_verify;
use hsm_adapters::tpm::TpmBackend;
use hsm_adapters::{KeyAlgorithm, KeyBackend, KeyUri, SignatureScheme, SigningKey};

use super::MESSAGE;

/// Runs a tpm2-tools command against the test's swtpm; panics with its output if it fails.
fn tpm2(env: &TpmEnv, args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .env("TPM2TOOLS_TCTI", env.swtpm.tcti())
        .current_dir(env.key_dir())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e} (apt-get install tpm2-tools)", args[0]));
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn auth_arg(env: &TpmEnv) -> String {
    format!("file:{}", env.auth_file().display())
}

pub fn wrapped_keys_load_and_sign_with_tpm2_tools(env: &TpmEnv) {
    let backend = env.backend();
    let key = backend.generate_key("ts", KeyAlgorithm::Rsa2048).unwrap();
    let public = key.public_key().clone();
    // swtpm serves one connection at a time: let tpm2-tools have it.
    drop((key, backend));

    tpm2(env, &["tpm2_load", "-C", "0x81000001", "-u", "ts.pub", "-r", "ts.priv", "-c", "ts.ctx"]);
    let shown = tpm2(env, &["tpm2_readpublic", "-c", "ts.ctx"]);
    let attributes = shown.lines().find(|l| l.trim_start().starts_with("value:") || l.contains("|")).unwrap_or("");
    for required in ["fixedtpm", "fixedparent", "sensitivedataorigin", "userwithauth", "sign"] {
        assert!(shown.contains(required), "{required} missing from tpm2_readpublic: {shown}");
    }
    assert!(!shown.contains("decrypt"), "a signing key must not decrypt: {attributes}");
    assert!(!shown.contains("restricted"), "{shown}");
    // A 128-bit random auth value cannot be guessed: exempt from dictionary-attack lockout, which
    // unclean shutdowns would otherwise trip. So is the SRK, as TCG's template has it.
    assert!(shown.contains("noda"), "a key with a random auth value is noDA: {shown}");
    let srk = tpm2(env, &["tpm2_readpublic", "-c", "0x81000001"]);
    assert!(srk.contains("noda") && srk.contains("restricted") && srk.contains("decrypt"), "{srk}");

    std::fs::write(env.key_dir().join("msg.bin"), MESSAGE).unwrap();
    // Whoever can read the blobs and reach the TPM cannot sign without the auth value.
    let without = Command::new("tpm2_sign")
        .args(["-c", "ts.ctx", "-g", "sha256", "-s", "rsassa", "-f", "plain", "-o", "stolen.bin", "msg.bin"])
        .env("TPM2TOOLS_TCTI", env.swtpm.tcti())
        .current_dir(env.key_dir())
        .output()
        .unwrap();
    assert!(!without.status.success(), "tpm2_sign without the auth value signed");
    assert!(
        String::from_utf8_lossy(&without.stderr).to_lowercase().contains("auth"),
        "{}",
        String::from_utf8_lossy(&without.stderr)
    );
    // swtpm has no resource manager: free what the failed attempt left loaded.
    tpm2(env, &["tpm2_flushcontext", "-t"]);
    let auth = auth_arg(env);
    tpm2(
        env,
        &[
            "tpm2_sign",
            "-c",
            "ts.ctx",
            "-p",
            &auth,
            "-g",
            "sha256",
            "-s",
            "rsassa",
            "-f",
            "plain",
            "-o",
            "sig.bin",
            "msg.bin",
        ],
    );
    let sig = std::fs::read(env.key_dir().join("sig.bin")).unwrap();
    // The public key sitesign exported verifies what tpm2-tools signed with sitesign's blob.
    ring_verify(&public, SignatureScheme::RsaPkcs1Sha256, MESSAGE, &sig).unwrap();
    // And sitesign's own signature is identical (RS256 is deterministic).
    // tpm2-tools leaves its objects loaded (swtpm has no resource manager): flush them.
    tpm2(env, &["tpm2_flushcontext", "-t"]);
    let again = env.backend().find_key(&"tpm:object=ts".parse().unwrap()).unwrap();
    assert_eq!(again.sign(SignatureScheme::RsaPkcs1Sha256, MESSAGE).unwrap(), sig);
}

pub fn persistent_handle_keys_are_used_by_uri(env: &TpmEnv) {
    drop(env.backend()); // creates the storage key at 0x81000001
    let auth = auth_arg(env);
    tpm2(
        env,
        &[
            "tpm2_create",
            "-C",
            "0x81000001",
            "-G",
            "ecc256:ecdsa-sha256",
            "-p",
            &auth,
            "-a",
            "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign",
            "-u",
            "p.pub",
            "-r",
            "p.priv",
        ],
    );
    tpm2(env, &["tpm2_load", "-C", "0x81000001", "-u", "p.pub", "-r", "p.priv", "-c", "p.ctx"]);
    tpm2(env, &["tpm2_evictcontrol", "-C", "o", "-c", "p.ctx", "0x81010001"]);
    tpm2(env, &["tpm2_flushcontext", "-t"]);

    let backend = env.backend();
    let uri: KeyUri = "tpm:handle=0x81010001".parse().unwrap();
    let key = backend.find_key(&uri).unwrap();
    assert_eq!(key.algorithm(), KeyAlgorithm::EcP256);
    assert_eq!(key.uri().to_string(), "tpm:handle=0x81010001");
    key.check_protection().unwrap().require_ok("p").unwrap();
    let sig = key.sign(SignatureScheme::EcdsaP256Sha256, MESSAGE).unwrap();
    ring_verify(key.public_key(), SignatureScheme::EcdsaP256Sha256, MESSAGE, &sig).unwrap();
    let missing = backend.find_key(&"tpm:handle=0x81010002".parse().unwrap()).unwrap_err();
    assert_eq!(missing.code(), "key_not_found", "{missing}");
}

pub fn many_keys_share_the_few_transient_slots(env: &TpmEnv) {
    let backend = env.backend();
    // More keys than swtpm has transient object slots (3): each use may load, evict and flush.
    let keys: Vec<Arc<dyn SigningKey>> =
        (0..5).map(|i| backend.generate_key(&format!("k{i}"), KeyAlgorithm::EcP256).unwrap()).collect();
    for round in 0..3 {
        for key in &keys {
            let msg = format!("round {round}");
            let sig = key.sign(SignatureScheme::EcdsaP256Sha256, msg.as_bytes()).unwrap();
            ring_verify(key.public_key(), SignatureScheme::EcdsaP256Sha256, msg.as_bytes(), &sig).unwrap();
        }
    }
    // Nothing leaked: tpm2-tools finds no transient objects left once the backend is closed.
    drop((keys, backend));
    let handles = tpm2(env, &["tpm2_getcap", "handles-transient"]);
    assert!(handles.trim().is_empty(), "transient handles left: {handles}");
}

pub fn a_tpm_reset_reloads_keys_and_is_counted(env: &TpmEnv) {
    let backend = env.backend();
    let key = backend.generate_key("ts", KeyAlgorithm::EcP256).unwrap();
    key.sign(SignatureScheme::EcdsaP256Sha256, MESSAGE).unwrap();
    assert_eq!(backend.recoveries(), 0);
    // A restarted TPM (TPM2_Startup(CLEAR)) has forgotten every transient object, so the loaded
    // key handle is stale: the backend reloads the key under the persistent storage key.
    env.swtpm.restart();
    let sig = key.sign(SignatureScheme::EcdsaP256Sha256, MESSAGE).unwrap();
    ring_verify(key.public_key(), SignatureScheme::EcdsaP256Sha256, MESSAGE, &sig).unwrap();
    assert!(backend.recoveries() >= 1, "the stale handle was recovered");
}

pub fn a_tpm_reset_without_startup_is_started_and_recovered(env: &TpmEnv) {
    let backend = env.backend();
    let key = backend.generate_key("ts", KeyAlgorithm::Rsa2048).unwrap();
    env.swtpm.restart_unstarted();
    // The first command gets TPM_RC_INITIALIZE; the backend reconnects, sends TPM2_Startup and
    // reloads the key.
    let sig = key.sign(SignatureScheme::RsaPkcs1Sha256, MESSAGE).unwrap();
    ring_verify(key.public_key(), SignatureScheme::RsaPkcs1Sha256, MESSAGE, &sig).unwrap();
    assert!(backend.recoveries() >= 1);
}

pub fn an_unreachable_tpm_gives_a_clear_error_quickly(env: &TpmEnv) {
    let mut config = env.config();
    env.swtpm.stop();
    config.tcti = env.swtpm.tcti().parse().unwrap();
    let started = Instant::now();
    let err = TpmBackend::open(config).unwrap_err();
    assert_eq!(err.code(), "backend_unavailable", "{err}");
    assert!(err.to_string().contains("TPM"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "bounded retries: {:?}", started.elapsed());
}

pub fn a_key_blob_swapped_for_another_is_refused_every_time_never_cached(env: &TpmEnv) {
    let backend = env.backend();
    let a = backend.generate_key("a", KeyAlgorithm::EcP256).unwrap();
    let _b = backend.generate_key("b", KeyAlgorithm::EcP256).unwrap();
    a.sign(SignatureScheme::EcdsaP256Sha256, MESSAGE).unwrap();
    // Someone with write access to the key folder puts b's blobs under a's name; a TPM restart
    // makes the backend load "a" again.
    for ext in ["pub", "priv"] {
        std::fs::copy(env.key_dir().join(format!("b.{ext}")), env.key_dir().join(format!("a.{ext}"))).unwrap();
    }
    env.swtpm.restart();
    for attempt in 0..3 {
        let err = a.sign(SignatureScheme::EcdsaP256Sha256, MESSAGE).unwrap_err();
        assert_eq!(err.code(), "key_protection_mismatch", "attempt {attempt}: {err}");
    }
    // And nothing is left loaded.
    drop((a, _b, backend));
    let handles = tpm2(env, &["tpm2_getcap", "handles-transient"]);
    assert!(handles.trim().is_empty(), "transient handles left: {handles}");
}
