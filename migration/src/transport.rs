//! Where migration bytes travel: Cloud Hypervisor's `tcp:HOST:PORT` and
//! `unix:PATH` URLs, one connection each way.
//!
//! Both sides get a [`Stream`] whose read and write timeouts can be set,
//! so the engine detects a stalled peer instead of waiting forever. TCP
//! streams have `TCP_NODELAY` on: the protocol batches its own small
//! frames, and the few request/answer exchanges (Hello, Commit) must not
//! wait for Nagle's delayed ACK.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// A connected byte stream with settable I/O timeouts.
pub trait Stream: Read + Write + Send {
    /// Sets both the read and the write timeout (`None`: wait forever). A
    /// read or write that times out fails with `WouldBlock`/`TimedOut`.
    fn set_io_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// The peer, for logs.
    fn peer(&self) -> String;
}

impl Stream for TcpStream {
    fn set_io_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)?;
        self.set_write_timeout(timeout)
    }
    fn peer(&self) -> String {
        self.peer_addr().map_or_else(|_| "tcp peer".into(), |a| a.to_string())
    }
}

impl Stream for UnixStream {
    fn set_io_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)?;
        self.set_write_timeout(timeout)
    }
    fn peer(&self) -> String {
        "unix peer".into()
    }
}

/// Why a transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The URL is not `tcp:HOST:PORT` nor `unix:PATH`.
    #[error("migration URL '{url}': {why}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// Connecting failed (refused, unreachable, timed out, name unknown).
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// Where to.
        endpoint: Endpoint,
        /// Why.
        source: io::Error,
    },
    /// Binding the listening socket failed.
    #[error("cannot listen on {endpoint}: {source}")]
    Listen {
        /// Where.
        endpoint: Endpoint,
        /// Why.
        source: io::Error,
    },
    /// Accepting failed or timed out.
    #[error("no migration connection accepted on {endpoint}: {source}")]
    Accept {
        /// Where.
        endpoint: Endpoint,
        /// Why.
        source: io::Error,
    },
}

/// A parsed migration URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `tcp:HOST:PORT` (`HOST` a name, an IPv4 address or `[IPv6]`).
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// `unix:PATH`.
    Unix(PathBuf),
}

impl FromStr for Endpoint {
    type Err = TransportError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| TransportError::BadUrl {
            url: url.into(),
            why: why.into(),
        };
        if let Some(rest) = url.strip_prefix("tcp:") {
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("expected tcp:HOST:PORT"))?;
            if host.is_empty() {
                return Err(bad("the host is empty (expected tcp:HOST:PORT)"));
            }
            let port = port
                .parse()
                .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
            Ok(Endpoint::Tcp {
                host: host.into(),
                port,
            })
        } else if let Some(path) = url.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("the path is empty (expected unix:PATH)"));
            }
            Ok(Endpoint::Unix(path.into()))
        } else {
            Err(bad("covm migrates over tcp:HOST:PORT or unix:PATH"))
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Connects to `endpoint`, giving up after `timeout` (per address tried;
/// a UNIX connect never waits).
pub fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Box<dyn Stream>, TransportError> {
    let fail = |source| TransportError::Connect {
        endpoint: endpoint.clone(),
        source,
    };
    match endpoint {
        Endpoint::Tcp { host, port } => {
            let addrs = (host.trim_start_matches('[').trim_end_matches(']'), *port)
                .to_socket_addrs()
                .map_err(fail)?;
            let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name resolves to no address");
            for addr in addrs {
                match TcpStream::connect_timeout(&addr, timeout) {
                    Ok(s) => {
                        s.set_nodelay(true).map_err(fail)?;
                        return Ok(Box::new(s));
                    }
                    Err(e) => last = e,
                }
            }
            Err(fail(last))
        }
        Endpoint::Unix(path) => Ok(Box::new(UnixStream::connect(path).map_err(fail)?)),
    }
}

/// A listening socket that accepts one migration connection at a time.
/// A UNIX socket file it created is removed when it is dropped.
pub struct Listener {
    endpoint: Endpoint,
    inner: Inner,
}

enum Inner {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Listens on `endpoint`. `tcp:HOST:0` picks a free port (see
    /// [`Listener::endpoint`]). A leftover UNIX socket file nobody listens
    /// on (from a covm that died) is replaced; any other file is not.
    pub fn bind(endpoint: &Endpoint) -> Result<Self, TransportError> {
        let fail = |source| TransportError::Listen {
            endpoint: endpoint.clone(),
            source,
        };
        match endpoint {
            Endpoint::Tcp { host, port } => {
                let l = TcpListener::bind((host.trim_start_matches('[').trim_end_matches(']'), *port)).map_err(fail)?;
                let port = l.local_addr().map_err(fail)?.port();
                Ok(Listener {
                    endpoint: Endpoint::Tcp {
                        host: host.clone(),
                        port,
                    },
                    inner: Inner::Tcp(l),
                })
            }
            Endpoint::Unix(path) => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    let stale = meta.file_type().is_socket()
                        && UnixStream::connect(path).is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused);
                    if !stale {
                        return Err(fail(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            "the path already exists",
                        )));
                    }
                    std::fs::remove_file(path).map_err(fail)?;
                }
                let l = UnixListener::bind(path).map_err(fail)?;
                Ok(Listener {
                    endpoint: endpoint.clone(),
                    inner: Inner::Unix(l),
                })
            }
        }
    }

    /// Where this listener listens (with the port actually bound).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Accepts one connection, waiting at most `timeout` (`None`: forever).
    pub fn accept(&self, timeout: Option<Duration>) -> Result<Box<dyn Stream>, TransportError> {
        let fail = |source| TransportError::Accept {
            endpoint: self.endpoint.clone(),
            source,
        };
        let deadline = timeout.map(|t| Instant::now() + t);
        self.set_nonblocking(deadline.is_some()).map_err(fail)?;
        loop {
            let accepted: io::Result<Box<dyn Stream>> = match &self.inner {
                Inner::Tcp(l) => l.accept().and_then(|(s, _)| {
                    s.set_nonblocking(false)?;
                    s.set_nodelay(true)?;
                    Ok(Box::new(s) as Box<dyn Stream>)
                }),
                Inner::Unix(l) => l.accept().and_then(|(s, _)| {
                    s.set_nonblocking(false)?;
                    Ok(Box::new(s) as Box<dyn Stream>)
                }),
            };
            match accepted {
                Ok(s) => {
                    tracing::info!(endpoint = %self.endpoint, peer = %s.peer(), "migration connection accepted");
                    return Ok(s);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => match deadline {
                    Some(d) if Instant::now() >= d => {
                        return Err(fail(io::Error::new(io::ErrorKind::TimedOut, "timed out")));
                    }
                    _ => std::thread::sleep(Duration::from_millis(5)),
                },
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(fail(e)),
            }
        }
    }

    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match &self.inner {
            Inner::Tcp(l) => l.set_nonblocking(on),
            Inner::Unix(l) => l.set_nonblocking(on),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Endpoint::Unix(path) = &self.endpoint {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
#[path = "transport_tests.rs"]
mod tests;
