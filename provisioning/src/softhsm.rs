//! A SoftHSM2 token of sitesign's own under a folder: the layout, the token with random SO and
//! user PINs kept in 0600 files, and the environment SoftHSM needs. Shared by `selftest` and
//! `quickstart`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hsm_adapters::config::Pkcs11ConfigFile;
use hsm_adapters::pkcs11::softhsm::{CONF_ENV, SoftHsmDir};
use hsm_adapters::pkcs11::token::initialize_token;
use hsm_adapters::random_secret;
use secrecy::ExposeSecret;

use crate::output::CliError;

/// The token label sitesign's own SoftHSM tokens get.
pub const TOKEN_LABEL: &str = "sitesign";

/// Writes `content` to a new file with mode 0600 (never overwriting).
pub fn write_private(path: &Path, content: &[u8]) -> Result<(), CliError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CliError::new("io", format!("cannot create {}: {e}", path.display())))?;
    f.write_all(content).map_err(|e| CliError::new("io", format!("cannot write {}: {e}", path.display())))
}

/// The SoftHSM instance under `dir/softhsm`, ready: the instance, the user PIN file, and whether
/// the token was created just now.
#[derive(Debug)]
pub struct Prepared {
    /// The instance.
    pub softhsm: SoftHsmDir,
    /// The user PIN's file.
    pub pin_file: PathBuf,
    /// Whether the token was created by this call.
    pub created: bool,
}

/// Lays out the instance, makes sure this process runs with its `SOFTHSM2_CONF` (replacing
/// itself if not), and creates the token if `dir/user.pin` does not exist yet.
pub fn prepare(dir: &Path, module: &Path) -> Result<Prepared, CliError> {
    let softhsm = SoftHsmDir::create(&dir.join("softhsm"))?;
    sitesign::environment::ensure(&[(CONF_ENV.to_owned(), softhsm.conf_path().display().to_string())])
        .map_err(|e| CliError::new("io", format!("cannot re-run with {CONF_ENV} set: {e}")))?;
    if !module.is_file() {
        return Err(CliError::new(
            "backend_module",
            format!("{} not found: install softhsm2 (apt-get install softhsm2) or pass --module", module.display()),
        ));
    }
    let pin_file = dir.join("user.pin");
    let created = !pin_file.exists();
    if created {
        let so_pin = random_secret()?;
        let user_pin = random_secret()?;
        initialize_token(module, TOKEN_LABEL, &so_pin, &user_pin)?;
        write_private(&dir.join("so.pin"), so_pin.expose_secret().as_bytes())?;
        write_private(&pin_file, user_pin.expose_secret().as_bytes())?;
    }
    Ok(Prepared { softhsm, pin_file, created })
}

/// The `[backends.softhsm]` table for the instance.
pub fn backend_table(softhsm: &SoftHsmDir, module: &Path, pin_file: &Path) -> Pkcs11ConfigFile {
    Pkcs11ConfigFile {
        module: Some(module.to_owned()),
        token_label: Some(TOKEN_LABEL.to_owned()),
        pin_file: Some(pin_file.to_owned()),
        sessions: Some(2),
        environment: [(CONF_ENV.to_owned(), softhsm.conf_path().display().to_string())].into(),
        ..Pkcs11ConfigFile::default()
    }
}
