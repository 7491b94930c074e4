//! The firmware's command line: which workload to run and its arguments.
//!
//! Grammar: whitespace-separated `key=value` words. `workload=` picks the
//! workload (default `hello`); numbers are decimal or 0x-hex.
//!
//! - `dirty`: `mib=N` (region size, default 64), `rate=R` (MiB/s over all
//!   vCPUs, 0 = unthrottled, default 0) and `seed=S` (default 0).
//! - `blk` (first virtio-blk disk): `mib=N` (the region of the disk it
//!   writes, default 16), `rate=R` (MiB/s of block writes, 0 =
//!   unthrottled, default 0), `seed=S` (default 0), `dirty=M` (MiB: the
//!   other vCPUs run `dirty` on M MiB meanwhile, 0 = none, default 0),
//!   `dirty_rate=R` (the `rate` of that `dirty`, default 0) and
//!   `stop_after=K` (stop cleanly after K heartbeats, 0 = never, default 0).
//! - `blkbench` (first virtio-blk disk): `mib=N` (size of the sequential
//!   tests and the span of the random ones, default 64) and `ms=T` (length
//!   of each random test, default 1000).
//! - `net` (first virtio-net device): `ip=A.B.C.D/N` (its address and
//!   prefix, default 192.168.249.2/24), `gw=A.B.C.D` (default route, none
//!   by default) and `port=P` (its TCP and UDP echo port, default 7).
//! - `vsock` (first virtio-vsock device): `port=P` (its echo listener's
//!   port, default 1234), `peer=Q` (a host port its client streams to and
//!   verifies the echo from, none by default) and `kib=K` (the length of
//!   each client stream, default 1024).
//! - `rng` and `hello` take no arguments.

use core::fmt;

/// A workload and its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Print a greeting and power off.
    Hello,
    /// Write and verify pages continuously.
    Dirty(DirtyArgs),
    /// Write and verify blocks of a virtio-blk disk continuously.
    Blk(BlkArgs),
    /// Measure a virtio-blk disk and power off.
    BlkBench(BlkBenchArgs),
    /// Read and check entropy from virtio-rng, then power off.
    Rng,
    /// Answer ARP and ping, echo TCP and UDP, on a virtio-net device.
    Net(NetArgs),
    /// Echo vsock connections, and stream to a host port, on virtio-vsock.
    Vsock(VsockArgs),
}

/// Arguments of the `vsock` workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VsockArgs {
    /// The port its echo service listens on.
    pub port: u32,
    /// The host port its client streams to (none: no client).
    pub peer: Option<u32>,
    /// Each client stream's length in KiB.
    pub kib: u64,
}

impl Default for VsockArgs {
    fn default() -> Self {
        Self {
            port: 1234,
            peer: None,
            kib: 1024,
        }
    }
}

/// Byte `offset` of the `vsock` client's stream: the pattern the host
/// echoes back and the guest checks, `(offset * 7 + offset / 4096) mod 251`
/// (251 is prime, so the pattern does not repeat at any power-of-two
/// stride a lost or doubled chunk would have).
pub fn vsock_pattern(offset: u64) -> u8 {
    ((offset.wrapping_mul(7).wrapping_add(offset / 4096)) % 251) as u8
}

/// Arguments of the `net` workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetArgs {
    /// The guest's IPv4 address.
    pub ip: core::net::Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The default route.
    pub gw: Option<core::net::Ipv4Addr>,
    /// The TCP and UDP echo port.
    pub port: u16,
}

impl Default for NetArgs {
    fn default() -> Self {
        Self {
            ip: core::net::Ipv4Addr::new(192, 168, 249, 2),
            prefix: 24,
            gw: None,
            port: 7,
        }
    }
}

/// Power-off code (a `ports::power` failure code, after `FAIL_PANIC`) of
/// the virtio workloads when a device they need is missing, cannot be set
/// up, reports an error or stops answering.
pub const FAIL_DEVICE: u8 = 0x08;

/// Arguments of the `blk` workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkArgs {
    /// Size in MiB of the region at the start of the disk that it writes.
    pub mib: u64,
    /// Block writes in MiB/s; 0 means as fast as possible.
    pub rate_mib_s: u64,
    /// Seed of the block content function (`pattern::fill_block`).
    pub seed: u64,
    /// MiB of the `dirty` workload the other vCPUs run meanwhile (0: none).
    pub dirty_mib: u64,
    /// Rate of that `dirty` workload in MiB/s (0: unthrottled).
    pub dirty_rate_mib_s: u64,
    /// Stop cleanly after this many heartbeats (0: never).
    pub stop_after: u64,
}

impl Default for BlkArgs {
    fn default() -> Self {
        Self {
            mib: 16,
            rate_mib_s: 0,
            seed: 0,
            dirty_mib: 0,
            dirty_rate_mib_s: 0,
            stop_after: 0,
        }
    }
}

/// Arguments of the `blkbench` workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkBenchArgs {
    /// Size in MiB of the sequential tests, and the span of the random ones.
    pub mib: u64,
    /// Length of each random test in milliseconds.
    pub ms: u64,
}

impl Default for BlkBenchArgs {
    fn default() -> Self {
        Self { mib: 64, ms: 1000 }
    }
}

/// Arguments of the `dirty` workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtyArgs {
    /// Size of the region in MiB.
    pub mib: u64,
    /// Total write rate in MiB/s over all vCPUs; 0 means as fast as possible.
    pub rate_mib_s: u64,
    /// Seed of the page content function.
    pub seed: u64,
}

impl Default for DirtyArgs {
    fn default() -> Self {
        Self {
            mib: 64,
            rate_mib_s: 0,
            seed: 0,
        }
    }
}

/// Why a command line was refused. Borrowed from the command line itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgError<'a> {
    /// A word without `=`.
    NotKeyValue(&'a str),
    /// `workload=` names no known workload.
    UnknownWorkload(&'a str),
    /// A key the chosen workload does not take.
    UnknownKey {
        /// The workload chosen.
        workload: &'a str,
        /// The key it does not take.
        key: &'a str,
    },
    /// A value that is not a number.
    BadNumber {
        /// The key.
        key: &'a str,
        /// Its value as written.
        value: &'a str,
    },
    /// A value that is not an IPv4 address (with a prefix where one is due).
    BadAddress {
        /// The key.
        key: &'a str,
        /// Its value as written.
        value: &'a str,
    },
    /// A number outside what the key allows.
    OutOfRange {
        /// The key.
        key: &'a str,
        /// Its value.
        value: u64,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
}

impl fmt::Display for ArgError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotKeyValue(w) => write!(f, "argument '{w}' is not key=value"),
            Self::UnknownWorkload(w) => write!(
                f,
                "unknown workload '{w}' (known: hello, dirty, blk, blkbench, rng, net)"
            ),
            Self::UnknownKey { workload, key } => write!(f, "workload '{workload}' takes no argument '{key}'"),
            Self::BadNumber { key, value } => write!(f, "{key}={value} is not a number"),
            Self::BadAddress { key, value } => write!(
                f,
                "{key}={value} is not an IPv4 address{}",
                if *key == "ip" { " with a prefix (A.B.C.D/N)" } else { "" }
            ),
            Self::OutOfRange { key, value, min, max } => {
                write!(f, "{key}={value} is out of range ({min} to {max})")
            }
        }
    }
}

/// Parses the firmware command line.
pub fn parse(cmdline: &str) -> Result<Workload, ArgError<'_>> {
    let mut name = "hello";
    for word in cmdline.split_ascii_whitespace() {
        let (key, value) = word.split_once('=').ok_or(ArgError::NotKeyValue(word))?;
        if key == "workload" {
            name = value;
        }
    }
    match name {
        "hello" => {
            reject_keys(cmdline, name, &[])?;
            Ok(Workload::Hello)
        }
        "dirty" => {
            reject_keys(cmdline, name, &["mib", "rate", "seed"])?;
            let mut args = DirtyArgs::default();
            for (key, value) in pairs(cmdline) {
                match key {
                    "mib" => args.mib = number(key, value, 1, crate::layout::DIRTY_MAX_PAGES / 256)?,
                    "rate" => args.rate_mib_s = number(key, value, 0, 1 << 20)?,
                    "seed" => args.seed = number(key, value, 0, u64::MAX)?,
                    _ => {}
                }
            }
            Ok(Workload::Dirty(args))
        }
        "blk" => {
            reject_keys(
                cmdline,
                name,
                &["mib", "rate", "seed", "dirty", "dirty_rate", "stop_after"],
            )?;
            let mut args = BlkArgs::default();
            let dirty_max = crate::layout::DIRTY_MAX_PAGES / 256;
            for (key, value) in pairs(cmdline) {
                match key {
                    "mib" => args.mib = number(key, value, 1, crate::layout::BLK_MAX_BLOCKS / 256)?,
                    "rate" => args.rate_mib_s = number(key, value, 0, 1 << 20)?,
                    "seed" => args.seed = number(key, value, 0, u64::MAX)?,
                    "dirty" => args.dirty_mib = number(key, value, 0, dirty_max)?,
                    "dirty_rate" => args.dirty_rate_mib_s = number(key, value, 0, 1 << 20)?,
                    "stop_after" => args.stop_after = number(key, value, 0, u64::MAX)?,
                    _ => {}
                }
            }
            Ok(Workload::Blk(args))
        }
        "blkbench" => {
            reject_keys(cmdline, name, &["mib", "ms"])?;
            let mut args = BlkBenchArgs::default();
            for (key, value) in pairs(cmdline) {
                match key {
                    "mib" => args.mib = number(key, value, 1, 1 << 20)?,
                    "ms" => args.ms = number(key, value, 1, 3_600_000)?,
                    _ => {}
                }
            }
            Ok(Workload::BlkBench(args))
        }
        "rng" => {
            reject_keys(cmdline, name, &[])?;
            Ok(Workload::Rng)
        }
        "net" => {
            reject_keys(cmdline, name, &["ip", "gw", "port"])?;
            let mut args = NetArgs::default();
            for (key, value) in pairs(cmdline) {
                let bad = ArgError::BadAddress { key, value };
                match key {
                    "ip" => {
                        let (ip, prefix) = value.split_once('/').ok_or(bad)?;
                        args.ip = ip.parse().map_err(|_| bad)?;
                        args.prefix = prefix.parse().ok().filter(|p| (1..=32).contains(p)).ok_or(bad)?;
                    }
                    "gw" => args.gw = Some(value.parse().map_err(|_| bad)?),
                    "port" => args.port = number(key, value, 1, 65535)? as u16,
                    _ => {}
                }
            }
            Ok(Workload::Net(args))
        }
        "vsock" => {
            reject_keys(cmdline, name, &["port", "peer", "kib"])?;
            let mut args = VsockArgs::default();
            for (key, value) in pairs(cmdline) {
                match key {
                    "port" => args.port = number(key, value, 1, u64::from(u32::MAX))? as u32,
                    "peer" => args.peer = Some(number(key, value, 1, u64::from(u32::MAX))? as u32),
                    "kib" => args.kib = number(key, value, 1, 1 << 30)?,
                    _ => {}
                }
            }
            Ok(Workload::Vsock(args))
        }
        other => Err(ArgError::UnknownWorkload(other)),
    }
}

fn pairs(cmdline: &str) -> impl Iterator<Item = (&str, &str)> {
    cmdline.split_ascii_whitespace().filter_map(|w| w.split_once('='))
}

fn reject_keys<'a>(cmdline: &'a str, workload: &'a str, allowed: &[&str]) -> Result<(), ArgError<'a>> {
    for (key, _) in pairs(cmdline) {
        if key != "workload" && !allowed.contains(&key) {
            return Err(ArgError::UnknownKey { workload, key });
        }
    }
    Ok(())
}

fn number<'a>(key: &'a str, value: &'a str, min: u64, max: u64) -> Result<u64, ArgError<'a>> {
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    let n = parsed.map_err(|_| ArgError::BadNumber { key, value })?;
    if n < min || n > max {
        return Err(ArgError::OutOfRange {
            key,
            value: n,
            min,
            max,
        });
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `workload=net <arg>` in a fixed buffer (the crate is no_std).
    struct Line([u8; 64], usize);
    impl Line {
        fn as_str(&self) -> &str {
            core::str::from_utf8(&self.0[..self.1]).unwrap()
        }
    }
    fn alloc_free_line(arg: &str) -> Line {
        let mut line = Line([0; 64], 0);
        for part in ["workload=net ", arg] {
            line.0[line.1..line.1 + part.len()].copy_from_slice(part.as_bytes());
            line.1 += part.len();
        }
        line
    }

    #[test]
    fn empty_is_hello() {
        assert_eq!(parse(""), Ok(Workload::Hello));
        assert_eq!(parse("  workload=hello "), Ok(Workload::Hello));
    }

    #[test]
    fn dirty_with_args() {
        assert_eq!(
            parse("workload=dirty mib=256 rate=100 seed=0x2a"),
            Ok(Workload::Dirty(DirtyArgs {
                mib: 256,
                rate_mib_s: 100,
                seed: 42
            }))
        );
        assert_eq!(parse("workload=dirty"), Ok(Workload::Dirty(DirtyArgs::default())));
    }

    #[test]
    fn blk_with_args() {
        assert_eq!(
            parse("workload=blk mib=32 rate=8 seed=0x10 dirty=64 dirty_rate=100 stop_after=50"),
            Ok(Workload::Blk(BlkArgs {
                mib: 32,
                rate_mib_s: 8,
                seed: 16,
                dirty_mib: 64,
                dirty_rate_mib_s: 100,
                stop_after: 50,
            }))
        );
        assert_eq!(parse("workload=blk"), Ok(Workload::Blk(BlkArgs::default())));
        assert_eq!(BlkArgs::default().dirty_mib, 0);
        assert_eq!(BlkArgs::default().stop_after, 0);
        // The generation table bounds the region.
        assert!(parse("workload=blk mib=4096").is_ok());
        assert!(matches!(
            parse("workload=blk mib=4097"),
            Err(ArgError::OutOfRange {
                key: "mib",
                max: 4096,
                ..
            })
        ));
        assert!(matches!(
            parse("workload=blk mib=0"),
            Err(ArgError::OutOfRange { key: "mib", min: 1, .. })
        ));
        assert_eq!(
            parse("workload=blk qd=4"),
            Err(ArgError::UnknownKey {
                workload: "blk",
                key: "qd"
            })
        );
    }

    #[test]
    fn blkbench_and_rng() {
        assert_eq!(
            parse("workload=blkbench"),
            Ok(Workload::BlkBench(BlkBenchArgs { mib: 64, ms: 1000 }))
        );
        assert_eq!(
            parse("workload=blkbench mib=8 ms=200"),
            Ok(Workload::BlkBench(BlkBenchArgs { mib: 8, ms: 200 }))
        );
        assert!(matches!(
            parse("workload=blkbench ms=0"),
            Err(ArgError::OutOfRange { key: "ms", .. })
        ));
        assert_eq!(parse("workload=rng"), Ok(Workload::Rng));
        assert_eq!(parse("workload=net"), Ok(Workload::Net(NetArgs::default())));
        assert_eq!(
            parse("workload=net ip=10.0.9.2/24 gw=10.0.9.1 port=9000"),
            Ok(Workload::Net(NetArgs {
                ip: core::net::Ipv4Addr::new(10, 0, 9, 2),
                prefix: 24,
                gw: Some(core::net::Ipv4Addr::new(10, 0, 9, 1)),
                port: 9000
            }))
        );
        for bad in ["ip=10.0.9.2", "ip=10.0.9/24", "ip=10.0.9.2/33", "gw=x"] {
            let line = alloc_free_line(bad);
            assert!(
                matches!(parse(line.as_str()), Err(ArgError::BadAddress { .. })),
                "{bad}"
            );
        }
        assert_eq!(parse("workload=vsock"), Ok(Workload::Vsock(VsockArgs::default())));
        assert_eq!(
            parse("workload=vsock port=5000 peer=6000 kib=64"),
            Ok(Workload::Vsock(VsockArgs {
                port: 5000,
                peer: Some(6000),
                kib: 64
            }))
        );
        assert!(matches!(
            parse("workload=vsock port=0"),
            Err(ArgError::OutOfRange { key: "port", .. })
        ));
        assert!(matches!(
            parse("workload=vsock peer=4294967296"),
            Err(ArgError::OutOfRange { key: "peer", .. })
        ));
        // The pattern's documented values.
        assert_eq!(
            [
                vsock_pattern(0),
                vsock_pattern(1),
                vsock_pattern(36),
                vsock_pattern(4096)
            ],
            [0, 7, 1, 59]
        );
        assert_eq!(
            parse("workload=rng mib=1"),
            Err(ArgError::UnknownKey {
                workload: "rng",
                key: "mib"
            })
        );
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(parse("workload=nope"), Err(ArgError::UnknownWorkload("nope")));
        assert_eq!(
            parse("workload=dirty mib=x"),
            Err(ArgError::BadNumber { key: "mib", value: "x" })
        );
        assert_eq!(
            parse("workload=hello mib=3"),
            Err(ArgError::UnknownKey {
                workload: "hello",
                key: "mib"
            })
        );
        assert_eq!(parse("loud"), Err(ArgError::NotKeyValue("loud")));
        assert!(matches!(
            parse("workload=dirty mib=0"),
            Err(ArgError::OutOfRange { key: "mib", .. })
        ));
        extern crate std;
        use std::string::ToString;
        assert_eq!(
            parse("workload=nope").unwrap_err().to_string(),
            "unknown workload 'nope' (known: hello, dirty, blk, blkbench, rng, net)"
        );
    }
}
