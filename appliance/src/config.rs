//! The appliance's configuration file (`sitesign.toml`): serde + TOML with unknown keys refused,
//! validated into [`Config`]; every problem is reported with its key path in one pass.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hsm_adapters::{BackendConfig, BackendConfigFile, ConfigProblem};
use serde::Deserialize;

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Where the state database and audit log live.
    pub state_dir: Option<PathBuf>,
    /// Key backends by name (`[backends.NAME]`).
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfigFile>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the state database and audit log live (absolute).
    pub state_dir: PathBuf,
    /// Key backends by name.
    pub backends: BTreeMap<String, BackendConfig>,
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("configuration {path} is not valid: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file parsed but its values are not usable.
    #[error("configuration {path} has {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem, with its key path.
        problems: Vec<ConfigProblem>,
    },
}

impl ConfigFile {
    /// Validates into a [`Config`]; `base` resolves relative paths (the config file's folder).
    pub fn validate(&self, base: &Path) -> Result<Config, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let state_dir = match &self.state_dir {
            Some(p) if p.is_absolute() => p.clone(),
            Some(p) => base.join(p),
            None => {
                problems.push(ConfigProblem {
                    path: "state_dir".into(),
                    message: "missing: set the folder for the state database and audit log".into(),
                });
                PathBuf::new()
            }
        };
        if self.backends.is_empty() {
            problems.push(ConfigProblem {
                path: "backends".into(),
                message: "no key backend configured: add a [backends.NAME] table".into(),
            });
        }
        let mut backends = BTreeMap::new();
        for (name, raw) in &self.backends {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                problems.push(ConfigProblem {
                    path: format!("backends.{name}"),
                    message: "backend names use letters, digits, '-' and '_'".into(),
                });
            }
            match raw.validate(&format!("backends.{name}")) {
                Ok(b) => {
                    backends.insert(name.clone(), b);
                }
                Err(mut p) => problems.append(&mut p),
            }
        }
        if problems.is_empty() { Ok(Config { state_dir, backends }) } else { Err(problems) }
    }
}

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text that was read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file: ConfigFile =
            toml::from_str(text).map_err(|e| ConfigError::Syntax { path: path.to_owned(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        file.validate(base).map_err(|problems| ConfigError::Invalid { path: path.to_owned(), problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_config_is_valid_apart_from_machine_specific_paths() {
        let text = include_str!("../../sitesign.sample.toml");
        match Config::parse(text, Path::new("/etc/sitesign/sitesign.toml")) {
            Ok(c) => assert!(c.backends.contains_key("hsm")),
            // On a machine without SoftHSM the module path is the only acceptable complaint.
            Err(ConfigError::Invalid { problems, .. }) => {
                assert!(problems.iter().all(|p| p.path.ends_with(".module")), "{problems:?}")
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let text = "[backends.\"bad name\"]\nkind = \"pkcs11\"\ntoken_label = \"t\"\npin_file = \"/p\"\nmodule = \"/bin/sh\"\n";
        let err = Config::parse(text, Path::new("/x/sitesign.toml")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else { panic!("{err}") };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["state_dir", "backends.bad name"]);
    }

    #[test]
    fn syntax_errors_and_unknown_keys_name_the_place() {
        let err = Config::parse("state_dir = \"/var/lib/sitesign\"\nlisten = 3\n", Path::new("/x.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown field `listen`") && msg.contains("line 2"), "{msg}");
    }
}
