//! Helpers shared by the CLI integration tests: run the real binary, read its JSON.

#![allow(dead_code, reason = "each test binary uses its own subset")]

pub mod appliance;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

pub fn sitesign() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sitesign"));
    cmd.env_remove("SOFTHSM2_CONF").env_remove("SITESIGN_CONFIG");
    cmd
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

/// Runs `cmd` with `input` on its standard input.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

pub fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

pub fn ok(out: Output) -> Value {
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    json(&out)
}

pub fn fails_with(out: Output, code: &str) -> String {
    assert!(!out.status.success(), "should have failed: {}", String::from_utf8_lossy(&out.stdout));
    let v = json(&out);
    assert_eq!(v["error"]["code"], code, "{v}");
    v["error"]["message"].as_str().unwrap().to_owned()
}

pub fn with_config(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = sitesign();
    cmd.arg("--json").arg("--config").arg(dir.join("sitesign.toml")).args(args);
    cmd
}

pub fn quickstart(dir: &Path, extra: &[&str]) -> Value {
    ok(run(sitesign().args(["quickstart", "--json", "--dir"]).arg(dir).args(extra)))
}

pub fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A new P-256 key and a PKCS#10 request for `cn` (with the subjectAltName `san`, e.g.
/// `DNS:mp1.contoso.com`), made by openssl as on a management point: `dir/NAME.key`, `dir/NAME.csr`.
pub fn key_and_csr(dir: &Path, name: &str, cn: &str, san: Option<&str>) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let subject = format!("/CN={cn}");
    let mut args =
        vec!["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", &subject];
    let alt = san.map(|s| format!("subjectAltName={s}"));
    if let Some(alt) = &alt {
        args.extend(["-addext", alt.as_str()]);
    }
    args.extend(["-keyout", key.to_str().unwrap(), "-out", csr.to_str().unwrap()]);
    openssl(&args);
    (key, csr)
}
