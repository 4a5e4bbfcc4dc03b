//! Backups of what sitesign keeps besides the keys: the state database (key inventory,
//! certificates and revocations, bulk-token registry, the audit log's witnessed head) and the
//! audit log. The keys stay in their devices and are the HSM's own backup's business.
//!
//! A backup is a tar archive (ustar, readable with `tar tvf`) of three members:
//! `manifest.json` (format, time, sitesign's version, each database's size and SHA-256),
//! `state.db` and `audit.db` — each an online copy made with SQLite's backup API while the
//! service writes (consistent at one instant; the service is not paused). The state is copied
//! first and the audit log second, so the audit copy reaches at least the head the state's copy
//! witnesses. Beside the archive, `FILE.sha256` (`sha256sum -c` reads it) covers the whole file.
//! Both are written under a temporary name and renamed into place.
//!
//! Hand-written rather than a backup tool: the databases must be copied through SQLite (a file
//! copy of a database in WAL mode while it is written is not consistent), and a restore must check
//! the audit chain before it accepts anything.

use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The archive format this version writes and reads.
pub const FORMAT: &str = "sitesign-backup/1";
/// The state database's member name.
pub const STATE: &str = "state.db";
/// The audit log's member name.
pub const AUDIT: &str = "audit.db";
const MANIFEST: &str = "manifest.json";

/// Why a backup or a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// SQLite refused the copy.
    #[error("copying {path}: {source}")]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// The archive is not a sitesign backup, or is damaged.
    #[error("{path} is not a usable sitesign backup: {reason}")]
    Damaged {
        /// The archive.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl BackupError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            BackupError::Io { .. } => "io",
            BackupError::Sqlite { .. } => "backup_failed",
            BackupError::Damaged { .. } => "backup_damaged",
        }
    }
}

/// One database in the archive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Member {
    /// Bytes.
    pub bytes: u64,
    /// SHA-256, lower-case hex.
    pub sha256: String,
}

/// What `manifest.json` says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// When the copy was made (Unix seconds).
    pub created: i64,
    /// The sitesign version that made it.
    pub version: String,
    /// The state database.
    pub state: Member,
    /// The audit log.
    pub audit: Member,
}

/// Progress of a long step: `(done, total)` in the step's own unit (pages, bytes).
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io { path: path.to_owned(), source }
}

/// Copies the live database `src` into the new file `dst` with SQLite's online backup.
fn copy_database(src: &Path, dst: &Path, label: &str, progress: Progress<'_>) -> Result<(), BackupError> {
    let sql = |path: &Path| {
        let path = path.to_owned();
        move |source| BackupError::Sqlite { path, source }
    };
    let from = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(sql(src))?;
    from.busy_timeout(std::time::Duration::from_secs(5)).map_err(sql(src))?;
    let mut to = Connection::open(dst).map_err(sql(dst))?;
    {
        // All pages in one step, inside one read transaction: in WAL mode the service's writers
        // carry on meanwhile, and a step-wise copy would restart whenever they commit (forever,
        // under steady load on a large log). Busy or locked: try again, for at most a minute.
        let backup = rusqlite::backup::Backup::new(&from, &mut to).map_err(sql(src))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            use rusqlite::backup::StepResult;
            match backup.step(-1).map_err(sql(src))? {
                StepResult::Done => break,
                _ if std::time::Instant::now() > deadline => {
                    return Err(BackupError::Sqlite { path: src.to_owned(), source: rusqlite::Error::InvalidQuery });
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
        let p = backup.progress();
        let total = u64::try_from(p.pagecount).unwrap_or(0);
        progress(label, total, total);
    }
    // One self-contained file (no WAL beside it).
    to.pragma_update(None, "journal_mode", "DELETE").map_err(sql(dst))?;
    Ok(())
}

fn digest_file(path: &Path) -> Result<Member, BackupError> {
    let mut f = fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(Member { bytes, sha256: hex::encode(hasher.finalize()) })
}

/// The `FILE.sha256` beside `archive`.
pub fn checksum_path(archive: &Path) -> PathBuf {
    let mut name = archive.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    archive.with_file_name(name)
}

/// Writes a backup of `state_db` and `audit_db` (live databases) to `out`, and `out.sha256`.
/// Refuses to overwrite either.
pub fn create(
    state_db: &Path,
    audit_db: &Path,
    out: &Path,
    now: i64,
    progress: Progress<'_>,
) -> Result<Manifest, BackupError> {
    let sum_path = checksum_path(out);
    for p in [out, sum_path.as_path()] {
        if p.exists() {
            return Err(BackupError::Io {
                path: p.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists; choose another --out"),
            });
        }
    }
    let folder = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let work = tempfile::Builder::new().prefix(".sitesign-backup-").tempdir_in(folder).map_err(io(folder))?;
    let (state_copy, audit_copy) = (work.path().join(STATE), work.path().join(AUDIT));
    copy_database(state_db, &state_copy, "state", progress)?;
    copy_database(audit_db, &audit_copy, "audit", progress)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        created: now,
        version: env!("CARGO_PKG_VERSION").into(),
        state: digest_file(&state_copy)?,
        audit: digest_file(&audit_copy)?,
    };
    let partial = work.path().join("archive.partial");
    {
        let file =
            fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&partial).map_err(io(&partial))?;
        let mut tar = tar::Builder::new(file);
        tar.mode(tar::HeaderMode::Deterministic);
        // A ustar header for a private regular file of `size` bytes, made at `now`.
        let header = |size: u64| {
            let mut header = tar::Header::new_ustar();
            header.set_size(size);
            header.set_mode(0o600);
            header.set_mtime(u64::try_from(now).unwrap_or(0));
            header.set_cksum();
            header
        };
        let json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        tar.append_data(&mut header(json.len() as u64), MANIFEST, json.as_slice()).map_err(io(&partial))?;
        for (name, path) in [(STATE, &state_copy), (AUDIT, &audit_copy)] {
            let mut f = fs::File::open(path).map_err(io(path))?;
            let size = f.metadata().map_err(io(path))?.len();
            tar.append_data(&mut header(size), name, &mut f).map_err(io(&partial))?;
        }
        let file = tar.into_inner().map_err(io(&partial))?;
        file.sync_all().map_err(io(&partial))?;
    }
    let whole = digest_file(&partial)?;
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let sum_partial = work.path().join("sum.partial");
    {
        let mut f = fs::File::create(&sum_partial).map_err(io(&sum_partial))?;
        writeln!(f, "{}  {name}", whole.sha256).and_then(|()| f.sync_all()).map_err(io(&sum_partial))?;
    }
    fs::rename(&partial, out).map_err(io(out))?;
    fs::rename(&sum_partial, &sum_path).map_err(io(&sum_path))?;
    if let Ok(dir) = fs::File::open(folder) {
        let _ = dir.sync_all();
    }
    Ok(manifest)
}

/// A backup unpacked into a temporary folder, its checksums checked.
#[derive(Debug)]
pub struct Unpacked {
    /// Holds the folder while the backup is in use.
    pub dir: tempfile::TempDir,
    /// The manifest.
    pub manifest: Manifest,
    /// Whether `FILE.sha256` was there (and matched).
    pub archive_checksum: bool,
}

impl Unpacked {
    /// The unpacked state database's folder (a state folder of its own).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The unpacked audit log's folder.
    pub fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("audit")
    }
}

/// Reads `archive`: checks `archive.sha256` if it is there (a mismatch refuses), then every
/// member's size and SHA-256 against the manifest, and unpacks the two databases into a new
/// temporary folder. Members other than the three are refused, as are paths of any other shape.
pub fn unpack(archive: &Path) -> Result<Unpacked, BackupError> {
    let damaged = |reason: String| BackupError::Damaged { path: archive.to_owned(), reason };
    let sum_path = checksum_path(archive);
    let archive_checksum = match fs::read_to_string(&sum_path) {
        Ok(text) => {
            let expected = text.split_whitespace().next().unwrap_or_default().to_ascii_lowercase();
            let actual = digest_file(archive)?.sha256;
            if expected != actual {
                return Err(damaged(format!("its SHA-256 is {actual}, {} says {expected}", sum_path.display())));
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(BackupError::Io { path: sum_path, source: e }),
    };
    let dir = tempfile::Builder::new().prefix("sitesign-restore-").tempdir().map_err(io(Path::new("/tmp")))?;
    let (state_dir, audit_dir) = (dir.path().join("state"), dir.path().join("audit"));
    for d in [&state_dir, &audit_dir] {
        fs::create_dir(d).map_err(io(d))?;
    }
    let file = fs::File::open(archive).map_err(io(archive))?;
    let mut tar = tar::Archive::new(file);
    let mut manifest: Option<Manifest> = None;
    let mut seen: Vec<String> = Vec::new();
    let entries = tar.entries().map_err(|e| damaged(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| damaged(format!("unreadable tar entry: {e}")))?;
        let name = entry.path().map_err(|e| damaged(e.to_string()))?.to_string_lossy().into_owned();
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(damaged(format!("{name:?} is not a regular file")));
        }
        if seen.contains(&name) {
            return Err(damaged(format!("{name:?} appears twice")));
        }
        if name == MANIFEST {
            if !seen.is_empty() {
                return Err(damaged("manifest.json is not the first member".into()));
            }
            let mut text = Vec::new();
            (&mut entry).take(1 << 20).read_to_end(&mut text).map_err(|e| damaged(format!("manifest.json: {e}")))?;
            let m: Manifest = serde_json::from_slice(&text).map_err(|e| damaged(format!("manifest.json: {e}")))?;
            if m.format != FORMAT {
                return Err(damaged(format!("format {:?}; this sitesign reads {FORMAT}", m.format)));
            }
            manifest = Some(m);
            seen.push(name);
            continue;
        }
        let m = manifest.as_ref().ok_or_else(|| damaged("manifest.json is not the first member".into()))?;
        let (target, expected) = match name.as_str() {
            STATE => (crate::store::Store::path_in(&state_dir), m.state.bytes),
            AUDIT => (crate::audit::AuditLog::path_in(&audit_dir), m.audit.bytes),
            other => return Err(damaged(format!("unexpected member {other:?}"))),
        };
        // Never more than the manifest says (a forged size or a sparse member cannot fill the
        // disk); the SHA-256 check below catches any other difference.
        if entry.size() != expected {
            return Err(damaged(format!("{name} is {} bytes; the manifest says {expected}", entry.size())));
        }
        let mut out =
            fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&target).map_err(io(&target))?;
        std::io::copy(&mut (&mut entry).take(expected), &mut out).map_err(|e| damaged(format!("{name}: {e}")))?;
        out.sync_all().map_err(io(&target))?;
        seen.push(name);
    }
    let manifest = manifest.ok_or_else(|| damaged("no manifest.json".into()))?;
    for (name, member, path) in [
        (STATE, &manifest.state, crate::store::Store::path_in(&state_dir)),
        (AUDIT, &manifest.audit, crate::audit::AuditLog::path_in(&audit_dir)),
    ] {
        if !path.exists() {
            return Err(damaged(format!("no {name}")));
        }
        let actual = digest_file(&path)?;
        if &actual != member {
            return Err(damaged(format!(
                "{name} is {} bytes with SHA-256 {}; the manifest says {} bytes, {}",
                actual.bytes, actual.sha256, member.bytes, member.sha256
            )));
        }
    }
    Ok(Unpacked { dir, manifest, archive_checksum })
}

/// The schema objects (type, name, SQL) of the database at `path`.
fn schema_of(path: &Path) -> Result<Vec<(String, String, Option<String>)>, BackupError> {
    let sql = |source| BackupError::Sqlite { path: path.to_owned(), source };
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sql)?;
    let mut stmt = conn.prepare("SELECT type, name, sql FROM sqlite_master").map_err(sql)?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(sql)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(sql)
}

/// Refuses a backup whose databases hold schema objects sitesign does not make — a trigger that
/// quietly undoes revocations, a view shadowing a table — before anything opens them for
/// writing: every object's name must be one a database of this version has, and every trigger
/// and view must be exactly this version's. (Older schemas have fewer objects, not others.)
pub fn check_schema(unpacked: &Unpacked) -> Result<(), BackupError> {
    let fresh = tempfile::Builder::new().prefix("sitesign-schema-").tempdir().map_err(io(Path::new("/tmp")))?;
    drop(
        crate::store::Store::open(fresh.path())
            .map_err(|e| BackupError::Damaged { path: fresh.path().to_owned(), reason: e.to_string() })?,
    );
    let fresh_audit = crate::audit::AuditLog::path_in(fresh.path());
    drop(
        crate::audit::open(&fresh_audit, None)
            .map_err(|source| BackupError::Sqlite { path: fresh_audit.clone(), source })?,
    );
    for (name, ours, theirs) in [
        (STATE, crate::store::Store::path_in(fresh.path()), crate::store::Store::path_in(&unpacked.state_dir())),
        (AUDIT, fresh_audit.clone(), crate::audit::AuditLog::path_in(&unpacked.audit_dir())),
    ] {
        let expected = schema_of(&ours)?;
        for (kind, object, sql) in schema_of(&theirs)? {
            let known = expected.iter().find(|(_, n, _)| *n == object);
            let same = match (kind.as_str(), known) {
                (_, None) => false,
                ("trigger" | "view", Some((k, _, s))) => *k == kind && *s == sql,
                (_, Some((k, _, _))) => *k == kind,
            };
            if !same {
                return Err(BackupError::Damaged {
                    path: theirs.clone(),
                    reason: format!("{name} holds a {kind} {object:?} that sitesign does not make"),
                });
            }
        }
    }
    Ok(())
}

/// The databases of a backup copied beside their places, not yet in them ([`Staged::commit`]).
#[derive(Debug)]
pub struct Staged {
    files: Vec<(tempfile::NamedTempFile, PathBuf)>,
}

/// Copies the unpacked databases into new files beside their places in `state_dir` and
/// `audit_dir` (created with random names and `O_EXCL`, so no link left there is followed), owned
/// by `owner` (the service user, when root restores), synced. Nothing is replaced yet; dropped,
/// they are removed.
pub fn stage(
    unpacked: &Unpacked,
    state_dir: &Path,
    audit_dir: &Path,
    owner: Option<(u32, u32)>,
) -> Result<Staged, BackupError> {
    let mut files = Vec::new();
    for (from, to) in [
        (crate::store::Store::path_in(&unpacked.state_dir()), crate::store::Store::path_in(state_dir)),
        (crate::audit::AuditLog::path_in(&unpacked.audit_dir()), crate::audit::AuditLog::path_in(audit_dir)),
    ] {
        let parent = to.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(io(parent))?;
        let mut staged = tempfile::Builder::new().prefix(".restoring-").tempfile_in(parent).map_err(io(parent))?;
        let mut source = fs::File::open(&from).map_err(io(&from))?;
        std::io::copy(&mut source, staged.as_file_mut()).map_err(io(staged.path()))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(staged.as_file(), Some(uid), Some(gid)).map_err(io(staged.path()))?;
        }
        staged.as_file().sync_all().map_err(io(staged.path()))?;
        files.push((staged, to));
    }
    Ok(Staged { files })
}

impl Staged {
    /// Renames the staged files into their places (after the caller set what was there aside).
    pub fn commit(self) -> Result<(), BackupError> {
        for (staged, to) in self.files {
            staged.persist_noclobber(&to).map_err(|e| BackupError::Io { path: to.clone(), source: e.error })?;
        }
        Ok(())
    }
}
