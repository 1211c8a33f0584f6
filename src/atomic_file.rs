//! Crash-safe file writes: a reader (or the next run after a kill or power cut) sees the previous
//! file or the new one, never a half-written one. Every file asfda writes (NIfTI volumes,
//! checkpoints, exported bundles, scores, selections, reports) goes through here.

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
/// survives a power cut too. The temporary file is removed on any failure.
pub fn write_with(path: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
    let tmp = temporary_path(path)?;
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
fn temporary_path(path: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid_argument(format!("'{}' names no file", path.display())))?
        .to_string_lossy();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(path.with_file_name(format!(".{name}.asfda-{}-{n}.tmp", std::process::id())))
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
}
