//! `sitesign selftest --dir DIR`: the newcomer's first run. Lays out a private SoftHSM instance
//! under DIR (its own `softhsm2.conf`), creates the token `sitesign` with random SO and user PINs
//! kept in 0600 files, writes `DIR/sitesign.toml`, and then does what the appliance does with a
//! key: opens the backend from that configuration, creates (or finds) an RSA-2048 and a P-256 key,
//! checks their protection attributes, signs, and verifies every signature with `ring`.

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use hsm_adapters::{KeyAlgorithm, KeyBackend, SigningKey};
use sitesign::config::Config;
use sitesign::selftest::check_key;

use crate::absolute;
use crate::output::{CliError, Output};
use crate::softhsm::{self, TOKEN_LABEL};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder for the SoftHSM instance, PIN files and configuration (created if missing).
    #[arg(long, default_value = "./var")]
    dir: PathBuf,
    /// The PKCS#11 module of SoftHSM2.
    #[arg(long, default_value = hsm_adapters::config::DEFAULT_PKCS11_MODULE)]
    module: PathBuf,
    /// Signatures per key, each verified independently.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    rounds: u32,
}

pub fn run(args: &Args, out: Output) -> Result<ExitCode, CliError> {
    let dir = absolute(&args.dir)?;
    fs::create_dir_all(&dir).map_err(|e| CliError::new("io", format!("cannot create {}: {e}", dir.display())))?;
    let softhsm::Prepared { softhsm, pin_file, created: created_token } = softhsm::prepare(&dir, &args.module)?;
    if created_token {
        out.line(format!(
            "created SoftHSM token {TOKEN_LABEL:?} in {} (PINs in 0600 files beside it)",
            softhsm.root().display()
        ));
    }
    let config_path = dir.join("sitesign.toml");
    if !config_path.exists() {
        let file = sitesign::config::ConfigFile {
            state_dir: Some("state".into()),
            backends: [(
                "softhsm".to_owned(),
                hsm_adapters::BackendConfigFile::Pkcs11(softhsm::backend_table(&softhsm, &args.module, &pin_file)),
            )]
            .into(),
            ..sitesign::config::ConfigFile::default()
        };
        let body = toml::to_string(&file).map_err(|e| CliError::new("encoding", format!("the configuration: {e}")))?;
        let text = format!("# Written by `sitesign selftest`. See sitesign.sample.toml for every option.\n{body}");
        fs::write(&config_path, text)
            .map_err(|e| CliError::new("io", format!("cannot write {}: {e}", config_path.display())))?;
    }
    let config = Config::load(&config_path)?;
    let backend_config = config
        .backends
        .get("softhsm")
        .ok_or_else(|| CliError::new("config", format!("{} has no [backends.softhsm]", config_path.display())))?;
    let backend = hsm_adapters::open(backend_config)?;
    out.line(format!("backend: {}", backend.capabilities().device));

    let mut reports = Vec::new();
    for (name, algorithm) in [("selftest-rs256", KeyAlgorithm::Rsa2048), ("selftest-es256", KeyAlgorithm::EcP256)] {
        let (key, created) = find_or_generate(backend.as_ref(), name, algorithm)?;
        let scheme = algorithm.default_scheme();
        let report = check_key(key.as_ref(), scheme, args.rounds as usize)?;
        out.line(format!(
            "key {} ({algorithm}, {})",
            report.key,
            if created { "generated in the token" } else { "found" }
        ));
        let flags: Vec<String> = report
            .protection
            .checks
            .iter()
            .map(|c| format!("{}={}", c.name, c.actual.map_or("?".into(), |v| v.to_string())))
            .collect();
        out.line(format!("  protection: all as required ({})", flags.join(", ")));
        let per_sig = report.sign_micros as f64 / report.signatures as f64 / 1000.0;
        out.line(format!(
            "  {}: {} signatures, every one verified by an independent implementation (ring); {per_sig:.2} ms each, {:.0}/s on one session",
            report.scheme,
            report.signatures,
            1000.0 / per_sig
        ));
        reports.push(report);
    }
    out.line("PASS: keys stay in the token, signatures verify");
    out.line(format!("config: {}", config_path.display()));
    out.json(&serde_json::json!({
        "result": "pass",
        "backend": backend.capabilities(),
        "token_created": created_token,
        "config": config_path,
        "keys": reports,
    }));
    Ok(ExitCode::SUCCESS)
}

fn find_or_generate(
    backend: &dyn KeyBackend,
    name: &str,
    algorithm: KeyAlgorithm,
) -> Result<(Arc<dyn SigningKey>, bool), CliError> {
    let uri = format!("pkcs11:token={TOKEN_LABEL};object={name};type=private").parse()?;
    match backend.find_key(&uri) {
        Ok(key) => Ok((key, false)),
        Err(hsm_adapters::Error::KeyNotFound { .. }) => Ok((backend.generate_key(name, algorithm)?, true)),
        Err(e) => Err(e.into()),
    }
}
