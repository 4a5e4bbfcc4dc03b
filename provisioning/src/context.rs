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

/// A loaded configuration.
#[derive(Debug)]
pub struct Context {
    /// The configuration file.
    pub path: PathBuf,
    /// Its validated content.
    pub config: Config,
}

impl Context {
    /// Reads `path`; re-runs this program with the modules' environment if it is not set.
    pub fn load(path: &Path) -> Result<Context, CliError> {
        let config = Config::load(path)?;
        sitesign::environment::ensure(&config.module_environment())
            .map_err(|e| CliError::new("io", format!("cannot re-run with the module environment: {e}")))?;
        Ok(Context { path: path.to_owned(), config })
    }

    /// Opens the state store.
    pub fn store(&self) -> Result<Store, CliError> {
        Ok(Store::open(&self.config.state_dir)?)
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
