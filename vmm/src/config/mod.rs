//! The VM's configuration, checked before anything is created.

pub mod options;
pub mod size;

use crate::cli::Cli;
use options::{parse_toggle, OptionError, OptionMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Most vCPUs covm runs.
pub const MAX_VCPUS: u8 = 32;
/// Default guest memory, as Cloud Hypervisor's.
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// Least guest memory covm boots: room for the boot structures and firmware.
pub const MIN_MEMORY: u64 = 16 << 20;

/// Everything wrong a configuration can be.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An option string was refused.
    #[error(transparent)]
    Option(#[from] OptionError),
    /// A file named on the command line cannot be read.
    #[error("{option}: cannot read {}: {source}", path.display())]
    Unreadable {
        /// The option or field naming the file (`--kernel`, `payload.kernel`).
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// More memory than this host has.
    #[error("--memory: size {} is larger than this host's {} of RAM", size::human(*requested), size::human(*host))]
    MemoryTooLarge {
        /// Asked for.
        requested: u64,
        /// Host RAM.
        host: u64,
    },
    /// Two options that exclude each other, or one that needs another.
    #[error("{0}")]
    Conflict(&'static str),
}

/// vCPU configuration (CH's `CpusConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpusConfig {
    /// vCPUs started at boot.
    pub boot_vcpus: u8,
}

/// Memory configuration (CH's `MemoryConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Guest RAM in bytes.
    pub size: u64,
}

/// What the guest boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// covm's built-in firmware, with its command line.
    BuiltinFirmware,
    /// A firmware ELF from a file.
    Firmware(PathBuf),
    /// A kernel (bzImage or ELF) and optional initramfs.
    Kernel {
        /// The kernel image.
        kernel: PathBuf,
        /// The initramfs.
        initramfs: Option<PathBuf>,
    },
}

/// Where serial output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialMode {
    /// covm's standard output.
    Tty,
    /// A file, created or truncated.
    File(PathBuf),
    /// No serial device at all.
    Off,
    /// A serial device whose output is discarded.
    Null,
}

/// The API socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiSocket {
    /// Create a socket at this path.
    Path(PathBuf),
    /// An already-bound socket inherited as this descriptor.
    Fd(i32),
}

/// How dirty pages are tracked while the VM migrates out
/// (`--dirty-tracking`, docs/migration.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirtyTracking {
    /// KVM's dirty bitmap with manual protection: cost grows with guest
    /// memory size (every round reads one bit per page).
    #[default]
    Log,
    /// KVM's per-vCPU dirty ring: cost grows with the pages dirtied.
    Ring {
        /// Entries per vCPU ring (a power of two).
        entries: u32,
    },
}

/// A whole VM configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// vCPUs.
    pub cpus: CpusConfig,
    /// Memory.
    pub memory: MemoryConfig,
    /// What to boot.
    pub payload: Payload,
    /// Command line for the payload.
    pub cmdline: String,
    /// Serial output.
    pub serial: SerialMode,
    /// The API socket, if any.
    pub api_socket: Option<ApiSocket>,
    /// Dirty-page tracking for migration.
    pub dirty_tracking: DirtyTracking,
}

impl VmConfig {
    /// Builds and checks the configuration given on the command line.
    pub fn from_cli(cli: &Cli, host_ram: u64) -> Result<Self, ConfigError> {
        let cpus = parse_cpus(cli.cpus.as_deref().unwrap_or("boot=1"))?;
        let memory = parse_memory(cli.memory.as_deref().unwrap_or("size=512M"), host_ram)?;
        let payload = match (&cli.kernel, &cli.firmware, &cli.initramfs) {
            (Some(_), Some(_), _) => return Err(ConfigError::Conflict("give --kernel or --firmware, not both")),
            (None, _, Some(_)) => return Err(ConfigError::Conflict("--initramfs needs --kernel")),
            (Some(kernel), None, initramfs) => {
                check_readable("--kernel", kernel)?;
                if let Some(initramfs) = initramfs {
                    check_readable("--initramfs", initramfs)?;
                }
                Payload::Kernel {
                    kernel: kernel.clone(),
                    initramfs: initramfs.clone(),
                }
            }
            (None, Some(firmware), None) => {
                check_readable("--firmware", firmware)?;
                Payload::Firmware(firmware.clone())
            }
            (None, None, None) => Payload::BuiltinFirmware,
        };
        let serial = parse_serial(cli.serial.as_deref().unwrap_or("tty"))?;
        if let Some(console) = &cli.console {
            parse_console(console)?;
        }
        let api_socket = cli.api_socket.as_deref().map(parse_api_socket).transpose()?;
        if let Some(platform) = &cli.platform {
            parse_platform(platform)?;
        }
        let dirty_tracking = cli
            .dirty_tracking
            .as_deref()
            .map(parse_dirty_tracking)
            .transpose()?
            .unwrap_or_default();
        Ok(Self {
            cpus,
            memory,
            payload,
            cmdline: cli.cmdline.clone().unwrap_or_default(),
            serial,
            api_socket,
            dirty_tracking,
        })
    }
}

/// Checks that `path`, named by `option`, is a readable file.
pub fn check_readable(option: &'static str, path: &Path) -> Result<(), ConfigError> {
    let unreadable = |source| ConfigError::Unreadable {
        option,
        path: path.into(),
        source,
    };
    let file = File::open(path).map_err(unreadable)?;
    if file.metadata().map_err(unreadable)?.is_dir() {
        return Err(unreadable(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "is a directory",
        )));
    }
    Ok(())
}

/// `--cpus boot=N[,max=N]`.
pub fn parse_cpus(text: &str) -> Result<CpusConfig, OptionError> {
    let m = OptionMap::parse("cpus", text, &["boot", "max"])?;
    let count = |v: &str| match v.parse::<u8>() {
        Ok(n) if (1..=MAX_VCPUS).contains(&n) => Ok(n),
        _ => Err(format!("must be a number from 1 to {MAX_VCPUS}")),
    };
    let boot = m.get_with("boot", count)?.unwrap_or(1);
    if let Some(max) = m.get_with("max", count)? {
        if max != boot {
            return Err(m.invalid(
                "max",
                &max.to_string(),
                "vCPU hotplug is not supported: max must equal boot",
            ));
        }
    }
    Ok(CpusConfig { boot_vcpus: boot })
}

/// `--dirty-tracking mode=log|ring[,ring_entries=N]`.
pub fn parse_dirty_tracking(text: &str) -> Result<DirtyTracking, OptionError> {
    let m = OptionMap::parse("dirty-tracking", text, &["mode", "ring_entries"])?;
    let entries = m.get_with("ring_entries", parse_ring_entries)?;
    match m.get("mode").unwrap_or("log") {
        "log" if entries.is_some() => Err(m.invalid(
            "ring_entries",
            m.get("ring_entries").unwrap_or_default(),
            "only mode=ring has a ring",
        )),
        "log" => Ok(DirtyTracking::Log),
        "ring" => Ok(DirtyTracking::Ring {
            entries: entries.unwrap_or(crate::dirty_ring::DEFAULT_RING_ENTRIES),
        }),
        other => Err(m.invalid("mode", other, "must be log or ring")),
    }
}

/// Entries of a dirty ring: a power of two within
/// [`MIN_RING_ENTRIES`, `MAX_RING_ENTRIES`].
pub fn parse_ring_entries(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if n.is_power_of_two() && (MIN_RING_ENTRIES..=MAX_RING_ENTRIES).contains(&n) => Ok(n),
        _ => Err(format!(
            "must be a power of two from {MIN_RING_ENTRIES} to {MAX_RING_ENTRIES}"
        )),
    }
}

/// Fewest entries per dirty ring covm accepts (KVM keeps some in reserve).
pub const MIN_RING_ENTRIES: u32 = 512;
/// Most entries per dirty ring covm accepts (KVM's own limit may be lower).
pub const MAX_RING_ENTRIES: u32 = 1 << 20;

/// `--memory size=SIZE`.
pub fn parse_memory(text: &str, host_ram: u64) -> Result<MemoryConfig, ConfigError> {
    let m = OptionMap::parse("memory", text, &["size"])?;
    let size = m.get_with("size", size::parse_size)?.unwrap_or(DEFAULT_MEMORY);
    if size < MIN_MEMORY {
        let reason = format!("covm needs at least {}", size::human(MIN_MEMORY));
        return Err(m.invalid("size", m.get("size").unwrap_or_default(), reason).into());
    }
    if size % 4096 != 0 {
        return Err(m
            .invalid("size", m.get("size").unwrap_or_default(), "must be a multiple of 4 KiB")
            .into());
    }
    if size > host_ram {
        return Err(ConfigError::MemoryTooLarge {
            requested: size,
            host: host_ram,
        });
    }
    Ok(MemoryConfig { size })
}

/// `--serial tty|file=PATH|off|null`.
pub fn parse_serial(text: &str) -> Result<SerialMode, OptionError> {
    let m = OptionMap::parse("serial", text, &["tty", "file", "off", "null"])?;
    let modes = ["tty", "file", "off", "null"].iter().filter(|k| m.has(k)).count();
    if modes != 1 {
        return Err(m.invalid("mode", text, "give exactly one of tty, file=PATH, off, null"));
    }
    Ok(if m.has("tty") {
        SerialMode::Tty
    } else if m.has("off") {
        SerialMode::Off
    } else if m.has("null") {
        SerialMode::Null
    } else {
        let path = m.get("file").unwrap_or_default();
        if path.is_empty() {
            return Err(m.invalid("file", path, "needs a path"));
        }
        SerialMode::File(path.into())
    })
}

/// `--console off|null`: accepted for compatibility; covm has no virtio console.
pub fn parse_console(text: &str) -> Result<(), OptionError> {
    let m = OptionMap::parse("console", text, &["off", "null", "tty", "file", "pty", "socket"])?;
    if m.has("off") || m.has("null") {
        Ok(())
    } else {
        Err(m.invalid(
            "mode",
            text,
            "covm has no virtio console yet; use --console off and --serial",
        ))
    }
}

/// `--api-socket path=PATH|fd=N|PATH`.
pub fn parse_api_socket(text: &str) -> Result<ApiSocket, OptionError> {
    if !text.contains('=') {
        return Ok(ApiSocket::Path(text.into()));
    }
    let m = OptionMap::parse("api-socket", text, &["path", "fd"])?;
    match (
        m.get("path"),
        m.get_with("fd", |v| v.parse::<i32>().map_err(|_| "not a descriptor number".into()))?,
    ) {
        (Some(path), None) if !path.is_empty() => Ok(ApiSocket::Path(path.into())),
        (None, Some(fd)) if fd >= 0 => Ok(ApiSocket::Fd(fd)),
        _ => Err(m.invalid("path", text, "give path=PATH or fd=N")),
    }
}

/// `--platform`: Cloud Hypervisor's keys are known; those covm cannot
/// honour yet are refused by name.
pub fn parse_platform(text: &str) -> Result<(), OptionError> {
    let known = [
        "num_pci_segments",
        "iommu_segments",
        "serial_number",
        "uuid",
        "oem_strings",
        "tdx",
        "sev_snp",
    ];
    let m = OptionMap::parse("platform", text, &known)?;
    for key in ["tdx", "sev_snp"] {
        if let Some(value) = m.get_with(key, parse_toggle)? {
            if value {
                return Err(m.invalid(
                    key,
                    "on",
                    "confidential platforms are not available in this covm build yet",
                ));
            }
        }
    }
    for key in ["num_pci_segments", "iommu_segments", "oem_strings"] {
        if let Some(value) = m.get(key) {
            return Err(m.invalid(key, value, "covm has no PCI bus or SMBIOS tables"));
        }
    }
    Ok(())
}

/// This host's RAM, from /proc/meminfo.
pub fn host_ram() -> std::io::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib << 10)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no MemTotal in /proc/meminfo"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("covm").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_boot_builtin_firmware() {
        let c = VmConfig::from_cli(&cli(&[]), 1 << 40).unwrap();
        assert_eq!(c.cpus.boot_vcpus, 1);
        assert_eq!(c.memory.size, 512 << 20);
        assert_eq!(c.payload, Payload::BuiltinFirmware);
        assert_eq!(c.serial, SerialMode::Tty);
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("boot=4").unwrap().boot_vcpus, 4);
        assert_eq!(parse_cpus("boot=2,max=2").unwrap().boot_vcpus, 2);
        assert!(parse_cpus("boot=0").unwrap_err().to_string().contains("from 1 to 32"));
        assert!(parse_cpus("boot=33").is_err());
        assert!(parse_cpus("boot=2,max=4").unwrap_err().to_string().contains("hotplug"));
        assert!(parse_cpus("cores=2")
            .unwrap_err()
            .to_string()
            .contains("unknown key 'cores'"));
    }

    #[test]
    fn memory() {
        assert_eq!(parse_memory("size=1G", 1 << 40).unwrap().size, 1 << 30);
        let e = parse_memory("size=lots", 1 << 40).unwrap_err().to_string();
        assert!(e.contains("size=lots") && e.contains("not a size"), "{e}");
        let e = parse_memory("size=64G", 8 << 30).unwrap_err().to_string();
        assert_eq!(e, "--memory: size 64.0 GiB is larger than this host's 8.0 GiB of RAM");
        assert!(parse_memory("size=1M", 1 << 40)
            .unwrap_err()
            .to_string()
            .contains("at least 16 MiB"));
    }

    #[test]
    fn serial_modes() {
        assert_eq!(parse_serial("tty").unwrap(), SerialMode::Tty);
        assert_eq!(parse_serial("off").unwrap(), SerialMode::Off);
        assert_eq!(parse_serial("null").unwrap(), SerialMode::Null);
        assert_eq!(parse_serial("file=/tmp/x").unwrap(), SerialMode::File("/tmp/x".into()));
        assert!(parse_serial("file=").is_err());
        assert!(parse_serial("tty,off").is_err());
        assert!(parse_serial("pty")
            .unwrap_err()
            .to_string()
            .contains("unknown key 'pty'"));
    }

    #[test]
    fn api_socket_forms() {
        assert_eq!(parse_api_socket("/tmp/s").unwrap(), ApiSocket::Path("/tmp/s".into()));
        assert_eq!(
            parse_api_socket("path=/tmp/s").unwrap(),
            ApiSocket::Path("/tmp/s".into())
        );
        assert_eq!(parse_api_socket("fd=3").unwrap(), ApiSocket::Fd(3));
        assert!(parse_api_socket("fd=x").is_err());
        assert!(parse_api_socket("path=/a,fd=3").is_err());
    }

    #[test]
    fn console_and_platform() {
        assert!(parse_console("off").is_ok());
        assert!(parse_console("tty")
            .unwrap_err()
            .to_string()
            .contains("no virtio console"));
        assert!(parse_platform("serial_number=abc").is_ok());
        assert!(parse_platform("sev_snp=off").is_ok());
        assert!(parse_platform("sev_snp=on")
            .unwrap_err()
            .to_string()
            .contains("sev_snp"));
        assert!(parse_platform("bogus=1")
            .unwrap_err()
            .to_string()
            .contains("unknown key 'bogus'"));
    }

    #[test]
    fn files_are_checked_and_named() {
        let e = VmConfig::from_cli(&cli(&["--kernel", "/nonexistent/vmlinux"]), 1 << 40).unwrap_err();
        assert!(
            e.to_string().starts_with("--kernel: cannot read /nonexistent/vmlinux"),
            "{e}"
        );
        let e = VmConfig::from_cli(&cli(&["--firmware", "/"]), 1 << 40).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let e = VmConfig::from_cli(&cli(&["--initramfs", "/etc/hostname"]), 1 << 40).unwrap_err();
        assert_eq!(e.to_string(), "--initramfs needs --kernel");
    }
}
