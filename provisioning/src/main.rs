//! `sitesign`: the crypto officer's and admin's tool — `init`, `status`, `keys list`,
//! `cert issue`, `cert export`, `bulk-token`, `token verify`, `quickstart`, `selftest`. Every
//! command has `--json`.

mod admin;
mod admin_client;
mod bulk;
mod context;
mod quickstart;
mod selftest;
mod softhsm;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// sitesign: hardware-backed signing for ConfigMgr site tokens.
#[derive(Debug, Parser)]
#[command(name = "sitesign", version, about)]
struct Cli {
    /// Configuration file (or set SITESIGN_CONFIG).
    #[arg(long, global = true, env = "SITESIGN_CONFIG", default_value = "/etc/sitesign/sitesign.toml")]
    config: PathBuf,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the SMS Issuing root, the first token-signing key and the appliance's TLS key, each
    /// inside its backend; self-test them; record the state.
    Init {
        /// Set an already initialised state aside (renamed, never deleted) and start anew.
        #[arg(long)]
        force: bool,
    },
    /// Show the state and check every backend and key.
    Status,
    /// Key inventory.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Certificates.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Bulk registration tokens: new [--lifetime MIN], list, block GUID, unblock GUID (also
    /// ConfigMgr's spelling: /new, /lifetime N, /?).
    #[command(name = "bulk-token")]
    BulkToken {
        /// Print the ConfigMgr-style usage (what `/?` does).
        #[arg(long, hide = true)]
        configmgr_usage: bool,
        #[command(subcommand)]
        command: Option<bulk::BulkCommand>,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Create everything a working appliance needs under DIR: a device, keys, certificates, a
    /// configuration and a demo management point.
    Quickstart(quickstart::Args),
    /// Create (or reuse) a SoftHSM token under DIR, generate an RS256 and an ES256 key in it, sign
    /// and verify independently, and print the result.
    Selftest(selftest::Args),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// List every key with its role, status and certificate.
    List,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain: detects edited, deleted and reordered records (exit 1).
    Verify,
    /// Write every record as JSON lines (to standard output or --out).
    Export {
        /// File to write.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Verify a token read from standard input (never from argv): exit 0 if valid, 2 if not,
    /// with the reason.
    Verify {
        /// x5t#S256 of the client certificate presented with a client or access token.
        #[arg(long)]
        thumbprint: Option<String>,
        /// Accept only this kind: bulk, client or access.
        #[arg(long)]
        kind: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Issue a role certificate from a PKCS#10 request.
    Issue {
        /// mp-client (a management point's mTLS identity) or role-ssl (a site system's TLS server).
        #[arg(long, value_parser = ["mp-client", "role-ssl"])]
        profile: String,
        /// The request, PEM or DER.
        #[arg(long)]
        csr: PathBuf,
        /// Write the certificate here (PEM) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write the SMS Issuing certificate, every non-retired token-signing certificate and a
    /// trust bundle as PEM files.
    Export {
        /// The folder to write to (created if missing).
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

/// An error for the operator: a stable code and a message that says what to do.
#[derive(Debug)]
pub struct CliError {
    code: std::borrow::Cow<'static, str>,
    message: String,
}

impl CliError {
    /// A CLI error with `code` and `message`.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        CliError { code: code.into(), message: message.into() }
    }

    /// A CLI error with a code received from the service.
    pub fn new_owned(code: String, message: String) -> Self {
        CliError { code: code.into(), message }
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

impl From<sitesign::ops::OpsError> for CliError {
    fn from(e: sitesign::ops::OpsError) -> Self {
        CliError::new(e.code(), e.to_string())
    }
}

impl From<sitesign::pki::PkiError> for CliError {
    fn from(e: sitesign::pki::PkiError) -> Self {
        CliError::new(e.code(), e.to_string())
    }
}

impl From<sitesign::audit::AuditError> for CliError {
    fn from(e: sitesign::audit::AuditError) -> Self {
        CliError::new("audit_unavailable", e.to_string())
    }
}

impl From<sitesign::store::StoreError> for CliError {
    fn from(e: sitesign::store::StoreError) -> Self {
        CliError::new("state_store", e.to_string())
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

    /// Whether JSON output was asked for.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// A progress line for a long operation, on standard error (suppressed with `--json`).
    pub fn progress(&self, text: impl AsRef<str>) {
        if !self.json {
            eprintln!("… {}", text.as_ref());
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
    let cli = Cli::parse_from(bulk::configmgr_spelling(std::env::args_os().collect()));
    let out = Output { json: cli.json };
    let result = match cli.command {
        Command::Init { force } => context::Context::load(&cli.config).and_then(|c| admin::init(&c, force, out)),
        Command::Status => context::Context::load(&cli.config).and_then(|c| admin::status(&c, out)),
        Command::Keys { command: KeysCommand::List } => {
            context::Context::load(&cli.config).and_then(|c| admin::keys_list(&c, out))
        }
        Command::Cert { command: CertCommand::Issue { profile, csr, out: path } } => {
            context::Context::load(&cli.config)
                .and_then(|c| admin::cert_issue(&c, &profile, &csr, path.as_deref(), out))
        }
        Command::Cert { command: CertCommand::Export { out: dir } } => {
            context::Context::load(&cli.config).and_then(|c| admin::cert_export(&c, &dir, out))
        }
        Command::BulkToken { configmgr_usage: true, .. } | Command::BulkToken { command: None, .. } => {
            print!("{}", bulk::CONFIGMGR_USAGE);
            Ok(ExitCode::SUCCESS)
        }
        Command::BulkToken { command: Some(command), .. } => {
            context::Context::load(&cli.config).and_then(|c| bulk::run(&c, &command, out))
        }
        Command::Token { command: TokenCommand::Verify { thumbprint, kind } } => context::Context::load(&cli.config)
            .and_then(|c| bulk::verify(&c, thumbprint.as_deref(), kind.as_deref(), out)),
        Command::Audit { command: AuditCommand::Verify } => {
            context::Context::load(&cli.config).and_then(|c| admin::audit_verify(&c, out))
        }
        Command::Audit { command: AuditCommand::Export { out: path } } => {
            context::Context::load(&cli.config).and_then(|c| admin::audit_export(&c, path.as_deref()))
        }
        Command::Quickstart(args) => quickstart::run(&args, out),
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
