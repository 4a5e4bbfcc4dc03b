//! SoftHSM2 specifics: laying out a private SoftHSM instance (its `softhsm2.conf` and token
//! directory) in a folder, for the quickstart, benchmarks and tests. SoftHSM reads the file named
//! by `SOFTHSM2_CONF` once, when the module is initialised, so that variable must point at
//! [`SoftHsmDir::conf_path`] in the process that opens the backend.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The environment variable SoftHSM2 reads its configuration path from.
pub const CONF_ENV: &str = "SOFTHSM2_CONF";

/// A private SoftHSM instance in a folder: `softhsm2.conf` and `tokens/`.
#[derive(Debug, Clone)]
pub struct SoftHsmDir {
    root: PathBuf,
}

impl SoftHsmDir {
    /// Creates (or reuses) the layout under `root`: `tokens/` with mode 0700 and a
    /// `softhsm2.conf` pointing at it.
    pub fn create(root: &Path) -> Result<Self> {
        let io = |what: &str, p: &Path, e: std::io::Error| Error::Io {
            path: p.to_owned(),
            reason: format!("cannot {what}: {e}"),
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root.join("tokens"))
            .map_err(|e| io("create the token folder", root, e))?;
        let root = fs::canonicalize(root).map_err(|e| io("resolve the SoftHSM folder", root, e))?;
        let tokens = root.join("tokens");
        fs::set_permissions(&tokens, fs::Permissions::from_mode(0o700))
            .map_err(|e| io("restrict the token folder", &tokens, e))?;
        let dir = SoftHsmDir { root };
        let conf = dir.conf_path();
        let text = format!(
            "# SoftHSM2 instance private to sitesign (written by sitesign)\n\
             directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        );
        fs::write(&conf, text).map_err(|e| io("write", &conf, e))?;
        Ok(dir)
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The `softhsm2.conf` to export as `SOFTHSM2_CONF`.
    pub fn conf_path(&self) -> PathBuf {
        self.root.join("softhsm2.conf")
    }

    /// SoftHSM's token directory.
    pub fn token_dir(&self) -> PathBuf {
        self.root.join("tokens")
    }
}
