//! Running the service as an operator does: systemd notification, the per-MP rate limit, the
//! refusal to run as root, the admin socket's mode, group and peer check, readiness that follows
//! the device (lost and back, without a restart), the PIN as a systemd credential, and the
//! hardened unit.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a panic is a failure")]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

mod common;
use common::appliance::{Appliance, python_tool, register};

#[test]
fn rate_limits_and_systemd_notification() {
    let a = Appliance::new();
    a.edit_service(|svc| {
        svc.rate_limit_per_second = Some(1);
        svc.rate_limit_burst = Some(3);
    });
    // READY=1 (with the addresses) arrived over NOTIFY_SOCKET, or start() would have failed.
    let mut s = a.start();
    // Six requests on one connection, back to back: the burst of 3 passes, then (one token a
    // second coming back) the rest are told when to come back. Readiness polling used none of
    // the MP's budget (it is on the ops listener).
    let url = s.url("/v1/certificates");
    let mut curl = s.mtls();
    curl.args(["-w", "%{http_code} retry-after=%header{retry-after}\n"]);
    for _ in 0..6 {
        curl.args(["-o", "/dev/null", &url]);
    }
    let text = String::from_utf8_lossy(&curl.output().unwrap().stdout).into_owned();
    let answers: Vec<&str> = text.lines().collect();
    assert_eq!(answers.len(), 6, "{text}");
    assert_eq!(answers[..3], ["200 retry-after=", "200 retry-after=", "200 retry-after="], "{text}");
    assert!(answers[3..].contains(&"429 retry-after=1"), "a refused request says when to come back: {text}");
    s.stop();
    let stopping = s.notification(Duration::from_secs(5)).unwrap_or_default();
    assert_eq!(stopping, "STOPPING=1");
}

#[test]
fn sitesignd_refuses_to_run_as_root() {
    if !rustix::process::geteuid().is_root() {
        return; // Only root can be refused for being root; CI runs as root.
    }
    let a = Appliance::new();
    let (mut s, ready) = a.spawn(&[], false);
    assert!(ready.is_err(), "it became ready as root");
    let status = s.wait_exit(Duration::from_secs(30)).expect("it exits");
    assert_eq!(status.code(), Some(1));
    assert!(s.log_text().contains("refusing to run as root"), "{}", s.log_text());
}

/// Lets an unprivileged user reach the appliance folder and its socket, so that SO_PEERCRED is
/// what decides.
fn open_up(dir: &Path, socket: &Path) {
    let mut p = dir.to_path_buf();
    loop {
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755));
        if p == Path::new("/tmp") || !p.pop() {
            break;
        }
    }
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).unwrap();
}

/// The answer to `request` on `socket` from uid 65534 with gid `gid`.
fn ask_as_nobody(socket: &Path, gid: u32, request: &str) -> Value {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", &format!("--regid={gid}"), "--clear-groups", "/usr/bin/python3"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/admin_request.py"))
        .arg(socket)
        .arg(request)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_admin_socket_is_0660_group_admin_and_refuses_other_peers() {
    const ADMIN_GID: u32 = 4242;
    let a = Appliance::new();
    a.edit_service(|svc| svc.admin_gid = Some(ADMIN_GID));
    let s = a.start();
    let socket = a.dir.join("admin.sock");
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "the socket's mode");
    assert_eq!(meta.gid(), ADMIN_GID, "the socket's group is the admin group");
    open_up(&a.dir, &socket);
    // Another user outside the admin group: refused by SO_PEERCRED, nothing done.
    let refused = ask_as_nobody(&socket, 65534, r#"{"op":"bulk-new","lifetime_minutes":60}"#);
    assert_eq!(refused["error"]["code"], "admin_forbidden", "{refused}");
    assert!(refused.get("ok").is_none());
    // The same user in the admin group: served.
    let served = ask_as_nobody(&socket, ADMIN_GID, r#"{"op":"bulk-list"}"#);
    assert_eq!(served["ok"]["result"], "bulk-tokens", "{served}");
    assert_eq!(served["ok"]["bulk_tokens"], json!([]), "the refused request registered nothing");
    // The service's own uid (root here): served.
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream.write_all(b"{\"op\":\"bulk-list\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    let answer: Value = serde_json::from_str(&line).unwrap();
    assert!(answer["ok"]["bulk_tokens"].is_array(), "{answer}");
    // It is a Unix socket only: the TCP listeners do not speak the admin protocol.
    assert_eq!(s.call("/admin", Some("{\"op\":\"bulk-list\"}")).0, 404);
}

#[test]
fn readiness_follows_the_device_and_comes_back_without_a_restart() {
    let a = Appliance::new();
    let s = a.start();
    let pid = s.pid();
    assert_eq!(register(&s, 1, json!({"kind": "internal"})).0, 200);
    // The token's files disappear (an HSM unplugged, a network HSM unreachable).
    let tokens = a.dir.join("softhsm/tokens");
    let away = a.dir.join("softhsm/tokens-away");
    std::fs::rename(&tokens, &away).unwrap();
    std::fs::create_dir(&tokens).unwrap();
    // The TLS key is in the same device: either the handshake fails (no HTTP answer at all) or
    // the request is refused; no token either way.
    let (status, e) = register(&s, 2, json!({"kind": "internal"}));
    assert!(matches!(status, 0 | 500 | 503), "signed without its device: {status} {e}\n{}", s.log_text());
    assert!(e.get("token").is_none());
    assert!(s.eventually(Duration::from_secs(30), || s.ops("/readyz").0 == 503), "still ready without its device");
    let errors = s.metric("sitesign_backend_errors_total", "").unwrap();
    assert!(errors > 0.0, "the failure is counted: {}", s.ops("/metrics").1);
    // The device comes back: ready again by itself, and signing, in the same process.
    std::fs::remove_dir(&tokens).unwrap();
    std::fs::rename(&away, &tokens).unwrap();
    assert!(s.eventually(Duration::from_secs(60), || s.ops("/readyz").0 == 200), "{}", s.log_text());
    assert_eq!(register(&s, 3, json!({"kind": "internal"})).0, 200);
    assert_eq!(s.pid(), pid);
}

#[test]
fn a_tpm_appliance_survives_a_tpm_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let tpm = device_tests::swtpm::Swtpm::start(tmp.path());
    let a = Appliance::with(&["--backend", "tpm", "--tcti", &tpm.tcti()]);
    let s = a.start();
    assert_eq!(register(&s, 1, json!({"kind": "internal"})).0, 200);
    tpm.restart();
    // The next request reconnects (TPM2_Startup, SRK and keys reloaded) and succeeds.
    assert!(
        s.eventually(Duration::from_secs(60), || register(&s, 2, json!({"kind": "internal"})).0 == 200),
        "{}",
        s.log_text()
    );
    assert_eq!(s.ops("/readyz").0, 200);
}

#[test]
fn the_pin_can_come_from_a_systemd_credential() {
    let a = Appliance::new();
    let creds = a.dir.join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::copy(a.dir.join("user.pin"), creds.join("hsm-pin")).unwrap();
    std::fs::set_permissions(creds.join("hsm-pin"), std::fs::Permissions::from_mode(0o400)).unwrap();
    a.edit(|f| {
        let Some(hsm_adapters::BackendConfigFile::Pkcs11(p)) = f.backends.get_mut("softhsm") else { panic!() };
        p.pin_file = None;
        p.pin_credential = Some("hsm-pin".into());
    });
    // Without the credentials directory (not started by systemd): a clear refusal.
    let (mut s, ready) = a.spawn(&[], true);
    assert!(ready.is_err());
    s.wait_exit(Duration::from_secs(30)).expect("it exits");
    assert!(s.log_text().contains("CREDENTIALS_DIRECTORY"), "{}", s.log_text());
    // As systemd starts it, with $CREDENTIALS_DIRECTORY: ready, and signing.
    let s = a.start_with(&[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())]);
    assert_eq!(register(&s, 1, json!({"kind": "internal"})).0, 200);
    assert!(!s.log_text().contains(&std::fs::read_to_string(creds.join("hsm-pin")).unwrap()), "the PIN is in the log");
}

#[test]
fn the_systemd_unit_is_hardened() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/sitesignd.service");
    let out = Command::new("systemd-analyze").args(["security", "--offline=true"]).arg(&unit).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("→ Overall exposure level for sitesignd.service: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level: {text}{}", String::from_utf8_lossy(&out.stderr)));
    assert!(level <= 2.0, "exposure {level} > 2.0:\n{text}");
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    for required in [
        "Type=notify",
        "User=sitesign",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "RestartPreventExitStatus=77 78\n",
        "LimitNOFILE=65536\n",
    ] {
        assert!(unit_text.contains(required), "{required}");
    }
}

#[test]
fn metrics_parse_and_name_what_the_dashboards_use() {
    let a = Appliance::new();
    let s = a.start();
    assert_eq!(register(&s, 1, json!({"kind": "internal"})).0, 200);
    let (_, text) = s.ops("/metrics");
    let out = common::appliance::python_tool_with_input("parse_metrics.py", &[], text.as_bytes());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let families: Value = serde_json::from_slice(&out.stdout).unwrap();
    // (`sitesign_backend_errors_total{code}` shows every device code from the start, at 0, so
    // that an alert on its increase sees the first error.)
    for name in [
        "sitesign_tokens_issued",
        "sitesign_batch_size",
        "sitesign_sign_seconds",
        "sitesign_sessions_in_use",
        "sitesign_http_responses",
        "sitesign_audit_fsync_seconds",
        "sitesign_audit_failures",
        "sitesign_ready",
        "sitesign_state_reloads",
        "sitesign_backend_errors",
        "sitesign_queue_depth",
        "sitesign_key_expiry_timestamp_seconds",
        "sitesign_crl_next_update_timestamp_seconds",
    ] {
        assert!(families.get(name).is_some(), "{name} missing: {families}");
    }
    let _ = python_tool; // (used by other test files of this crate)
}

/// Starts `sitesignd` on `a`, which must exit by itself; its exit status and log.
fn exits(a: &Appliance) -> (Option<i32>, String) {
    let (mut s, ready) = a.spawn(&[], true);
    assert!(ready.is_err(), "it became ready");
    let status = s.wait_exit(Duration::from_secs(60)).expect("it exits");
    (status.code(), s.log_text())
}

#[test]
fn a_refused_secret_exits_77_and_a_config_that_cannot_work_78_so_systemd_does_not_retry() {
    // A wrong PIN: 77, named, and never the PIN itself in the log.
    let a = Appliance::new();
    let pin = a.dir.join("user.pin");
    let good = std::fs::read_to_string(&pin).unwrap();
    std::fs::write(&pin, "0000-wrong-pin").unwrap();
    let (code, log) = exits(&a);
    assert_eq!(code, Some(77), "{log}");
    assert!(log.contains("pin_incorrect") && !log.contains("0000-wrong-pin"), "{log}");
    std::fs::write(&pin, good).unwrap();
    // A configuration others may write: 78.
    let config = a.config_path();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, log) = exits(&a);
    assert_eq!(code, Some(78), "{log}");
    assert!(log.contains("chmod go-w"), "{log}");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    // A PKCS#11 module others may replace: 78.
    let module = a.dir.join("module.so");
    std::fs::copy(hsm_adapters::config::DEFAULT_PKCS11_MODULE, &module).unwrap();
    std::fs::set_permissions(&module, std::fs::Permissions::from_mode(0o666)).unwrap();
    let set_module = |m: &Path| {
        a.edit(|f| {
            let Some(hsm_adapters::BackendConfigFile::Pkcs11(p)) = f.backends.get_mut("softhsm") else { panic!() };
            p.module = Some(m.to_owned());
        })
    };
    set_module(&module);
    let (code, log) = exits(&a);
    assert_eq!(code, Some(78), "{log}");
    assert!(log.contains("backend_module") && log.contains("mode 0666"), "{log}");
    set_module(Path::new(hsm_adapters::config::DEFAULT_PKCS11_MODULE));
    // LD_PRELOAD in the module's environment: 78.
    a.edit(|f| {
        let Some(hsm_adapters::BackendConfigFile::Pkcs11(p)) = f.backends.get_mut("softhsm") else { panic!() };
        p.environment.insert("LD_PRELOAD".into(), "/tmp/evil.so".into());
    });
    let (code, log) = exits(&a);
    assert_eq!(code, Some(78), "{log}");
    assert!(log.contains("environment.LD_PRELOAD"), "{log}");
    a.edit(|f| {
        let Some(hsm_adapters::BackendConfigFile::Pkcs11(p)) = f.backends.get_mut("softhsm") else { panic!() };
        p.environment.remove("LD_PRELOAD");
    });
    // Put right, it runs.
    let s = a.start();
    assert_eq!(register(&s, 1, json!({"kind": "internal"})).0, 200);
}

#[test]
fn a_wrong_tpm_auth_value_exits_77() {
    let tmp = tempfile::tempdir().unwrap();
    let tpm = device_tests::swtpm::Swtpm::start(tmp.path());
    let a = Appliance::with(&["--backend", "tpm", "--tcti", &tpm.tcti()]);
    let auth = a.dir.join("tpm.auth");
    let good = std::fs::read(&auth).unwrap();
    std::fs::write(&auth, "not-the-auth-value").unwrap();
    let (code, log) = exits(&a);
    assert_eq!(code, Some(77), "{log}");
    assert!(log.contains("tpm_auth_failed"), "{log}");
    std::fs::write(&auth, good).unwrap();
    let s = a.start();
    assert_eq!(register(&s, 1, json!({"kind": "internal"})).0, 200);
    drop(s);
    tpm.stop();
}
