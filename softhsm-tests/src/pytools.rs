//! The independent Python checkers `scripts/install-deps` puts in `target/pytools`: pkilint (an
//! RFC 5280 linter), PyJWT and jwcrypto. Tests call them as a customer's security team would.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The venv's `bin` folder; `SITESIGN_PYTOOLS` overrides it. Panics with the fix when missing: a
/// test that needs a checker must not pass without it.
pub fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("SITESIGN_PYTOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pytools/bin"));
    assert!(
        dir.join("python").exists(),
        "the Python checkers are not installed in {}: run `bash scripts/install-deps`",
        dir.display()
    );
    dir
}

/// Runs a tool from the venv; returns (success, stdout + stderr).
pub fn run(tool: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin_dir().join(tool)).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// One pkilint finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `NOTICE`, `WARNING`, `ERROR` or `FATAL`.
    pub severity: String,
    /// The finding's code (`pkix.…`).
    pub code: String,
    /// Its message, if any.
    pub message: String,
}

/// Runs a pkilint linter (`tool lint FILE…`) for findings of NOTICE severity and above, as
/// JSON. Panics unless pkilint ran (a crash or a misuse is not a clean lint) and its exit status —
/// the number of findings at that severity — agrees with the findings it reported.
fn pkilint(tool: &str, files: &[&str]) -> Vec<Finding> {
    let mut args = vec!["lint", "--severity", "NOTICE", "--format", "JSON"];
    args.extend_from_slice(files);
    let out = Command::new(bin_dir().join(tool)).args(&args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let Some(code) = out.status.code() else { panic!("{tool} was killed: {stderr}") };
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{tool} {files:?} did not produce a report ({e}; exit {code}): {stdout}{stderr}"));
    let findings: Vec<Finding> = report["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{tool}: no results in {stdout}"))
        .iter()
        .flat_map(|r| r["finding_descriptions"].as_array().cloned().unwrap_or_default())
        .map(|f| Finding {
            severity: f["severity"].as_str().unwrap_or_default().to_owned(),
            code: f["code"].as_str().unwrap_or_default().to_owned(),
            message: f["message"].as_str().unwrap_or_default().to_owned(),
        })
        .collect();
    assert_eq!(
        usize::try_from(code).unwrap(),
        findings.len().min(255),
        "{tool}'s exit status disagrees with its report: {stdout}{stderr}"
    );
    findings
}

/// Lints a PEM certificate with pkilint's RFC 5280 rules, and its signature and naming against
/// the issuer's; panics on any finding of NOTICE severity or above.
pub fn lint_certificate(cert: &Path, issuer: &Path) {
    lint_certificate_except(cert, issuer, &[]);
}

/// [`lint_certificate`], tolerating the findings whose code or message contains one of `expected` — each a
/// deliberate, documented divergence from the linter (see the caller).
pub fn lint_certificate_except(cert: &Path, issuer: &Path, expected: &[&str]) {
    let cert = cert.to_str().unwrap();
    let mut serious = pkilint("lint_pkix_cert", &[cert]);
    serious.retain(|f| !expected.iter().any(|e| f.code.contains(e) || f.message.contains(e)));
    assert!(serious.is_empty(), "pkilint on {cert}: {serious:?}");
    let chain = pkilint("lint_pkix_signer_signee_cert_chain", &[issuer.to_str().unwrap(), cert]);
    assert!(chain.is_empty(), "pkilint chain {cert}: {chain:?}");
}

/// Lints a DER CRL with pkilint's RFC 5280 CRL rules; panics on any finding of NOTICE severity
/// or above.
pub fn lint_crl(crl: &Path) {
    let findings = pkilint("lint_crl", &["--type", "CRL", "--profile", "PKIX", crl.to_str().unwrap()]);
    assert!(findings.is_empty(), "pkilint on the CRL {}: {findings:?}", crl.display());
}
