//! The compatibility matrix end to end (issue 15): an appliance on a PKCS#11 module other than
//! SoftHSM — IBM opencryptoki's soft token, latchset's Kryoptic — made by `quickstart --backend
//! pkcs11`, then the service's main path: a bulk token, a registration with it, a renewal, a
//! batch; every token verified with `ring` against the JWKS and audited. (SoftHSM runs this path
//! in every other service test.)

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a panic is a failure")]

use serde_json::json;

mod common;
use common::appliance::{Appliance, JwksChecker, client_request, faulty_module, register, set_faults};
use device_tests::kryoptic::{self, Kryoptic};
use device_tests::opencryptoki::{MODULE, Ock};
use faulty_pkcs11::{Fail, Faults};

#[test]
fn opencryptoki_quickstart_bulk_token_registration_renewal_and_batch() {
    let tmp = tempfile::tempdir().unwrap();
    // The one soft token, initialised for this test (and locked against the device tests).
    let token = Ock::create(tmp.path().to_owned());
    let pin = token.pin_file().to_str().unwrap().to_owned();
    let a = Appliance::with(&[
        "--backend",
        "pkcs11",
        "--module",
        MODULE,
        "--token-label",
        device_tests::TOKEN_LABEL,
        "--pin-file",
        &pin,
        // Debian's opencryptoki soft token has no elliptic curves.
        "--tls-algorithm",
        "rsa-2048",
    ]);
    let status = main_path(&a);
    // What the operator learns of the module before going live: its clock is set but not digits
    // (what cryptoki refused before the patch), no EC, RSA raw with host-side hashing.
    let facts = &status["backends"][0]["facts"];
    assert!(
        facts["library"].as_str().unwrap().contains("openCryptoki")
            || facts["library"].as_str().unwrap().contains("IBM"),
        "{facts}"
    );
    assert!(facts["clock"].as_str().unwrap().contains("unreadable"), "{facts}");
    assert!(facts["ES256 mechanism"].as_str().unwrap().starts_with("not offered"), "{facts}");
    assert!(facts["RS256 mechanism"].as_str().unwrap().starts_with("CKM_RSA_PKCS (raw"), "{facts}");
    assert!(facts["login"].as_str().unwrap().contains("user PIN"), "{facts}");
}

#[test]
fn kryoptic_quickstart_bulk_token_registration_renewal_and_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let token = Kryoptic::prepare(tmp.path().to_owned());
    let (module, pin) = (kryoptic::module(), token.pin_file().to_str().unwrap().to_owned());
    let env = format!("{}={}", kryoptic::CONF_ENV, token.conf().display());
    let a = Appliance::with(&[
        "--backend",
        "pkcs11",
        "--module",
        module.to_str().unwrap(),
        "--token-label",
        device_tests::TOKEN_LABEL,
        "--pin-file",
        &pin,
        "--module-env",
        &env,
    ]);
    let status = main_path(&a);
    let facts = &status["backends"][0]["facts"];
    assert!(facts["library"].as_str().unwrap().contains("Kryoptic"), "{facts}");
    assert!(facts["ES256 mechanism"].as_str().unwrap().starts_with("CKM_ECDSA (raw"), "{facts}");
    assert!(facts["RS256 mechanism"].as_str().unwrap().starts_with("CKM_RSA_PKCS (raw"), "{facts}");
}

#[test]
fn quickstart_refuses_a_module_variable_outside_the_allow_list_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let token = Kryoptic::prepare(tmp.path().to_owned());
    let dir = tmp.path().join("appliance");
    let mut quickstart = common::sitesign();
    quickstart.args(["quickstart", "--json", "--dir"]).arg(&dir).args(["--backend", "pkcs11", "--module"]);
    quickstart.arg(kryoptic::module()).args(["--token-label", device_tests::TOKEN_LABEL, "--pin-file"]);
    quickstart.arg(token.pin_file()).args(["--module-env", "LD_PRELOAD=/tmp/evil.so"]);
    let out = quickstart.output().unwrap();
    assert!(!out.status.success());
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["error"]["code"], "config", "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("environment.LD_PRELOAD") && message.contains("KRYOPTIC_CONF"), "{err}");
    assert!(!dir.join("sitesign.toml").exists(), "a refused configuration was left behind");
}

/// The service's main path on appliance `a`: a bulk token, a registration, a renewal, a 200-line
/// batch; every token verified against the JWKS and audited once. Returns `sitesign status`.
fn main_path(a: &Appliance) -> serde_json::Value {
    // Renewal at once (the floor is tested elsewhere).
    a.edit_tokens(|t| t.renew_after_days = Some(0));
    let keys = a.ok(&["keys", "list"]);
    assert!(
        keys["keys"].as_array().unwrap().iter().all(|k| k["uri"].as_str().unwrap().starts_with("pkcs11:")),
        "{keys}"
    );
    let s = a.start();
    let made = a.ok(&["bulk-token", "new", "--lifetime", "30"]);
    let (status, registered) = register(&s, 1, json!({"kind": "bulk", "token": made["token"]}));
    assert_eq!(status, 200, "{registered}");
    let first = registered["token"].as_str().unwrap().to_owned();
    let (status, renewed) = register(&s, 1, json!({"kind": "renew", "token": first}));
    assert_eq!(status, 200, "{renewed}");
    let lines: Vec<String> = (10..210).map(|n| client_request(n, json!({"kind": "internal"})).to_string()).collect();
    let results = s.batch("module", &lines);
    let mut tokens: Vec<String> = results.iter().map(|r| r["token"].as_str().unwrap().to_owned()).collect();
    tokens.extend([first, renewed["token"].as_str().unwrap().to_owned()]);
    let checker = JwksChecker::fetch(&s);
    assert!(tokens.iter().all(|t| checker.verifies(t)));
    assert!(a.audit_intact());
    let audited = a.audit_records().iter().filter(|r| r["kind"] == "client-token").count();
    assert_eq!(audited, tokens.len());
    let status = a.ok(&["status"]);
    assert_eq!(status["healthy"], true, "{status}");
    status
}

#[test]
fn opencryptoki_recovers_in_place_from_a_token_error() {
    // The token reported missing once (through the fault module in front of opencryptoki): the
    // module is finalised and initialised again in the same process — which crashed while
    // sitesign unloaded modules — and the request is signed.
    let tmp = tempfile::tempdir().unwrap();
    let token = Ock::create(tmp.path().to_owned());
    let pin = token.pin_file().to_str().unwrap().to_owned();
    let faults = tmp.path().join("faults.toml");
    let log = tmp.path().join("faults.log");
    let base = Faults { module: Some(MODULE.into()), log: Some(log.clone()), ..Faults::default() };
    set_faults(&faults, &base);
    let shim = faulty_module();
    let mut quickstart = common::sitesign();
    quickstart.args(["quickstart", "--json", "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--dir"]);
    quickstart.arg(tmp.path().join("appliance")).args(["--backend", "pkcs11", "--module"]).arg(&shim);
    quickstart.args(["--token-label", device_tests::TOKEN_LABEL, "--pin-file", &pin, "--tls-algorithm", "rsa-2048"]);
    common::ok(quickstart.env("FAULTY_PKCS11_CONFIG", &faults).output().unwrap());
    let fail = Fail {
        function: "C_SignInit".into(),
        rv: "CKR_TOKEN_NOT_PRESENT".into(),
        nth: Some(1),
        every: None,
        times: None,
    };
    set_faults(&faults, &Faults { fail: vec![fail], ..base });
    let made = common::ok(
        common::with_config(&tmp.path().join("appliance"), &["bulk-token", "new"])
            .env("FAULTY_PKCS11_CONFIG", &faults)
            .output()
            .unwrap(),
    );
    assert!(made["token"].is_string(), "{made}");
    let injected = std::fs::read_to_string(&log).unwrap();
    assert_eq!(injected.lines().filter(|l| l.contains("CKR_TOKEN_NOT_PRESENT")).count(), 1, "{injected}");
}
