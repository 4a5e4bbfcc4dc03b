//! Backend configuration: the raw TOML shape (an internally tagged enum, unknown keys refused) and
//! the validated, typed form built from it. Validation reports every problem with its key path, so
//! an operator fixes a config file in one pass.

use std::fmt;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::pin::PinSource;

/// Debian's SoftHSM2 module, the default when no module is configured.
pub const DEFAULT_PKCS11_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Most sessions a PKCS#11 backend may open (more would only queue inside the device).
pub const MAX_SESSIONS: usize = 256;

/// One `[backends.NAME]` table as written in the config file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[non_exhaustive]
pub enum BackendConfigFile {
    /// `kind = "pkcs11"`
    Pkcs11(Pkcs11ConfigFile),
    /// `kind = "tpm"`
    Tpm(TpmConfigFile),
}

/// The keys of a `kind = "tpm"` backend table.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TpmConfigFile {
    /// TCTI: `device:/dev/tpmrm0` (default), `swtpm:host=127.0.0.1,port=2321`, `tabrmd`.
    pub tcti: Option<String>,
    /// Persistent handle of the storage primary key (SRK), created if absent; default 0x81000001.
    pub parent_handle: Option<String>,
    /// Folder for TPM-wrapped key blobs (`tpm:object=NAME` keys).
    pub key_dir: Option<PathBuf>,
    /// File holding the keys' auth value (mode 0600). Keys get an auth value by default: one of
    /// this, `auth_credential` or `empty_auth = true` is required.
    pub auth_file: Option<PathBuf>,
    /// Systemd credential holding the keys' auth value, instead of `auth_file`.
    pub auth_credential: Option<String>,
    /// Opt out of an auth value: anyone who can read the key blobs and reach the TPM can sign
    /// with the keys. Default false.
    pub empty_auth: Option<bool>,
    /// Requests that may wait for the TPM before callers block; default 64.
    pub queue_depth: Option<usize>,
}

/// The environment variables `environment` may set: where vendors' PKCS#11 modules read their
/// own configuration from. Nothing else — `LD_PRELOAD`, `LD_LIBRARY_PATH` and the like would
/// change what code runs with the PIN.
pub const MODULE_ENVIRONMENT: &[&str] = &[
    "SOFTHSM2_CONF",              // SoftHSM2
    "ChrystokiConfigurationPath", // Thales Luna
    "NFAST_HOME",                 // Entrust nShield
    "CS_PKCS11_R2_CFG",           // Utimaco CryptoServer
    "CS_PKCS11_R3_CFG",           // Utimaco u.trust
    "YUBIHSM_PKCS11_CONF",        // Yubico YubiHSM 2
    "OPENSC_CONF",                // OpenSC
    "KRYOPTIC_CONF",              // Kryoptic
];

/// The keys of a `kind = "pkcs11"` backend table.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11ConfigFile {
    /// Path of the PKCS#11 module; default Debian's SoftHSM2.
    pub module: Option<PathBuf>,
    /// Label of the token (preferred: slot numbers move).
    pub token_label: Option<String>,
    /// Serial number of the token, instead of the label.
    pub token_serial: Option<String>,
    /// File holding the user PIN (mode 0600).
    pub pin_file: Option<PathBuf>,
    /// Name of the systemd credential holding the user PIN, instead of `pin_file`.
    pub pin_credential: Option<String>,
    /// Sessions to open, one per signing worker; default: the number of CPUs.
    pub sessions: Option<usize>,
    /// Environment variables the module reads its own configuration from (SoftHSM2:
    /// `SOFTHSM2_CONF`). sitesign's programs set them for themselves before loading the module.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub environment: std::collections::BTreeMap<String, String>,
}

/// A configuration problem: the key path and what is wrong there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key path, e.g. `backends.hsm.pin_file`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// How to find the token in the module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSelector {
    /// By `CKA_LABEL` of the token (trailing blanks ignored).
    Label(String),
    /// By serial number (trailing blanks ignored).
    Serial(String),
}

impl fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSelector::Label(l) => write!(f, "label {l:?}"),
            TokenSelector::Serial(s) => write!(f, "serial {s:?}"),
        }
    }
}

/// A validated PKCS#11 backend configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module.
    pub module: PathBuf,
    /// Which token to use.
    pub token: TokenSelector,
    /// Where the user PIN comes from.
    pub pin: PinSource,
    /// Sessions in the pool.
    pub sessions: NonZeroUsize,
    /// Environment variables the module needs (see [`Pkcs11ConfigFile::environment`]).
    pub environment: Vec<(String, String)>,
}

/// A validated TPM backend configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmConfig {
    /// How to reach the TPM.
    pub tcti: tss_esapi::tcti_ldr::TctiNameConf,
    /// Persistent handle of the storage primary key.
    pub parent_handle: u32,
    /// Folder for wrapped key blobs.
    pub key_dir: PathBuf,
    /// Where the keys' auth value comes from; `None` for an empty auth value.
    pub auth: Option<PinSource>,
    /// Bound of the request queue in front of the TPM's owner thread.
    pub queue_depth: NonZeroUsize,
}

/// The default TCTI: the kernel's resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";
/// The default persistent handle of the storage primary key (TCG's conventional SRK handle).
pub const DEFAULT_SRK_HANDLE: u32 = 0x8100_0001;

/// A validated backend configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendConfig {
    /// A PKCS#11 token.
    Pkcs11(Pkcs11Config),
    /// A TPM 2.0.
    Tpm(TpmConfig),
}

/// The default session count: one per CPU.
pub fn default_sessions() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

impl BackendConfig {
    /// Environment variables this backend's module needs set before it is loaded.
    pub fn environment(&self) -> &[(String, String)] {
        match self {
            BackendConfig::Pkcs11(c) => &c.environment,
            BackendConfig::Tpm(_) => &[],
        }
    }
}

impl BackendConfigFile {
    /// Validates this table, found at key path `at`, into a [`BackendConfig`].
    ///
    /// Returns every problem found, not only the first.
    pub fn validate(&self, at: &str) -> Result<BackendConfig, Vec<ConfigProblem>> {
        match self {
            BackendConfigFile::Pkcs11(raw) => raw.validate(at).map(BackendConfig::Pkcs11),
            BackendConfigFile::Tpm(raw) => raw.validate(at).map(BackendConfig::Tpm),
        }
    }
}

impl TpmConfigFile {
    fn validate(&self, at: &str) -> Result<TpmConfig, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| {
            problems.push(ConfigProblem { path: format!("{at}.{key}"), message });
        };
        let tcti_text = self.tcti.as_deref().unwrap_or(DEFAULT_TCTI);
        let tcti = match tcti_text.parse::<tss_esapi::tcti_ldr::TctiNameConf>() {
            Ok(t) => Some(t),
            Err(_) => {
                problem(
                    "tcti",
                    format!(
                        "{tcti_text:?} is not a TCTI (use device:/dev/tpmrm0, swtpm:host=127.0.0.1,port=2321 or tabrmd)"
                    ),
                );
                None
            }
        };
        let parent_handle = match self.parent_handle.as_deref() {
            None => Some(DEFAULT_SRK_HANDLE),
            // Hex digits only: `from_str_radix` would also take a sign (`0x+81000001`).
            Some(h) => match h
                .strip_prefix("0x")
                .filter(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|x| u32::from_str_radix(x, 16).ok())
            {
                Some(v) if v >> 24 == 0x81 => Some(v),
                _ => {
                    problem("parent_handle", format!("{h:?} is not a persistent handle (0x81000000 to 0x81FFFFFF)"));
                    None
                }
            },
        };
        let key_dir = match &self.key_dir {
            Some(d) if d.is_absolute() => Some(d.clone()),
            Some(d) => {
                problem("key_dir", format!("{} must be an absolute path", d.display()));
                None
            }
            None => {
                problem("key_dir", "missing: set the folder for TPM-wrapped key blobs".into());
                None
            }
        };
        let empty = self.empty_auth == Some(true);
        if empty && (self.auth_file.is_some() || self.auth_credential.is_some()) {
            problem("empty_auth", "empty_auth = true and an auth value: choose one".into());
        }
        let auth = match (&self.auth_file, &self.auth_credential) {
            (None, None) if empty => Some(None),
            (None, None) => {
                problem(
                    "auth_file",
                    "missing: TPM keys get an auth value — set auth_file (a file of the sitesign user, mode 0600; `sitesign init` creates it if absent) or auth_credential, or opt out with empty_auth = true (then whoever can read the key blobs and reach the TPM can sign)".into(),
                );
                None
            }
            (Some(p), None) if p.is_absolute() => Some(Some(PinSource::File(p.clone()))),
            (Some(p), None) => {
                problem("auth_file", format!("{} must be an absolute path", p.display()));
                None
            }
            (None, Some(c)) if !c.is_empty() && !c.contains('/') => Some(Some(PinSource::Credential(c.clone()))),
            (None, Some(_)) => {
                problem("auth_credential", "must be a credential name without '/'".into());
                None
            }
            (Some(_), Some(_)) => {
                problem("auth_credential", "set auth_file or auth_credential, not both".into());
                None
            }
        };
        let queue_depth = match self.queue_depth {
            None => NonZeroUsize::new(64),
            Some(n) if (1..=65_536).contains(&n) => NonZeroUsize::new(n),
            Some(n) => {
                problem("queue_depth", format!("{n} is out of range 1..=65536"));
                None
            }
        };
        match (tcti, parent_handle, key_dir, auth, queue_depth) {
            (Some(tcti), Some(parent_handle), Some(key_dir), Some(auth), Some(queue_depth)) if problems.is_empty() => {
                Ok(TpmConfig { tcti, parent_handle, key_dir, auth, queue_depth })
            }
            _ => Err(problems),
        }
    }
}

impl Pkcs11ConfigFile {
    fn validate(&self, at: &str) -> Result<Pkcs11Config, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| {
            problems.push(ConfigProblem { path: format!("{at}.{key}"), message });
        };
        let module = self.module.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_PKCS11_MODULE));
        if !module.is_absolute() {
            problem("module", format!("{} must be an absolute path", module.display()));
        } else if !module.is_file() {
            problem(
                "module",
                format!("{} does not exist; install the vendor's PKCS#11 library or fix the path", module.display()),
            );
        }
        let token = match (&self.token_label, &self.token_serial) {
            (Some(l), None) if !l.trim().is_empty() && l.len() <= 32 => Some(TokenSelector::Label(l.clone())),
            (Some(_), None) => {
                problem("token_label", "must be 1 to 32 characters (a PKCS#11 token label)".into());
                None
            }
            (None, Some(s)) if !s.trim().is_empty() && s.len() <= 16 => Some(TokenSelector::Serial(s.clone())),
            (None, Some(_)) => {
                problem("token_serial", "must be 1 to 16 characters (a PKCS#11 serial number)".into());
                None
            }
            (Some(_), Some(_)) => {
                problem("token_serial", "set token_label or token_serial, not both".into());
                None
            }
            (None, None) => {
                problem("token_label", "missing: set token_label (preferred) or token_serial".into());
                None
            }
        };
        let pin = match (&self.pin_file, &self.pin_credential) {
            (Some(p), None) if p.is_absolute() => Some(PinSource::File(p.clone())),
            (Some(p), None) => {
                problem("pin_file", format!("{} must be an absolute path", p.display()));
                None
            }
            (None, Some(c)) if !c.is_empty() && !c.contains('/') => Some(PinSource::Credential(c.clone())),
            (None, Some(_)) => {
                problem("pin_credential", "must be a credential name without '/'".into());
                None
            }
            (Some(_), Some(_)) => {
                problem("pin_credential", "set pin_file or pin_credential, not both".into());
                None
            }
            (None, None) => {
                problem("pin_file", "missing: set pin_file (a 0600 file) or pin_credential (systemd)".into());
                None
            }
        };
        let sessions = match self.sessions {
            None => Some(default_sessions()),
            Some(n) if (1..=MAX_SESSIONS).contains(&n) => NonZeroUsize::new(n),
            Some(n) => {
                problem("sessions", format!("{n} is out of range 1..={MAX_SESSIONS}"));
                None
            }
        };
        for (name, value) in &self.environment {
            let secretish = ["PIN", "PASS", "SECRET", "KEY"].iter().any(|w| name.to_ascii_uppercase().contains(w));
            if !MODULE_ENVIRONMENT.contains(&name.as_str()) {
                problem(
                    &format!("environment.{name}"),
                    format!(
                        "not a variable a PKCS#11 module reads its configuration from (LD_* and the like would change what code runs with the PIN); allowed: {}",
                        MODULE_ENVIRONMENT.join(", ")
                    ),
                );
            } else if secretish {
                problem(&format!("environment.{name}"), "secrets never go in the environment; use pin_file".into());
            } else if value.contains('\0') {
                problem(&format!("environment.{name}"), "the value contains a NUL byte".into());
            }
        }
        let environment = self.environment.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        match (token, pin, sessions) {
            (Some(token), Some(pin), Some(sessions)) if problems.is_empty() => {
                Ok(Pkcs11Config { module, token, pin, sessions, environment })
            }
            _ => Err(problems),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        backends: std::collections::BTreeMap<String, BackendConfigFile>,
    }

    fn parse(text: &str) -> Result<Doc, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn valid_pkcs11_table() {
        let doc = parse(
            r#"
            [backends.hsm]
            kind = "pkcs11"
            module = "/bin/sh"
            token_label = "sitesign"
            pin_file = "/etc/sitesign/pin"
            sessions = 4
            "#,
        )
        .unwrap();
        let cfg = doc.backends["hsm"].validate("backends.hsm").unwrap();
        let BackendConfig::Pkcs11(p) = cfg else { panic!("{cfg:?}") };
        assert_eq!(p.token, TokenSelector::Label("sitesign".into()));
        assert_eq!(p.pin, PinSource::File("/etc/sitesign/pin".into()));
        assert_eq!(p.sessions.get(), 4);
    }

    #[test]
    fn module_environment_is_an_allow_list() {
        let table = |env: &str| {
            format!(
                "[backends.hsm]\nkind = \"pkcs11\"\ntoken_label = \"t\"\npin_file = \"/p\"\nenvironment = {{ {env} }}\n"
            )
        };
        let ok = parse(&table("SOFTHSM2_CONF = \"/etc/softhsm2.conf\"")).unwrap();
        assert!(ok.backends["hsm"].validate("backends.hsm").is_ok());
        for bad in ["LD_PRELOAD = \"/tmp/x.so\"", "LD_LIBRARY_PATH = \"/tmp\"", "PATH = \"/tmp\""] {
            let problems = parse(&table(bad)).unwrap().backends["hsm"].validate("backends.hsm").unwrap_err();
            assert!(problems[0].path.starts_with("backends.hsm.environment."), "{bad}: {problems:?}");
            assert!(problems[0].message.contains("SOFTHSM2_CONF"), "names what is allowed: {problems:?}");
        }
    }

    #[test]
    fn valid_and_invalid_tpm_tables() {
        let doc = parse(
            "[backends.tpm]\nkind = \"tpm\"\ntcti = \"swtpm:host=127.0.0.1,port=2321\"\nkey_dir = \"/var/lib/sitesign/tpm\"\nauth_file = \"/etc/sitesign/tpm.auth\"\n",
        )
        .unwrap();
        let BackendConfig::Tpm(t) = doc.backends["tpm"].validate("backends.tpm").unwrap() else { panic!() };
        assert_eq!(t.parent_handle, DEFAULT_SRK_HANDLE);
        assert_eq!(t.auth, Some(PinSource::File("/etc/sitesign/tpm.auth".into())));
        // No auth value: refused unless opted out of.
        let bare = "[backends.tpm]\nkind = \"tpm\"\nkey_dir = \"/var/lib/sitesign/tpm\"\n";
        let problems = parse(bare).unwrap().backends["tpm"].validate("backends.tpm").unwrap_err();
        assert_eq!(problems[0].path, "backends.tpm.auth_file");
        let opted = parse(&format!("{bare}empty_auth = true\n")).unwrap();
        let BackendConfig::Tpm(t) = opted.backends["tpm"].validate("backends.tpm").unwrap() else { panic!() };
        assert_eq!(t.auth, None);
        let doc =
            parse("[backends.tpm]\nkind = \"tpm\"\ntcti = \"serial:/dev/ttyS0\"\nparent_handle = \"0x01000001\"\n")
                .unwrap();
        let problems = doc.backends["tpm"].validate("backends.tpm").unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            ["backends.tpm.tcti", "backends.tpm.parent_handle", "backends.tpm.key_dir", "backends.tpm.auth_file"]
        );
        // Hex digits only (noticed beside the key URI fuzz finding: `from_str_radix` takes a sign).
        for bad in ["0x+81000001", "0x", "0x81 000001"] {
            let doc = parse(&format!("{bare}empty_auth = true\nparent_handle = \"{bad}\"\n")).unwrap();
            let problems = doc.backends["tpm"].validate("backends.tpm").unwrap_err();
            assert_eq!(problems[0].path, "backends.tpm.parent_handle", "{bad}");
        }
    }

    #[test]
    fn unknown_keys_and_kinds_are_refused() {
        let err = parse("[backends.hsm]\nkind = \"pkcs11\"\ntoken_label = \"t\"\npin = \"1234\"\n").err().unwrap();
        assert!(err.to_string().contains("unknown field `pin`"), "{err}");
        assert!(parse("[backends.hsm]\nkind = \"floppy\"\n").is_err());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let doc =
            parse("[backends.hsm]\nkind = \"pkcs11\"\nmodule = \"relative.so\"\nsessions = 0\npin_file = \"pin\"\n")
                .unwrap();
        let problems = doc.backends["hsm"].validate("backends.hsm").unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            ["backends.hsm.module", "backends.hsm.token_label", "backends.hsm.pin_file", "backends.hsm.sessions"]
        );
    }
}
