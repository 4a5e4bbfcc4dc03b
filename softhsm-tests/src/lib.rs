//! Test harness for sitesign's integration tests against real devices: SoftHSM2 tokens and swtpm
//! TPMs.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once, when the module is initialised, and a process can load it
//! only once; so every test runs in its own child process with its own configuration and token
//! directory (or its own swtpm) in a fresh temporary directory. A test binary built on this
//! harness (`harness = false`) calls [`main`] with its list of tests: in the parent it behaves
//! like libtest (filters, `--list`, `--exact`, the usual summary line) and runs each test by
//! re-executing itself; in the child it creates the device and runs the one test.
//!
//! A [`Body::Both`] test is written once against [`Fixture`] and runs as `softhsm::NAME`,
//! `swtpm::NAME`, `opencryptoki::NAME` (IBM's soft token, [`opencryptoki`]) and `kryoptic::NAME`
//! (latchset's soft token, [`kryoptic`]): the conformance suite. The PKCS#11 module comes from `PKCS11_MODULE`, default
//! Debian's SoftHSM2.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test harness: a failure is a test failure")]

pub mod kryoptic;
pub mod opencryptoki;
pub mod postgres;
pub mod pytools;
pub mod swtpm;
pub mod verify;

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;

use hsm_adapters::pkcs11::Pkcs11Backend;
use hsm_adapters::pkcs11::softhsm::SoftHsmDir;
use hsm_adapters::pkcs11::token::initialize_token;
use hsm_adapters::tpm::TpmBackend;
use hsm_adapters::{KeyAlgorithm, KeyBackend, TpmConfig};
use hsm_adapters::{PinSource, Pkcs11Config, TokenSelector};
use libtest_mimic::{Arguments, Failed, Trial};
use secrecy::SecretString;

/// Set in a child process to the name of the one test it runs.
const CHILD_ENV: &str = "SITESIGN_TEST_CHILD";
/// Set in a helper process to the helper it runs (see [`run_helper`]).
const HELPER_ENV: &str = "SITESIGN_TEST_HELPER";

/// The token label every test token gets.
pub const TOKEN_LABEL: &str = "sitesign-test";

/// What a test runs against.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    /// A fresh SoftHSM token.
    SoftHsm(fn(&SoftHsm)),
    /// A fresh swtpm.
    Swtpm(fn(&TpmEnv)),
    /// Both, one after the other as two tests, through the backend trait only.
    Both(fn(&dyn Fixture)),
}

/// One integration test: a name and a body; the body panics to fail.
#[derive(Debug, Clone, Copy)]
pub struct Test {
    /// The test's name (prefixed `softhsm::` or `swtpm::` when listed).
    pub name: &'static str,
    /// The body.
    pub body: Body,
}

/// A device under test, seen through the backend trait: what the conformance suite needs.
pub trait Fixture {
    /// `softhsm` or `swtpm`.
    fn kind(&self) -> &'static str;
    /// The test's private folder.
    fn work_dir(&self) -> &Path;
    /// Opens a new backend on the device with the right secret.
    fn open(&self) -> Arc<dyn KeyBackend>;
    /// Opens a backend whose PIN / auth value is `secret` (a wrong one, in tests).
    fn open_with_secret(&self, secret: &[u8]) -> Result<Arc<dyn KeyBackend>, hsm_adapters::Error>;
    /// The algorithms this device must support.
    fn algorithms(&self) -> Vec<KeyAlgorithm>;
    /// Takes the device away (token unplugged, TPM process killed).
    fn device_down(&self);
    /// Brings it back, with its keys.
    fn device_up(&self);
    /// The second key kind the suite uses beside RSA-2048 PKCS#1: P-256 ECDSA where the device
    /// has it, else RSA-2048 with PSS (opencryptoki's soft token has no EC).
    fn alt(&self) -> (KeyAlgorithm, hsm_adapters::SignatureScheme) {
        if self.algorithms().contains(&KeyAlgorithm::EcP256) {
            (KeyAlgorithm::EcP256, hsm_adapters::SignatureScheme::EcdsaP256Sha256)
        } else {
            (KeyAlgorithm::Rsa2048, hsm_adapters::SignatureScheme::RsaPssSha256)
        }
    }
}

/// A helper the tests can run in a separate process against the same token directory (to change
/// the token behind the back of a backend open in the test process). It reads the SO PIN and the
/// user PIN from stdin, one per line.
#[derive(Debug, Clone, Copy)]
pub struct Helper {
    /// The helper's name.
    pub name: &'static str,
    /// The body.
    pub run: fn(&HelperEnv),
}

/// What a helper process gets.
#[derive(Debug)]
pub struct HelperEnv {
    /// The module path.
    pub module: PathBuf,
    /// The SO PIN of the test token.
    pub so_pin: SecretString,
    /// The user PIN of the test token.
    pub user_pin: SecretString,
    /// The test token's directory root (SoftHSM `directories.tokendir`).
    pub token_root: PathBuf,
    /// The test's working directory.
    pub work_dir: PathBuf,
}

/// The PKCS#11 module under test: `PKCS11_MODULE`, or Debian's SoftHSM2.
pub fn module_path() -> PathBuf {
    std::env::var_os("PKCS11_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(hsm_adapters::config::DEFAULT_PKCS11_MODULE))
}

pub(crate) fn random_pin() -> SecretString {
    hsm_adapters::random_secret().expect("the system random generator")
}

/// Writes `content` to a new file with mode 0600.
pub fn write_secret_file(path: &Path, content: &[u8]) {
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).unwrap();
    f.write_all(content).unwrap();
}

/// A fresh SoftHSM token for one test, in this process's own temporary directory.
#[derive(Debug)]
pub struct SoftHsm {
    module: PathBuf,
    work_dir: PathBuf,
    pin_file: PathBuf,
    so_pin: SecretString,
    user_pin: SecretString,
}

impl SoftHsm {
    fn create(work_dir: PathBuf) -> Self {
        let module = module_path();
        let so_pin = random_pin();
        let user_pin = random_pin();
        initialize_token(&module, TOKEN_LABEL, &so_pin, &user_pin).expect("initialise the test token");
        let pin_file = work_dir.join("user.pin");
        write_secret_file(&pin_file, secrecy::ExposeSecret::expose_secret(&user_pin).as_bytes());
        SoftHsm { module, work_dir, pin_file, so_pin, user_pin }
    }

    /// The test's private working directory.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// SoftHSM's token directory root for this test.
    pub fn token_root(&self) -> PathBuf {
        self.work_dir.join("tokens")
    }

    /// The file holding the user PIN (mode 0600).
    pub fn pin_file(&self) -> &Path {
        &self.pin_file
    }

    /// A session on the test token with raw cryptoki, outside sitesign's code, logged in as the
    /// user: for independent checks (and the known-answer test's key import).
    pub fn raw_session(&self, read_write: bool) -> cryptoki::session::Session {
        use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
        let ctx = Pkcs11::new(module_path()).unwrap();
        // The module may still be initialised in this process (backends do not finalise it).
        let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
        let slot = ctx
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| ctx.get_token_info(*s).unwrap().label() == TOKEN_LABEL)
            .unwrap();
        let session = if read_write { ctx.open_rw_session(slot) } else { ctx.open_ro_session(slot) }.unwrap();
        session.login(cryptoki::session::UserType::User, Some(self.user_pin())).unwrap();
        session
    }

    /// The user PIN, for independent checks with raw cryptoki.
    pub fn user_pin(&self) -> &SecretString {
        &self.user_pin
    }

    /// A backend configuration for the test token with `sessions` sessions.
    pub fn config(&self, sessions: usize) -> Pkcs11Config {
        Pkcs11Config {
            module: self.module.clone(),
            token: TokenSelector::Label(TOKEN_LABEL.into()),
            pin: PinSource::File(self.pin_file.clone()),
            sessions: std::num::NonZeroUsize::new(sessions).unwrap(),
            environment: Vec::new(),
        }
    }

    /// Opens a backend on the test token with two sessions.
    pub fn backend(&self) -> Arc<Pkcs11Backend> {
        Arc::new(Pkcs11Backend::open(self.config(2)).expect("open the test token"))
    }

    /// Runs helper `name` in a separate process against this test's token directory and waits
    /// for it; panics if it fails.
    pub fn run_helper(&self, name: &str) {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env_remove(CHILD_ENV)
            .env(HELPER_ENV, name)
            .env("SOFTHSM2_CONF", self.work_dir.join("softhsm2.conf"))
            .env("SITESIGN_TEST_DIR", &self.work_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use secrecy::ExposeSecret;
            let mut stdin = child.stdin.take().unwrap();
            writeln!(stdin, "{}\n{}", self.so_pin.expose_secret(), self.user_pin.expose_secret()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "helper {name} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Fixture for SoftHsm {
    fn kind(&self) -> &'static str {
        "softhsm"
    }
    fn work_dir(&self) -> &Path {
        &self.work_dir
    }
    fn open(&self) -> Arc<dyn KeyBackend> {
        self.backend()
    }
    fn open_with_secret(&self, secret: &[u8]) -> Result<Arc<dyn KeyBackend>, hsm_adapters::Error> {
        open_with_pin(self.config(1), &self.work_dir, secret)
    }
    fn algorithms(&self) -> Vec<KeyAlgorithm> {
        KeyAlgorithm::ALL.to_vec()
    }
    fn device_down(&self) {
        // "Unplug" the token: move its folder out of SoftHSM's token folder.
        let parked = self.work_dir.join("parked");
        fs::create_dir_all(&parked).unwrap();
        for token in fs::read_dir(self.token_root()).unwrap() {
            let token = token.unwrap();
            fs::rename(token.path(), parked.join(token.file_name())).unwrap();
        }
    }
    fn device_up(&self) {
        for token in fs::read_dir(self.work_dir.join("parked")).unwrap() {
            let token = token.unwrap();
            fs::rename(token.path(), self.token_root().join(token.file_name())).unwrap();
        }
    }
}

/// Opens a PKCS#11 backend with `config` but the PIN `secret` (written to a new file in `dir`).
pub(crate) fn open_with_pin(
    mut config: Pkcs11Config,
    dir: &Path,
    secret: &[u8],
) -> Result<Arc<dyn KeyBackend>, hsm_adapters::Error> {
    let path = dir.join(format!("other-{}.pin", unique()));
    write_secret_file(&path, secret);
    config.pin = PinSource::File(path);
    Ok(Arc::new(Pkcs11Backend::open(config)?))
}

pub(crate) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A fresh swtpm for one test, with a random auth value for its keys in a 0600 file.
#[derive(Debug)]
pub struct TpmEnv {
    work_dir: PathBuf,
    /// The running swtpm.
    pub swtpm: swtpm::Swtpm,
    auth_file: PathBuf,
}

impl TpmEnv {
    fn create(work_dir: PathBuf) -> Self {
        let swtpm = swtpm::Swtpm::start(&work_dir);
        let auth = random_pin();
        let auth_file = work_dir.join("tpm.auth");
        write_secret_file(&auth_file, secrecy::ExposeSecret::expose_secret(&auth).as_bytes());
        std::fs::create_dir_all(work_dir.join("keys")).unwrap();
        TpmEnv { work_dir, swtpm, auth_file }
    }

    /// The file holding the keys' auth value (mode 0600), for tpm2-tools' `-p file:PATH`.
    pub fn auth_file(&self) -> &Path {
        &self.auth_file
    }

    /// The folder holding wrapped key blobs.
    pub fn key_dir(&self) -> PathBuf {
        self.work_dir.join("keys")
    }

    /// A backend configuration for this swtpm.
    pub fn config(&self) -> TpmConfig {
        TpmConfig {
            tcti: self.swtpm.tcti().parse().unwrap(),
            parent_handle: hsm_adapters::config::DEFAULT_SRK_HANDLE,
            key_dir: self.key_dir(),
            auth: Some(PinSource::File(self.auth_file.clone())),
            queue_depth: std::num::NonZeroUsize::new(64).unwrap(),
        }
    }

    /// Opens a backend on this swtpm.
    pub fn backend(&self) -> Arc<TpmBackend> {
        Arc::new(TpmBackend::open(self.config()).expect("open the swtpm backend"))
    }
}

impl Fixture for TpmEnv {
    fn kind(&self) -> &'static str {
        "swtpm"
    }
    fn work_dir(&self) -> &Path {
        &self.work_dir
    }
    fn open(&self) -> Arc<dyn KeyBackend> {
        self.backend()
    }
    fn open_with_secret(&self, secret: &[u8]) -> Result<Arc<dyn KeyBackend>, hsm_adapters::Error> {
        let path = self.work_dir.join(format!("other-{}.auth", unique()));
        write_secret_file(&path, secret);
        let mut config = self.config();
        config.auth = Some(PinSource::File(path));
        Ok(Arc::new(TpmBackend::open(config)?))
    }
    fn algorithms(&self) -> Vec<KeyAlgorithm> {
        // swtpm (libtpms 0.9) offers RSA up to 3072 bits.
        vec![KeyAlgorithm::Rsa2048, KeyAlgorithm::Rsa3072, KeyAlgorithm::EcP256]
    }
    fn device_down(&self) {
        self.swtpm.stop();
    }
    fn device_up(&self) {
        self.swtpm.restart();
    }
}

/// Conformance tests not run on a module, and why (docs/backends.md's matrix says so too):
/// (module, test, reason).
pub const NOT_ON: &[(&str, &str, &str)] = &[
    (
        "opencryptoki",
        "a_device_restart_is_survived_without_reopening",
        "its soft token runs inside the application's process: there is no device to take away (killing pkcsslotd does not stop it signing)",
    ),
    (
        "kryoptic",
        "a_device_restart_is_survived_without_reopening",
        "a soft token inside the application's process, its database held open: there is no device to take away",
    ),
];

/// The PKCS#11 modules beside SoftHSM that every conformance test runs on.
const OTHER_MODULES: &[&str] = &["opencryptoki", "kryoptic"];

/// The trial names a test runs as.
fn trial_names(test: &Test) -> Vec<String> {
    match test.body {
        Body::SoftHsm(_) => vec![format!("softhsm::{}", test.name)],
        Body::Swtpm(_) => vec![format!("swtpm::{}", test.name)],
        Body::Both(_) => {
            let mut names = vec![format!("softhsm::{}", test.name), format!("swtpm::{}", test.name)];
            for module in OTHER_MODULES {
                if !NOT_ON.iter().any(|(m, n, _)| m == module && *n == test.name) {
                    names.push(format!("{module}::{}", test.name));
                }
            }
            names
        }
    }
}

fn run_child(trial: &str, tests: &[Test]) -> ExitCode {
    let (device, name) = trial.split_once("::").expect("trial names are DEVICE::NAME");
    let test = tests.iter().find(|t| t.name == name).expect("child asked for an unknown test");
    let dir = PathBuf::from(std::env::var_os("SITESIGN_TEST_DIR").expect("SITESIGN_TEST_DIR"));
    // Shown only when the test fails (the parent prints the child's stderr then).
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter("debug").init();
    match (device, test.body) {
        ("softhsm", Body::SoftHsm(f)) => f(&SoftHsm::create(dir)),
        ("softhsm", Body::Both(f)) => f(&SoftHsm::create(dir)),
        ("swtpm", Body::Swtpm(f)) => f(&TpmEnv::create(dir)),
        ("swtpm", Body::Both(f)) => f(&TpmEnv::create(dir)),
        ("opencryptoki", Body::Both(f)) => f(&opencryptoki::Ock::create(dir)),
        ("kryoptic", Body::Both(f)) => f(&kryoptic::Kryoptic::create(dir)),
        _ => panic!("no such trial: {trial}"),
    }
    ExitCode::SUCCESS
}

fn run_helper_process(name: &str, helpers: &[Helper]) -> ExitCode {
    use std::io::BufRead;
    let helper = helpers.iter().find(|h| h.name == name).expect("unknown helper");
    let mut lines = std::io::stdin().lock().lines();
    let so_pin = SecretString::from(lines.next().unwrap().unwrap());
    let user_pin = SecretString::from(lines.next().unwrap().unwrap());
    let work_dir = PathBuf::from(std::env::var_os("SITESIGN_TEST_DIR").unwrap());
    (helper.run)(&HelperEnv { module: module_path(), so_pin, user_pin, token_root: work_dir.join("tokens"), work_dir });
    ExitCode::SUCCESS
}

/// Runs one test in a child process with its own SoftHSM configuration.
fn run_in_child(name: &str) -> Result<(), Failed> {
    let dir = tempfile::Builder::new().prefix("sitesign-softhsm-").tempdir().map_err(|e| e.to_string())?;
    let conf = SoftHsmDir::create(dir.path()).map_err(|e| e.to_string())?.conf_path();
    let kryoptic_conf = kryoptic::config_path(dir.path());
    fs::write(&kryoptic_conf, kryoptic::config_text(dir.path())).map_err(|e| e.to_string())?;
    let out = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .env(CHILD_ENV, name)
        .env("SOFTHSM2_CONF", &conf)
        .env(kryoptic::CONF_ENV, &kryoptic_conf)
        .env("SITESIGN_TEST_DIR", dir.path())
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot start the test process: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "test process exited with {}\n--- stdout\n{}--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into())
    }
}

/// The `main` of a SoftHSM test binary.
pub fn main(tests: &'static [Test], helpers: &'static [Helper]) -> ExitCode {
    if let Ok(name) = std::env::var(HELPER_ENV) {
        return run_helper_process(&name, helpers);
    }
    if let Ok(name) = std::env::var(CHILD_ENV) {
        return run_child(&name, tests);
    }
    let module = module_path();
    let args = Arguments::from_args();
    let trials = tests
        .iter()
        .flat_map(trial_names)
        .map(|name| {
            let module = module.clone();
            Trial::test(name.clone(), move || {
                if name.starts_with("softhsm::") && !module.is_file() {
                    return Err(format!(
                        "PKCS#11 module {} not found: install softhsm2 (the test command does) or set PKCS11_MODULE",
                        module.display()
                    )
                    .into());
                }
                run_in_child(&name)
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}
