//! The environment a PKCS#11 module reads when it is loaded (SoftHSM2: `SOFTHSM2_CONF`). Setting
//! a variable inside a running, possibly multi-threaded process is not sound, and a module reads
//! it only once anyway; so a program that lacks it replaces itself — same PID, same arguments —
//! with the variables set, before it loads any module. This is the one place that does it.

use std::os::unix::process::CommandExt as _;

/// The variables of `wanted` that this process lacks or has with another value.
pub fn missing(wanted: &[(String, String)]) -> Vec<(String, String)> {
    wanted
        .iter()
        .filter(|(k, v)| std::env::var_os(k).is_none_or(|cur| cur != std::ffi::OsStr::new(v)))
        .cloned()
        .collect()
}

/// Replaces this process with itself, the same arguments, and `wanted` set — if any of `wanted` is
/// missing. Returns `Ok(())` when nothing was missing; on success it does not return at all; an
/// error means the program could not be re-run.
pub fn ensure(wanted: &[(String, String)]) -> std::io::Result<()> {
    let missing = missing(wanted);
    if missing.is_empty() {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    Err(std::process::Command::new(exe).args(std::env::args_os().skip(1)).envs(missing).exec())
}
