//! Binding the unix socket (`-s PATH`, `-a MASK`).
//!
//! A socket file left by an earlier run would make bind fail, so it is replaced, but only
//! when it is provably stale: PATH must be a socket (a regular file, a directory or a
//! symlink someone put there is refused, never deleted), and nobody may be accepting on it
//! (a connect is tried first). memcached unlinks any socket file it finds, which lets a
//! second instance silently take a live instance's path; refusing is the safer reading of
//! "replace an old socket".
//!
//! The mask is applied with chmod after bind and before listen. memcached sets the process
//! umask around bind instead, but the umask is process-wide and other threads (the cluster
//! runtime) may be creating files at that moment; until listen, connects are refused anyway,
//! so the socket is never reachable with looser permissions.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixSocket;

/// Why the unix socket could not be set up; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum UnixSocketError {
    #[error("-s {0}: the path exists and is not a socket; remove it or choose another path (only a stale socket file is replaced)")]
    NotASocket(PathBuf),
    #[error("-s {0}: another process is accepting connections on this socket")]
    InUse(PathBuf),
    #[error("-s {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Binds (without listening) a stream socket at `path` with permission bits `mask`,
/// replacing a stale socket file.
pub fn bind_unix(path: &Path, mask: u32) -> Result<UnixSocket, UnixSocketError> {
    let io_err = |source| UnixSocketError::Io {
        path: path.to_path_buf(),
        source,
    };
    remove_stale(path)?;
    let socket = UnixSocket::new_stream().map_err(io_err)?;
    socket.bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mask)).map_err(io_err)?;
    Ok(socket)
}

/// Removes `path` if it is a socket file nobody accepts on; refuses anything else.
fn remove_stale(path: &Path) -> Result<(), UnixSocketError> {
    let io_err = |source| UnixSocketError::Io {
        path: path.to_path_buf(),
        source,
    };
    // symlink_metadata: a symlink is judged itself, not what it points to.
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(UnixSocketError::NotASocket(path.to_path_buf()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(UnixSocketError::InUse(path.to_path_buf())),
        // Nobody bound to it any more: the file is what a previous run left.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(io_err)
        }
        // Anything else (EACCES, a full backlog of a live server: EAGAIN) does not prove
        // the socket is dead.
        Err(e) => Err(io_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TempDir;

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_the_mask_applied() {
        let dir = TempDir::new("unix-stale");
        let path = dir.path().join("s.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "the dropped listener leaves its file");
        let socket = bind_unix(&path, 0o640).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        let _listener = socket.listen(8).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
    }

    #[tokio::test]
    async fn a_live_socket_and_other_files_are_left_alone() {
        let dir = TempDir::new("unix-live");
        let live = dir.path().join("live.sock");
        let _l = std::os::unix::net::UnixListener::bind(&live).unwrap();
        assert!(matches!(
            bind_unix(&live, 0o700),
            Err(UnixSocketError::InUse(_))
        ));
        assert!(std::os::unix::net::UnixStream::connect(&live).is_ok());
        let file = dir.path().join("data");
        std::fs::write(&file, b"precious").unwrap();
        assert!(matches!(
            bind_unix(&file, 0o700),
            Err(UnixSocketError::NotASocket(_))
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    }
}
