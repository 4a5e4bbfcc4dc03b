//! `sitesign setup` (issue 17): a production appliance on an existing token, its PIN as a systemd
//! credential, started as systemd would start it (`CREDENTIALS_DIRECTORY`), serving a management
//! point over mTLS; and the refusals, each leaving nothing behind. (The package installed into a
//! clean Debian tree and started as the `sitesign` user: `tests/install.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a panic is a failure")]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

mod common;
use common::appliance::{JwksChecker, client_request};

const PIN: &str = "prod-pin-8c1f2e";

/// A SoftHSM token labelled `prod` in `dir/softhsm`, made as an HSM's security officer would
/// (softhsm2-util, outside sitesign); returns its `softhsm2.conf`.
fn existing_token(dir: &Path) -> PathBuf {
    let softhsm = hsm_adapters::pkcs11::softhsm::SoftHsmDir::create(&dir.join("softhsm")).unwrap();
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", softhsm.conf_path())
        .args(["--init-token", "--free", "--label", "prod", "--so-pin", "so-pin-3e9a", "--pin", PIN])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    softhsm.conf_path()
}

/// `sitesign setup` for appliance folder `dir` (configuration `dir/sitesign.toml`) with `extra`
/// (and the service user root, unless `extra` names one).
fn setup(dir: &Path, conf: &Path, pin_file: &Path, extra: &[&str]) -> std::process::Output {
    let mut cmd = setup_command(dir, conf, extra);
    common::run(cmd.arg("--pin-file").arg(pin_file))
}

/// [`setup`] without the PIN.
fn setup_command(dir: &Path, conf: &Path, extra: &[&str]) -> Command {
    let mut cmd = common::sitesign();
    cmd.arg("--config").arg(dir.join("sitesign.toml")).args(["--json", "setup", "--yes", "--backend", "pkcs11"]);
    if !extra.contains(&"--service-user") {
        cmd.args(["--service-user", "root"]);
    }
    cmd.args(["--token-label", "prod", "--site-name", "Contoso CM01"]);
    cmd.args(["--name", "localhost", "--name", "127.0.0.1", "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"]);
    cmd.arg("--module-env").arg(format!("SOFTHSM2_CONF={}", conf.display()));
    cmd.arg("--state-dir").arg(dir.join("state")).arg("--runtime-dir").arg(dir.join("run"));
    cmd.args(extra);
    cmd
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn setup_makes_an_appliance_that_serves_with_its_pin_as_a_systemd_credential() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = existing_token(tmp.path());
    let pin_file = tmp.path().join("pin");
    std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
    let dir = tmp.path().join("appliance");
    let made = common::ok(setup(&dir, &conf, &pin_file, &[]));
    assert_eq!(made["init"]["initialised"], true, "{made}");
    assert_eq!(made["next"].as_array().unwrap().len(), 5, "{made}");

    // What was written, with owners' modes as the unit expects them; no PIN in the configuration.
    let config = dir.join("sitesign.toml");
    let credential = dir.join("credentials/hsm-pin");
    assert_eq!(mode(&config), 0o640);
    assert_eq!(mode(&dir.join("credentials")), 0o700);
    assert_eq!(mode(&credential), 0o600);
    assert_eq!(mode(&dir.join("state")), 0o700);
    assert_eq!(std::fs::read_to_string(&credential).unwrap(), PIN, "the PIN, without the file's newline");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(!text.contains(PIN));
    assert!(text.contains("pin_credential = \"hsm-pin\""), "{text}");
    assert!(dir.join("trust/trust-bundle.pem").is_file());

    // A second setup changes nothing.
    let before = std::fs::read(&config).unwrap();
    let again = setup(&dir, &conf, &pin_file, &[]);
    common::fails_with(again, "already_configured");
    assert_eq!(std::fs::read(&config).unwrap(), before);

    // An administrator's command that needs the device finds the PIN where the unit loads it
    // from (the credentials folder beside the configuration), as the service would.
    let mut status = common::sitesign();
    let status = common::ok(common::run(status.arg("--config").arg(&config).args(["--json", "status"])));
    assert_eq!(status["healthy"], true, "{status}");

    // Started as systemd starts it: the credential copied to a folder of its own, named by
    // CREDENTIALS_DIRECTORY; no PIN file in the configuration.
    let creds = tmp.path().join("credentials-dir");
    std::fs::create_dir(&creds).unwrap();
    std::fs::copy(&credential, creds.join("hsm-pin")).unwrap();
    std::fs::set_permissions(creds.join("hsm-pin"), std::fs::Permissions::from_mode(0o400)).unwrap();
    // The runtime folder (the unit's RuntimeDirectory=) holds the admin socket.
    std::fs::create_dir_all(dir.join("run")).unwrap();
    let appliance = common::appliance::Appliance::at(dir.clone());
    let s = appliance.start_with(&[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())]);
    // Enrol a management point from its own CSR (openssl, as on the MP), through the running
    // service's admin socket, as root.
    let mp = dir.join("mp");
    std::fs::create_dir_all(&mp).unwrap();
    let (_, csr) = common::key_and_csr(&mp, "mp", "mp1.contoso.com", Some("DNS:mp1.contoso.com"));
    let mut issue = common::sitesign();
    issue.arg("--config").arg(&config).args(["--json", "cert", "issue", "--profile", "mp-client", "--csr"]);
    common::ok(common::run(issue.arg(&csr).arg("--out").arg(mp.join("mp.crt"))));
    let issuing = std::fs::read_dir(dir.join("trust"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("sms-issuing"))
        .expect("the SMS Issuing certificate in trust/");
    std::fs::copy(issuing, dir.join("ca.pem")).unwrap();

    let (status, answer) =
        s.call("/v1/client-tokens", Some(&client_request(1, json!({"kind": "internal"})).to_string()));
    assert_eq!(status, 200, "{answer}");
    assert!(JwksChecker::fetch(&s).verifies(answer["token"].as_str().unwrap()));
}

#[test]
fn setup_with_a_wrong_pin_keeps_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = existing_token(tmp.path());
    let pin_file = tmp.path().join("pin");
    std::fs::write(&pin_file, "not-the-pin").unwrap();
    let dir = tmp.path().join("appliance");
    let message = common::fails_with(setup(&dir, &conf, &pin_file, &[]), "pin_incorrect");
    assert!(message.contains("nothing kept"), "{message}");
    assert!(!message.contains("not-the-pin"), "the PIN echoed: {message}");
    assert!(!dir.join("sitesign.toml").exists());
    assert!(!dir.join("credentials/hsm-pin").exists());
    // Corrected, it completes.
    std::fs::write(&pin_file, PIN).unwrap();
    common::ok(setup(&dir, &conf, &pin_file, &[]));
}

#[test]
fn setup_refuses_a_missing_service_user_and_an_empty_pin_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = existing_token(tmp.path());
    let pin_file = tmp.path().join("pin");
    std::fs::write(&pin_file, "\n").unwrap();
    let dir = tmp.path().join("appliance");
    common::fails_with(setup(&dir, &conf, &pin_file, &["--service-user", "no-such-user-xyz"]), "no_service_user");
    common::fails_with(setup(&dir, &conf, &pin_file, &[]), "pin_missing");
    assert!(!dir.join("sitesign.toml").exists());
    // A PIN on standard input (no --pin-file) works for scripts.
    let out = common::run_with_input(&mut setup_command(&dir, &conf, &[]), format!("{PIN}\n").as_bytes());
    common::ok(out);
}
