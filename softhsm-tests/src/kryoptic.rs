//! Kryoptic (latchset's PKCS#11 soft token, written in Rust on OpenSSL; crates.io `kryoptic`),
//! the third PKCS#11 module of the compatibility matrix. Not packaged by Debian 12, so
//! `bash scripts/kryoptic` builds it from crates.io into `target/kryoptic` (tools/kryoptic).
//! Like SoftHSM it keeps its tokens where its configuration says — named by `KRYOPTIC_CONF`,
//! which the harness sets for every test process — so each test has a token of its own in its
//! own folder, and tests run in parallel.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hsm_adapters::pkcs11::Pkcs11Backend;
use hsm_adapters::pkcs11::token::initialize_token;
use hsm_adapters::{KeyAlgorithm, KeyBackend, PinSource, Pkcs11Config, TokenSelector};

use crate::{Fixture, TOKEN_LABEL, random_pin, write_secret_file};

/// The environment variable naming Kryoptic's configuration file.
pub const CONF_ENV: &str = "KRYOPTIC_CONF";

/// The module `bash scripts/kryoptic` builds (or `KRYOPTIC_MODULE`).
pub fn module() -> PathBuf {
    std::env::var_os("KRYOPTIC_MODULE").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/kryoptic/release/libkryoptic_pkcs11.so")
    })
}

/// Whether the module has been built.
pub fn installed() -> bool {
    module().is_file()
}

/// Kryoptic's configuration for one token in `dir`: slot 1, an SQLite token database.
pub fn config_text(dir: &Path) -> String {
    format!("[[slots]]\nslot = 1\ndbtype = \"sqlite\"\ndbargs = \"{}\"\n", dir.join("kryoptic-token.sql").display())
}

/// Where the configuration of a test in `dir` goes (what `KRYOPTIC_CONF` names).
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("kryoptic.conf")
}

/// A fresh Kryoptic token for one test.
#[derive(Debug)]
pub struct Kryoptic {
    work_dir: PathBuf,
    pin_file: PathBuf,
}

impl Kryoptic {
    /// Writes the configuration (if the harness has not) and initialises the token: label
    /// [`TOKEN_LABEL`], random SO and user PINs. This process must run with `KRYOPTIC_CONF` set
    /// to [`config_path`] of `work_dir`.
    pub fn create(work_dir: PathBuf) -> Kryoptic {
        assert!(installed(), "{} not found: bash scripts/kryoptic builds it", module().display());
        let conf = config_path(&work_dir);
        assert_eq!(std::env::var_os(CONF_ENV).as_deref(), Some(conf.as_os_str()), "run with {CONF_ENV}");
        if !conf.exists() {
            std::fs::write(&conf, config_text(&work_dir)).unwrap();
        }
        let (so_pin, user_pin) = (random_pin(), random_pin());
        initialize_token(&module(), TOKEN_LABEL, &so_pin, &user_pin).expect("initialise the Kryoptic token");
        let pin_file = work_dir.join("user.pin");
        write_secret_file(&pin_file, secrecy::ExposeSecret::expose_secret(&user_pin).as_bytes());
        Kryoptic { work_dir, pin_file }
    }

    /// A token for a test that runs sitesign's programs in processes of their own (the test
    /// process itself never loads the module): the configuration written in `work_dir`, the token
    /// initialised by `pkcs11-tool` with `KRYOPTIC_CONF` set for it alone.
    pub fn prepare(work_dir: PathBuf) -> Kryoptic {
        use secrecy::ExposeSecret;
        assert!(installed(), "{} not found: bash scripts/kryoptic builds it", module().display());
        let conf = config_path(&work_dir);
        std::fs::write(&conf, config_text(&work_dir)).unwrap();
        let (so_pin, user_pin) = (random_pin(), random_pin());
        let tool = |args: &[&str]| {
            let out = std::process::Command::new("pkcs11-tool")
                .env(CONF_ENV, &conf)
                .arg("--module")
                .arg(module())
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "pkcs11-tool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        // pkcs11-tool takes PINs only as arguments; these are a throwaway test token's.
        tool(&["--init-token", "--label", TOKEN_LABEL, "--so-pin", so_pin.expose_secret()]);
        let (so, user) = (so_pin.expose_secret(), user_pin.expose_secret());
        tool(&[
            "--token-label",
            TOKEN_LABEL,
            "--login",
            "--login-type",
            "so",
            "--so-pin",
            so,
            "--init-pin",
            "--pin",
            user,
        ]);
        let pin_file = work_dir.join("user.pin");
        write_secret_file(&pin_file, user.as_bytes());
        Kryoptic { work_dir, pin_file }
    }

    /// The configuration file (what `KRYOPTIC_CONF` must name).
    pub fn conf(&self) -> PathBuf {
        config_path(&self.work_dir)
    }

    /// The file holding the token's user PIN (mode 0600).
    pub fn pin_file(&self) -> &Path {
        &self.pin_file
    }

    /// A backend configuration for the token.
    pub fn config(&self, sessions: usize) -> Pkcs11Config {
        Pkcs11Config {
            module: module(),
            token: TokenSelector::Label(TOKEN_LABEL.into()),
            pin: PinSource::File(self.pin_file.clone()),
            sessions: std::num::NonZeroUsize::new(sessions).unwrap(),
            environment: vec![(CONF_ENV.into(), config_path(&self.work_dir).display().to_string())],
        }
    }
}

impl Fixture for Kryoptic {
    fn kind(&self) -> &'static str {
        "kryoptic"
    }
    fn work_dir(&self) -> &Path {
        &self.work_dir
    }
    fn open(&self) -> Arc<dyn KeyBackend> {
        Arc::new(Pkcs11Backend::open(self.config(2)).expect("open the Kryoptic token"))
    }
    fn open_with_secret(&self, secret: &[u8]) -> Result<Arc<dyn KeyBackend>, hsm_adapters::Error> {
        crate::open_with_pin(self.config(1), &self.work_dir, secret)
    }
    fn algorithms(&self) -> Vec<KeyAlgorithm> {
        KeyAlgorithm::ALL.to_vec()
    }
    fn device_down(&self) {
        unreachable!("not run on Kryoptic: NOT_ON")
    }
    fn device_up(&self) {
        unreachable!("not run on Kryoptic: NOT_ON")
    }
}
