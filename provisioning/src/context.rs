//! What every configured command starts with: the configuration, read and validated, and the
//! environment its PKCS#11 modules need (set by re-running the program, before any module is
//! loaded).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sitesign::config::{Config, PkiConfig};
use sitesign::ops::Backends;
use sitesign::store::Store;

use crate::CliError;

/// A loaded configuration.
#[derive(Debug)]
pub struct Context {
    /// The configuration file.
    pub path: PathBuf,
    /// Its validated content.
    pub config: Config,
    /// Set when the program must re-run itself with the modules' environment: its exit code.
    pub rerun: Option<ExitCode>,
}

impl Context {
    /// Reads `path`; re-runs this program with the modules' environment if it is not set.
    pub fn load(path: &Path) -> Result<Context, CliError> {
        let config = Config::load(path)?;
        let missing = config.missing_environment();
        let rerun = if missing.is_empty() {
            None
        } else {
            let exe = std::env::current_exe()
                .map_err(|e| CliError::new("io", format!("cannot find this program to re-run it: {e}")))?;
            let status = std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .envs(missing)
                .status()
                .map_err(|e| CliError::new("io", format!("cannot re-run with the module environment: {e}")))?;
            Some(ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1)))
        };
        Ok(Context { path: path.to_owned(), config, rerun })
    }

    /// The `[pki]` table, required by the CA commands.
    pub fn pki(&self) -> Result<&PkiConfig, CliError> {
        self.config
            .pki
            .as_ref()
            .ok_or_else(|| CliError::new("config", format!("{} has no [pki] table", self.path.display())))
    }

    /// Opens the state store.
    pub fn store(&self) -> Result<Store, CliError> {
        Ok(Store::open(&self.config.state_dir)?)
    }

    /// Opens the audit log.
    pub fn audit(&self) -> Result<sitesign::audit::AuditLog, CliError> {
        Ok(sitesign::audit::AuditLog::open(&self.config.audit.dir, self.config.audit.max_bytes)?)
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
