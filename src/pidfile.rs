//! `-P FILE`: the process id, written once the ports are bound and removed at exit.
//!
//! It is written before `-u` drops root (the directory is often root's, as with memcached),
//! so it must not follow a symbolic link someone planted there: the file is opened with
//! `O_NOFOLLOW` and refused unless it is a regular file. The [`PidFile`] guard removes it on
//! every exit after it was written, early ones included.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why the pid file was not written.
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("-P {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("-P {}: not a regular file (a symbolic link, a directory or a device is refused)", .path.display())]
    NotRegular { path: PathBuf },
}

/// The written pid file; dropping it removes the file.
#[derive(Debug)]
pub struct PidFile(PathBuf);

impl PidFile {
    /// Writes this process's id to `path`, creating or truncating a regular file.
    pub fn write(path: &Path) -> Result<PidFile, PidFileError> {
        let io = |source| PidFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let not_regular = || PidFileError::NotRegular {
            path: path.to_path_buf(),
        };
        // O_NONBLOCK: opening a FIFO planted there must not hang; it is refused below.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                // O_NOFOLLOW on a symbolic link.
                Some(libc::ELOOP) => not_regular(),
                _ => io(e),
            })?;
        // Truncate only once it is known to be a regular file (O_TRUNC on a device would
        // act on the device).
        if !file.metadata().map_err(io)?.is_file() {
            return Err(not_regular());
        }
        file.set_len(0).map_err(io)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(io)?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Best effort: after -u the directory may no longer be writable (memcached alike).
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TempDir;

    #[test]
    fn written_then_removed_on_drop() {
        let dir = TempDir::new("pidfile");
        let path = dir.join("m.pid");
        std::fs::write(&path, "a longer leftover from an earlier run\n").unwrap();
        let pid = PidFile::write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        drop(pid);
        assert!(!path.exists());
    }

    #[test]
    fn symbolic_links_and_other_files_are_refused() {
        let dir = TempDir::new("pidfile-refused");
        let target = dir.join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.join("link.pid");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = PidFile::write(&link).unwrap_err();
        assert!(matches!(e, PidFileError::NotRegular { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        // A dangling link is not followed to create its target either.
        let dangling = dir.join("dangling.pid");
        std::os::unix::fs::symlink(dir.join("absent"), &dangling).unwrap();
        assert!(PidFile::write(&dangling).is_err());
        assert!(!dir.join("absent").exists());
        let e = PidFile::write(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(e, PidFileError::NotRegular { .. }), "{e}");
        let e = PidFile::write(dir.path()).unwrap_err();
        assert!(e.to_string().starts_with("-P "), "{e}");
    }
}
