//! The crypto officer's workflow end to end, with the real binary, real SoftHSM tokens and a real
//! swtpm: quickstart, init, status, keys, certificate issuance and export — every certificate
//! checked by openssl, every key by pkcs11-tool or tpm2-tools.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a panic is a failure")]
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{fails_with, json, ok, openssl, quickstart, run, sitesign, with_config};

fn text(cert: &Path) -> String {
    openssl(&["x509", "-noout", "-text", "-in", cert.to_str().unwrap()])
}

fn ts_cert(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir.join("certs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("ts-"))
        .unwrap()
}

/// The chain verifies, and each profile carries exactly the extensions SPEC §2 gives it.
fn check_certificates(dir: &Path) {
    let ca = dir.join("ca.pem");
    let ts = ts_cert(dir);
    let mp = dir.join("mp/mp.crt");
    let verified = openssl(&[
        "verify",
        "-x509_strict",
        "-CAfile",
        ca.to_str().unwrap(),
        ts.to_str().unwrap(),
        mp.to_str().unwrap(),
    ]);
    assert_eq!(verified.matches(": OK").count(), 2, "{verified}");
    // RFC 5280 as a third-party linter reads it, each certificate and its link to the issuer.
    let tls = dir.join("tls.crt");
    for cert in [&ca, &ts, &mp] {
        device_tests::pytools::lint_certificate(cert, &ca);
    }
    // pkilint's domain-name check wants a dot; the single label `localhost` is a valid RFC 1034
    // preferred-syntax name, and the quickstart certificate must carry it (`curl https://localhost`).
    device_tests::pytools::lint_certificate_except(&tls, &ca, &[r#"Invalid domain name syntax: "localhost""#]);
    let tls_text = text(&tls);
    assert!(tls_text.contains("TLS Web Server Authentication") && tls_text.contains("DNS:localhost"), "{tls_text}");
    assert!(tls_text.contains("IP Address:127.0.0.1") && tls_text.contains("prime256v1"), "{tls_text}");

    let root = text(&ca);
    assert!(root.contains("Basic Constraints: critical\n                CA:TRUE"), "{root}");
    assert!(root.contains("Key Usage: critical\n                Certificate Sign, CRL Sign"), "{root}");
    assert!(root.contains("Subject Key Identifier"), "{root}");
    assert!(root.contains("Public-Key: (3072 bit)"), "RSA-3072 by default: {root}");
    assert!(root.contains("CN = SMS Issuing") && root.contains("sha256WithRSAEncryption"), "{root}");
    let ski = root.split("Subject Key Identifier:").nth(1).unwrap().lines().nth(1).unwrap().trim().to_owned();

    let ts_text = text(&ts);
    assert!(ts_text.contains("Key Usage: critical\n                Digital Signature\n"), "{ts_text}");
    assert!(!ts_text.contains("Extended Key Usage") && !ts_text.contains("CA:TRUE"), "{ts_text}");
    assert!(ts_text.contains("CN = SMS Token Signing") && ts_text.contains("Public-Key: (2048 bit)"), "{ts_text}");
    assert!(ts_text.contains(&ski), "AKI names the root's key: {ts_text}");

    let mp_text = text(&mp);
    assert!(
        mp_text.contains("TLS Web Client Authentication") && !mp_text.contains("Server Authentication"),
        "{mp_text}"
    );
    assert!(mp_text.contains("DNS:demo-mp.sitesign.local"), "{mp_text}");
    // Serials: 16 random bytes, positive.
    for t in [&root, &ts_text, &mp_text] {
        let serial = t.split("Serial Number:").nth(1).unwrap().lines().nth(1).unwrap().trim().to_owned();
        assert_eq!(serial.split(':').count(), 16, "{serial}");
    }
}

#[test]
fn quickstart_on_softhsm_makes_a_working_verifiable_hierarchy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let made = quickstart(dir, &["--listen", "sitesign.contoso.test:8443"]);
    assert_eq!(made["backend"], "softhsm");
    check_certificates(dir);

    // Every private key in the token is sensitive, never extractable and sign-only, as
    // pkcs11-tool (OpenSC, not sitesign) reads them; it gets the PIN at its prompt, not in argv.
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("../softhsm-tests/tools/with-pin-prompt.py");
    let listed = Command::new("python3")
        .arg(helper)
        .arg(dir.join("user.pin"))
        .args(["pkcs11-tool", "--module", "/usr/lib/softhsm/libsofthsm2.so", "--token-label", "sitesign", "--login"])
        .args(["--list-objects", "--type", "privkey"])
        .env("SOFTHSM2_CONF", dir.join("softhsm/softhsm2.conf"))
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.matches("Private Key Object").count(), 3, "{listed}");
    assert_eq!(
        listed.matches("Access:     sensitive, always sensitive, never extractable, local").count(),
        3,
        "{listed}"
    );
    assert_eq!(
        listed.matches("Usage:      sign\n").count() + listed.matches("Usage:      sign\r\n").count(),
        3,
        "{listed}"
    );

    // The TLS certificate names the listen host; status is healthy; three keys are listed.
    let keys = ok(run(&mut with_config(dir, &["keys", "list"])));
    let keys = keys["keys"].as_array().unwrap();
    let roles: Vec<&str> = keys.iter().map(|k| k["role"].as_str().unwrap()).collect();
    assert_eq!(roles.len(), 3);
    for role in ["issuing", "token-signing", "tls"] {
        assert!(roles.contains(&role), "{roles:?}");
    }
    assert!(made["tls_names"].as_array().unwrap().iter().any(|n| n == "sitesign.contoso.test"));
    let status = ok(run(&mut with_config(dir, &["status"])));
    assert_eq!(status["healthy"], true, "{status}");

    // Running quickstart again reuses everything: same root.
    let root_before = std::fs::read(dir.join("ca.pem")).unwrap();
    quickstart(dir, &[]);
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), root_before);
    assert_eq!(ok(run(&mut with_config(dir, &["keys", "list"])))["keys"].as_array().unwrap().len(), 3);
}

#[test]
fn quickstart_on_swtpm_makes_a_working_verifiable_hierarchy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("appliance");
    let tpm = device_tests::swtpm::Swtpm::start(tmp.path());
    let made = quickstart(&dir, &["--backend", "tpm", "--tcti", &tpm.tcti()]);
    assert_eq!(made["backend"], "tpm");
    check_certificates(&dir);
    let status = ok(run(&mut with_config(&dir, &["status"])));
    assert_eq!(status["healthy"], true, "{status}");

    // tpm2-tools loads sitesign's token-signing key blob under the SRK and reads its attributes.
    let keys = std::fs::read_dir(dir.join("tpm-keys")).unwrap().map(|e| e.unwrap().path()).collect::<Vec<_>>();
    let ts_pub = keys.iter().find(|p| p.to_string_lossy().contains("/ts-") && p.extension().unwrap() == "pub").unwrap();
    let ts_priv = ts_pub.with_extension("priv");
    let ctx = tmp.path().join("ts.ctx");
    let tools = |args: &[&str]| {
        let out = Command::new(args[0]).args(&args[1..]).env("TPM2TOOLS_TCTI", tpm.tcti()).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    tools(&[
        "tpm2_load",
        "-C",
        "0x81000001",
        "-u",
        ts_pub.to_str().unwrap(),
        "-r",
        ts_priv.to_str().unwrap(),
        "-c",
        ctx.to_str().unwrap(),
    ]);
    let public = tools(&["tpm2_readpublic", "-c", ctx.to_str().unwrap()]);
    for attr in ["fixedtpm", "fixedparent", "sensitivedataorigin", "userwithauth", "sign"] {
        assert!(public.contains(attr), "{attr}: {public}");
    }
    assert!(!public.contains("decrypt"), "{public}");
    tools(&["tpm2_flushcontext", "-t"]);
}

#[test]
fn init_refuses_a_second_hierarchy_and_force_sets_the_old_one_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    quickstart(dir, &[]);
    let msg = fails_with(run(&mut with_config(dir, &["init"])), "already_initialised");
    assert!(msg.contains("--force"), "{msg}");
    assert_eq!(ok(run(&mut with_config(dir, &["keys", "list"])))["keys"].as_array().unwrap().len(), 3);

    let again = ok(run(&mut with_config(dir, &["init", "--force"])));
    assert_eq!(again["keys"].as_array().unwrap().len(), 3);
    let aside: Vec<_> = std::fs::read_dir(dir.join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("state.db.set-aside-"))
        .collect();
    assert!(!aside.is_empty(), "the old state was kept");
    // The new hierarchy has a different root, and its own export verifies.
    let out = tmp.path().join("export");
    ok(run(&mut with_config(dir, &["cert", "export", "--out", out.to_str().unwrap()])));
    let root = std::fs::read(out.join("sms-issuing.pem")).unwrap();
    assert_ne!(root, std::fs::read(dir.join("ca.pem")).unwrap());
}

fn make_csr(dir: &Path, name: &str, key: &str, subject: &str, san: Option<&str>) -> PathBuf {
    let csr = dir.join(format!("{name}.csr"));
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-new", "-newkey", key, "-nodes", "-keyout"])
        .arg(dir.join(format!("{name}.key")))
        .args(["-subj", subject, "-out"])
        .arg(&csr);
    if let Some(san) = san {
        cmd.args(["-addext", &format!("subjectAltName={san}")]);
    }
    assert!(cmd.output().unwrap().status.success());
    csr
}

#[test]
fn certificates_are_issued_from_verified_requests_under_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    quickstart(&dir, &[]);
    let work = tmp.path();
    let issue = |profile: &str, csr: &Path| {
        run(&mut with_config(&dir, &["cert", "issue", "--profile", profile, "--csr", csr.to_str().unwrap()]))
    };

    // role-ssl from an OpenSSL RSA request: names from the request, serverAuth, keyEncipherment.
    let csr = make_csr(work, "site", "rsa:2048", "/CN=cmg.contoso.com", Some("DNS:cmg.contoso.com,IP:10.0.0.5"));
    let issued = ok(issue("role-ssl", &csr));
    let pem = work.join("site.crt");
    std::fs::write(&pem, issued["pem"].as_str().unwrap()).unwrap();
    openssl(&["verify", "-x509_strict", "-CAfile", dir.join("ca.pem").to_str().unwrap(), pem.to_str().unwrap()]);
    device_tests::pytools::lint_certificate(&pem, &dir.join("ca.pem"));
    let t = text(&pem);
    assert!(t.contains("DNS:cmg.contoso.com, IP Address:10.0.0.5"), "{t}");
    assert!(t.contains("TLS Web Server Authentication") && t.contains("Key Encipherment"), "{t}");

    // mp-client from an EC request, written to a file.
    let params = work.join("p256.pem");
    openssl(&["ecparam", "-name", "prime256v1", "-out", params.to_str().unwrap()]);
    let csr = make_csr(work, "mp2", &format!("ec:{}", params.display()), "/CN=mp02.contoso.com", None);
    let out_file = work.join("mp2.crt");
    ok(run(&mut with_config(
        &dir,
        &[
            "cert",
            "issue",
            "--profile",
            "mp-client",
            "--csr",
            csr.to_str().unwrap(),
            "--out",
            out_file.to_str().unwrap(),
        ],
    )));
    assert!(text(&out_file).contains("TLS Web Client Authentication"));
    device_tests::pytools::lint_certificate(&out_file, &dir.join("ca.pem"));

    // Refused requests: each with its stable code, and nothing issued.
    std::fs::write(work.join("garbage.csr"), b"not a request").unwrap();
    fails_with(issue("mp-client", &work.join("garbage.csr")), "csr_malformed");
    let good = std::fs::read(make_csr(work, "t", "rsa:2048", "/CN=tamper.contoso.com", None)).unwrap();
    let der = openssl_der(&good, work);
    let at = der.windows(6).position(|w| w == b"tamper").unwrap();
    let mut bad = der.clone();
    bad[at] = b'd';
    std::fs::write(work.join("tampered.der"), &bad).unwrap();
    fails_with(issue("mp-client", &work.join("tampered.der")), "csr_signature");
    let no_san = make_csr(work, "nosan", "rsa:2048", "/CN=web.contoso.com", None);
    assert!(fails_with(issue("role-ssl", &no_san), "csr_policy").contains("alternative names"));
    let wild = make_csr(work, "wild", "rsa:2048", "/CN=w.contoso.com", Some("DNS:*.contoso.com"));
    assert!(fails_with(issue("role-ssl", &wild), "csr_policy").contains("wildcard"));
    let no_cn = make_csr(work, "nocn", "rsa:2048", "/O=Contoso", Some("DNS:x.contoso.com"));
    assert!(fails_with(issue("mp-client", &no_cn), "csr_policy").contains("common name"));
    let small = make_csr(work, "small", "rsa:1024", "/CN=old.contoso.com", None);
    fails_with(issue("mp-client", &small), "csr_policy");
    let missing =
        run(&mut with_config(&dir, &["cert", "issue", "--profile", "mp-client", "--csr", "/nonexistent.csr"]));
    assert!(fails_with(missing, "io").contains("/nonexistent.csr"));
}

fn openssl_der(pem: &[u8], work: &Path) -> Vec<u8> {
    let (i, o) = (work.join("in.pem"), work.join("out.der"));
    std::fs::write(&i, pem).unwrap();
    openssl(&["req", "-in", i.to_str().unwrap(), "-outform", "DER", "-out", o.to_str().unwrap()]);
    std::fs::read(o).unwrap()
}

#[test]
fn bad_configuration_and_secrets_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    quickstart(dir, &[]);
    let config = dir.join("sitesign.toml");
    let original = std::fs::read_to_string(&config).unwrap();

    // Missing PIN file.
    std::fs::rename(dir.join("user.pin"), dir.join("user.pin.away")).unwrap();
    let out = run(&mut with_config(dir, &["status"]));
    assert!(!out.status.success());
    let status = json(&out);
    assert_eq!(status["backends"][0]["error"]["code"], "pin_file", "{status}");
    std::fs::rename(dir.join("user.pin.away"), dir.join("user.pin")).unwrap();

    // Wrong PIN: one failure, never retried; the message does not echo it.
    let wrong = dir.join("wrong.pin");
    std::fs::write(&wrong, "0000000000").unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let pin_path = dir.join("user.pin").display().to_string();
    std::fs::write(&config, original.replace(&pin_path, &wrong.display().to_string())).unwrap();
    let status = json(&run(&mut with_config(dir, &["status"])));
    assert_eq!(status["healthy"], false);
    assert_eq!(status["backends"][0]["error"]["code"], "pin_incorrect", "{status}");
    assert!(!status.to_string().contains("0000000000"), "PIN echoed: {status}");

    // Token not found: the error lists the tokens that are there.
    std::fs::write(&config, original.replace("token_label = \"sitesign\"", "token_label = \"elsewhere\"")).unwrap();
    let status = json(&run(&mut with_config(dir, &["status"])));
    assert_eq!(status["backends"][0]["error"]["code"], "token_not_found", "{status}");
    assert!(status["backends"][0]["error"]["message"].as_str().unwrap().contains("\"sitesign\""), "{status}");

    // Unknown keys and bad values are reported with their place.
    std::fs::write(&config, format!("{original}\nlisten_adress = \"0.0.0.0:443\"\n")).unwrap();
    let msg = fails_with(run(&mut with_config(dir, &["keys", "list"])), "config");
    assert!(msg.contains("unknown field `listen_adress`") && msg.contains("line"), "{msg}");
    std::fs::write(&config, original.replace("sessions = 2", "sessions = 0")).unwrap();
    let msg = fails_with(run(&mut with_config(dir, &["keys", "list"])), "config");
    assert!(msg.contains("backends.softhsm.sessions"), "{msg}");
    let missing = run(sitesign().args(["--json", "--config", "/nonexistent/sitesign.toml", "status"]));
    assert!(fails_with(missing, "config").contains("/nonexistent/sitesign.toml"));

    // Restored, everything is healthy again: nothing was damaged by the failures.
    std::fs::write(&config, &original).unwrap();
    assert_eq!(ok(run(&mut with_config(dir, &["status"])))["healthy"], true);
}
