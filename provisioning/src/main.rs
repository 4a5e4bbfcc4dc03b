//! `sitesign`: the crypto officer's and admin's tool. Today it has `selftest`, the end-to-end check
//! the README's run command performs; `init`, `keys`, `rotate`, `cert`, `bulk-token` and `audit`
//! join it as the PKI and token issues land.

mod selftest;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// sitesign: hardware-backed signing for ConfigMgr site tokens.
#[derive(Debug, Parser)]
#[command(name = "sitesign", version, about)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create (or reuse) a SoftHSM token under DIR, generate an RS256 and an ES256 key in it, sign
    /// and verify independently, and print the result.
    Selftest(selftest::Args),
}

/// An error for the operator: a stable code and a message that says what to do.
#[derive(Debug)]
pub struct CliError {
    code: &'static str,
    message: String,
}

impl CliError {
    /// A CLI error with `code` and `message`.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        CliError { code, message: message.into() }
    }
}

impl From<hsm_adapters::Error> for CliError {
    fn from(e: hsm_adapters::Error) -> Self {
        CliError::new(e.code(), e.to_string())
    }
}

impl From<sitesign::selftest::SelfTestError> for CliError {
    fn from(e: sitesign::selftest::SelfTestError) -> Self {
        CliError::new(e.code(), e.to_string())
    }
}

impl From<sitesign::config::ConfigError> for CliError {
    fn from(e: sitesign::config::ConfigError) -> Self {
        CliError::new("config", e.to_string())
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::new("error", format!("{e:#}"))
    }
}

/// Where a command's human-readable progress and result go, and whether to print JSON instead.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    json: bool,
}

impl Output {
    /// A line of human-readable output (suppressed with `--json`).
    pub fn line(&self, text: impl AsRef<str>) {
        if !self.json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", text.as_ref());
        }
    }

    /// The JSON result (printed only with `--json`).
    pub fn json(&self, value: &serde_json::Value) {
        if self.json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{value}");
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Output { json: cli.json };
    let result = match cli.command {
        Command::Selftest(args) => selftest::run(&args, out),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if out.json {
                out.json(&serde_json::json!({"error": {"code": e.code, "message": e.message}}));
            } else {
                eprintln!("sitesign: error [{}]: {}", e.code, e.message);
            }
            ExitCode::FAILURE
        }
    }
}

/// The absolute form of `p` (relative to the current directory).
pub fn absolute(p: &std::path::Path) -> Result<PathBuf, CliError> {
    std::path::absolute(p).map_err(|e| CliError::new("path", format!("{}: {e}", p.display())))
}
