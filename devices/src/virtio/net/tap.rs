//! A TAP interface: the host side of a virtio-net device. Frames carry the
//! 12-byte `virtio_net_hdr_v1` in front (`IFF_VNET_HDR` with
//! `TUNSETVNETHDRSZ`), the header virtio 1.x guests use, so a frame passes
//! between the guest's queues and the TAP without translation. No offloads
//! are enabled: every frame is a whole Ethernet frame with no checksum left
//! to do.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Bytes of `virtio_net_hdr_v1` in front of every frame.
pub const VNET_HDR_LEN: usize = 12;

/// Why a TAP could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(#[source] io::Error),
    /// The name is not a valid interface name.
    #[error("tap={0}: an interface name is 1 to 15 bytes, without '/', ':', NUL or white space")]
    Name(String),
    /// The kernel refused to create or attach the interface.
    #[error("tap={name}: cannot create or attach the TAP interface: {source}")]
    Attach {
        /// The interface.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An inherited descriptor that is not a usable TAP.
    #[error("fd={fd}: not a TAP interface with a virtio-net header: {source}")]
    NotTap {
        /// The descriptor.
        fd: RawFd,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Setting the interface's address or bringing it up failed.
    #[error("tap={name}: cannot {what}: {source}")]
    Configure {
        /// The interface.
        name: String,
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// An open TAP interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

fn ifreq_named(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data (a name and a union of integers and
    // pointers); all zeros is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

fn name_of(req: &libc::ifreq) -> String {
    let bytes: Vec<u8> = req.ifr_name.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn valid_name(name: &str) -> bool {
    (1..libc::IFNAMSIZ).contains(&name.len())
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

impl Tap {
    /// Opens the TAP interface `name`, creating it if it does not exist
    /// (as Cloud Hypervisor does); the kernel names it when `name` is empty.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if !name.is_empty() && !valid_name(name) {
            return Err(TapError::Name(name.into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = ifreq_named(name);
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes the ifreq it is given, which
        // lives for the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(TapError::Attach {
                name: name.into(),
                source: io::Error::last_os_error(),
            });
        }
        let name = name_of(&req);
        let tap = Tap { file, name };
        tap.set_up_header().map_err(|source| TapError::Attach {
            name: tap.name.clone(),
            source,
        })?;
        Ok(tap)
    }

    /// Takes over an inherited TAP descriptor (Kata passes TAPs this way),
    /// checking that it is one opened with a virtio-net header.
    pub fn from_fd(fd: OwnedFd) -> Result<Tap, TapError> {
        let raw = fd.as_raw_fd();
        let file = File::from(fd);
        // SAFETY: as in `open`; TUNGETIFF only writes the ifreq.
        let mut req = ifreq_named("");
        if unsafe { libc::ioctl(raw, libc::TUNGETIFF, &mut req) } < 0 {
            return Err(TapError::NotTap {
                fd: raw,
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: TUNGETIFF filled the flags member of the union.
        let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
        if flags & libc::IFF_TAP == 0 || flags & libc::IFF_VNET_HDR == 0 || flags & libc::IFF_NO_PI == 0 {
            return Err(TapError::NotTap {
                fd: raw,
                source: io::Error::other(format!("flags {flags:#x}: needs IFF_TAP, IFF_NO_PI and IFF_VNET_HDR")),
            });
        }
        // SAFETY: F_SETFL on a descriptor this function owns.
        unsafe {
            let current = libc::fcntl(raw, libc::F_GETFL);
            libc::fcntl(raw, libc::F_SETFL, current | libc::O_NONBLOCK);
        }
        let tap = Tap {
            file,
            name: name_of(&req),
        };
        tap.set_up_header()
            .map_err(|source| TapError::NotTap { fd: raw, source })?;
        Ok(tap)
    }

    /// The 12-byte header, and no offloads.
    fn set_up_header(&self) -> io::Result<()> {
        let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer given.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Keeps the interface (with its addresses and routes) after its last
    /// descriptor closes, or not: set while a live migration carries the
    /// VM to another covm on this host, which attaches to it.
    pub fn set_persist(&self, persist: bool) -> io::Result<()> {
        // SAFETY: TUNSETPERSIST takes its argument by value.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETPERSIST, libc::c_ulong::from(persist)) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the interface is up (a TAP created just now is not).
    pub fn is_up(&self) -> io::Result<bool> {
        // SAFETY: a plain socket call; the descriptor is owned below.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor no one else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = ifreq_named(&self.name);
        // SAFETY: SIOCGIFFLAGS fills the flags member of the ifreq.
        if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the flags member was just filled.
        Ok(i32::from(unsafe { req.ifr_ifru.ifru_flags }) & libc::IFF_UP != 0)
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The descriptor frames are read from and written to (non-blocking).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Gives the interface an IPv4 address and netmask and brings it up,
    /// as CH's `ip=`/`mask=` do.
    pub fn configure(&self, ip: std::net::Ipv4Addr, mask: std::net::Ipv4Addr) -> Result<(), TapError> {
        let fail = |what, source| TapError::Configure {
            name: self.name.clone(),
            what,
            source,
        };
        // SAFETY: a plain socket call; the descriptor is owned below.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(fail("open a socket to configure it", io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor no one else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(raw) };
        let set_addr = |request: libc::Ioctl, addr: std::net::Ipv4Addr| -> io::Result<()> {
            let mut req = ifreq_named(&self.name);
            // SAFETY: sockaddr_in fits in the union's sockaddr member; all
            // zeros is a valid sockaddr.
            unsafe {
                let sin = &mut req.ifr_ifru.ifru_addr as *mut libc::sockaddr as *mut libc::sockaddr_in;
                (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
                (*sin).sin_addr.s_addr = u32::from(addr).to_be();
            }
            // SAFETY: the request reads the ifreq, which lives for the call.
            if unsafe { libc::ioctl(socket.as_raw_fd(), request, &req) } < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        };
        set_addr(libc::SIOCSIFADDR, ip).map_err(|e| fail("set its address", e))?;
        set_addr(libc::SIOCSIFNETMASK, mask).map_err(|e| fail("set its netmask", e))?;
        let mut req = ifreq_named(&self.name);
        // SAFETY: SIOCGIFFLAGS fills the flags member of the ifreq.
        if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
            return Err(fail("read its flags", io::Error::last_os_error()));
        }
        // SAFETY: the flags member was just filled.
        unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
        // SAFETY: SIOCSIFFLAGS reads the ifreq.
        if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
            return Err(fail("bring it up", io::Error::last_os_error()));
        }
        Ok(())
    }
}
