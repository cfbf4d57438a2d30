//! Files that appear whole or not at all: every writer in vadapt writes under a hidden temporary name in the
//! final directory and renames once the bytes are complete. A rename within one directory is atomic on POSIX file
//! systems, so a crash, a kill or a full disk never leaves a half-written file under its real name.

use std::path::{Path, PathBuf};

use crate::error::{IoResultExt, Result};

/// `dir/name` -> `dir/.name.partial` : same directory (so the final rename is atomic), hidden, and not
/// matching lerobot's `*.mp4` / `*.parquet` globs.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

/// Write `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    let tmp = temp_path_for(path);
    std::fs::write(&tmp, bytes).at(&tmp)?;
    std::fs::rename(&tmp, path).at(path)
}

/// Copy `from` to `to` through a temporary file beside `to` and a rename.
pub fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let tmp = temp_path_for(to);
    std::fs::copy(from, &tmp).at(from)?;
    std::fs::rename(&tmp, to).at(to)
}

/// Move the directory `tmp` to `dir`, replacing what is there. Directories cannot be renamed over a non-empty
/// target, so the old one is renamed away first (`.name.old`), then deleted: a crash in between leaves the old
/// directory at `.name.old`, never a half-written one under the real name.
pub fn replace_dir(tmp: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("out");
        let old = dir.with_file_name(format!(".{name}.old"));
        if old.exists() {
            std::fs::remove_dir_all(&old).at(&old)?;
        }
        std::fs::rename(dir, &old).at(dir)?;
        std::fs::rename(tmp, dir).at(dir)?;
        std::fs::remove_dir_all(&old).at(&old)?;
    } else {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).at(parent)?;
        }
        std::fs::rename(tmp, dir).at(dir)?;
    }
    Ok(())
}

/// Whether `path` exists, telling "not there" (`Ok(false)`) apart from "cannot tell": a symlink loop, or a
/// directory on the way that cannot be read, is an error naming the path, never reported as missing.
pub fn exists(path: &Path) -> Result<bool> {
    match path.try_exists() {
        Ok(there) => Ok(there),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(crate::error::Error::io(
            std::io::Error::new(e.kind(), "symlink loop: too many levels of symbolic links"),
            path,
        )),
        Err(e) => Err(crate::error::Error::io(e, path)),
    }
}
