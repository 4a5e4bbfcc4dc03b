//! A SoftHSM2 token of sitesign's own under a folder: the layout, the token with random SO and
//! user PINs kept in 0600 files, and the environment SoftHSM needs. Shared by `selftest` and
//! `quickstart`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hsm_adapters::pkcs11::softhsm::SoftHsmDir;
use hsm_adapters::pkcs11::token::initialize_token;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};

use crate::CliError;

/// The token label sitesign's own SoftHSM tokens get.
pub const TOKEN_LABEL: &str = "sitesign";

/// A random secret of 16 bytes as 32 hex characters.
pub fn random_secret() -> Result<SecretString, CliError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).map_err(|_| CliError::new("random", "the system random generator failed"))?;
    Ok(SecretString::from(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

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

/// The SoftHSM instance under `dir/softhsm`, and whether this process can use it as it is.
pub enum Prepared {
    /// `SOFTHSM2_CONF` points elsewhere: re-run with it set (the exit code of that run).
    Rerun(i32),
    /// Ready: the instance, the user PIN file, and whether the token was created just now.
    Ready { softhsm: SoftHsmDir, pin_file: PathBuf, created: bool },
}

/// Lays out the instance and creates the token if `dir/user.pin` does not exist yet.
pub fn prepare(dir: &Path, module: &Path) -> Result<Prepared, CliError> {
    let softhsm = SoftHsmDir::create(&dir.join("softhsm"))?;
    if !softhsm.is_active() {
        return Ok(Prepared::Rerun(softhsm.rerun_self()?));
    }
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
    Ok(Prepared::Ready { softhsm, pin_file, created })
}

/// The `[backends.softhsm]` table for the instance.
pub fn backend_table(softhsm: &SoftHsmDir, module: &Path, pin_file: &Path) -> String {
    format!(
        "[backends.softhsm]\nkind = \"pkcs11\"\nmodule = {:?}\ntoken_label = {TOKEN_LABEL:?}\npin_file = {:?}\nsessions = 2\n\
         environment = {{ SOFTHSM2_CONF = {:?} }}\n",
        module.display().to_string(),
        pin_file.display().to_string(),
        softhsm.conf_path().display().to_string(),
    )
}
