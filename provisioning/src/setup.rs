//! `sitesign setup`: a production appliance, next to `quickstart`'s demo. Points sitesign at an
//! existing PKCS#11 token (or a TPM), writes `/etc/sitesign/sitesign.toml` (root:sitesign 0640)
//! and the device secret as the systemd credential the unit loads
//! (`/etc/sitesign/credentials/hsm-pin`, root 0600: `LoadCredential=hsm-pin:…`), runs `init` as
//! the service user — so every file of the state is the service's, and the device sees the user
//! that will sign — and prints what is left to do. Flags for scripts; questions on a terminal for
//! what the flags leave out.
//!
//! Nothing is left half-done: the configuration is checked before anything is written, and if
//! `init` fails, the configuration and the credential written for it are removed again (the
//! state folder is left, empty of a hierarchy, for the next attempt).

use std::fs;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use hsm_adapters::config::{BackendConfigFile, Pkcs11ConfigFile, TpmConfigFile};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;
use sitesign::config::{ConfigFile, PkiConfigFile, ServiceConfigFile};

use crate::Confirm;
use crate::output::{CliError, Output};

/// The credential the shipped unit loads (`LoadCredential=hsm-pin:/etc/sitesign/credentials/hsm-pin`).
pub const CREDENTIAL: &str = "hsm-pin";

/// The key device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// A token of a PKCS#11 module (a network HSM's client library, SoftHSM2, …).
    Pkcs11,
    /// The machine's TPM 2.0.
    Tpm,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The key device.
    #[arg(long, value_enum)]
    backend: Option<Device>,
    /// The vendor's PKCS#11 library (default: Debian's SoftHSM2).
    #[arg(long)]
    module: Option<PathBuf>,
    /// The label of the existing token.
    #[arg(long)]
    token_label: Option<String>,
    /// A file holding the token's user PIN, copied into the credential. Without it the PIN is
    /// asked for on a terminal (not echoed) or read from the first line of standard input.
    /// (For a TPM, the keys' auth value is generated instead.)
    #[arg(long)]
    pin_file: Option<PathBuf>,
    /// A variable the module reads its configuration from, NAME=VALUE (repeatable; allow-listed).
    #[arg(long = "module-env", value_name = "NAME=VALUE", value_parser = crate::quickstart::parse_module_env)]
    module_env: Vec<(String, String)>,
    /// Device sessions (signing workers); default the number of CPUs. For a network HSM: its
    /// target rate × its latency per signature (docs/backends.md).
    #[arg(long)]
    sessions: Option<usize>,
    /// TCTI of the TPM, for --backend tpm.
    #[arg(long)]
    tcti: Option<String>,
    /// The organisation in the certificates' subjects (CN=SMS Issuing,O=…).
    #[arg(long)]
    site_name: Option<String>,
    /// A DNS name or IP address management points use to reach this appliance (repeatable).
    #[arg(long = "name")]
    names: Vec<String>,
    /// Address of the mTLS API.
    #[arg(long)]
    listen: Option<String>,
    /// Address of the plain-HTTP ops listener (health, readiness, metrics for Prometheus); keep
    /// it on loopback or a management network.
    #[arg(long, default_value = "127.0.0.1:8444")]
    ops_listen: String,
    /// Token-signing key: rsa-2048 (RS256, what ConfigMgr clients verify) or ec-p256.
    #[arg(long, default_value = "rsa-2048", value_parser = ["rsa-2048", "ec-p256"])]
    token_algorithm: String,
    /// The appliance's TLS key: ec-p256, or rsa-2048 for a module without elliptic curves.
    #[arg(long, default_value = "ec-p256", value_parser = ["ec-p256", "rsa-2048"])]
    tls_algorithm: String,
    /// The user the service runs as (the package creates `sitesign`).
    #[arg(long, default_value = "sitesign")]
    service_user: String,
    /// The state folder (the unit's StateDirectory).
    #[arg(long, default_value = "/var/lib/sitesign")]
    state_dir: PathBuf,
    /// The runtime folder, for the admin socket (the unit's RuntimeDirectory).
    #[arg(long, default_value = "/run/sitesign")]
    runtime_dir: PathBuf,
    #[command(flatten)]
    confirm: Confirm,
}

/// A user or group from the system's databases.
#[derive(Debug, Clone, Copy)]
struct Ids {
    uid: u32,
    gid: u32,
}

/// `name`'s uid and primary gid from /etc/passwd (the service user is a local system user:
/// sysusers.d makes it).
fn lookup_user(name: &str) -> Option<Ids> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 4 && f[0] == name).then(|| Some(Ids { uid: f[2].parse().ok()?, gid: f[3].parse().ok()? })).flatten()
    })
}

/// `name`'s gid from /etc/group.
fn lookup_group(name: &str) -> Option<u32> {
    let group = fs::read_to_string("/etc/group").ok()?;
    group.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok()).flatten()
    })
}

fn interactive(out: Output, confirm: Confirm) -> bool {
    !out.is_json() && !confirm.yes && std::io::stdin().is_terminal()
}

/// `given`, or the operator's answer on a terminal (empty: `default`), or `default`.
fn ask(ask: bool, question: &str, given: Option<String>, default: &str) -> Result<String, CliError> {
    if let Some(v) = given {
        return Ok(v);
    }
    if !ask {
        return Ok(default.to_owned());
    }
    eprint!("{question} [{default}]: ");
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).map_err(|e| CliError::new("io", format!("cannot read: {e}")))?;
    let answer = answer.trim();
    Ok(if answer.is_empty() { default.to_owned() } else { answer.to_owned() })
}

/// Reads the PIN: from `--pin-file`, a terminal (echo off), or standard input's first line.
fn read_pin(pin_file: Option<&Path>) -> Result<SecretString, CliError> {
    let text = if let Some(path) = pin_file {
        let bytes = zeroize::Zeroizing::new(
            fs::read(path).map_err(|e| CliError::new("pin_file", format!("cannot read {}: {e}", path.display())))?,
        );
        String::from_utf8(bytes.to_vec())
            .map_err(|_| CliError::new("pin_file", format!("{} is not UTF-8 text", path.display())))?
    } else {
        let stdin = std::io::stdin();
        let terminal = stdin.is_terminal();
        let saved = if terminal {
            eprint!("the token's user PIN (not shown): ");
            let _ = std::io::stderr().flush();
            let mut t =
                rustix::termios::tcgetattr(&stdin).map_err(|e| CliError::new("io", format!("terminal: {e}")))?;
            let saved = t.clone();
            t.local_modes.remove(rustix::termios::LocalModes::ECHO);
            rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &t)
                .map_err(|e| CliError::new("io", format!("terminal: {e}")))?;
            Some(saved)
        } else {
            None
        };
        let mut line = String::new();
        let read = stdin.lock().read_line(&mut line);
        if let Some(saved) = saved {
            let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &saved);
            eprintln!();
        }
        read.map_err(|e| CliError::new("io", format!("cannot read the PIN: {e}")))?;
        line
    };
    let mut text = zeroize::Zeroizing::new(text);
    let pin = text.trim_end_matches(['\r', '\n']).to_owned();
    text.clear();
    if pin.is_empty() {
        return Err(CliError::new(
            "pin_missing",
            "no PIN: give --pin-file FILE, type it on a terminal, or pipe it on standard input",
        ));
    }
    Ok(SecretString::from(pin))
}

/// Writes `content` to `path` (a new file, mode `mode`), owned by `owner`: written beside it
/// under a random name (`O_EXCL`) and renamed into place, so a reader never sees half of it; on
/// any failure nothing is left.
fn write_file(path: &Path, content: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<(), CliError> {
    let io = |e: std::io::Error| CliError::new("io", format!("cannot write {}: {e}", path.display()));
    let folder = path.parent().unwrap_or(Path::new("."));
    let mut f = tempfile::Builder::new()
        .prefix(".sitesign-setup-")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(folder)
        .map_err(io)?;
    f.write_all(content).and_then(|()| f.as_file().sync_all()).map_err(io)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(f.as_file(), Some(uid), Some(gid)).map_err(io)?;
    }
    f.persist_noclobber(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Creates `dir` (and its parents) with this mode and owner; a folder that exists already is
/// left as it is (the package's tmpfiles.d made it so; setup never re-permissions `/etc` or
/// `/var/lib` given by mistake).
fn make_dir(dir: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<(), CliError> {
    if dir.is_dir() {
        return Ok(());
    }
    let io = |e: std::io::Error| CliError::new("io", format!("cannot prepare {}: {e}", dir.display()));
    fs::create_dir_all(dir).map_err(io)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(io)?;
    }
    Ok(())
}

pub fn run(config_path: &Path, args: &Args, out: Output) -> Result<ExitCode, CliError> {
    let config_path = crate::absolute(config_path)?;
    if config_path.exists() {
        return Err(CliError::new(
            "already_configured",
            format!(
                "{} exists: this appliance is set up. Edit it (sitesign.sample.toml lists every option), or move it away to set up anew",
                config_path.display()
            ),
        ));
    }
    let config_dir = config_path.parent().map(Path::to_owned).unwrap_or_else(|| PathBuf::from("/"));
    let user = lookup_user(&args.service_user).ok_or_else(|| {
        CliError::new(
            "no_service_user",
            format!(
                "user {:?} does not exist: the package creates it (or run `systemd-sysusers`); --service-user names another",
                args.service_user
            ),
        )
    })?;
    let me = rustix::process::geteuid().as_raw();
    if me != 0 {
        return Err(CliError::new(
            "not_root",
            "setup writes /etc/sitesign and hands the state to the service user: run it as root (sudo)",
        ));
    }
    let ask_ok = interactive(out, args.confirm);
    let backend = match args.backend {
        Some(b) => b,
        None => match ask(ask_ok, "key device: pkcs11 or tpm", None, "pkcs11")?.as_str() {
            "tpm" => Device::Tpm,
            "pkcs11" => Device::Pkcs11,
            other => return Err(CliError::new("usage", format!("key device {other:?}: pkcs11 or tpm"))),
        },
    };
    let host = fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    let site_name = ask(ask_ok, "site name (O= in the certificates)", args.site_name.clone(), "ConfigMgr site")?;
    let listen = ask(ask_ok, "mTLS API address", args.listen.clone(), "0.0.0.0:8443")?;
    let mut names = args.names.clone();
    if names.is_empty() {
        let default = if host.is_empty() { "localhost".to_owned() } else { host.clone() };
        let answer = ask(ask_ok, "names the MPs reach this appliance by (comma-separated)", None, &default)?;
        names = answer.split(',').map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect();
    }
    let credential = config_dir.join("credentials").join(CREDENTIAL);
    let table = match backend {
        Device::Pkcs11 => {
            let module = ask(
                ask_ok,
                "PKCS#11 module",
                args.module.as_ref().map(|m| m.display().to_string()),
                hsm_adapters::config::DEFAULT_PKCS11_MODULE,
            )?;
            let label = ask(ask_ok, "token label", args.token_label.clone(), "sitesign")?;
            BackendConfigFile::Pkcs11(Pkcs11ConfigFile {
                module: Some(crate::absolute(Path::new(&module))?),
                token_label: Some(label),
                pin_credential: Some(CREDENTIAL.into()),
                sessions: args.sessions,
                environment: args.module_env.iter().cloned().collect(),
                ..Pkcs11ConfigFile::default()
            })
        }
        Device::Tpm => {
            if !args.module_env.is_empty() || args.module.is_some() || args.pin_file.is_some() {
                return Err(CliError::new(
                    "usage",
                    "--module, --module-env and --pin-file are for --backend pkcs11 (a TPM's auth value is generated)",
                ));
            }
            let tcti = ask(ask_ok, "TPM TCTI", args.tcti.clone(), hsm_adapters::config::DEFAULT_TCTI)?;
            BackendConfigFile::Tpm(TpmConfigFile {
                tcti: Some(tcti),
                key_dir: Some(args.state_dir.join("tpm-keys")),
                auth_credential: Some(CREDENTIAL.into()),
                ..TpmConfigFile::default()
            })
        }
    };
    let admin_gid = lookup_group("sitesign-admin");
    let file = ConfigFile {
        state_dir: Some(args.state_dir.clone()),
        backends: std::collections::BTreeMap::from([("hsm".to_owned(), table)]),
        pki: Some(PkiConfigFile {
            site_name: Some(site_name),
            issuing_backend: "hsm".into(),
            token_signing_algorithm: Some(args.token_algorithm.clone()),
            tls_algorithm: Some(args.tls_algorithm.clone()),
            tls_names: Some(names.clone()),
            ..PkiConfigFile::default()
        }),
        service: Some(ServiceConfigFile {
            listen: Some(listen.clone()),
            ops_listen: Some(args.ops_listen.clone()),
            admin_socket: Some(args.runtime_dir.join("admin.sock")),
            admin_uids: Some(vec![0]),
            admin_gid,
            ..ServiceConfigFile::default()
        }),
        ..ConfigFile::default()
    };
    let body = toml::to_string(&file).map_err(|e| CliError::new("encoding", format!("the configuration: {e}")))?;
    let text = format!(
        "# Written by `sitesign setup`. Every option: /usr/share/doc/sitesign/sitesign.sample.toml.\n\
         # The device secret is the systemd credential {CREDENTIAL} ({}), never in this file.\n{body}",
        credential.display()
    );
    // Checked before anything is written.
    sitesign::config::Config::parse(&text, &config_path)?;

    out.line(format!("configuration   {}", config_path.display()));
    out.line(format!("device secret   {} (root, 0600; the unit's LoadCredential={CREDENTIAL})", credential.display()));
    out.line(format!("state           {} (owned by {})", args.state_dir.display(), args.service_user));
    out.line(format!("listen          {listen}, names {}", names.join(", ")));
    out.line(
        "then            sitesign init, as the service user: the SMS Issuing root, the token-signing and TLS keys",
    );
    if args.confirm.dry_run {
        out.json(&json!({"plan": {"config": config_path, "credential": credential, "state_dir": args.state_dir}}));
        return Ok(ExitCode::SUCCESS);
    }
    out.confirm("set up this appliance?", args.confirm.yes)?;
    let secret = match backend {
        Device::Pkcs11 => read_pin(args.pin_file.as_deref())?,
        Device::Tpm => hsm_adapters::random_secret()?,
    };

    make_dir(&config_dir, 0o750, Some((0, user.gid)))?;
    make_dir(&config_dir.join("credentials"), 0o700, Some((0, 0)))?;
    make_dir(&args.state_dir, 0o700, Some((user.uid, user.gid)))?;
    if credential.exists() {
        return Err(CliError::new(
            "already_configured",
            format!("{} exists: move it away (or finish the earlier setup by hand)", credential.display()),
        ));
    }
    write_file(&credential, secret.expose_secret().as_bytes(), 0o600, Some((0, 0)))?;
    if let Err(e) = write_file(&config_path, text.as_bytes(), 0o640, Some((0, user.gid))) {
        let _ = fs::remove_file(&credential);
        return Err(e);
    }
    out.progress(format!("wrote {} and {}", config_path.display(), credential.display()));

    let working = out.working("running `sitesign init` as the service user: generating the keys inside the device");
    let init = run_init(&config_path, &args.service_user, user, me, &secret);
    drop(working);
    let init = match init {
        Ok(v) => v,
        Err(e) => {
            // Nothing half-done: the next attempt starts from the same place.
            let _ = fs::remove_file(&config_path);
            let _ = fs::remove_file(&credential);
            return Err(e);
        }
    };
    // The state only (no device, so no re-run with the module's environment).
    let config = sitesign::config::Config::load(&config_path)?;
    let store = sitesign::store::Store::connect(&config)?;
    let state = sitesign::state::State::load(&store, &config, sitesign::time::now_unix())?;
    let trust = config_dir.join("trust");
    let exported = crate::certs::export(&state, &trust)?;
    let port = listen.rsplit_once(':').map(|(_, p)| p.to_owned()).unwrap_or_else(|| "8443".into());
    let next = vec![
        "systemctl enable --now sitesignd".to_owned(),
        "enrol each management point: make its key and a CSR on the MP, then `sitesign cert issue --profile mp-client --csr MP.csr --out MP.crt`".to_owned(),
        format!("open TCP port {port} to this appliance from the management points (the ops listener, {}, is for monitoring only)", args.ops_listen),
        format!(
            "import the trust bundle {} (SMS Issuing) into ConfigMgr and onto the MPs' trusted roots",
            trust.join("trust-bundle.pem").display()
        ),
        "back up: the keys with the HSM vendor's backup; everything else with `sitesign backup --out FILE`".to_owned(),
    ];
    out.line(String::new());
    for k in init["keys"].as_array().into_iter().flatten() {
        out.line(format!("created {} key {}", k["role"].as_str().unwrap_or("?"), k["uri"].as_str().unwrap_or("?")));
    }
    out.line(format!("wrote {} certificates to {}", exported.len(), trust.display()));
    out.line("\nleft to do:");
    for (i, step) in next.iter().enumerate() {
        out.line(format!("  {}. {step}", i + 1));
    }
    out.json(&json!({
        "config": config_path,
        "credential": credential,
        "state_dir": args.state_dir,
        "service_user": args.service_user,
        "init": init,
        "trust": trust,
        "next": next,
    }));
    Ok(ExitCode::SUCCESS)
}

/// Runs `sitesign init` as the service user, the device secret handed over the way systemd
/// hands it to the service (a credentials folder only that user can read), and returns its JSON.
fn run_init(
    config: &Path,
    user_name: &str,
    user: Ids,
    me: u32,
    secret: &SecretString,
) -> Result<serde_json::Value, CliError> {
    let io = |what: &str, e: std::io::Error| CliError::new("io", format!("{what}: {e}"));
    // On /run (a tmpfs) where there is one, so the PIN's copy never reaches a disk; removed when
    // init ends.
    let base = if Path::new("/run").is_dir() && rustix::process::geteuid().is_root() {
        PathBuf::from("/run")
    } else {
        std::env::temp_dir()
    };
    let creds =
        tempfile::Builder::new().prefix("sitesign-setup-").tempdir_in(&base).map_err(|e| io("temporary folder", e))?;
    std::os::unix::fs::chown(creds.path(), Some(user.uid), Some(user.gid)).map_err(|e| io("temporary folder", e))?;
    write_file(&creds.path().join(CREDENTIAL), secret.expose_secret().as_bytes(), 0o400, Some((user.uid, user.gid)))?;
    let exe = std::env::current_exe().map_err(|e| io("this program", e))?;
    let mut cmd = if me == user.uid {
        Command::new(&exe)
    } else {
        // setpriv (util-linux): the user's groups too (softhsm for SoftHSM's token files), no
        // capabilities kept.
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .arg("--init-groups")
            .arg("--inh-caps=-all")
            .arg("--")
            .arg(&exe);
        c
    };
    cmd.arg("--config").arg(config).args(["--json", "init"]);
    cmd.env("CREDENTIALS_DIRECTORY", creds.path()).env("HOME", "/nonexistent").current_dir("/");
    let output = cmd.output().map_err(|e| io("cannot run init as the service user (setpriv)", e))?;
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    if output.status.success() {
        return Ok(value);
    }
    let (code, message) = match &value["error"] {
        serde_json::Value::Object(e) => (
            e.get("code").and_then(|c| c.as_str()).unwrap_or("init_failed").to_owned(),
            e.get("message").and_then(|c| c.as_str()).unwrap_or("").to_owned(),
        ),
        _ => ("init_failed".to_owned(), String::from_utf8_lossy(&output.stderr).trim().to_owned()),
    };
    Err(CliError::new_owned(
        code,
        format!(
            "`sitesign init` as {user_name} failed, nothing kept (configuration and credential removed): {message}"
        ),
    ))
}
