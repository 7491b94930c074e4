//! Descriptors a client passes with its request (SCM_RIGHTS on the API
//! socket), as Kata's Cloud Hypervisor driver passes a TAP's descriptor
//! with `vm.add-net`: a connection's stream reads with `recvmsg` and keeps
//! what arrives beside the bytes for the request being read.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;

/// Descriptors one `recvmsg` takes at most (more are closed by the kernel).
pub const MAX_PASSED_FDS: usize = 16;

/// The descriptors a connection has received and no request has taken.
#[derive(Clone, Default)]
pub struct PassedFds(Arc<Mutex<Vec<OwnedFd>>>);

impl PassedFds {
    /// Takes them all (those left untaken close with the connection or
    /// the next request).
    pub fn take(&self) -> Vec<OwnedFd> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn add(&self, fds: impl IntoIterator<Item = OwnedFd>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend(fds);
    }
}

/// A connection that receives descriptors along with its bytes.
pub struct FdStream {
    stream: UnixStream,
    fds: PassedFds,
}

impl FdStream {
    /// Wraps `stream`; descriptors it receives land in `fds`.
    pub fn new(stream: UnixStream, fds: PassedFds) -> Self {
        FdStream { stream, fds }
    }
}

/// One `recvmsg` into `buf`, descriptors into `out`.
fn recv_with_fds(fd: i32, buf: &mut [u8], out: &mut Vec<OwnedFd>) -> io::Result<usize> {
    const FD_BYTES: usize = MAX_PASSED_FDS * std::mem::size_of::<i32>();
    // u64 elements: cmsghdr's alignment.
    let mut control = [0u64; 1 + FD_BYTES.div_ceil(8) + 2];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `msg` points at `iov` and `control`, both live for the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the CMSG macros walk the control buffer the kernel filled,
    // within msg_controllen; SCM_RIGHTS data is an array of descriptors
    // now owned by this process.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<i32>();
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<i32>();
                for i in 0..count {
                    out.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(n as usize)
}

impl AsyncRead for FdStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.stream.poll_read_ready(cx))?;
            let mut received = Vec::new();
            let unfilled = buf.initialize_unfilled();
            let raw = this.stream.as_raw_fd();
            match this
                .stream
                .try_io(Interest::READABLE, || recv_with_fds(raw, unfilled, &mut received))
            {
                Ok(n) => {
                    this.fds.add(received);
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::IoSlice;

    /// Sends `bytes` with `fds` on `s` (as a client would).
    fn send_with_fds(s: &std::os::unix::net::UnixStream, bytes: &[u8], fds: &[i32]) {
        let mut control = [0u64; 16];
        let iov = [IoSlice::new(bytes)];
        // SAFETY: plain msghdr set-up over buffers that live for the call.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = 1;
            let len = std::mem::size_of_val(fds) as u32;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(len) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(len) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<i32>(), fds.len());
            assert_eq!(libc::sendmsg(s.as_raw_fd(), &msg, 0), bytes.len() as isize);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn descriptors_arrive_beside_the_bytes() {
        use tokio::io::AsyncReadExt;
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        send_with_fds(&a, b"PUT /x", &[file.as_raw_fd(), file.as_raw_fd()]);
        let fds = PassedFds::default();
        let mut s = FdStream::new(UnixStream::from_std(b).unwrap(), fds.clone());
        let mut got = [0u8; 6];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"PUT /x");
        let taken = fds.take();
        assert_eq!(taken.len(), 2);
        // They are open descriptors of this process, not the sender's numbers.
        for fd in &taken {
            // SAFETY: F_GETFD only asks whether it is open.
            assert!(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) } >= 0);
        }
        assert!(fds.take().is_empty());
    }
}
