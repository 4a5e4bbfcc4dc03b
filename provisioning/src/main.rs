//! `sitesign`: the crypto officer's and admin's tool. Every command has `--json`; every command
//! that changes keys or certificates prints its plan first, stops there with `--dry-run`, and asks
//! for confirmation on a terminal (`--yes` for scripts).

mod admin_client;
mod appliance;
mod audit;
mod backup;
mod bulk;
mod certs;
mod context;
mod keys;
mod output;
mod quickstart;
mod selftest;
mod setup;
mod softhsm;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hsm_adapters::KeyAlgorithm;
use sitesign::admin::RevocationReason;
use sitesign::pki::RoleProfile;
use sitesign::token::TokenKind;

use crate::context::Context;
use crate::output::{CliError, Output};

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

/// Confirmation of a change: `--dry-run` shows the plan only, `--yes` skips the question.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Confirm {
    /// Show the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (for scripts).
    #[arg(long, short = 'y')]
    pub yes: bool,
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
    /// The key inventory: list, retire, revoke.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Replace a key: the token-signing key (published ahead, activated later), the SMS Issuing
    /// root (cross-certified), or the TLS key.
    Rotate {
        #[command(subcommand)]
        command: RotateCommand,
    },
    /// Certificates: issue from a request, list, revoke, CRL, export.
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
    /// An online copy of the state and the audit log (not the keys: those are the HSM's own
    /// backup's), with its SHA-256 in FILE.sha256; works while the service runs.
    Backup {
        /// The archive to write (a tar file; refused if it exists).
        #[arg(long)]
        out: PathBuf,
    },
    /// Put a backup back: refused while the service runs; the archive's checksums and the audit
    /// chain in it are checked before anything is replaced.
    Restore {
        /// The archive `sitesign backup` wrote.
        file: PathBuf,
        /// Set an existing state aside (renamed, never deleted) instead of refusing.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Write the man pages and shell completions (for packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// The folder to write `man/` and `completions/` into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Set up a production appliance on an existing PKCS#11 token or TPM: write the
    /// configuration (--config) and the device secret as a systemd credential, run `init` as the
    /// service user, and print what is left to do.
    Setup(setup::Args),
    /// Create (or reuse) a SoftHSM token under DIR, generate an RS256 and an ES256 key in it, sign
    /// and verify independently, and print the result.
    Selftest(selftest::Args),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// List every key with its role, state, schedule and certificate.
    List,
    /// Retire a key: cancels a pending one; a verify-only one only once its tokens have expired
    /// (or at once with --force).
    Retire {
        /// The key's id (see `keys list`).
        key: String,
        /// Retire now even though tokens it signed are still valid (they are refused from then).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Revoke a key (emergency): its tokens are refused at once; the active key is replaced in
    /// the same command.
    Revoke {
        /// The key's id (see `keys list`).
        key: String,
        /// Why (recorded in the inventory and the audit log).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        confirm: Confirm,
    },
}

#[derive(Debug, Subcommand)]
enum RotateCommand {
    /// A new token-signing key: published now, active at --activate-at (default now +
    /// --publish-ahead); the old key verifies its tokens until they expire.
    TokenSigning {
        /// Algorithm of the new key.
        #[arg(long, value_parser = ["rsa-2048", "ec-p256"])]
        algorithm: Option<String>,
        /// How long relying parties get to fetch the new key before it signs (e.g. 24h, 7d).
        #[arg(long)]
        publish_ahead: Option<String>,
        /// When the new key starts signing: `now` or an RFC 3339 time (2026-12-01T09:00:00Z).
        #[arg(long)]
        activate_at: Option<String>,
        #[command(flatten)]
        confirm: Confirm,
    },
    /// A new SMS Issuing root, cross-certified both ways with the old one; sitesign's own
    /// certificates re-issued under it.
    Issuing {
        #[command(flatten)]
        confirm: Confirm,
    },
    /// A new TLS key and certificate: new connections get it, open ones finish.
    Tls {
        #[command(flatten)]
        confirm: Confirm,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain, the signed checkpoints and the witnessed head: detects edited,
    /// deleted and reordered records, and a log cut short, emptied or replaced (exit 1).
    Verify {
        /// An anchor file (`[audit] anchor_file`, or a copy of it from elsewhere): the log must
        /// hold every checkpoint it witnessed. Default: the configured one, if any.
        #[arg(long)]
        anchor: Option<PathBuf>,
    },
    /// Take up a log that no longer reaches its witnessed head because it was lost for good (a
    /// dead disk without a backup): records the loss, with REASON, in the log and the anchor
    /// file, and makes what is left the witnessed head. Needs the service stopped.
    AcknowledgeLoss {
        /// Why (the disk that failed, the ticket): recorded in the log.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        confirm: Confirm,
    },
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
        /// Accept only this kind.
        #[arg(long, value_enum)]
        kind: Option<TokenKind>,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Issue a role certificate from a PKCS#10 request.
    Issue {
        /// mp-client (a management point's mTLS identity) or role-ssl (a site system's TLS server).
        #[arg(long, value_enum)]
        profile: RoleProfile,
        /// The request, PEM or DER.
        #[arg(long)]
        csr: PathBuf,
        /// Write the certificate here (PEM) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List every certificate issued, with its state.
    List,
    /// Revoke a role certificate: refused at the next handshake, listed on the CRL.
    Revoke {
        /// Its serial (hex, as `cert list` shows it).
        serial: String,
        /// Why.
        #[arg(long, value_enum, default_value = "unspecified")]
        reason: RevocationReason,
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Sign a fresh CRL of the SMS Issuing root(s); write the active root's (DER) to --out, or
    /// print it as PEM.
    Crl {
        /// File to write the DER to.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write the SMS Issuing certificate(s), every non-retired token-signing certificate, the
    /// cross-certificates and a trust bundle as PEM files.
    Export {
        /// The folder to write to (created if missing).
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

/// The man pages (`sitesign.1`, one `sitesign-COMMAND.1` per command and subcommand) and the
/// bash, zsh and fish completions, written under `dir` for the Debian package (scripts/package).
fn generate_docs(dir: &std::path::Path) -> Result<ExitCode, CliError> {
    use clap::CommandFactory as _;
    let io = |p: &std::path::Path, e: std::io::Error| CliError::new("io", format!("{}: {e}", p.display()));
    let (man, completions) = (dir.join("man"), dir.join("completions"));
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).map_err(|e| io(d, e))?;
    }
    fn pages(cmd: &clap::Command, name: String, dir: &std::path::Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        let cmd = cmd.clone().name(name.clone());
        let mut roff = Vec::new();
        if clap_mangen::Man::new(cmd.clone()).render(&mut roff).is_ok() {
            out.push((dir.join(format!("{name}.1")), roff));
        }
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
            pages(sub, format!("{name}-{}", sub.get_name()), dir, out);
        }
    }
    let mut cmd = Cli::command();
    cmd.build();
    let mut files = Vec::new();
    pages(&cmd, "sitesign".into(), &man, &mut files);
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cmd, "sitesign", &mut text);
        let name = match shell {
            clap_complete::Shell::Bash => "sitesign".to_owned(),
            clap_complete::Shell::Zsh => "_sitesign".to_owned(),
            _ => "sitesign.fish".to_owned(),
        };
        files.push((completions.join(name), text));
    }
    for (path, bytes) in &files {
        std::fs::write(path, bytes).map_err(|e| io(path, e))?;
    }
    println!("{}", serde_json::json!({"written": files.len(), "dir": dir}));
    Ok(ExitCode::SUCCESS)
}

fn algorithm(text: Option<&str>) -> Result<Option<KeyAlgorithm>, CliError> {
    text.map(|a| a.parse::<KeyAlgorithm>().map_err(CliError::from)).transpose()
}

fn run(cli: Cli, out: Output) -> Result<ExitCode, CliError> {
    let load = || Context::load(&cli.config);
    match cli.command {
        Command::Init { force } => appliance::init(&load()?, force, out),
        Command::Status => appliance::status(&load()?, out),
        Command::Keys { command: KeysCommand::List } => keys::list(&load()?, out),
        Command::Keys { command: KeysCommand::Retire { key, force, confirm } } => {
            keys::retire(&load()?, &key, force, confirm, out)
        }
        Command::Keys { command: KeysCommand::Revoke { key, reason, confirm } } => {
            keys::revoke(&load()?, &key, &reason, confirm, out)
        }
        Command::Rotate { command } => {
            let (request, confirm) = match command {
                RotateCommand::TokenSigning { algorithm: alg, publish_ahead, activate_at, confirm } => (
                    keys::rotate_request(
                        sitesign::keys::KeyRole::TokenSigning,
                        algorithm(alg.as_deref())?,
                        publish_ahead.as_deref(),
                        activate_at.as_deref(),
                    )?,
                    confirm,
                ),
                RotateCommand::Issuing { confirm } => {
                    (keys::rotate_request(sitesign::keys::KeyRole::Issuing, None, None, None)?, confirm)
                }
                RotateCommand::Tls { confirm } => {
                    (keys::rotate_request(sitesign::keys::KeyRole::Tls, None, None, None)?, confirm)
                }
            };
            keys::rotate(&load()?, request, confirm, out)
        }
        Command::Cert { command: CertCommand::Issue { profile, csr, out: path } } => {
            certs::issue(&load()?, profile, &csr, path.as_deref(), out)
        }
        Command::Cert { command: CertCommand::List } => certs::list(&load()?, out),
        Command::Cert { command: CertCommand::Revoke { serial, reason, confirm } } => {
            certs::revoke(&load()?, &serial, reason, confirm, out)
        }
        Command::Cert { command: CertCommand::Crl { out: path } } => certs::crl(&load()?, path.as_deref(), out),
        Command::Cert { command: CertCommand::Export { out: dir } } => certs::export_command(&load()?, &dir, out),
        Command::BulkToken { configmgr_usage: true, .. } | Command::BulkToken { command: None, .. } => {
            print!("{}", bulk::CONFIGMGR_USAGE);
            Ok(ExitCode::SUCCESS)
        }
        Command::BulkToken { command: Some(command), .. } => bulk::run(&load()?, &command, out),
        Command::Token { command: TokenCommand::Verify { thumbprint, kind } } => {
            token::verify(&load()?, thumbprint, kind, out)
        }
        Command::Audit { command: AuditCommand::Verify { anchor } } => audit::verify(&load()?, anchor.as_deref(), out),
        Command::Audit { command: AuditCommand::AcknowledgeLoss { reason, confirm } } => {
            audit::acknowledge_loss(&load()?, &reason, confirm, out)
        }
        Command::Audit { command: AuditCommand::Export { out: path } } => audit::export(&load()?, path.as_deref()),
        Command::Quickstart(args) => quickstart::run(&args, out),
        Command::Setup(args) => setup::run(&cli.config, &args, out),
        Command::GenerateDocs { out: dest } => generate_docs(&dest),
        Command::Backup { out: dest } => backup::create(&load()?, &dest, out),
        Command::Restore { file, force, confirm } => backup::restore(&load()?, &file, force, confirm, out),
        Command::Selftest(args) => selftest::run(&args, out),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(bulk::configmgr_spelling(std::env::args_os().collect()));
    let out = Output { json: cli.json };
    match run(cli, out) {
        Ok(code) => code,
        Err(e) => {
            if out.is_json() {
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
