//! Crash-safe file writes: a reader (or the next run after a kill or power cut) sees the previous
//! file or the new one, never a half-written one. Every file asfda writes (NIfTI volumes,
//! checkpoints, exported bundles, scores, selections, reports) goes through here.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` crash-safely; see [`write_with`].
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |out| out.write_all(bytes))
}

/// Runs `write` into a temporary file in `path`'s folder (same file system, so the rename is
/// atomic), flushes it to disk, renames it over `path` and flushes the folder, so the rename
/// survives a power cut too. The temporary file is removed on any failure, and temporaries that
/// earlier writers of the same `path` left when they were killed are removed first
/// ([`remove_stale_temporaries`]).
pub fn write_with(path: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
    let tmp = temporary_path(path)?;
    remove_stale_temporaries(path);
    let written = File::options().write(true).create_new(true).open(&tmp).and_then(|file| {
        let mut out = BufWriter::new(file);
        write(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    });
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, "write", &e));
    }
    sync_dir(&parent(path))
}

/// Writes a file and flushes it to disk, without the rename: for files inside a folder that is
/// itself renamed into place afterwards (an exported bundle).
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| Error::io(path, "create", &e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, "write", &e))?;
    f.sync_all().map_err(|e| Error::io(path, "flush to disk", &e))
}

/// The folder holding `path` ("." for a bare file name).
pub fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// fsync of a folder, so a rename in it survives a power cut.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, "flush the folder to disk", &e))
}

/// `.<name>.asfda-<pid>-<n>.tmp` beside `path`: unique within and across processes, hidden.
/// The name is built from the file name's bytes, so any name the OS allows works.
fn temporary_path(path: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name =
        path.file_name().ok_or_else(|| Error::invalid_argument(format!("'{}' names no file", path.display())))?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".asfda-{}-{n}.tmp", std::process::id()));
    Ok(path.with_file_name(tmp))
}

/// Removes the temporary files of `path` (`.<name>.asfda-<pid>-<n>.tmp`) whose writing process no
/// longer exists: a writer killed between creating its temporary file and renaming it leaves it
/// behind, and without this every interrupted save of a checkpoint would keep its bytes on disk
/// for good. Temporaries of live processes (another writer right now) are kept. Best effort:
/// returns how many were removed, and a folder that cannot be read removes nothing.
pub fn remove_stale_temporaries(path: &Path) -> usize {
    let (Some(name), Ok(entries)) = (path.file_name(), fs::read_dir(parent(path))) else {
        return 0;
    };
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".asfda-");
    let own = std::process::id();
    let mut removed = 0;
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = writer_pid(file.as_encoded_bytes(), prefix.as_encoded_bytes()) else {
            continue;
        };
        if pid != own && !process_exists(pid) && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The pid in `<prefix><pid>-<n>.tmp`, or None when `file` is not such a name.
fn writer_pid(file: &[u8], prefix: &[u8]) -> Option<u32> {
    let rest = file.strip_prefix(prefix)?.strip_suffix(b".tmp")?;
    let dash = rest.iter().position(|&b| b == b'-')?;
    let (pid, n) = (&rest[..dash], &rest[dash + 1..]);
    if pid.is_empty() || n.is_empty() || !n.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(pid).ok()?.parse().ok()
}

/// Whether a process with this pid exists (signal 0 checks without sending anything). EPERM
/// means it exists but belongs to someone else.
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 performs only the existence and permission check.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_leaves_no_temporary_on_failure() {
        let dir = std::env::temp_dir().join(format!("asfda-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.txt");
        write(&path, b"first").unwrap();
        write(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let err = write_with(&path, |_| Err(io::Error::other("disk full"))).unwrap_err();
        assert!(err.message().contains("disk full"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"second", "a failed write keeps the old file");
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.txt")], "no temporary file left behind");
        assert!(write(Path::new("/"), b"x").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_write_removes_temporaries_of_dead_writers_only() {
        let dir = tempfile_dir("stale");
        let path = dir.join("ckpt.safetensors");
        // A pid that existed and has ended: a child that already exited and was reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = dir.join(format!(".ckpt.safetensors.asfda-{dead}-0.tmp"));
        let live = dir.join(".ckpt.safetensors.asfda-1-0.tmp"); // pid 1 always exists
        let other_target = dir.join(format!(".other.asfda-{dead}-0.tmp"));
        let not_ours = dir.join(format!(".ckpt.safetensors.asfda-{dead}-x.tmp"));
        for f in [&stale, &live, &other_target, &not_ours] {
            fs::write(f, b"partial").unwrap();
        }
        write(&path, b"new").unwrap();
        assert!(!stale.exists(), "the dead writer's temporary is removed");
        for kept in [&live, &other_target, &not_ours] {
            assert!(kept.exists(), "{} must be kept", kept.display());
        }
        assert_eq!(fs::read(&path).unwrap(), b"new");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temporary_names_parse_back_to_their_pid() {
        let t = temporary_path(Path::new("/x/a.b")).unwrap();
        let name = t.file_name().unwrap().as_encoded_bytes().to_vec();
        assert_eq!(writer_pid(&name, b".a.b.asfda-"), Some(std::process::id()));
        assert_eq!(writer_pid(b".a.b.asfda--3.tmp", b".a.b.asfda-"), None);
        assert_eq!(writer_pid(b".a.b.asfda-12-3.tmpx", b".a.b.asfda-"), None);
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_file_names_are_written() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile_dir("bytes");
        let path = dir.join(std::ffi::OsStr::from_bytes(b"caf\xe9.bin"));
        write(&path, b"x").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"x");
        fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("asfda-atomic-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
