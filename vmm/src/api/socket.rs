//! The API socket: created private, stale files replaced, live ones refused.

use crate::config::ApiSocket;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Why the API socket cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process serves this socket.
    #[error("--api-socket: {} is in use by a running covm (or another server)", .0.display())]
    InUse(PathBuf),
    /// The path exists and is no socket: covm will not delete it.
    #[error("--api-socket: {} exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    /// Binding failed.
    #[error("--api-socket: cannot create {}: {source}", path.display())]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An inherited descriptor is not a listening UNIX socket.
    #[error("--api-socket: fd={fd} is not a UNIX socket: {reason}")]
    BadFd {
        /// The descriptor.
        fd: i32,
        /// What is wrong.
        reason: String,
    },
}

/// Opens the API socket.
pub fn open(spec: &ApiSocket) -> Result<UnixListener, SocketError> {
    match spec {
        ApiSocket::Path(path) => bind(path),
        ApiSocket::Fd(fd) => adopt(*fd),
    }
}

fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(SocketError::NotASocket(path.into()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse(path.into()));
        }
        tracing::info!("replacing stale API socket {}", path.display());
        let _ = std::fs::remove_file(path);
    }
    // Create it with mode 0600 from the start: no window in which another
    // user could connect.
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    listener.map_err(|source| SocketError::Bind {
        path: path.into(),
        source,
    })
}

fn adopt(fd: i32) -> Result<UnixListener, SocketError> {
    let bad = |reason: &str| SocketError::BadFd {
        fd,
        reason: reason.into(),
    };
    // SAFETY: fstat only reads the descriptor's metadata; a bad fd yields an error.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `stat` is a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return Err(bad("not an open descriptor"));
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(bad("not a socket"));
    }
    // SAFETY: the descriptor is an open socket handed to covm to own.
    Ok(unsafe { UnixListener::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A socket path in a scratch directory the returned guard removes.
    fn temp() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new().prefix("covm-sock-").tempdir().unwrap();
        let path = dir.path().join("api.sock");
        (dir, path)
    }

    #[test]
    fn private_stale_replaced_live_refused() {
        let (_dir, path) = temp();
        let first = open(&ApiSocket::Path(path.clone())).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            open(&ApiSocket::Path(path.clone())),
            Err(SocketError::InUse(_))
        ));
        drop(first);
        // The file stays behind, stale: it is replaced.
        assert!(path.exists());
        open(&ApiSocket::Path(path.clone())).unwrap();
    }

    #[test]
    fn regular_file_is_not_replaced() {
        let (_dir, path) = temp();
        std::fs::write(&path, b"keep me").unwrap();
        let err = open(&ApiSocket::Path(path.clone())).unwrap_err();
        assert!(err.to_string().ends_with("exists and is not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    }

    #[test]
    fn bad_descriptors_are_refused() {
        assert!(open(&ApiSocket::Fd(987))
            .unwrap_err()
            .to_string()
            .contains("not an open descriptor"));
        let file = std::fs::File::open("/etc/hostname").unwrap();
        use std::os::fd::AsRawFd;
        let err = open(&ApiSocket::Fd(file.as_raw_fd())).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
    }
}
