//! What every configured command starts with: the configuration, read and validated, and the
//! environment its PKCS#11 modules need (set by replacing this process with itself, before any
//! module is loaded).

use std::path::{Path, PathBuf};

use sitesign::audit::AuditLog;
use sitesign::backends::Backends;
use sitesign::config::Config;
use sitesign::state::State;
use sitesign::store::Store;

use crate::output::CliError;

/// Whether a backend's secret is a systemd credential.
fn uses_credentials(config: &Config) -> bool {
    config.backends.values().any(|b| match b {
        hsm_adapters::BackendConfig::Pkcs11(c) => matches!(c.pin, hsm_adapters::PinSource::Credential(_)),
        hsm_adapters::BackendConfig::Tpm(t) => matches!(t.auth, Some(hsm_adapters::PinSource::Credential(_))),
        _ => false,
    })
}

/// A loaded configuration.
#[derive(Debug)]
pub struct Context {
    /// The configuration file.
    pub path: PathBuf,
    /// Its validated content.
    pub config: Config,
}

impl Context {
    /// Reads `path`; re-runs this program with the modules' environment if it is not set — and,
    /// for a configuration whose secrets are systemd credentials, run by an administrator rather
    /// than by systemd, with `CREDENTIALS_DIRECTORY` naming the `credentials/` folder beside the
    /// configuration, where `sitesign setup` puts them (and the unit's `LoadCredential=` reads
    /// them from): `sudo sitesign status` works like the service.
    pub fn load(path: &Path) -> Result<Context, CliError> {
        let config = Config::load(path)?;
        let mut wanted = config.module_environment();
        if std::env::var_os("CREDENTIALS_DIRECTORY").is_none() && uses_credentials(&config) {
            let dir = path.parent().unwrap_or(Path::new(".")).join("credentials");
            if dir.is_dir() {
                wanted.push(("CREDENTIALS_DIRECTORY".to_owned(), crate::absolute(&dir)?.display().to_string()));
            }
        }
        sitesign::environment::ensure(&wanted)
            .map_err(|e| CliError::new("io", format!("cannot re-run with the module environment: {e}")))?;
        Ok(Context { path: path.to_owned(), config })
    }

    /// Opens the state store.
    pub fn store(&self) -> Result<Store, CliError> {
        Ok(Store::connect(&self.config)?)
    }

    /// The state as of now.
    pub fn state(&self) -> Result<State, CliError> {
        Ok(State::load(&self.store()?, &self.config, sitesign::time::now_unix())?)
    }

    /// Opens the audit log for appending, after checking it against its witnessed head.
    pub fn audit(&self) -> Result<AuditLog, CliError> {
        Ok(sitesign::witness::open_log(&self.config, &self.store()?, Default::default())?)
    }

    /// Opens every backend.
    pub fn backends(&self) -> Result<Backends, CliError> {
        Ok(Backends::open(&self.config)?)
    }
}

/// Who is acting, for the records: the Unix user id of this process.
pub fn actor() -> String {
    format!("cli:uid={}", rustix::process::getuid().as_raw())
}
