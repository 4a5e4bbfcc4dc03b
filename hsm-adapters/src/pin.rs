//! Reading a device PIN. A PIN comes from a file (mode 0600 or stricter, owned by the service user)
//! or from a systemd credential — never from argv, the environment, a URI or the config file
//! itself. It lives in a [`SecretString`] that is zeroized on drop, and it is read again each time
//! the backend has to log in, so it is not held between logins.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// A fresh random secret for a PIN, SO PIN or auth value: 16 bytes from the system's generator
/// as 32 lower-case hex characters (printable, so every device and tool accepts it).
pub fn random_secret() -> Result<SecretString> {
    let mut bytes = Zeroizing::new([0u8; 16]);
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), bytes.as_mut())
        .map_err(|_| Error::Io { path: "/dev/urandom".into(), reason: "the system random generator failed".into() })?;
    // Sized up front so the text is never reallocated (and copied) while it grows.
    let mut hex = String::with_capacity(32);
    for b in bytes.iter() {
        hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
    }
    Ok(SecretString::from(hex))
}

/// Longest PIN accepted (PKCS#11 tokens allow up to 255 bytes; TPM auth values up to 64).
const MAX_PIN_LEN: usize = 255;

/// Where a backend's PIN comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinSource {
    /// A file holding the PIN, optionally followed by one newline.
    File(PathBuf),
    /// A systemd credential: the file `$CREDENTIALS_DIRECTORY/<name>` that systemd provides to
    /// the service (`LoadCredential=` / `LoadCredentialEncrypted=`).
    Credential(String),
}

impl PinSource {
    /// The file the PIN is read from.
    pub fn path(&self) -> Result<PathBuf> {
        match self {
            PinSource::File(p) => Ok(p.clone()),
            PinSource::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| Error::PinFile {
                    path: PathBuf::from(format!("$CREDENTIALS_DIRECTORY/{name}")),
                    reason: "CREDENTIALS_DIRECTORY is not set: the service was not started by systemd with LoadCredential=, or use pin_file instead".into(),
                })?;
                Ok(Path::new(&dir).join(name))
            }
        }
    }

    /// A description for messages: the path, never the PIN.
    pub fn describe(&self) -> String {
        match self {
            PinSource::File(p) => p.display().to_string(),
            PinSource::Credential(n) => format!("systemd credential {n:?}"),
        }
    }

    /// Reads the PIN.
    ///
    /// Fails with [`Error::PinFile`] if the file is missing, unreadable, not a regular file,
    /// readable or writable by group or others, owned by another user (root excepted), empty, or
    /// longer than 255 bytes. The message names the problem and the path, never the content.
    pub fn read(&self) -> Result<SecretString> {
        let path = self.path()?;
        let fail = |reason: String| Error::PinFile { path: path.clone(), reason };
        let mut file = File::options()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(|e| fail(format!("{e} (create it with mode 0600, owned by the service user)")))?;
        let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
        if !meta.is_file() {
            return Err(fail("not a regular file".into()));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(fail(format!(
                "mode {:04o} lets group or others access it; run chmod 600 on it",
                meta.mode() & 0o7777
            )));
        }
        let euid = rustix::process::geteuid().as_raw();
        if meta.uid() != euid && meta.uid() != 0 {
            return Err(fail(format!("owned by uid {}, but this process runs as uid {euid}", meta.uid())));
        }
        let mut buf = Zeroizing::new(Vec::with_capacity(64));
        file.by_ref().take(MAX_PIN_LEN as u64 + 3).read_to_end(&mut buf).map_err(|e| fail(e.to_string()))?;
        let mut len = buf.len();
        if buf[..len].ends_with(b"\n") {
            len -= 1;
            if buf[..len].ends_with(b"\r") {
                len -= 1;
            }
        }
        if len == 0 {
            return Err(fail("the file is empty; write the PIN into it".into()));
        }
        if len > MAX_PIN_LEN {
            return Err(fail(format!("longer than {MAX_PIN_LEN} bytes")));
        }
        let pin = std::str::from_utf8(&buf[..len]).map_err(|_| fail("the PIN is not UTF-8 text".into()))?;
        if pin.contains(['\n', '\r', '\0']) {
            return Err(fail("the file holds more than one line".into()));
        }
        Ok(SecretString::from(pin))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    use secrecy::ExposeSecret;

    use super::*;

    fn pin_file(content: &[u8], mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        let mut f = File::create(&path).unwrap();
        f.write_all(content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn reads_a_pin_and_strips_one_newline() {
        let (_d, p) = pin_file(b"s3cret-PIN\n", 0o600);
        assert_eq!(PinSource::File(p).read().unwrap().expose_secret(), "s3cret-PIN");
    }

    #[test]
    fn refuses_loose_permissions_without_echoing_the_pin() {
        let (_d, p) = pin_file(b"s3cret-PIN", 0o644);
        let err = PinSource::File(p).read().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("chmod 600"), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
        assert_eq!(err.code(), "pin_file");
    }

    #[test]
    fn refuses_missing_empty_and_multiline_files() {
        let missing = PinSource::File(PathBuf::from("/nonexistent/sitesign/pin")).read().unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/sitesign/pin"), "{missing}");
        let (_d, p) = pin_file(b"\n", 0o600);
        assert!(PinSource::File(p).read().unwrap_err().to_string().contains("empty"));
        let (_d2, p2) = pin_file(b"one\ntwo\n", 0o600);
        assert!(PinSource::File(p2).read().unwrap_err().to_string().contains("more than one line"));
    }

    #[test]
    fn debug_output_of_a_pin_is_redacted() {
        let (_d, p) = pin_file(b"s3cret-PIN", 0o400);
        let pin = PinSource::File(p).read().unwrap();
        assert!(!format!("{pin:?}").contains("s3cret"));
    }
}
