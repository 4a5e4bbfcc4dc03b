//! The signing API over real sockets: every endpoint with the demo MP's certificate, tokens
//! checked by third-party JOSE libraries (PyJWT, its JWKS client, jwcrypto), `/metrics` by
//! Prometheus' own parser, and every refusal with its stable code and nothing signed.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a panic is a failure")]

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

mod common;
use common::appliance::{
    Appliance, Service, claims_of, client_request, device, python_tool, python_tool_with_input, register, thumbprint,
};

/// The token-signing certificate as `/v1/certificates` publishes it, written to a file.
fn ts_certificate(s: &Service) -> std::path::PathBuf {
    let (status, certs) = s.call("/v1/certificates", None);
    assert_eq!(status, 200);
    let ts = certs["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["role"] == "token-signing" && c["status"] == "active")
        .unwrap()
        .clone();
    let path = s.dir.join(format!("ts-{}.pem", ts["key_id"].as_str().unwrap()));
    std::fs::write(&path, ts["pem"].as_str().unwrap()).unwrap();
    path
}

/// Verifies `token` with PyJWT (key from `/v1/certificates`), PyJWT's JWKS client (over mTLS)
/// and jwcrypto; returns the claims they agree on.
fn verify_independently(s: &Service, token: &str) -> Value {
    let cert = ts_certificate(s);
    let d = |p: &str| s.dir.join(p).to_str().unwrap().to_owned();
    let out = python_tool(
        "verify_jwt.py",
        &[
            token,
            cert.to_str().unwrap(),
            &s.url("/.well-known/jwks.json"),
            &d("ca.pem"),
            &d("mp/mp.crt"),
            &d("mp/mp.key"),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_endpoint_works_over_mtls_and_tokens_verify_independently() {
    let a = Appliance::new();
    // Renewal at any age, for this test (the renewal floor has its own test).
    a.edit_tokens(|t| t.renew_after_days = Some(0));
    let s = a.start();
    // Register on the internal network, get an access token, verify both.
    let (status, client) = register(&s, 1, json!({"kind": "internal"}));
    assert_eq!(status, 200, "{client}");
    let token = client["token"].as_str().unwrap();
    assert!(client["expires"].as_i64().unwrap() > 0);
    let (status, access) = s
        .call("/v1/access-tokens", Some(&json!({"token": token, "client_cert_thumbprint": thumbprint(1)}).to_string()));
    assert_eq!(status, 200, "{access}");
    let (_, v) = s.call(
        "/v1/tokens:verify",
        Some(&json!({"token": access["token"], "client_cert_thumbprint": thumbprint(1)}).to_string()),
    );
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["kind"], "access");
    assert_eq!(v["claims"]["DeviceId"], device(1));

    // A bulk token made by the CLI through the admin socket registers a device.
    let made = a.ok(&["bulk-token", "new", "--lifetime", "30"]);
    let (status, by_bulk) = register(&s, 2, json!({"kind": "bulk", "token": made["token"]}));
    assert_eq!(status, 200, "{by_bulk}");
    // Renewal with the current token.
    let (status, renewed) = register(&s, 1, json!({"kind": "renew", "token": token}));
    assert_eq!(status, 200, "{renewed}");
    assert_ne!(renewed["token"], client["token"]);
    // Renewal with another device's token — presented with that device's own certificate, so
    // that only the device id differs — is refused.
    let other = json!({"device_id": device(2), "client_cert_thumbprint": thumbprint(1), "proof": {"kind": "renew", "token": token}});
    let (status, e) = s.call("/v1/client-tokens", Some(&other.to_string()));
    assert_eq!((status, e["error"]["code"].as_str()), (403, Some("proof_rejected")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("another device"), "{e}");

    // /v1/certificates: SMS Issuing and the token-signing certificate, PEM.
    let (status, certs) = s.call("/v1/certificates", None);
    assert_eq!(status, 200);
    let certs = certs["certificates"].as_array().unwrap();
    let root = certs.iter().find(|c| c["role"] == "sms-issuing").unwrap();
    assert_eq!(root["pem"].as_str().unwrap(), std::fs::read_to_string(s.dir.join("ca.pem")).unwrap());

    // An API token verified by three independent JOSE implementations.
    let claims = verify_independently(&s, token);
    assert_eq!(claims["cnf"]["x5t#S256"], thumbprint(1));

    // The batch endpoint: NDJSON in and out, in order, per-item errors.
    let lines = [
        client_request(10, json!({"kind": "internal"})).to_string(),
        "not json".to_owned(),
        json!({"device_id": "nonsense", "client_cert_thumbprint": thumbprint(11), "proof": {"kind": "internal"}})
            .to_string(),
        client_request(12, json!({"kind": "internal"})).to_string(),
    ];
    let results = s.batch("four", &lines);
    assert_eq!(results.len(), 4, "{results:?}");
    assert!(results[0]["token"].is_string() && results[3]["token"].is_string());
    assert_eq!(results[1]["error"]["code"], "bad_request");
    assert_eq!(results[2]["error"]["code"], "invalid_device_id");

    // Ops endpoints on the plain-HTTP listener, and /metrics through Prometheus' own parser.
    assert_eq!(s.ops("/healthz").0, 200);
    let (status, metrics) = s.ops("/metrics");
    assert_eq!(status, 200);
    let parsed = python_tool_with_input("parse_metrics.py", &[], metrics.as_bytes());
    assert!(parsed.status.success(), "{}", String::from_utf8_lossy(&parsed.stderr));
    let families: Value = serde_json::from_slice(&parsed.stdout).unwrap();
    let issued = |kind: &str| {
        families["sitesign_tokens_issued"]["samples"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s[0] == "sitesign_tokens_issued_total" && s[1]["kind"] == kind)
            .map(|s| s[2].as_f64().unwrap())
    };
    assert_eq!((issued("client"), issued("access"), issued("bulk")), (Some(5.0), Some(1.0), Some(1.0)), "{families}");
    assert_eq!(families["sitesign_audit_fsync_seconds"]["type"], "histogram");
    assert_eq!(families["sitesign_sign_seconds"]["type"], "histogram");
    assert_eq!(families["sitesign_ready"]["samples"][0][2], 1.0);
    // The ops listener carries nothing else.
    assert_eq!(s.ops("/v1/certificates").0, 404);

    // Every token released has its audit record, and the chain is intact.
    assert!(a.audit_intact());
    let records = a.audit_records();
    assert_eq!(records.iter().filter(|r| r["kind"] == "client-token").count(), 5);
    let mp = records.iter().find(|r| r["kind"] == "access-token").unwrap();
    let caller = mp["caller"].as_str().unwrap();
    assert!(caller.starts_with("CN=demo-mp.sitesign.local,O=sitesign quickstart (serial "), "{caller}");
    let by_renewal = records.iter().filter(|r| r["detail"].as_str().is_some_and(|d| d.starts_with("renew:"))).count();
    assert_eq!(by_renewal, 1, "the renewal's record says which token it renewed");
    assert!(
        records.iter().any(|r| r["kind"] == "bulk-token" && r["caller"].as_str().unwrap().starts_with("admin:uid="))
    );
}

#[test]
fn tokens_are_never_stored_anywhere_on_disk() {
    let a = Appliance::new();
    let s = a.start();
    let (status, client) = register(&s, 1, json!({"kind": "internal"}));
    assert_eq!(status, 200);
    let token = client["token"].as_str().unwrap();
    let made = a.ok(&["bulk-token", "new"]);
    let bulk = made["token"].as_str().unwrap();
    // Look in every file of the state folder while the service runs — the databases, their
    // write-ahead logs (where fresh records sit) and anything else.
    let mut looked = 0;
    for entry in std::fs::read_dir(a.dir.join("state")).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        looked += 1;
        for (what, t) in [("client token", token), ("bulk token", bulk)] {
            let signature = t.rsplit('.').next().unwrap();
            let found = bytes.windows(signature.len()).any(|w| w == signature.as_bytes());
            assert!(!found, "the {what}'s signature is in {}", path.display());
        }
    }
    assert!(looked >= 4, "state.db, audit.db and their -wal files at least");
}

#[test]
fn bad_requests_get_stable_errors_and_nothing_is_signed() {
    let a = Appliance::new();
    // An expired token and a fresh one with the same claims, validly signed by the token-signing
    // key — by pkcs11-tool, outside sitesign.
    let expired = client_token_signed_outside(&a, -90 * 86_400, -3600);
    let fresh = client_token_signed_outside(&a, -60, 3600);
    let s = a.start();
    // Signatures recorded (transitions, such as a block, sign nothing).
    let signatures = || a.audit_records().iter().filter(|r| r["sha256"] != "").count();
    let before = signatures();
    // Oversized body.
    let big = format!("{{\"device_id\":\"{}\",\"pad\":\"{}\"}}", device(1), "x".repeat(17 * 1024));
    assert_eq!(s.call("/v1/client-tokens", Some(&big)).0, 413);
    // Malformed JSON, unknown fields, unknown proof kind.
    let (status, e) = s.call("/v1/client-tokens", Some("{\"device_id\":"));
    assert_eq!((status, e["error"]["code"].as_str()), (400, Some("bad_request")), "{e}");
    let (status, e) = register(&s, 1, json!({"kind": "telepathy"}));
    assert_eq!((status, e["error"]["code"].as_str()), (400, Some("bad_request")), "{e}");
    let mut extra = client_request(1, json!({"kind": "internal"}));
    extra["exp"] = json!(1);
    let (status, e) = s.call("/v1/client-tokens", Some(&extra.to_string()));
    assert_eq!((status, e["error"]["code"].as_str()), (400, Some("bad_request")), "{e}");
    // Bad values.
    let (status, e) = s.call(
        "/v1/client-tokens",
        Some(
            &json!({"device_id": "GUID:nope", "client_cert_thumbprint": thumbprint(1), "proof": {"kind": "internal"}})
                .to_string(),
        ),
    );
    assert_eq!((status, e["error"]["code"].as_str()), (400, Some("invalid_device_id")), "{e}");
    let (status, e) = s.call(
        "/v1/client-tokens",
        Some(
            &json!({"device_id": device(1), "client_cert_thumbprint": "short", "proof": {"kind": "internal"}})
                .to_string(),
        ),
    );
    assert_eq!((status, e["error"]["code"].as_str()), (400, Some("invalid_thumbprint")), "{e}");
    // A forged bulk token, a blocked one.
    let (status, e) = register(&s, 1, json!({"kind": "bulk", "token": "eyJ0eXAiOiJKV1QifQ.e30.AAAA"}));
    assert_eq!((status, e["error"]["code"].as_str()), (403, Some("proof_rejected")), "{e}");
    let made = a.ok(&["bulk-token", "new"]);
    a.ok(&["bulk-token", "block", made["guid"].as_str().unwrap()]);
    let (status, e) = register(&s, 1, json!({"kind": "bulk", "token": made["token"]}));
    assert_eq!((status, e["error"]["code"].as_str()), (403, Some("proof_rejected")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().starts_with("blocked"), "{e}");
    let (_, v) = s.call("/v1/tokens:verify", Some(&json!({"token": made["token"]}).to_string()));
    assert_eq!(v, json!({"valid": false, "reason": "blocked"}));
    // The expired token is refused as expired.
    let (_, v) = s.call(
        "/v1/tokens:verify",
        Some(&json!({"token": expired, "client_cert_thumbprint": thumbprint(1)}).to_string()),
    );
    assert_eq!(v, json!({"valid": false, "reason": "expired"}));
    let (status, e) = s.call(
        "/v1/access-tokens",
        Some(&json!({"token": expired, "client_cert_thumbprint": thumbprint(1)}).to_string()),
    );
    assert_eq!((status, e["error"]["code"].as_str()), (403, Some("proof_rejected")), "{e}");
    // The same claims not yet expired, signed the same way, verify: what was refused above was
    // the expiry, not the signature.
    let (_, v) = s
        .call("/v1/tokens:verify", Some(&json!({"token": fresh, "client_cert_thumbprint": thumbprint(1)}).to_string()));
    assert_eq!(v["valid"], true, "{v}");
    // An unknown endpoint.
    assert_eq!(s.call("/v1/sign-anything", Some("{}")).0, 404);
    // Only the bulk token made above was signed.
    assert_eq!(signatures(), before + 1);
}

/// A client token for device 1 with `iat = nbf = now + from` and `exp = now + until`, signed by
/// the active token-signing key in the SoftHSM token with pkcs11-tool (OpenSC, not sitesign), its
/// PIN answered at the prompt. Made while the service is stopped: SoftHSM's file store is not
/// meant to be shared by two processes signing at once.
fn client_token_signed_outside(a: &Appliance, from: i64, until: i64) -> String {
    let keys = a.ok(&["keys", "list"]);
    let ts = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "token-signing" && k["status"] == "active")
        .unwrap()
        .clone();
    let h = a.ok(&["status"])["hierarchy_id"].as_str().unwrap().to_owned();
    let now = sitesign::time::now_unix();
    let header = json!({"typ": "JWT", "alg": "RS256", "x5t": ts["x5t"]}).to_string();
    let claims = format!(
        r#"{{"SCCMTokenCategory":"SCCMClientToken","Authority":"SCCM","License":"SCCM","Type":"Device","TenantId":"{}","UniqueId":"0d2b7c6e-1f3a-4b5c-9d8e-7f6a5b4c3d2e","DeviceId":"{}","cnf":{{"x5t#S256":"{}"}},"iss":"urn:sccm:oauth2:{}","aud":"urn:sccm:service","iat":{},"nbf":{},"exp":{}}}"#,
        h.to_uppercase(),
        device(1),
        thumbprint(1),
        h.to_lowercase(),
        now + from,
        now + from,
        now + until
    );
    let b64 = sitesign::token::b64::encode;
    let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let work = a.dir.join(format!("forge-{}", now + from));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("input"), &input).unwrap();
    let label = ts["id"].as_str().unwrap();
    // pkcs11-tool chooses the signing key by CKA_ID (its --label does not select keys): find the
    // id of the object with this label among the token's public objects.
    let softhsm_conf = a.dir.join("softhsm/softhsm2.conf");
    let listed = Command::new("pkcs11-tool")
        .args(["--module", hsm_adapters::config::DEFAULT_PKCS11_MODULE, "--token-label", "sitesign", "--list-objects"])
        .env("SOFTHSM2_CONF", &softhsm_conf)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let lines: Vec<&str> = listed.lines().map(str::trim).collect();
    let at = lines.iter().position(|l| *l == format!("label:      {label}")).unwrap_or_else(|| panic!("{listed}"));
    let id = lines[at + 1].strip_prefix("ID:").unwrap_or_else(|| panic!("{listed}")).trim().to_owned();
    let prompt = Path::new(env!("CARGO_MANIFEST_DIR")).join("../softhsm-tests/tools/with-pin-prompt.py");
    let out = Command::new("python3")
        .arg(prompt)
        .arg(a.dir.join("user.pin"))
        .args(["pkcs11-tool", "--module", hsm_adapters::config::DEFAULT_PKCS11_MODULE, "--token-label", "sitesign"])
        .args(["--login", "--sign", "--mechanism", "SHA256-RSA-PKCS", "--id", &id, "--input-file"])
        .arg(work.join("input"))
        .arg("--output-file")
        .arg(work.join("sig"))
        .env("SOFTHSM2_CONF", &softhsm_conf)
        .output()
        .unwrap();
    let sig = std::fs::read(work.join("sig"))
        .unwrap_or_else(|_| panic!("pkcs11-tool did not sign: {}", String::from_utf8_lossy(&out.stdout)));
    // openssl agrees the signature is the key's (so whatever sitesign then refuses, it refuses
    // for another reason).
    let cert = a.dir.join(format!("certs/{label}.pem"));
    let pubkey = work.join("pub.pem");
    common::openssl(&["x509", "-in", cert.to_str().unwrap(), "-pubkey", "-noout", "-out", pubkey.to_str().unwrap()]);
    common::openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        pubkey.to_str().unwrap(),
        "-signature",
        work.join("sig").to_str().unwrap(),
        work.join("input").to_str().unwrap(),
    ]);
    format!("{input}.{}", b64(&sig))
}

#[test]
fn a_renewal_before_renew_after_days_is_refused_and_the_token_stays_valid() {
    let a = Appliance::new();
    // A token issued 31 days ago (signed outside sitesign, as the client would hold it).
    let old = client_token_signed_outside(&a, -31 * 86_400, 59 * 86_400);
    let s = a.start();
    let (_, client) = register(&s, 3, json!({"kind": "internal"}));
    let token = client["token"].as_str().unwrap();
    // Renewed the second it was issued: refused, three times, and nothing signed.
    for _ in 0..3 {
        let (status, e) = register(&s, 3, json!({"kind": "renew", "token": token}));
        assert_eq!((status, e["error"]["code"].as_str()), (409, Some("renewal_too_early")), "{e}");
    }
    let (_, v) = s
        .call("/v1/tokens:verify", Some(&json!({"token": token, "client_cert_thumbprint": thumbprint(3)}).to_string()));
    assert_eq!(v["valid"], true, "the token stays valid: {v}");
    let renewals =
        a.audit_records().iter().filter(|r| r["detail"].as_str().is_some_and(|d| d.starts_with("renew:"))).count();
    assert_eq!(renewals, 0);
    // A token old enough renews.
    let (status, renewed) = register(&s, 1, json!({"kind": "renew", "token": old}));
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(claims_of(renewed["token"].as_str().unwrap())["DeviceId"], device(1));
}

#[test]
fn es256_tokens_verify_independently() {
    let a = Appliance::with(&["--token-algorithm", "ec-p256"]);
    let s = a.start();
    let (status, client) = register(&s, 7, json!({"kind": "internal"}));
    assert_eq!(status, 200, "{client}");
    let token = client["token"].as_str().unwrap();
    assert_eq!(common::appliance::header_of(token)["alg"], "ES256");
    let claims = verify_independently(&s, token);
    assert_eq!(claims["DeviceId"], device(7));
}

/// The other valid ES256 signature of the same token: `s` replaced by `n − s`.
fn malleate(token: &str) -> String {
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut sig = sitesign::token::b64::decode(sig).unwrap();
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6,
        0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
    ];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(N[i]) - i16::from(sig[32 + i]) - borrow;
        borrow = i16::from(d < 0);
        sig[32 + i] = d.rem_euclid(256) as u8;
    }
    format!("{input}.{}", sitesign::token::b64::encode(&sig))
}

#[test]
fn es256_signatures_are_low_s_and_their_high_s_twins_are_refused() {
    let a = Appliance::with(&["--token-algorithm", "ec-p256"]);
    let s = a.start();
    let tp = common::appliance::thumbprint(8);
    for n in 0..12 {
        let (status, client) = register(&s, 8, json!({"kind": "internal"}));
        assert_eq!(status, 200, "{client}");
        let token = client["token"].as_str().unwrap();
        let twin = malleate(token);
        if n == 0 {
            // The twin is a valid ECDSA signature — PyJWT and jwcrypto accept it (ECDSA itself is
            // malleable) — so what refuses it below is sitesign's low-S rule, nothing else.
            assert_eq!(verify_independently(&s, &twin)["DeviceId"], device(8));
        }
        let (_, verdict) =
            s.call("/v1/tokens:verify", Some(&json!({"token": twin, "client_cert_thumbprint": tp}).to_string()));
        assert_eq!(
            (verdict["valid"].clone(), verdict["reason"].clone()),
            (json!(false), json!("non_canonical_signature")),
            "token {n}: {verdict}"
        );
        let (status, e) = register(&s, 8, json!({"kind": "renew", "token": twin}));
        assert_eq!(status, 403, "{e}");
        assert_eq!(e["error"]["reason"], "non_canonical_signature", "{e}");
        let (_, verdict) =
            s.call("/v1/tokens:verify", Some(&json!({"token": token, "client_cert_thumbprint": tp}).to_string()));
        assert_eq!(verdict["valid"], true, "the low-S original is valid: {verdict}");
    }
}
