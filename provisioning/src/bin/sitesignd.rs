//! `sitesignd --config FILE`: the signing service. This binary sets the process up — arguments,
//! the PKCS#11 modules' environment, logging, the refusal to run as root, hardening — and runs
//! `sitesign::service`, which knows nothing of argv or log formats.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sitesign::config::Config;

/// sitesignd: the sitesign signing service for ConfigMgr management points (mTLS API, admin
/// socket, ops endpoints). See README.md and docs/api.md.
#[derive(Debug, Parser)]
#[command(name = "sitesignd", version)]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = "/etc/sitesign/sitesign.toml")]
    config: PathBuf,
    /// Run as root anyway (only on a throw-away development machine).
    #[arg(long)]
    allow_root: bool,
    /// Print this program's man page (roff) and exit (for packaging).
    #[arg(long, hide = true)]
    man: bool,
}

/// SPEC §9: no core dumps, not dumpable (no ptrace by the same user, no /proc/PID/mem), memory
/// locked so PINs and session state never reach swap. Each step the environment refuses (no
/// RLIMIT_MEMLOCK headroom, a seccomp filter) is logged, not fatal: the unit sets the limits.
fn harden() {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    if let Err(e) = setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) }) {
        tracing::warn!(error = %e, "cannot disable core dumps");
    }
    if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        tracing::warn!(error = %e, "cannot set PR_SET_DUMPABLE=0");
    }
    // With MCL_FUTURE every later allocation must fit under RLIMIT_MEMLOCK, or it fails: lock
    // only with room to run (the unit sets LimitMEMLOCK=1G).
    let limit = rustix::process::getrlimit(Resource::Memlock).current;
    if limit.is_some_and(|l| l < 512 * 1024 * 1024) {
        tracing::warn!(limit, "RLIMIT_MEMLOCK below 512 MiB: memory not locked (set LimitMEMLOCK=1G)");
    } else if let Err(e) = rustix::mm::mlockall(rustix::mm::MlockAllFlags::CURRENT | rustix::mm::MlockAllFlags::FUTURE)
    {
        tracing::warn!(error = %e, "cannot lock memory; secrets could be swapped out");
    }
}

/// Exit status when a device refused the configured secret (PIN, TPM auth value) or is locked
/// out: the unit's `RestartPreventExitStatus=` keeps systemd from retrying towards the device's
/// lockout (EX_NOPERM).
const EXIT_SECRET_REFUSED: u8 = 77;
/// Exit status of a configuration — or a state (an audit log that is not the one witnessed, a
/// key that is not its certificate's) — that cannot work as it is (EX_CONFIG): restarting will
/// not help either.
const EXIT_CONFIG: u8 = 78;

fn fail(code: &str, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("sitesignd: error [{code}]: {message}");
    ExitCode::FAILURE
}

fn fail_with(status: u8, code: &str, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("sitesignd: error [{code}]: {message}");
    ExitCode::from(status)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.man {
        use clap::CommandFactory as _;
        use std::io::Write as _;
        let mut roff = Vec::new();
        return match clap_mangen::Man::new(Args::command())
            .section("8")
            .render(&mut roff)
            .and_then(|()| std::io::stdout().write_all(&roff))
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail("io", e),
        };
    }
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => return fail_with(EXIT_CONFIG, "config", e),
    };
    // The PKCS#11 modules read their environment when loaded: if it is not set, this replaces
    // the process with itself, environment set (same PID, so systemd keeps tracking it).
    if let Err(e) = sitesign::environment::ensure(&config.module_environment()) {
        return fail("exec", format!("cannot re-run with the module environment: {e}"));
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,cryptoki=off".into());
    if config.service.json_logs {
        tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init();
    } else {
        tracing_subscriber::fmt()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    if rustix::process::geteuid().is_root() && !args.allow_root {
        return fail(
            "root",
            "refusing to run as root: run sitesignd as its own unprivileged user (see systemd/), or pass --allow-root on a throw-away development machine",
        );
    }
    harden();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail("runtime", e),
    };
    match runtime.block_on(sitesign::service::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_secret_refused() => {
            tracing::error!(code = e.code(), error = %e, "sitesignd cannot run: the device refused its secret; not retrying");
            fail_with(
                EXIT_SECRET_REFUSED,
                e.code(),
                format!(
                    "{e} — fix the secret, then start the service again; it is not restarted automatically, so the device's lockout counter is not run up"
                ),
            )
        }
        Err(e) if e.needs_an_administrator() => {
            tracing::error!(code = e.code(), error = %e, "sitesignd cannot run: configuration");
            fail_with(EXIT_CONFIG, e.code(), e)
        }
        Err(e) => {
            tracing::error!(code = e.code(), error = %e, "sitesignd cannot run");
            fail(e.code(), e)
        }
    }
}
