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

/// The findings of a pkilint report above INFO severity (each finding is a line
/// `name (SEVERITY)` or `name (SEVERITY): message`).
fn serious_findings(report: &str) -> Vec<String> {
    const SERIOUS: [&str; 4] = ["(NOTICE)", "(WARNING)", "(ERROR)", "(FATAL)"];
    report.lines().map(str::trim).filter(|l| SERIOUS.iter().any(|s| l.contains(s))).map(str::to_owned).collect()
}

/// Lints a PEM certificate with pkilint's RFC 5280 rules, and its signature and naming against
/// the issuer's; panics on any finding above INFO.
pub fn lint_certificate(cert: &Path, issuer: &Path) {
    lint_certificate_except(cert, issuer, &[]);
}

/// [`lint_certificate`], tolerating the findings that contain one of `expected` — each a
/// deliberate, documented divergence from the linter (see the caller).
pub fn lint_certificate_except(cert: &Path, issuer: &Path, expected: &[&str]) {
    let cert = cert.to_str().unwrap();
    let (_, report) = run("lint_pkix_cert", &["lint", cert]);
    let mut serious = serious_findings(&report);
    serious.retain(|f| !expected.iter().any(|e| f.contains(e)));
    assert!(serious.is_empty(), "pkilint on {cert}: {serious:?}\n{report}");
    let (_, report) = run("lint_pkix_signer_signee_cert_chain", &["lint", issuer.to_str().unwrap(), cert]);
    let serious = serious_findings(&report);
    assert!(serious.is_empty(), "pkilint chain {cert}: {serious:?}\n{report}");
}

#[cfg(test)]
mod tests {
    use super::serious_findings;

    #[test]
    fn only_info_findings_are_tolerated() {
        let report = "SubjectKeyIdentifierValidator @ certificate.x\n    pkix.ski_method_1 (INFO)\n\
                      KeyUsageValidator @ certificate.y\n    pkix.ca_key_usage_missing (ERROR)\n    z (NOTICE): names differ\n";
        assert_eq!(serious_findings(report), ["pkix.ca_key_usage_missing (ERROR)", "z (NOTICE): names differ"]);
    }
}
