//! UNIX socket set-up for the host side: a listener that replaces only a
//! stale socket file, and a connect that never blocks the device.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Binds a non-blocking listener at `path`. A socket file nobody listens
/// on (left by a covm that ended) is replaced; a socket in use, or any
/// other file, is refused.
pub fn bind_listener(path: &Path) -> Result<UnixListener, String> {
    let shown = path.display();
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(format!("socket={shown}: exists and is not a socket"));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(format!("socket={shown}: another process listens on it"));
        }
        std::fs::remove_file(path).map_err(|e| format!("socket={shown}: cannot remove the stale socket: {e}"))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| format!("socket={shown}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("socket={shown}: {e}"))?;
    Ok(listener)
}

/// Connects to the stream socket at `path` without blocking: a listener
/// whose backlog is full refuses (EAGAIN) rather than stalling the device.
pub fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the socket path is longer than a UNIX address holds",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: creates a socket; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_un that lives for the call.
    let r = unsafe {
        libc::connect(
            fd,
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}
