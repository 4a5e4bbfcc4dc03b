//! A real software TPM (swtpm) for one test: its own state folder, TCP ports on loopback picked
//! free, polled until it accepts connections (no fixed sleeps), killed on drop. It can be stopped
//! and restarted on the same ports and state, like a TPM that is reset under a running service.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

/// A running swtpm.
#[derive(Debug)]
pub struct Swtpm {
    state_dir: PathBuf,
    port: u16,
    child: Mutex<Option<Child>>,
}

fn free_pair() -> Option<u16> {
    let mut b = [0u8; 2];
    SystemRandom::new().fill(&mut b).ok()?;
    let port = 20_000 + (u16::from_be_bytes(b) % 40_000);
    let a = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).ok()?;
    let c = TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).ok()?;
    drop((a, c));
    Some(port)
}

impl Swtpm {
    /// Starts a swtpm with its state in `dir/swtpm-state`.
    pub fn start(dir: &Path) -> Swtpm {
        let state_dir = dir.join("swtpm-state");
        std::fs::create_dir_all(&state_dir).expect("create swtpm state folder");
        for _ in 0..20 {
            let Some(port) = free_pair() else { continue };
            let tpm = Swtpm { state_dir: state_dir.clone(), port, child: Mutex::new(None) };
            if tpm.spawn(true) {
                return tpm;
            }
        }
        panic!("could not start swtpm on a free port pair (is swtpm installed?)");
    }

    /// Spawns the process and waits until it accepts connections; false if it exited first. With
    /// `startup`, swtpm sends TPM2_Startup(CLEAR) itself, as a platform's firmware would.
    fn spawn(&self, startup: bool) -> bool {
        let mut child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", self.state_dir.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", self.port))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", self.port + 1))
            .arg("--flags")
            .arg(if startup { "not-need-init,startup-clear" } else { "not-need-init" })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run swtpm (apt-get install swtpm)");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
                *self.child.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);
                return true;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The TCTI string for this swtpm.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Kills the swtpm (its state folder stays).
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports with the same state.
    pub fn restart(&self) {
        self.restart_with(true);
    }

    /// Starts it again with nobody sending TPM2_Startup: every command answers TPM_RC_INITIALIZE
    /// until a client starts it.
    pub fn restart_unstarted(&self) {
        self.restart_with(false);
    }

    fn restart_with(&self, startup: bool) {
        self.stop();
        // The ports were just released; a few tries cover the kernel's brief hold on them.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn(startup) {
            assert!(Instant::now() < deadline, "swtpm did not restart on port {}", self.port);
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}
