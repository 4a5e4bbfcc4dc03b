//! The life of a key, live (SPEC §7), against a running service on real devices: rotations of the
//! token-signing key, the SMS Issuing root and the TLS key; retirement and revocation; revocation
//! of MP certificates and the CRL; changes made by the CLI, through the admin socket or straight
//! in the database taken up within a second, without a restart and without failing a request in
//! flight — and each refusal of bad input, with nothing changed.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a panic is a failure")]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::appliance::{
    Appliance, Service, claims_of, client_request, device, header_of, python_tool, register, thumbprint,
};
use common::{fails_with, json as parse};

/// The key ids of the inventory with `role` and `status`.
fn keys(a: &Appliance, role: &str, status: &str) -> Vec<String> {
    a.ok(&["keys", "list"])["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["role"] == role && k["status"] == status)
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The one key with `role` and `status`.
fn key(a: &Appliance, role: &str, status: &str) -> Value {
    let listed = a.ok(&["keys", "list"]);
    let found: Vec<&Value> =
        listed["keys"].as_array().unwrap().iter().filter(|k| k["role"] == role && k["status"] == status).collect();
    assert_eq!(found.len(), 1, "{role} {status}: {listed}");
    found[0].clone()
}

/// `verify` of a device token for device `n`.
fn verify(s: &Service, token: &str, n: u32) -> Value {
    s.call(
        "/v1/tokens:verify",
        Some(&json!({"token": token, "client_cert_thumbprint": thumbprint((n % 251) as u8)}).to_string()),
    )
    .1
}

/// The x5t values in the JWKS.
fn jwks_x5t(s: &Service) -> Vec<String> {
    let (status, jwks) = s.call("/.well-known/jwks.json", None);
    assert_eq!(status, 200);
    jwks["keys"].as_array().unwrap().iter().map(|k| k["x5t"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn configmgr_lock_out_does_not_happen_on_a_token_signing_rotation() {
    let a = Appliance::new();
    let s = a.start();
    let old = key(&a, "token-signing", "active");
    let (_, before) = register(&s, 1, json!({"kind": "internal"}));
    let before = before["token"].as_str().unwrap().to_owned();
    assert_eq!(header_of(&before)["x5t"], old["x5t"]);

    // The plan first, nothing changed by --dry-run.
    let plan = a.ok(&["rotate", "token-signing", "--publish-ahead", "6s", "--dry-run"]);
    assert_eq!(plan["done"], false);
    assert!(
        plan["plan"]["steps"].as_array().unwrap().iter().any(|s| s.as_str().unwrap().contains("verify-only")),
        "{plan}"
    );
    assert_eq!(keys(&a, "token-signing", "pending").len(), 0, "a dry run changed nothing");
    // Without --yes and without a terminal: refused, nothing changed.
    fails_with(a.cli(&["rotate", "token-signing", "--publish-ahead", "6s"]), "confirmation_required");
    assert_eq!(keys(&a, "token-signing", "pending").len(), 0);

    // Taken before the command: it activates the key 6 s after its own start (whole seconds),
    // and generating the key may take a while on a loaded machine.
    let rotated_at = Instant::now();
    let done = a.ok(&["rotate", "token-signing", "--publish-ahead", "6s", "--yes"]);
    assert_eq!(done["done"], true, "{done}");
    let new = key(&a, "token-signing", "pending");
    // Published at once — JWKS and /v1/certificates — before it signs anything.
    assert!(jwks_x5t(&s).contains(&new["x5t"].as_str().unwrap().to_owned()), "the pending key is in the JWKS");
    let (_, certs) = s.call("/v1/certificates", None);
    assert!(
        certs["certificates"].as_array().unwrap().iter().any(|c| c["x5t"] == new["x5t"] && c["status"] == "pending")
    );
    // Until it activates, the old key signs.
    let (_, during) = register(&s, 2, json!({"kind": "internal"}));
    if rotated_at.elapsed() < Duration::from_secs(5) {
        assert_eq!(header_of(during["token"].as_str().unwrap())["x5t"], old["x5t"], "signed by the pending key early");
    }
    // Once it is active, new tokens name the new key; no restart (same process).
    let pid = s.pid();
    assert!(s.eventually(Duration::from_secs(30), || {
        let (_, t) = register(&s, 3, json!({"kind": "internal"}));
        header_of(t["token"].as_str().unwrap())["x5t"] == new["x5t"]
    }));
    assert!(rotated_at.elapsed() >= Duration::from_secs(5), "activated before its time");
    assert_eq!(s.pid(), pid);
    assert_eq!(key(&a, "token-signing", "verify-only")["id"], old["id"]);
    assert!(key(&a, "token-signing", "verify-only")["retires"].is_string());
    // The token issued before the rotation still verifies, and renews at once (its key is no
    // longer active: no waiting for renew_after_days), under the new key.
    assert_eq!(verify(&s, &before, 1)["valid"], true);
    let (status, renewed) = register(&s, 1, json!({"kind": "renew", "token": before}));
    assert_eq!(status, 200, "{renewed}\n{}", s.log_text());
    assert_eq!(header_of(renewed["token"].as_str().unwrap())["x5t"], new["x5t"]);
    // Every transition is in the audit log.
    let records = a.audit_records();
    assert_eq!(records.iter().filter(|r| r["kind"] == "key-scheduled").count(), 2);
    assert!(a.audit_intact());
}

#[test]
fn a_tpm_appliance_rotates_its_token_signing_and_tls_keys_live() {
    // Every key in a swtpm: the rotations go through the running service's admin socket (the
    // TPM serves one client), and the service takes them up without a restart.
    let tmp = tempfile::tempdir().unwrap();
    let tpm = device_tests::swtpm::Swtpm::start(tmp.path());
    let a = Appliance::with(&["--backend", "tpm", "--tcti", &tpm.tcti()]);
    let s = a.start();
    let pid = s.pid();
    let old = key(&a, "token-signing", "active");
    let (status, before) = register(&s, 21, json!({"kind": "internal"}));
    assert_eq!(status, 200, "{before}");
    let before = before["token"].as_str().unwrap().to_owned();

    let done = a.ok(&["rotate", "token-signing", "--activate-at", "now", "--yes"]);
    assert_eq!(done["done"], true, "{done}");
    let new = key(&a, "token-signing", "active");
    assert_ne!(new["id"], old["id"]);
    assert!(new["uri"].as_str().unwrap().starts_with("tpm:"), "{new}");
    assert!(s.eventually(Duration::from_secs(30), || {
        let (_, t) = register(&s, 22, json!({"kind": "internal"}));
        t["token"].as_str().is_some_and(|t| header_of(t)["x5t"] == new["x5t"])
    }));
    assert_eq!(verify(&s, &before, 21)["valid"], true, "a token of the verify-only key still verifies");
    let (status, renewed) = register(&s, 21, json!({"kind": "renew", "token": before}));
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(header_of(renewed["token"].as_str().unwrap())["x5t"], new["x5t"]);

    let tls_before = key(&a, "tls", "active");
    assert_eq!(s.served_certificate_x5t().as_deref(), tls_before["x5t#S256"].as_str());
    a.ok(&["rotate", "tls", "--yes"]);
    let tls_after = key(&a, "tls", "active");
    assert_ne!(tls_after["id"], tls_before["id"]);
    assert!(s.eventually(Duration::from_secs(30), || s.served_certificate_x5t().as_deref()
        == tls_after["x5t#S256"].as_str()));
    assert_eq!(s.pid(), pid);
    assert!(a.audit_intact());
    drop(s);
    tpm.stop();
}

#[test]
fn rotation_while_a_long_batch_streams_fails_no_line() {
    let a = Appliance::new();
    a.edit_service(|svc| {
        svc.rate_limit_per_second = Some(100_000);
        svc.rate_limit_burst = Some(100_000);
    });
    let s = a.start();
    let pid = s.pid();
    let old = key(&a, "token-signing", "active");
    let n = 3000u32;
    let body = s.dir.join("storm.ndjson");
    let lines: Vec<String> = (0..n).map(|i| client_request(i, json!({"kind": "internal"})).to_string()).collect();
    std::fs::write(&body, lines.join("\n") + "\n").unwrap();
    let out = body.with_extension("out");
    let mut batch = s.batch_command(&body).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&out).map_or(0, |m| m.len()) < 4096 {
        assert!(Instant::now() < deadline, "the batch never started answering");
        std::thread::sleep(Duration::from_millis(10));
    }
    a.ok(&["rotate", "token-signing", "--activate-at", "now", "--yes"]);
    assert!(batch.wait().unwrap().success());
    let answers: Vec<Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers.len(), n as usize);
    let mut by_key = std::collections::HashMap::<String, usize>::new();
    for (i, v) in answers.iter().enumerate() {
        let token = v["token"].as_str().unwrap_or_else(|| panic!("line {i} failed: {v}"));
        assert_eq!(claims_of(token)["DeviceId"], device(i as u32), "line {i} out of order");
        *by_key.entry(header_of(token)["x5t"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    let new = key(&a, "token-signing", "active");
    assert_ne!(new["id"], old["id"]);
    assert!(by_key.keys().all(|x5t| *x5t == old["x5t"] || *x5t == new["x5t"]), "{by_key:?}");
    assert!(by_key.contains_key(new["x5t"].as_str().unwrap()), "the rotation took effect within the batch: {by_key:?}");
    // Tokens from both keys verify.
    assert_eq!(verify(&s, answers[0]["token"].as_str().unwrap(), 0)["valid"], true);
    assert_eq!(verify(&s, answers[n as usize - 1]["token"].as_str().unwrap(), n - 1)["valid"], true);
    assert_eq!(s.pid(), pid, "no restart");
    assert!(a.audit_intact());
}

#[test]
fn a_revoked_mp_certificate_is_refused_within_a_second_and_listed_on_the_crl() {
    let a = Appliance::new();
    let s = a.start();
    let (crt, key, serial) = a.enrol_mp("mp02");
    let url = s.url("/v1/certificates");
    let status = |extra: &[&str]| {
        let out = s
            .mtls_as(&crt, &key)
            .args(["-w", "%{http_code}", "-o", "/dev/null"])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert_eq!(status(&[]).0, "200");
    // Unknown serials and the wrong kind of certificate are refused as such, nothing changed.
    fails_with(a.cli(&["cert", "revoke", "0badc0de", "--yes"]), "unknown_certificate");
    let ts_serial = a.ok(&["cert", "list"])["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["profile"] == "token-signing")
        .unwrap()["serial"]
        .as_str()
        .unwrap()
        .to_owned();
    fails_with(a.cli(&["cert", "revoke", &ts_serial, "--yes"]), "not_a_role_certificate");

    let revoked_at = Instant::now();
    let done = a.ok(&["cert", "revoke", &serial, "--reason", "key-compromise", "--yes"]);
    assert_eq!(done["done"], true);
    // Refused at its next handshake, well within a second of the command returning (the admin
    // socket takes the change up before it answers), without a restart.
    let (code, err) = status(&[]);
    assert!(revoked_at.elapsed() < Duration::from_secs(1) || code != "200", "still served after a second");
    assert_eq!(code, "000", "{err}");
    assert!(err.contains("certificate revoked"), "{err}");
    // The demo MP is unaffected.
    assert_eq!(s.call("/v1/certificates", None).0, 200);
    // The CRL, from /v1/crl, parsed and checked by pyca/cryptography against SMS Issuing.
    let crl = a.dir.join("crl.der");
    let out = s
        .mtls()
        .arg("-o")
        .arg(&crl)
        .args(["-w", "%{http_code} %{content_type}"])
        .arg(s.url("/v1/crl"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 application/pkix-crl");
    let checked = python_tool("crl_check.py", &[crl.to_str().unwrap(), a.dir.join("ca.pem").to_str().unwrap()]);
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
    let checked: Value = serde_json::from_slice(&checked.stdout).unwrap();
    assert_eq!(checked["signature_valid"], true, "{checked}");
    assert!(checked["next_update"].as_i64().unwrap() > checked["this_update"].as_i64().unwrap());
    let listed = checked["revoked"].as_array().unwrap();
    let entry =
        listed.iter().find(|r| r["serial"].as_str().unwrap() == serial.trim_start_matches('0')).expect("listed");
    assert_eq!(entry["reason"], "key_compromise", "{checked}");
    device_tests::pytools::lint_crl(&crl);
    // `cert crl --out` writes the same kind of CRL, with a higher number.
    let file = a.dir.join("crl-cli.der");
    a.ok(&["cert", "crl", "--out", file.to_str().unwrap()]);
    let again = python_tool("crl_check.py", &[file.to_str().unwrap(), a.dir.join("ca.pem").to_str().unwrap()]);
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert!(again["number"].as_i64().unwrap() > checked["number"].as_i64().unwrap());
    assert_eq!(again["revoked"].as_array().unwrap().len(), 1);
    // The same refusal after a restart (the state, not the process, remembers).
    drop(s);
    let s = a.start();
    let out = s
        .mtls_as(&crt, &key)
        .args(["-w", "%{http_code}", "-o", "/dev/null"])
        .arg(s.url("/v1/certificates"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "000");
    assert!(a.audit_intact());
}

#[test]
fn a_keep_alive_connection_of_a_revoked_mp_is_refused_on_its_next_request() {
    let a = Appliance::new();
    let s = a.start();
    let (crt, key, serial) = a.enrol_mp("mp03");
    let mut held = keepalive(&s, &crt, &key);
    let before = held.next();
    assert_eq!(before["status"], 200);
    a.ok(&["cert", "revoke", &serial, "--yes"]);
    held.proceed();
    let kept = held.next();
    assert_eq!(kept["status"], 403, "the open connection's next request: {kept}");
}

/// A kept-alive connection held by `tools/keepalive.py`.
struct Held {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Held {
    fn next(&mut self) -> Value {
        let line = self.lines.next().expect("a line from keepalive.py").unwrap();
        serde_json::from_str(&line).unwrap()
    }

    fn proceed(&mut self) {
        self.child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }
}

fn keepalive(s: &Service, crt: &Path, key: &Path) -> Held {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/keepalive.py");
    let mut child = Command::new(device_tests::pytools::bin_dir().join("python"))
        .arg(script)
        .args(["127.0.0.1", &s.api.port().to_string()])
        .arg(s.dir.join("ca.pem"))
        .arg(crt)
        .arg(key)
        .arg("/v1/certificates")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    Held { child, lines }
}

#[test]
fn rotate_tls_keeps_open_connections_and_serves_new_ones_the_new_certificate() {
    let a = Appliance::new();
    let s = a.start();
    let mut held = keepalive(&s, &a.dir.join("mp/mp.crt"), &a.dir.join("mp/mp.key"));
    let before = held.next();
    assert_eq!(before["status"], 200);
    let old_tls = key(&a, "tls", "active")["id"].clone();
    a.ok(&["rotate", "tls", "--yes"]);
    assert_ne!(key(&a, "tls", "active")["id"], old_tls);
    held.proceed();
    let kept = held.next();
    let fresh = held.next();
    assert_eq!((kept["status"].clone(), kept["same_connection"].clone()), (json!(200), json!(true)), "{kept}");
    assert_eq!(kept["server_cert_sha256"], before["server_cert_sha256"], "the open connection keeps its certificate");
    assert_eq!(fresh["status"], 200);
    assert_ne!(fresh["server_cert_sha256"], before["server_cert_sha256"], "a new connection gets the new certificate");
    let _ = held.child.wait();
}

/// `openssl verify` of `cert` against `ca` (and `untrusted` intermediates); whether it passed.
fn openssl_verifies(ca: &Path, untrusted: Option<&Path>, cert: &Path) -> bool {
    let mut c = Command::new("openssl");
    c.args(["verify", "-x509_strict", "-CAfile"]).arg(ca);
    if let Some(u) = untrusted {
        c.arg("-untrusted").arg(u);
    }
    c.arg(cert).output().unwrap().status.success()
}

#[test]
fn after_rotate_issuing_mps_from_the_old_and_the_new_root_both_work() {
    let a = Appliance::new();
    let s = a.start();
    let old_ca = a.dir.join("ca.pem");
    let old_root = key(&a, "issuing", "active");
    let plan = a.ok(&["rotate", "issuing", "--dry-run"]);
    assert!(
        plan["plan"]["steps"].as_array().unwrap().iter().any(|s| s.as_str().unwrap().contains("cross-certify")),
        "{plan}"
    );
    a.ok(&["rotate", "issuing", "--yes"]);
    let new_root = key(&a, "issuing", "active");
    assert_ne!(new_root["id"], old_root["id"]);
    assert_eq!(key(&a, "issuing", "verify-only")["id"], old_root["id"]);
    // The demo MP (certificate from the old root) still works — and trusts only the old root:
    // the server's new certificate reaches it through the cross-certificate in the chain.
    let (status, _) = s.call("/v1/certificates", None);
    assert_eq!(status, 200);
    // An MP enrolled now gets a certificate from the new root, and works too.
    let (crt, mp_key, _) = a.enrol_mp("mp-new");
    let export = a.dir.join("export");
    a.ok(&["cert", "export", "--out", export.to_str().unwrap()]);
    let new_ca = export.join("sms-issuing.pem");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-w", "%{http_code}", "-o", "/dev/null", "--cacert"])
        .arg(&new_ca)
        .arg("--cert")
        .arg(&crt)
        .arg("--key")
        .arg(&mp_key)
        .arg(s.url("/v1/certificates"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{}", String::from_utf8_lossy(&out.stderr));
    // Both chains in the export verify with openssl: the new token-signing certificate under the
    // new root; the new MP under the new root; the old MP under the old root, and under the new
    // root through the cross-certificate; the whole bundle as trust anchors.
    let ts = key(&a, "token-signing", "active");
    let ts_pem = export.join(format!("{}.pem", ts["id"].as_str().unwrap()));
    assert!(openssl_verifies(&new_ca, None, &ts_pem), "token-signing under the new root");
    assert!(openssl_verifies(&new_ca, None, &crt), "new MP under the new root");
    assert!(openssl_verifies(&old_ca, None, &a.dir.join("mp/mp.crt")), "old MP under the old root");
    let crosses: Vec<PathBuf> = std::fs::read_dir(&export)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("cross-"))
        .collect();
    assert_eq!(crosses.len(), 2, "a cross-certificate each way: {crosses:?}");
    let crosses_pem = a.dir.join("crosses.pem");
    std::fs::write(&crosses_pem, crosses.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect::<String>())
        .unwrap();
    assert!(openssl_verifies(&old_ca, Some(&crosses_pem), &ts_pem), "the new chain reaches the old root");
    assert!(openssl_verifies(&new_ca, Some(&crosses_pem), &a.dir.join("mp/mp.crt")), "the old MP reaches the new root");
    assert!(openssl_verifies(&export.join("trust-bundle.pem"), None, &crt));
    // Tokens issued before and after verify; the CRL of the new root exists and is valid.
    let (status, t) = register(&s, 9, json!({"kind": "internal"}));
    assert_eq!(status, 200, "{t}");
    assert_eq!(verify(&s, t["token"].as_str().unwrap(), 9)["valid"], true);
    let crl = a.dir.join("new-root.crl");
    let out = s.mtls().arg("-o").arg(&crl).args(["-w", "%{http_code}"]).arg(s.url("/v1/crl")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let checked = python_tool("crl_check.py", &[crl.to_str().unwrap(), new_ca.to_str().unwrap()]);
    assert_eq!(serde_json::from_slice::<Value>(&checked.stdout).unwrap()["signature_valid"], true);
    device_tests::pytools::lint_crl(&crl);
    assert!(a.audit_intact());
}

#[test]
fn a_revoked_token_signing_key_is_refused_at_once_and_the_fleet_re_issues_through_the_batch() {
    let a = Appliance::new();
    let s = a.start();
    let old = key(&a, "token-signing", "active");
    let lines: Vec<String> = (0..50).map(|i| client_request(i, json!({"kind": "internal"})).to_string()).collect();
    let issued = s.batch("fleet", &lines);
    let tokens: Vec<String> = issued.iter().map(|v| v["token"].as_str().unwrap().to_owned()).collect();
    // Revoking needs a reason; an unknown key is refused; nothing changes either way.
    fails_with(a.cli(&["keys", "revoke", old["id"].as_str().unwrap(), "--reason", "  ", "--yes"]), "usage");
    fails_with(a.cli(&["keys", "revoke", "no-such-key", "--reason", "stolen", "--yes"]), "unknown_key");
    let done = a.ok(&["keys", "revoke", old["id"].as_str().unwrap(), "--reason", "key stolen", "--yes"]);
    assert_eq!(done["done"], true, "{done}");
    // A new key is active in the same command; the old one is revoked.
    let new = key(&a, "token-signing", "active");
    assert_ne!(new["id"], old["id"]);
    assert_eq!(key(&a, "token-signing", "revoked")["revoke_reason"], "key stolen");
    // Its tokens are refused at once: verification and access tokens say key_revoked.
    assert_eq!(verify(&s, &tokens[0], 0), json!({"valid": false, "reason": "key_revoked"}));
    let (status, e) = s.call(
        "/v1/access-tokens",
        Some(&json!({"token": tokens[1], "client_cert_thumbprint": thumbprint(1)}).to_string()),
    );
    assert_eq!((status, e["error"]["reason"].as_str()), (403, Some("key_revoked")), "{e}");
    // The revoked key's JWK and certificate are no longer published; its certificate is on the CRL.
    assert!(!jwks_x5t(&s).contains(&old["x5t"].as_str().unwrap().to_owned()));
    let revoked_serials: Vec<String> = a.ok(&["cert", "list"])["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "revoked")
        .map(|c| c["serial"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(revoked_serials.len(), 1, "the revoked key's certificate");
    // The fleet renews every token through the batch endpoint, under the new key.
    let renewals: Vec<String> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| client_request(i as u32, json!({"kind": "renew", "token": t})).to_string())
        .collect();
    let renewed = s.batch("re-issue", &renewals);
    assert_eq!(renewed.len(), 50);
    for (i, v) in renewed.iter().enumerate() {
        let token = v["token"].as_str().unwrap_or_else(|| panic!("line {i}: {v}"));
        assert_eq!(header_of(token)["x5t"], new["x5t"]);
        assert_eq!(verify(&s, token, i as u32)["valid"], true);
    }
    // A token the thief signs with the stolen key (not issued by this site) does not renew.
    let forged = forge_with(&a, &s, &tokens[2]);
    let (status, e) = register(&s, 2, json!({"kind": "renew", "token": forged}));
    assert_eq!((status, e["error"]["reason"].as_str()), (403, Some("key_revoked")), "{e}");
    assert!(a.audit_intact());
}

/// `token`'s claims with a new `UniqueId`, re-signed with the (revoked) key that signed `token` —
/// what a thief holding the key would make. Signed by pkcs11-tool, the service stopped meanwhile.
fn forge_with(a: &Appliance, s: &Service, token: &str) -> String {
    let mut claims = claims_of(token);
    claims["UniqueId"] = json!("11111111-2222-4333-8444-555555555555");
    let parts: Vec<&str> = token.split('.').collect();
    let input =
        format!("{}.{}", parts[0], sitesign::token::b64::encode(serde_json::to_string(&claims).unwrap().as_bytes()));
    let label = header_of(token)["x5t"].as_str().unwrap().to_owned();
    let listed = a.ok(&["keys", "list"]);
    let key_id = listed["keys"].as_array().unwrap().iter().find(|k| k["x5t"] == label.as_str()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let work = a.dir.join("thief");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("input"), &input).unwrap();
    let conf = a.dir.join("softhsm/softhsm2.conf");
    let listed = Command::new("pkcs11-tool")
        .args(["--module", hsm_adapters::config::DEFAULT_PKCS11_MODULE, "--token-label", "sitesign", "--list-objects"])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let lines: Vec<&str> = listed.lines().map(str::trim).collect();
    let at = lines.iter().position(|l| *l == format!("label:      {key_id}")).unwrap_or_else(|| panic!("{listed}"));
    let id = lines[at + 1].strip_prefix("ID:").unwrap().trim().to_owned();
    let _ = s;
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../softhsm-tests/tools/with-pin-prompt.py"))
        .arg(a.dir.join("user.pin"))
        .args(["pkcs11-tool", "--module", hsm_adapters::config::DEFAULT_PKCS11_MODULE, "--token-label", "sitesign"])
        .args(["--login", "--sign", "--mechanism", "SHA256-RSA-PKCS", "--id", &id, "--input-file"])
        .arg(work.join("input"))
        .arg("--output-file")
        .arg(work.join("sig"))
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    let sig = std::fs::read(work.join("sig")).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
    format!("{input}.{}", sitesign::token::b64::encode(&sig))
}

#[test]
fn retirement_and_bad_input_refused_with_nothing_changed() {
    let a = Appliance::new();
    // Before init: rotating has no hierarchy.
    let tmp = tempfile::tempdir().unwrap();
    let bare = tmp.path().join("sitesign.toml");
    let text = std::fs::read_to_string(a.config_path())
        .unwrap()
        .replace("state_dir = \"state\"", "state_dir = \"empty-state\"");
    std::fs::write(&bare, text).unwrap();
    let out = common::run(common::sitesign().args(["--json", "--config"]).arg(&bare).args([
        "rotate",
        "token-signing",
        "--yes",
    ]));
    assert_eq!(parse(&out)["error"]["code"], "not_initialised", "{}", String::from_utf8_lossy(&out.stdout));

    let active = key(&a, "token-signing", "active")["id"].as_str().unwrap().to_owned();
    let generation = || a.ok(&["status"])["healthy"].clone();
    let _ = generation();
    // --activate-at in the past, unparsable, too far; both --activate-at and --publish-ahead.
    fails_with(
        a.cli(&["rotate", "token-signing", "--activate-at", "2020-01-01T00:00:00Z", "--yes"]),
        "activate_at_in_past",
    );
    fails_with(a.cli(&["rotate", "token-signing", "--activate-at", "tomorrow", "--yes"]), "invalid_time");
    fails_with(a.cli(&["rotate", "token-signing", "--publish-ahead", "9999999d", "--yes"]), "activate_at_too_late");
    fails_with(a.cli(&["rotate", "token-signing", "--publish-ahead", "1h", "--activate-at", "now", "--yes"]), "usage");
    // Retiring the only active key.
    fails_with(a.cli(&["keys", "retire", &active, "--yes"]), "only_active_key");
    assert_eq!(keys(&a, "token-signing", "active"), std::slice::from_ref(&active));
    assert_eq!(a.ok(&["keys", "list"])["keys"].as_array().unwrap().len(), 3, "nothing was added");

    // A rotation scheduled for later, then cancelled by retiring the pending key: the old key
    // stays active with no hand-over planned.
    a.ok(&["rotate", "token-signing", "--publish-ahead", "1h", "--yes"]);
    let pending = key(&a, "token-signing", "pending")["id"].as_str().unwrap().to_owned();
    fails_with(a.cli(&["rotate", "token-signing", "--yes"]), "rotation_pending");
    a.ok(&["keys", "retire", &pending, "--yes"]);
    let still = key(&a, "token-signing", "active");
    assert_eq!(still["id"], active.as_str());
    assert!(still["deactivates"].is_null() && still["retires"].is_null(), "{still}");

    // A rotation now: the old key is verify-only; retiring it is refused while its tokens are
    // valid, and done with --force.
    a.ok(&["rotate", "token-signing", "--activate-at", "now", "--yes"]);
    assert_eq!(key(&a, "token-signing", "verify-only")["id"], active.as_str());
    fails_with(a.cli(&["keys", "retire", &active, "--yes"]), "tokens_still_valid");
    a.ok(&["keys", "retire", &active, "--force", "--yes"]);
    assert!(keys(&a, "token-signing", "retired").contains(&active));
    fails_with(a.cli(&["keys", "retire", &active, "--yes"]), "already_retired");
    // keys list --json has what operators script against.
    let listed = a.ok(&["keys", "list"]);
    for field in ["id", "role", "uri", "algorithm", "status", "created", "activates", "retires", "x5t", "x5t#S256"] {
        assert!(listed["keys"][0].get(field).is_some(), "{field} missing: {listed}");
    }
    assert!(a.audit_intact());
}

#[test]
fn a_device_failure_halfway_through_a_rotation_records_nothing_and_lists_the_orphan() {
    // The SMS Issuing root in a TPM, the token-signing keys in a SoftHSM token: the new key is
    // made in the token, then the TPM that must certify it is gone.
    let tmp = tempfile::tempdir().unwrap();
    let tpm = device_tests::swtpm::Swtpm::start(tmp.path());
    let a = Appliance::with(&["--backend", "tpm", "--tcti", &tpm.tcti()]);
    let hsm = tmp.path().join("hsm");
    common::ok(common::run(common::sitesign().args(["selftest", "--json", "--rounds", "1", "--dir"]).arg(&hsm)));
    let hsm_config: sitesign::config::ConfigFile =
        toml::from_str(&std::fs::read_to_string(hsm.join("sitesign.toml")).unwrap()).unwrap();
    a.edit(|f| {
        f.backends.insert("hsm".into(), hsm_config.backends["softhsm"].clone());
        f.pki.as_mut().unwrap().token_signing_backend = Some("hsm".into());
    });
    let s = a.start();
    let old = key(&a, "token-signing", "active");
    tpm.stop();
    let out = a.cli(&["rotate", "token-signing", "--activate-at", "now", "--yes"]);
    assert!(!out.status.success());
    let e = parse(&out);
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("nothing was recorded") && message.contains("pkcs11:token=sitesign;object=ts-"), "{e}");
    // Nothing half-recorded: the old key still active, no new key; the orphan is listed.
    assert_eq!(key(&a, "token-signing", "active")["id"], old["id"]);
    let listed = a.ok(&["keys", "list"]);
    assert_eq!(listed["keys"].as_array().unwrap().len(), 3);
    let orphans = listed["orphans"].as_array().unwrap();
    assert_eq!(orphans.len(), 1, "{listed}");
    assert!(orphans[0]["uri"].as_str().unwrap().starts_with("pkcs11:token=sitesign;object=ts-"));
    drop(s);
}

#[test]
fn changes_made_outside_the_service_are_taken_up_within_a_second() {
    let a = Appliance::new();
    let made = a.ok(&["bulk-token", "new"]);
    let s = a.start();
    assert_eq!(register(&s, 1, json!({"kind": "bulk", "token": made["token"]})).0, 200);
    // Another appliance sharing the database (here: an SQL editor) blocks the bulk token: the
    // change counter moves (a trigger) and the service follows within a second.
    let sql = format!("UPDATE bulk_tokens SET blocked = 1 WHERE guid = '{}'", made["guid"].as_str().unwrap());
    let out = python_tool("sqlite_exec.py", &[a.dir.join("state/state.db").to_str().unwrap(), &sql]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let changed = Instant::now();
    assert!(
        s.eventually(Duration::from_secs(5), || register(&s, 2, json!({"kind": "bulk", "token": made["token"]})).0
            == 403)
    );
    assert!(changed.elapsed() < Duration::from_secs(2), "took {:?}", changed.elapsed());
    // A change made by the CLI while the service was stopped is honoured at start.
    drop(s);
    let (crt, key, serial) = a.enrol_mp("offline");
    a.ok(&["cert", "revoke", &serial, "--yes"]);
    let s = a.start();
    let out = s
        .mtls_as(&crt, &key)
        .args(["-w", "%{http_code}", "-o", "/dev/null"])
        .arg(s.url("/v1/certificates"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "000");
    let (_, metrics) = s.ops("/metrics");
    assert!(metrics.contains("sitesign_state_reloads_total"), "{metrics}");
}
