//! IBM opencryptoki's soft token (Debian's `opencryptoki`), the second PKCS#11 module of the
//! compatibility matrix. Unlike SoftHSM it is one system-wide service: a `pkcsslotd` daemon (the
//! harness starts it if it is not running), a fixed configuration (`/etc/opencryptoki`) and one
//! soft token in slot 3. So its tests take a lock, one at a time across processes, and each
//! re-initialises the token — label, SO PIN and a new user PIN — which wipes the previous test's
//! keys.

use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use hsm_adapters::pkcs11::Pkcs11Backend;
use hsm_adapters::{KeyAlgorithm, KeyBackend, PinSource, Pkcs11Config, TokenSelector};
use secrecy::SecretString;

use crate::{Fixture, TOKEN_LABEL, write_secret_file};

/// Debian's opencryptoki PKCS#11 library.
pub const MODULE: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so";
/// The soft token's slot in Debian's `/etc/opencryptoki/opencryptoki.conf`.
pub const SOFT_TOKEN_SLOT: u64 = 3;
/// opencryptoki's default SO PIN (its documentation's); the test token keeps it.
pub const SO_PIN: &str = "87654321";
/// Serialises the tests that use the one soft token.
const LOCK: &str = "/tmp/sitesign-opencryptoki.lock";

/// Whether the module is installed.
pub fn installed() -> bool {
    Path::new(MODULE).is_file()
}

/// The slot configuration the tests need: the soft token alone, in slot 3. Debian's default
/// also lists TPM, ICA, CCA and EP11 tokens, whose libraries are absent or need hardware; an
/// operator configures the slots they use, and so does the harness.
pub const CONFIG: &str = "/etc/opencryptoki/opencryptoki.conf";
const SOFT_ONLY: &str = "version opencryptoki-3.1\n\n# Written by sitesign's test harness: the soft token only.\nslot 3\n{\nstdll = libpkcs11_sw.so\n}\n";

fn running() -> bool {
    Command::new("pgrep")
        .args(["-x", "pkcsslotd"])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Configures the soft token alone and starts `pkcsslotd` unless it runs with that
/// configuration (it daemonises itself).
pub fn ensure_slot_daemon() {
    if fs::read_to_string(CONFIG).unwrap_or_default() != SOFT_ONLY {
        fs::write(CONFIG, SOFT_ONLY).expect("write opencryptoki's slot configuration (the tests run as root)");
        let _ = Command::new("pkill").args(["-x", "pkcsslotd"]).status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while running() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    if !running() {
        let status = Command::new("pkcsslotd").status().expect("run pkcsslotd (apt-get install opencryptoki)");
        assert!(status.success(), "pkcsslotd failed to start: {status}");
    }
}

/// An 8-character random PIN: opencryptoki's soft token takes 4 to 8.
fn short_pin() -> SecretString {
    use secrecy::ExposeSecret;
    let long = hsm_adapters::random_secret().expect("the system random generator");
    SecretString::from(long.expose_secret()[..8].to_owned())
}

/// Initialises the soft token: label [`TOKEN_LABEL`], SO PIN [`SO_PIN`], user PIN `user_pin`.
/// Wipes every object on it. Done by `pkcs11-tool` in processes of its own, so that the test
/// process loads the module once (opencryptoki 3.8.1 crashes when a process unloads it and loads
/// it again; sitesign never unloads a module, but a raw cryptoki context here would).
pub fn initialise_token(user_pin: &SecretString) {
    use secrecy::ExposeSecret;
    let slot = SOFT_TOKEN_SLOT.to_string();
    let tool = |args: &[&str]| {
        let out = Command::new("pkcs11-tool").args(["--module", MODULE, "--slot", &slot]).args(args).output().unwrap();
        assert!(out.status.success(), "pkcs11-tool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    tool(&["--init-token", "--label", TOKEN_LABEL, "--so-pin", SO_PIN]);
    // pkcs11-tool takes PINs only as arguments; these are a throwaway test token's.
    tool(&["--login", "--login-type", "so", "--so-pin", SO_PIN, "--init-pin", "--pin", user_pin.expose_secret()]);
}

/// The soft token, freshly initialised for one test, held for it alone.
#[derive(Debug)]
pub struct Ock {
    work_dir: PathBuf,
    pin_file: PathBuf,
    /// The lock, released when the test's process ends.
    _lock: fs::File,
}

impl Ock {
    /// Takes the token, starts the daemon if needed, and initialises the token.
    pub fn create(work_dir: PathBuf) -> Ock {
        assert!(installed(), "{MODULE} not found: install opencryptoki (bash scripts/install-deps does)");
        let lock = fs::OpenOptions::new().create(true).truncate(false).write(true).open(LOCK).unwrap();
        rustix::fs::flock(lock.as_fd(), rustix::fs::FlockOperation::LockExclusive).unwrap();
        ensure_slot_daemon();
        let pin = short_pin();
        initialise_token(&pin);
        let pin_file = work_dir.join("user.pin");
        write_secret_file(&pin_file, secrecy::ExposeSecret::expose_secret(&pin).as_bytes());
        Ock { work_dir, pin_file, _lock: lock }
    }

    /// The file holding the token's user PIN (mode 0600).
    pub fn pin_file(&self) -> &Path {
        &self.pin_file
    }

    /// A backend configuration for the token.
    pub fn config(&self, sessions: usize) -> Pkcs11Config {
        Pkcs11Config {
            module: MODULE.into(),
            token: TokenSelector::Label(TOKEN_LABEL.into()),
            pin: PinSource::File(self.pin_file.clone()),
            sessions: std::num::NonZeroUsize::new(sessions).unwrap(),
            environment: Vec::new(),
        }
    }
}

impl Fixture for Ock {
    fn kind(&self) -> &'static str {
        "opencryptoki"
    }
    fn work_dir(&self) -> &Path {
        &self.work_dir
    }
    fn open(&self) -> Arc<dyn KeyBackend> {
        Arc::new(Pkcs11Backend::open(self.config(2)).expect("open the opencryptoki token"))
    }
    fn open_with_secret(&self, secret: &[u8]) -> Result<Arc<dyn KeyBackend>, hsm_adapters::Error> {
        crate::open_with_pin(self.config(1), &self.work_dir, secret)
    }
    fn algorithms(&self) -> Vec<KeyAlgorithm> {
        // Debian's build of the soft token has no elliptic curves.
        vec![KeyAlgorithm::Rsa2048, KeyAlgorithm::Rsa3072, KeyAlgorithm::Rsa4096]
    }
    fn device_down(&self) {
        unreachable!("not run on opencryptoki: NOT_ON")
    }
    fn device_up(&self) {
        unreachable!("not run on opencryptoki: NOT_ON")
    }
}
