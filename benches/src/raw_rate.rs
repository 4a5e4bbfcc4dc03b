//! `raw-rate`: the raw sign rate of a key backend — signatures per second straight through the
//! backend trait, N threads each with its own session, nothing else on the path. Every later
//! throughput figure of sitesign is reported as a ratio of this number measured in the same run.
//!
//! `--backend softhsm` (default) provisions a private SoftHSM instance in a temporary folder (its
//! own `SOFTHSM2_CONF`); `--backend swtpm` starts a private swtpm; `--backend tpm --tcti T` uses
//! the TPM that T names (its key blobs go to a temporary folder). The key is generated inside the
//! device, and one JSON line is printed per session (thread) count.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hsm_adapters::pkcs11::Pkcs11Backend;
use hsm_adapters::pkcs11::softhsm::SoftHsmDir;
use hsm_adapters::pkcs11::token::initialize_token;
use hsm_adapters::tpm::TpmBackend;
use hsm_adapters::{KeyAlgorithm, KeyBackend, PinSource, Pkcs11Config, TokenSelector, TpmConfig};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};

/// Which device to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Device {
    /// A private SoftHSM2 token.
    Softhsm,
    /// A private swtpm.
    Swtpm,
    /// The TPM named by --tcti.
    Tpm,
}

/// Measure the raw sign rate of a key backend.
#[derive(Debug, Parser)]
struct Args {
    /// The device to measure.
    #[arg(long, value_enum, default_value = "softhsm")]
    backend: Device,
    /// TCTI of the TPM for `--backend tpm`, e.g. device:/dev/tpmrm0.
    #[arg(long, default_value = hsm_adapters::config::DEFAULT_TCTI)]
    tcti: String,
    /// Key algorithm: rsa-2048, rsa-3072, rsa-4096 or ec-p256.
    #[arg(long, default_value = "rsa-2048")]
    algorithm: String,
    /// Session (thread) counts to measure, comma-separated. Default: 1 up to the number of CPUs
    /// for SoftHSM, 1 for a TPM (which runs one command at a time).
    #[arg(long, value_delimiter = ',')]
    sessions: Vec<usize>,
    /// Seconds to measure each session count.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// The PKCS#11 module (SoftHSM2).
    #[arg(long, default_value = hsm_adapters::config::DEFAULT_PKCS11_MODULE)]
    module: PathBuf,
    /// Folder for the SoftHSM instance (default: a new temporary folder).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn random_pin(rng: &SystemRandom) -> anyhow::Result<SecretString> {
    let mut b = [0u8; 12];
    rng.fill(&mut b).map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(SecretString::from(b.iter().map(|x| format!("{x:02x}")).collect::<String>()))
}

/// Signs with `threads` threads for `seconds`, returning (signatures, elapsed).
fn measure(key: &Arc<dyn hsm_adapters::SigningKey>, threads: usize, seconds: f64) -> anyhow::Result<(u64, Duration)> {
    let scheme = key.algorithm().default_scheme();
    let count = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let start = Barrier::new(threads + 1);
    let elapsed = std::thread::scope(|s| -> anyhow::Result<Duration> {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (count, stop, start, key) = (&count, &stop, &start, Arc::clone(key));
                s.spawn(move || -> anyhow::Result<()> {
                    let mut msg = format!("raw-rate probe {t} ").into_bytes();
                    let base = msg.len();
                    start.wait();
                    let mut i: u64 = 0;
                    while !stop.load(Ordering::Relaxed) {
                        msg.truncate(base);
                        msg.extend_from_slice(i.to_string().as_bytes());
                        std::hint::black_box(key.sign(scheme, &msg)?);
                        count.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                    Ok(())
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("a signing thread panicked"))??;
        }
        Ok(began.elapsed())
    })?;
    Ok((count.load(Ordering::Relaxed), elapsed))
}

/// Measures `key` for each session count and prints the JSON lines.
fn report(args: &Args, key: &Arc<dyn hsm_adapters::SigningKey>, sessions: &[usize]) -> anyhow::Result<()> {
    let algorithm = key.algorithm();
    // Warm up: open every session (or load the key) before measuring.
    measure(key, sessions.iter().copied().max().unwrap_or(1), 0.2)?;
    for &n in sessions {
        let (signatures, elapsed) = measure(key, n, args.seconds)?;
        let line = serde_json::json!({
            "backend": format!("{:?}", args.backend).to_lowercase(),
            "algorithm": algorithm.to_string(),
            "scheme": algorithm.default_scheme().jws_alg(),
            "sessions": n,
            "signatures": signatures,
            "seconds": elapsed.as_secs_f64(),
            "rate_per_s": signatures as f64 / elapsed.as_secs_f64(),
        });
        println!("{line}");
    }
    Ok(())
}

fn run_tpm(args: &Args, algorithm: KeyAlgorithm) -> anyhow::Result<i32> {
    let dir = tempfile::Builder::new().prefix("sitesign-raw-rate-").tempdir()?;
    let swtpm = (args.backend == Device::Swtpm).then(|| device_tests::swtpm::Swtpm::start(dir.path()));
    let tcti = swtpm.as_ref().map_or_else(|| args.tcti.clone(), |s| s.tcti());
    let backend = TpmBackend::open(TpmConfig {
        tcti: tcti.parse().map_err(|e| anyhow::anyhow!("TCTI {tcti:?}: {e}"))?,
        parent_handle: hsm_adapters::config::DEFAULT_SRK_HANDLE,
        key_dir: dir.path().join("keys"),
        auth: None,
        queue_depth: std::num::NonZeroUsize::new(64).context("queue")?,
    })?;
    let key = backend.generate_key("raw-rate", algorithm)?;
    let sessions = if args.sessions.is_empty() { vec![1] } else { args.sessions.clone() };
    report(args, &key, &sessions)?;
    drop((key, backend, swtpm));
    Ok(0)
}

fn run(args: &Args) -> anyhow::Result<i32> {
    let algorithm: KeyAlgorithm = args.algorithm.parse()?;
    if args.backend != Device::Softhsm {
        return run_tpm(args, algorithm);
    }
    let temp;
    let root = match &args.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new().prefix("sitesign-raw-rate-").tempdir()?;
            temp.path().to_owned()
        }
    };
    let softhsm = SoftHsmDir::create(&root)?;
    let wanted = [(hsm_adapters::pkcs11::softhsm::CONF_ENV.to_owned(), softhsm.conf_path().display().to_string())];
    if !sitesign::environment::missing(&wanted).is_empty() {
        // Re-run with the instance's SOFTHSM2_CONF and our folder, so the child reuses it.
        if args.dir.is_none() {
            let exe = std::env::current_exe()?;
            let status = std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .arg("--dir")
                .arg(softhsm.root())
                .env(hsm_adapters::pkcs11::softhsm::CONF_ENV, softhsm.conf_path())
                .status()?;
            return Ok(status.code().unwrap_or(1));
        }
        sitesign::environment::ensure(&wanted)?;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sessions: Vec<usize> = if args.sessions.is_empty() { (1..=cpus).collect() } else { args.sessions.clone() };
    if sessions.iter().any(|s| *s == 0 || *s > 256) {
        bail!("session counts must be 1 to 256");
    }
    let rng = SystemRandom::new();
    let (so_pin, user_pin) = (random_pin(&rng)?, random_pin(&rng)?);
    initialize_token(&args.module, "raw-rate", &so_pin, &user_pin).context("initialise the benchmark token")?;
    let pin_file = softhsm.root().join("user.pin");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&pin_file)?;
        f.write_all(user_pin.expose_secret().as_bytes())?;
    }
    let max_sessions = *sessions.iter().max().unwrap_or(&1);
    let backend = Pkcs11Backend::open(Pkcs11Config {
        module: args.module.clone(),
        token: TokenSelector::Label("raw-rate".into()),
        pin: PinSource::File(pin_file),
        sessions: std::num::NonZeroUsize::new(max_sessions).context("sessions")?,
        environment: Vec::new(),
    })?;
    let key = backend.generate_key("raw-rate", algorithm)?;
    report(args, &key, &sessions)?;
    Ok(0)
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("raw-rate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
