//! `sitesign selftest` end to end: a real SoftHSM token under a temporary folder, the real binary.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn sitesign() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sitesign"));
    // The command must find its own SoftHSM configuration, whatever the caller's environment says.
    cmd.env_remove("SOFTHSM2_CONF");
    cmd
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

#[test]
fn selftest_creates_a_token_signs_and_verifies_then_reuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = sitesign().args(["selftest", "--json", "--rounds", "5", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first = json(&out);
    assert_eq!(first["result"], "pass");
    assert_eq!(first["token_created"], true);
    let keys = first["keys"].as_array().unwrap();
    let schemes: Vec<&str> = keys.iter().map(|k| k["scheme"].as_str().unwrap()).collect();
    assert_eq!(schemes, ["RS256", "ES256"]);
    for key in keys {
        assert_eq!(key["signatures"], 5);
        for check in key["protection"]["checks"].as_array().unwrap() {
            assert_eq!(check["actual"], check["expected"], "{check}");
        }
    }
    for pin in ["user.pin", "so.pin"] {
        let mode = std::fs::metadata(dir.path().join(pin)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{pin}");
    }
    let config = std::fs::read_to_string(dir.path().join("sitesign.toml")).unwrap();
    assert!(
        config.contains("pin_file") && !config.contains(&std::fs::read_to_string(dir.path().join("user.pin")).unwrap())
    );

    // A second run finds the same token and keys.
    let out = sitesign().args(["selftest", "--json", "--rounds", "2", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let second = json(&out);
    assert_eq!(second["token_created"], false);
    assert_eq!(second["keys"][0]["key"], first["keys"][0]["key"]);
}

#[test]
fn selftest_reports_a_missing_module_with_a_stable_code() {
    let dir = tempfile::tempdir().unwrap();
    let out = sitesign()
        .args(["selftest", "--json", "--module", "/nonexistent/libpkcs11.so", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = json(&out);
    assert_eq!(err["error"]["code"], "backend_module");
    assert!(err["error"]["message"].as_str().unwrap().contains("/nonexistent/libpkcs11.so"));
    // Nothing was half-made: no PIN files, no configuration.
    assert!(!dir.path().join("user.pin").exists());
    assert!(!dir.path().join("sitesign.toml").exists());
}
