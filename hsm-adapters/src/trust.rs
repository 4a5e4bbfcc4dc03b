//! Files whose content decides what runs with the device's PIN: the configuration and the
//! PKCS#11 module. Whoever can change such a file — or replace it in its folder — could load
//! their own code into the service and sign with its keys, so both must be writable by nobody
//! but root and the service's own user (SPEC §9). Secrets (PIN and auth files) are checked
//! stricter still where they are read ([`crate::PinSource::read`]).

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

/// Why `path` cannot be trusted, if it cannot: a file or folder that a user other than root
/// and this process's own can write — the file itself, or any folder above it (without the
/// sticky bit), on the path as given (where its symbolic links live) and on the path they lead
/// to. With all of them closed to others, nobody else can swap the file between this check and
/// its use either.
pub fn untrusted(path: &Path) -> Option<String> {
    let euid = rustix::process::geteuid().as_raw();
    let check = |p: &Path, what: &str| -> Option<String> {
        let meta = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(e) => return Some(format!("{}: {e}", p.display())),
        };
        if meta.uid() != 0 && meta.uid() != euid {
            return Some(format!(
                "{what} {} is owned by uid {}, neither root nor this service (uid {euid}); chown root it",
                p.display(),
                meta.uid()
            ));
        }
        let mode = meta.mode();
        let sticky_dir = meta.is_dir() && mode & 0o1000 != 0;
        if mode & 0o022 != 0 && !sticky_dir {
            return Some(format!(
                "{what} {} has mode {:04o}: group or others may change it; run chmod go-w on it",
                p.display(),
                mode & 0o7777
            ));
        }
        None
    };
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    for p in [path, real.as_path()] {
        if let Some(problem) = check(p, "file") {
            return Some(problem);
        }
        for dir in p.ancestors().skip(1).filter(|d| !d.as_os_str().is_empty()) {
            if let Some(problem) = check(dir, "folder") {
                return Some(problem);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn writable_by_others_is_refused_and_go_minus_w_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.path().join("module.so");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(untrusted(&file), None);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(untrusted(&file).unwrap().contains("mode 0666"), "{:?}", untrusted(&file));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(untrusted(&file).unwrap().starts_with("folder"), "a folder others can write: the file can be replaced");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(untrusted(&file), None, "a sticky folder (like /tmp) keeps others' hands off the file");
        assert!(untrusted(&dir.path().join("absent")).is_some());
        // A folder further up that others may write lets them swap the folders below.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let deep = dir.path().join("a/b");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::set_permissions(dir.path().join("a"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(deep.join("m.so"), b"x").unwrap();
        std::fs::set_permissions(deep.join("m.so"), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(untrusted(&deep.join("m.so")).unwrap().contains("mode 0777"), "{:?}", untrusted(&deep.join("m.so")));
        // And a symbolic link in such a folder, to a file that is fine itself.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let open = tempfile::tempdir().unwrap();
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::symlink(deep.join("m.so"), open.path().join("link.so")).unwrap();
        assert_eq!(untrusted(&deep.join("m.so")), None);
        assert!(untrusted(&open.path().join("link.so")).is_some(), "the link's folder may be changed by others");
    }
}
