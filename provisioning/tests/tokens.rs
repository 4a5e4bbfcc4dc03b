//! Tokens end to end with the real binary and real devices: bulk tokens created by `sitesign
//! bulk-token` (both spellings), verified by two third-party JOSE implementations (PyJWT,
//! jwcrypto) and openssl against the exported token-signing certificate; the registry's
//! block/unblock taking effect at once; lifetime bounds; ES256 keys; a TPM-backed hierarchy.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a panic is a failure")]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

mod common;
use common::{fails_with, json, ok, openssl, quickstart, run, sitesign, with_config};

fn ts_cert(dir: &Path) -> PathBuf {
    let certs = dir.join("certs");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&certs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("ts-"))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.pop().unwrap()
}

fn hierarchy(dir: &Path) -> String {
    ok(run(&mut with_config(dir, &["status"])))["hierarchy_id"].as_str().unwrap().to_owned()
}

fn with_stdin(mut cmd: Command, input: &str) -> Output {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// PyJWT and jwcrypto verify `token` with the certificate's key; returns their claims (equal).
fn jose_verify(cert: &Path, alg: &str, hierarchy: &str, token: &str) -> Value {
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("../softhsm-tests/tools/jose-verify.py");
    let mut cmd = Command::new(device_tests::pytools::bin_dir().join("python"));
    cmd.arg(tool).arg(cert).args([alg, "urn:sccm:service", &format!("urn:sccm:oauth2:{}", hierarchy.to_lowercase())]);
    let out = with_stdin(cmd, token);
    assert!(out.status.success(), "third-party verification failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pyjwt"], v["jwcrypto"]);
    assert_eq!(v["header"]["alg"], alg);
    v["pyjwt"].clone()
}

/// openssl checks an RS256 signature with the certificate's public key.
fn openssl_verify_rs256(cert: &Path, token: &str, work: &Path) {
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = sig.replace('-', "+").replace('_', "/");
    let padded = format!("{sig}{}", "=".repeat((4 - sig.len() % 4) % 4));
    std::fs::write(work.join("input"), input).unwrap();
    std::fs::write(work.join("sig.b64"), padded).unwrap();
    let w = |n: &str| work.join(n).to_str().unwrap().to_owned();
    openssl(&["base64", "-d", "-A", "-in", &w("sig.b64"), "-out", &w("sig.bin")]);
    openssl(&["x509", "-in", cert.to_str().unwrap(), "-pubkey", "-noout", "-out", &w("pub.pem")]);
    let verified = openssl(&["dgst", "-sha256", "-verify", &w("pub.pem"), "-signature", &w("sig.bin"), &w("input")]);
    assert!(verified.contains("Verified OK"), "{verified}");
}

/// `sitesign token verify` with the token on stdin: (valid, reason).
fn cli_verify(dir: &Path, token: &str) -> (bool, Value) {
    let mut cmd = sitesign();
    cmd.arg("--json").arg("--config").arg(dir.join("sitesign.toml")).args(["token", "verify"]);
    let out = with_stdin(cmd, token);
    let v = json(&out);
    assert_eq!(out.status.code(), Some(if v["valid"] == true { 0 } else { 2 }), "{v}");
    (v["valid"] == true, v)
}

fn bulk_new(dir: &Path, args: &[&str]) -> Value {
    let mut full = vec!["bulk-token"];
    full.extend_from_slice(args);
    ok(run(&mut with_config(dir, &full)))
}

fn bulk_count(dir: &Path) -> usize {
    ok(run(&mut with_config(dir, &["bulk-token", "list"])))["bulk_tokens"].as_array().unwrap().len()
}

#[test]
fn bulk_tokens_verify_with_third_party_jose_libraries_and_openssl() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    quickstart(dir, &[]);
    let cert = ts_cert(dir);
    let h = hierarchy(dir);

    // ConfigMgr's spelling, as the original tool prints it: GUID, validity line, token.
    let out = run(sitesign().arg("--config").arg(dir.join("sitesign.toml")).args(["bulk-token", "/new"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let guid = lines[0].rsplit(' ').next().unwrap();
    assert!(lines[1].starts_with("Token is valid until ") && lines[1].ends_with('.'), "{text}");
    let claims = jose_verify(&cert, "RS256", &h, lines[2]);
    assert_eq!(claims["UniqueId"], guid);
    assert_eq!(claims["TenantId"], h.to_uppercase());
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["nbf"].as_i64().unwrap(), 4320 * 60);
    openssl_verify_rs256(&cert, lines[2], tmp.path());

    // sitesign's spelling with --json: {"guid","expires","token"}, in that order.
    let made = bulk_new(dir, &["new", "--lifetime", "60"]);
    let keys: Vec<&String> = made.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["guid", "expires", "token"]);
    let token = made["token"].as_str().unwrap();
    let claims = jose_verify(&cert, "RS256", &h, token);
    assert_eq!(claims["UniqueId"], made["guid"]);
    assert_eq!(claims["exp"], made["expires"]);
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["nbf"].as_i64().unwrap(), 3600);
    assert!(cli_verify(dir, token).0);

    // The registry keeps GUID, lifetime, creator and state — never the token.
    let list = ok(run(&mut with_config(dir, &["bulk-token", "list"])));
    let entries = list["bulk_tokens"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e["state"] == "active" && e["creator"].as_str().unwrap().starts_with("cli:uid=")));
    let db = std::fs::read(dir.join("state/state.db")).unwrap();
    let wal = std::fs::read(dir.join("state/state.db-wal")).unwrap_or_default();
    for t in [token, lines[2]] {
        let sig = t.rsplit('.').next().unwrap().as_bytes();
        assert!(!db.windows(40).any(|w| w == &sig[..40]) && !wal.windows(40).any(|w| w == &sig[..40]), "token stored");
    }

    // A tampered token is refused with its reason.
    let mut bad = token.to_owned();
    let at = bad.len() - 5;
    let flipped = if &bad[at..=at] == "A" { "B" } else { "A" };
    bad.replace_range(at..=at, flipped);
    let (valid, v) = cli_verify(dir, &bad);
    assert!(!valid && ["bad_signature", "non_canonical_encoding"].contains(&v["reason"].as_str().unwrap()), "{v}");
}

#[test]
fn blocking_a_bulk_token_takes_effect_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    quickstart(dir, &[]);
    let made = bulk_new(dir, &["new"]);
    let (guid, token) = (made["guid"].as_str().unwrap(), made["token"].as_str().unwrap());
    assert!(cli_verify(dir, token).0);

    let blocked = ok(run(&mut with_config(dir, &["bulk-token", "block", &guid.to_uppercase()])));
    assert_eq!(blocked["bulk_token"]["blocked"], true);
    let (valid, v) = cli_verify(dir, token);
    assert!(!valid);
    assert_eq!(v["reason"], "blocked");
    let list = ok(run(&mut with_config(dir, &["bulk-token", "list"])));
    assert_eq!(list["bulk_tokens"][0]["state"], "blocked");

    ok(run(&mut with_config(dir, &["bulk-token", "unblock", guid])));
    assert!(cli_verify(dir, token).0, "unblocked");

    fails_with(run(&mut with_config(dir, &["bulk-token", "block", "not-a-guid"])), "invalid_guid");
    let unknown = "00000000-0000-4000-8000-000000000000";
    assert!(
        fails_with(run(&mut with_config(dir, &["bulk-token", "block", unknown])), "bulk_token_not_found")
            .contains(unknown)
    );
}

#[test]
fn lifetimes_outside_1_to_10080_minutes_are_refused_and_nothing_is_issued() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    quickstart(dir, &[]);
    let max = bulk_new(dir, &["/new", "/lifetime", "10080"]);
    let one = bulk_new(dir, &["/lifetime", "1"]);
    assert_eq!(bulk_count(dir), 2);
    let c = jose_verify(&ts_cert(dir), "RS256", &hierarchy(dir), max["token"].as_str().unwrap());
    assert_eq!(c["exp"].as_i64().unwrap() - c["nbf"].as_i64().unwrap(), 10_080 * 60);
    assert!(one["token"].is_string());

    for bad in ["10081", "0", "-5", "99999999999"] {
        let msg = fails_with(run(&mut with_config(dir, &["bulk-token", "/new", "/lifetime", bad])), "invalid_lifetime");
        assert!(msg.contains("1 to 10080") && msg.contains("no token was created"), "{msg}");
        fails_with(run(&mut with_config(dir, &["bulk-token", "new", "--lifetime", bad])), "invalid_lifetime");
    }
    // Not a number: a usage error, no token.
    let out = run(&mut with_config(dir, &["bulk-token", "new", "--lifetime", "three-days"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("three-days"));
    assert_eq!(bulk_count(dir), 2, "no token was registered by the refused requests");

    // `/?`: the usage, as the original tool.
    let out = run(sitesign().args(["bulk-token", "/?"]));
    assert!(out.status.success());
    let usage = String::from_utf8(out.stdout).unwrap();
    assert!(usage.contains("/new") && usage.contains("/lifetime") && usage.contains("10080"), "{usage}");
}

#[test]
fn es256_token_signing_keys_issue_tokens_third_parties_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    quickstart(dir, &[]);
    let config = dir.join("sitesign.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    // Switch the configuration to ES256 and make a new hierarchy with it.
    assert!(text.contains("token_signing_algorithm = \"rsa-2048\""), "{text}");
    std::fs::write(
        &config,
        text.replace("token_signing_algorithm = \"rsa-2048\"", "token_signing_algorithm = \"ec-p256\""),
    )
    .unwrap();
    ok(run(&mut with_config(dir, &["init", "--force"])));
    let out = tmp.path().join("export");
    ok(run(&mut with_config(dir, &["cert", "export", "--out", out.to_str().unwrap()])));
    let cert = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("ts-"))
        .unwrap();
    assert!(openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-text"]).contains("prime256v1"));
    let made = bulk_new(dir, &["new"]);
    let claims = jose_verify(&cert, "ES256", &hierarchy(dir), made["token"].as_str().unwrap());
    assert_eq!(claims["UniqueId"], made["guid"]);
    assert!(cli_verify(dir, made["token"].as_str().unwrap()).0);
}

#[test]
fn bulk_tokens_from_a_tpm_verify_with_third_party_libraries() {
    let tmp = tempfile::tempdir().unwrap();
    let tpm = device_tests::swtpm::Swtpm::start(tmp.path());
    let dir = tmp.path().join("appliance");
    quickstart(&dir, &["--backend", "tpm", "--tcti", &tpm.tcti()]);
    let made = bulk_new(&dir, &["/new"]);
    let claims = jose_verify(&ts_cert(&dir), "RS256", &hierarchy(&dir), made["token"].as_str().unwrap());
    assert_eq!(claims["UniqueId"], made["guid"]);
    assert!(cli_verify(&dir, made["token"].as_str().unwrap()).0);
}
