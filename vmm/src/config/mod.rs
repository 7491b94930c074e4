//! The VM's configuration, checked before anything is created.

pub mod options;
pub mod platform;
pub mod size;

use crate::cli::{Cli, VmArgs};
use crate::platform::hardware::{parse_guest_policy, DEFAULT_GUEST_POLICY};
use crate::platform::measure::HardwarePlatform;
use crate::platform::snp::plan::IdBlock;
use crate::platform::{MigrationPolicy, PlatformConfig, SevSnpConfig, TdxConfig};
use options::{parse_toggle, OptionError, OptionMap};
pub use platform::{PlatformChoice, PlatformRefusal, SnpOption};
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
    /// The platform options (`--platform`, `--migration-policy`) do not fit.
    #[error("{0}")]
    Platform(String),
    /// The migration policy file is not a valid policy.
    #[error("--migration-policy {}: {reason}", path.display())]
    Policy {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        reason: String,
    },
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
    /// The platform (plain or confidential) and its launch settings.
    pub platform: PlatformConfig,
}

impl VmConfig {
    /// vCPUs covm creates in KVM: the guest's, plus the migration agent's
    /// own vCPU on a confidential platform (the last, highest APIC ID).
    pub fn kvm_vcpus(&self) -> u8 {
        self.cpus.boot_vcpus + u8::from(self.platform.is_confidential())
    }

    /// Builds and checks the configuration given on the command line.
    pub fn from_cli(cli: &Cli, host_ram: u64) -> Result<Self, ConfigError> {
        let mut config = Self::from_vm_args(&cli.vm, host_ram)?;
        config.serial = parse_serial(cli.serial.as_deref().unwrap_or("tty"))?;
        if let Some(console) = &cli.console {
            parse_console(console)?;
        }
        config.api_socket = cli.api_socket.as_deref().map(parse_api_socket).transpose()?;
        config.dirty_tracking = cli
            .dirty_tracking
            .as_deref()
            .map(parse_dirty_tracking)
            .transpose()?
            .unwrap_or_default();
        Ok(config)
    }

    /// Builds and checks what the VM options say (shared by the VM's
    /// launch and `covm measure`); serial output is off, no API socket.
    pub fn from_vm_args(cli: &VmArgs, host_ram: u64) -> Result<Self, ConfigError> {
        Self::build(cli, host_ram, PolicyNeed::Required)
    }

    /// As [`VmConfig::from_vm_args`], for `covm measure`: on a confidential
    /// platform the migration policy may be missing, since the measurement
    /// does not depend on its contents (the policy page is an UNMEASURED
    /// entry; HOST_DATA binds the contents). Returns whether the policy was
    /// missing (an empty policy then stands in for it).
    ///
    /// `--platform sev_snp=on` or `tdx=on` is measured without the
    /// hardware: nothing is probed (`parse_platform`, which probes, is not
    /// asked), the hardware platform is returned beside a configuration on
    /// that platform (`policy=` and `vcpu_type=` read as a launch reads
    /// them), which loads what every confidential launch loads (the
    /// migration policy page, the agent's vCPU), and `--kernel` is allowed.
    pub fn for_measure(cli: &VmArgs, host_ram: u64) -> Result<(Self, Option<HardwarePlatform>, bool), ConfigError> {
        let no_policy = cli.migration_policy.is_none();
        let Some((hardware, snp)) = Self::hardware_to_measure(cli.platform.as_deref().unwrap_or(""))? else {
            return Ok((Self::build(cli, host_ram, PolicyNeed::Optional)?, None, no_policy));
        };
        let args = VmArgs {
            cpus: cli.cpus.clone(),
            memory: cli.memory.clone(),
            kernel: cli.kernel.clone(),
            initramfs: cli.initramfs.clone(),
            cmdline: cli.cmdline.clone(),
            firmware: cli.firmware.clone(),
            platform: None,
            migration_policy: None,
        };
        let mut config = Self::build(&args, host_ram, PolicyNeed::Optional)?;
        let policy = cli.migration_policy.as_deref().map(read_policy).transpose()?;
        let policy = policy.unwrap_or_else(MigrationPolicy::empty);
        config.platform = match hardware {
            HardwarePlatform::SevSnp => PlatformConfig::SevSnp(SevSnpConfig {
                guest_policy: snp.guest_policy,
                vcpu_type: snp.vcpu_type,
                id: snp.id,
                policy,
            }),
            HardwarePlatform::Tdx => PlatformConfig::Tdx(TdxConfig { policy }),
        };
        check_confidential_shape(&config.platform, config.cpus.boot_vcpus, config.memory.size)
            .map_err(ConfigError::Platform)?;
        Ok((config, Some(hardware), no_policy))
    }

    /// Whether `--platform` asks `covm measure` for SEV-SNP or TDX, read
    /// without probing (with SEV-SNP's `policy=` and `vcpu_type=`); None
    /// also when `parse_platform` is to report the text's errors.
    fn hardware_to_measure(text: &str) -> Result<Option<(HardwarePlatform, SnpOption)>, ConfigError> {
        let Ok(m) = OptionMap::parse("platform", text, PLATFORM_KEYS) else {
            return Ok(None);
        };
        let on = |key| m.get_with(key, parse_toggle).map(|v| v == Some(true));
        let hardware = match (on("sev_snp")?, on("tdx")?) {
            (false, false) => return Ok(None),
            (true, true) => return Err(m.invalid("tdx", "on", "give sev_snp=on or tdx=on, not both").into()),
            (true, false) => HardwarePlatform::SevSnp,
            (false, true) => HardwarePlatform::Tdx,
        };
        let name = hardware.name();
        let mut refused = vec![
            "emulated_cvm",
            "root_key",
            "num_pci_segments",
            "iommu_segments",
            "oem_strings",
        ];
        if hardware == HardwarePlatform::Tdx {
            refused.extend(["policy", "vcpu_type"]);
        }
        for key in refused {
            let value = m.get(key).unwrap_or_default();
            if m.has(key) && !(key == "emulated_cvm" && parse_toggle(value) == Ok(false)) {
                return Err(m.invalid(key, value, format!("not with {name}=on")).into());
            }
        }
        Ok(Some((hardware, snp_option(&m)?)))
    }

    fn build(cli: &VmArgs, host_ram: u64, need: PolicyNeed) -> Result<Self, ConfigError> {
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
        let platform = parse_platform(cli.platform.as_deref().unwrap_or(""))?;
        let platform = platform_config(platform, cli.migration_policy.as_deref(), &payload, need)?;
        check_confidential_shape(&platform, cpus.boot_vcpus, memory.size).map_err(ConfigError::Platform)?;
        Ok(Self {
            cpus,
            memory,
            payload,
            cmdline: cli.cmdline.clone().unwrap_or_default(),
            serial: SerialMode::Off,
            api_socket: None,
            dirty_tracking: DirtyTracking::default(),
            platform,
        })
    }
}

/// `--platform` and `--migration-policy` of a destination started without
/// a VM: the platform its incoming confidential VMs launch with.
pub fn incoming_platform(cli: &VmArgs) -> Result<PlatformConfig, ConfigError> {
    let platform = parse_platform(cli.platform.as_deref().unwrap_or(""))?;
    let platform = platform_config(
        platform,
        cli.migration_policy.as_deref(),
        &Payload::BuiltinFirmware,
        PolicyNeed::Required,
    )?;
    let refusal = match platform {
        PlatformConfig::SevSnp(_) => Some(("sev_snp", crate::platform::hardware::SNP_NOT_MIGRATABLE)),
        PlatformConfig::Tdx(_) => Some(("tdx", crate::platform::hardware::TDX_NOT_MIGRATABLE)),
        _ => None,
    };
    if let Some((name, why)) = refusal {
        return Err(ConfigError::Platform(format!(
            "--platform {name}=on cannot receive VMs: {why}"
        )));
    }
    Ok(platform)
}

/// What `--platform` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlatformOption {
    /// `emulated_cvm=on`.
    pub emulated_cvm: bool,
    /// `root_key=PATH`.
    pub root_key: Option<PathBuf>,
    /// `sev_snp=on`, on a host that passed the probe.
    pub sev_snp: Option<SnpOption>,
    /// `tdx=on`, on a host that passed the probe.
    pub tdx: bool,
}

/// `--platform`'s keys: Cloud Hypervisor's, then covm's.
const PLATFORM_KEYS: &[&str] = &[
    "num_pci_segments",
    "iommu_segments",
    "serial_number",
    "uuid",
    "oem_strings",
    "tdx",
    "sev_snp",
    "emulated_cvm",
    "root_key",
    "policy",
    "vcpu_type",
    "id_block",
    "id_auth",
    "author_key",
];

/// `policy=` and `vcpu_type=`, checked.
fn snp_option(m: &OptionMap) -> Result<SnpOption, OptionError> {
    Ok(SnpOption {
        guest_policy: m
            .get_with("policy", parse_guest_policy)?
            .unwrap_or(DEFAULT_GUEST_POLICY),
        vcpu_type: m.get_with("vcpu_type", |v| {
            covm_measure::vmsa::vcpu_type_signature(v)
                .map(|_| v.to_string())
                .map_err(|e| e.to_string())
        })?,
        id: id_block_option(m)?,
    })
}

/// `id_block=`, `id_auth=` and `author_key=`: both files or neither, each
/// exactly its structure's size (SEV-SNP firmware ABI: the ID block is
/// 96 bytes, the ID authentication information 4096).
fn id_block_option(m: &OptionMap) -> Result<Option<IdBlock>, OptionError> {
    fn read<const N: usize>(m: &OptionMap, key: &str, what: &str) -> Result<Option<Box<[u8; N]>>, OptionError> {
        let Some(path) = m.get(key) else {
            return Ok(None);
        };
        let bytes = std::fs::read(path).map_err(|e| m.invalid(key, path, format!("cannot read it: {e}")))?;
        let len = bytes.len();
        bytes
            .into_boxed_slice()
            .try_into()
            .map(Some)
            .map_err(|_| m.invalid(key, path, format!("{len} bytes; {what} is {N} bytes")))
    }
    let block = read::<96>(m, "id_block", "an SEV-SNP ID block")?;
    let auth = read::<4096>(m, "id_auth", "an ID authentication information structure")?;
    let author_key = m.get_with("author_key", parse_toggle)?.unwrap_or(false);
    match (block, auth) {
        (Some(block), Some(auth)) => Ok(Some(IdBlock {
            block: *block,
            auth,
            author_key,
        })),
        (None, None) if author_key => Err(m.invalid("author_key", "on", "needs id_block=PATH and id_auth=PATH")),
        (None, None) => Ok(None),
        (Some(_), None) => Err(m.invalid(
            "id_block",
            m.get("id_block").unwrap_or_default(),
            "needs id_auth=PATH too",
        )),
        (None, Some(_)) => Err(m.invalid(
            "id_auth",
            m.get("id_auth").unwrap_or_default(),
            "needs id_block=PATH too",
        )),
    }
}

/// Whether a confidential platform must come with a migration policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PolicyNeed {
    /// A launch: it must.
    Required,
    /// `covm measure`: an empty policy stands in for a missing one.
    Optional,
}

/// The platform from `--platform` and `--migration-policy`, checked
/// together: a confidential platform needs a policy, a policy needs a
/// confidential platform.
fn platform_config(
    option: PlatformOption,
    policy: Option<&Path>,
    payload: &Payload,
    need: PolicyNeed,
) -> Result<PlatformConfig, ConfigError> {
    let mut policy = policy.map(read_policy).transpose()?;
    let confidential = option.emulated_cvm || option.sev_snp.is_some() || option.tdx;
    if confidential && policy.is_none() && need == PolicyNeed::Optional {
        policy = Some(MigrationPolicy::empty());
    }
    let choice = platform::PlatformChoice {
        emulated_cvm: option.emulated_cvm,
        root_key: option.root_key,
        sev_snp: option.sev_snp,
        tdx: option.tdx,
        policy,
        boots_kernel: matches!(payload, Payload::Kernel { .. }),
    };
    platform::select(choice).map_err(|refusal| {
        ConfigError::Platform(match refusal {
            PlatformRefusal::TwoPlatforms { first, second } => {
                format!("--platform: give {first}=on or {second}=on, not both")
            }
            PlatformRefusal::PolicyWithoutPlatform => {
                "--migration-policy needs a confidential platform (--platform emulated_cvm=on)".into()
            }
            PlatformRefusal::PlatformWithoutPolicy(name) => format!(
                "--platform {name}=on needs --migration-policy PATH: the guest owner's migration policy \
                 (JSON, see resources/policies/)"
            ),
            PlatformRefusal::KernelPayload(name) => format!(
                "--platform {name}=on boots firmware (the built-in one or --firmware), not --kernel: \
                 the migration agent lives in the firmware"
            ),
            PlatformRefusal::RootKeyWithoutEmulatedCvm => "--platform: only emulated_cvm=on has a root key".into(),
            PlatformRefusal::RootKey(e) => e.to_string(),
        })
    })
}

/// The emulated confidential VM's firmware maps the first 4 GiB and keeps
/// its agent's private window at 16-32 MiB; the agent takes a vCPU of its
/// own. So: RAM entirely below the 3 GiB MMIO hole, at least 64 MiB, and
/// one vCPU fewer than a plain VM may have.
pub fn check_confidential_shape(platform: &PlatformConfig, vcpus: u8, memory: u64) -> Result<(), String> {
    if !platform.is_confidential() {
        return Ok(());
    }
    let name = platform.name();
    if vcpus >= MAX_VCPUS {
        return Err(format!(
            "a {name} VM has at most {} vCPUs: its migration agent runs on a vCPU of its own",
            MAX_VCPUS - 1
        ));
    }
    if memory > crate::vm::memory::MMIO_HOLE_START {
        return Err(format!(
            "a {name} VM has at most {} MiB of memory: its firmware and migration agent reach only RAM below \
             the 3 GiB MMIO hole",
            crate::vm::memory::MMIO_HOLE_START >> 20
        ));
    }
    if memory < MIN_CONFIDENTIAL_MEMORY {
        return Err(format!(
            "a {name} VM needs at least {} MiB of memory (its migration agent's private window ends at 32 MiB)",
            MIN_CONFIDENTIAL_MEMORY >> 20
        ));
    }
    Ok(())
}

/// Least memory of a confidential VM.
pub const MIN_CONFIDENTIAL_MEMORY: u64 = 64 << 20;

/// Reads and checks a `--migration-policy` file.
pub fn read_policy(path: &Path) -> Result<MigrationPolicy, ConfigError> {
    check_readable("--migration-policy", path)?;
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Unreadable {
        option: "--migration-policy",
        path: path.into(),
        source,
    })?;
    MigrationPolicy::from_json_bytes(&bytes).map_err(|reason| ConfigError::Policy {
        path: path.into(),
        reason,
    })
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
            entries: entries.unwrap_or(crate::dirty::ring::DEFAULT_RING_ENTRIES),
        }),
        other => Err(m.invalid("mode", other, "must be log or ring")),
    }
}

/// Entries of a dirty ring, as text (the command line).
pub fn parse_ring_entries(value: &str) -> Result<u32, String> {
    value
        .parse::<u32>()
        .map_err(|_| ring_entries_rule())
        .and_then(check_ring_entries)
}

/// Entries of a dirty ring: a power of two within
/// [`MIN_RING_ENTRIES`, `MAX_RING_ENTRIES`].
pub fn check_ring_entries(n: u32) -> Result<u32, String> {
    if n.is_power_of_two() && (MIN_RING_ENTRIES..=MAX_RING_ENTRIES).contains(&n) {
        Ok(n)
    } else {
        Err(ring_entries_rule())
    }
}

fn ring_entries_rule() -> String {
    format!("must be a power of two from {MIN_RING_ENTRIES} to {MAX_RING_ENTRIES}")
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

/// `--platform`: Cloud Hypervisor's keys and covm's `emulated_cvm`,
/// `root_key`, and SEV-SNP's `policy` and `vcpu_type`. Those covm cannot
/// honour are refused by name; `sev_snp=on` and `tdx=on` probe the host
/// first (nothing is created) and say exactly what it lacks. On a host
/// that has it all, `sev_snp=on` and `tdx=on` are accepted (`vm.rs`
/// launches them; the built-in firmware cannot run as either guest yet,
/// which the launch warns about).
pub fn parse_platform(text: &str) -> Result<PlatformOption, OptionError> {
    use crate::platform::{snp, tdx};
    parse_platform_probed(text, &|key| match key {
        "sev_snp" => snp::probe_snp(),
        _ => tdx::probe_tdx(),
    })
}

/// [`parse_platform`] with the hardware probes given (`sev_snp`, `tdx`).
fn parse_platform_probed(
    text: &str,
    probe: &dyn Fn(&str) -> Result<(), crate::platform::snp::host::Unavailable>,
) -> Result<PlatformOption, OptionError> {
    let m = OptionMap::parse("platform", text, PLATFORM_KEYS)?;
    let mut on = Vec::new();
    for key in ["sev_snp", "tdx"] {
        if m.get_with(key, parse_toggle)? == Some(true) {
            if let Err(missing) = probe(key) {
                let reason = format!(
                    "{missing}. emulated_cvm=on runs covm's emulated confidential platform instead, without \
                     hardware protection"
                );
                return Err(m.invalid(key, m.get(key).unwrap_or_default(), reason));
            }
            on.push(key);
        }
    }
    let (sev_snp, tdx) = (on.contains(&"sev_snp"), on.contains(&"tdx"));
    if sev_snp && tdx {
        return Err(m.invalid("tdx", "on", "give sev_snp=on or tdx=on, not both"));
    }
    for key in ["num_pci_segments", "iommu_segments", "oem_strings"] {
        if let Some(value) = m.get(key) {
            return Err(m.invalid(key, value, "covm has no PCI bus or SMBIOS tables"));
        }
    }
    if !sev_snp {
        for key in ["policy", "vcpu_type", "id_block", "id_auth", "author_key"] {
            if let Some(value) = m.get(key) {
                return Err(m.invalid(key, value, "only sev_snp=on has a guest policy, vCPU type and ID block"));
            }
        }
    }
    let emulated_cvm = m.get_with("emulated_cvm", parse_toggle)?.unwrap_or(false);
    let root_key = match m.get("root_key") {
        None => None,
        Some("") => return Err(m.invalid("root_key", "", "needs a path")),
        Some(path) if !emulated_cvm => return Err(m.invalid("root_key", path, "only emulated_cvm=on has a root key")),
        Some(path) => Some(PathBuf::from(path)),
    };
    Ok(PlatformOption {
        emulated_cvm,
        root_key,
        sev_snp: sev_snp.then(|| snp_option(&m)).transpose()?,
        tdx,
    })
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
    fn dirty_tracking_modes_and_ring_sizes() {
        assert_eq!(parse_dirty_tracking("mode=log").unwrap(), DirtyTracking::Log);
        assert_eq!(
            parse_dirty_tracking("mode=ring").unwrap(),
            DirtyTracking::Ring {
                entries: crate::dirty::ring::DEFAULT_RING_ENTRIES
            }
        );
        assert_eq!(
            parse_dirty_tracking("mode=ring,ring_entries=512").unwrap(),
            DirtyTracking::Ring { entries: 512 }
        );
        for bad in [
            "mode=ring,ring_entries=1000",
            "mode=ring,ring_entries=256",
            "mode=ring,ring_entries=x",
        ] {
            let e = parse_dirty_tracking(bad).unwrap_err().to_string();
            assert!(
                e.contains("ring_entries") && e.contains("power of two from 512"),
                "{bad}: {e}"
            );
        }
        assert!(parse_dirty_tracking("mode=log,ring_entries=512").is_err());
        assert!(parse_dirty_tracking("mode=bitmap")
            .unwrap_err()
            .to_string()
            .contains("log or ring"));
        assert_eq!(check_ring_entries(1 << 20), Ok(1 << 20));
        assert!(check_ring_entries((1 << 20) + 1).is_err());
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
        assert_eq!(parse_platform("sev_snp=off").unwrap(), PlatformOption::default());
        assert!(parse_platform("bogus=1")
            .unwrap_err()
            .to_string()
            .contains("unknown key 'bogus'"));
    }

    /// `sev_snp=on` and `tdx=on` say what the host lacks; on a host that
    /// has it all, `sev_snp=on` is taken with its keys and `tdx=on` is taken.
    #[test]
    fn hardware_platforms_are_probed() {
        use crate::platform::snp::host::Unavailable;
        use crate::platform::{snp, tdx};
        let lacking = |key: &str| {
            Err(Unavailable {
                what: if key == "sev_snp" { "AMD SEV-SNP" } else { "Intel TDX" },
                missing: vec![format!("{key} piece one"), "piece two".into()],
            })
        };
        let refused = |text: &str| parse_platform_probed(text, &lacking).unwrap_err().to_string();
        assert_eq!(
            refused("sev_snp=on"),
            "--platform: invalid sev_snp=on: AMD SEV-SNP is not available on this machine: sev_snp piece one; \
             piece two. emulated_cvm=on runs covm's emulated confidential platform instead, without hardware \
             protection"
        );
        assert_eq!(
            refused("tdx=on"),
            "--platform: invalid tdx=on: Intel TDX is not available on this machine: tdx piece one; piece two. \
             emulated_cvm=on runs covm's emulated confidential platform instead, without hardware protection"
        );
        // The probe comes first: bad SNP keys on a host without SNP hear
        // what the host lacks.
        assert!(refused("sev_snp=on,policy=junk").contains("sev_snp piece one"));
        let present = |_: &str| Ok(());
        let parsed = |text: &str| parse_platform_probed(text, &present);
        let refused = |text: &str| parsed(text).unwrap_err().to_string();
        assert_eq!(
            parsed("sev_snp=on").unwrap().sev_snp,
            Some(SnpOption {
                guest_policy: 0x30000,
                vcpu_type: None,
                id: None,
            })
        );
        assert_eq!(
            parsed("sev_snp=on,policy=0x70000,vcpu_type=EPYC-Genoa")
                .unwrap()
                .sev_snp,
            Some(SnpOption {
                guest_policy: 0x70000,
                vcpu_type: Some("EPYC-Genoa".into()),
                id: None,
            })
        );
        assert_eq!(
            refused("sev_snp=on,policy=0x10000"),
            "--platform: invalid policy=0x10000: guest policy 0x10000 has bit 17 clear, which the SNP firmware \
             requires set"
        );
        assert!(refused("sev_snp=on,vcpu_type=Pentium").contains("unknown vCPU type 'Pentium'"));
        assert_eq!(
            refused("emulated_cvm=on,policy=0x30000"),
            "--platform: invalid policy=0x30000: only sev_snp=on has a guest policy, vCPU type and ID block"
        );
        assert_eq!(
            parsed("tdx=on").unwrap(),
            PlatformOption {
                tdx: true,
                ..Default::default()
            }
        );
        assert_eq!(
            refused("tdx=on,policy=0x30000"),
            "--platform: invalid policy=0x30000: only sev_snp=on has a guest policy, vCPU type and ID block"
        );
        assert_eq!(
            refused("tdx=on,sev_snp=on"),
            "--platform: invalid tdx=on: give sev_snp=on or tdx=on, not both"
        );
        // Off, nothing is probed.
        let never = |key: &str| -> Result<(), Unavailable> { panic!("probed {key}") };
        assert_eq!(
            parse_platform_probed("sev_snp=off,tdx=off", &never).unwrap(),
            PlatformOption::default()
        );
        // On this machine the real probes say what is missing (or, on a host
        // that has it all, the platform is taken).
        match snp::probe_snp() {
            Err(missing) => {
                let message = parse_platform("sev_snp=on").unwrap_err().to_string();
                assert!(message.contains(&missing.to_string()), "{message}");
            }
            Ok(()) => assert!(parse_platform("sev_snp=on").unwrap().sev_snp.is_some()),
        }
        match tdx::probe_tdx() {
            Err(missing) => {
                let message = parse_platform("tdx=on").unwrap_err().to_string();
                assert!(message.contains(&missing.to_string()), "{message}");
            }
            Ok(()) => assert!(parse_platform("tdx=on").unwrap().tdx),
        }
    }

    #[test]
    fn platform_option() {
        assert_eq!(
            parse_platform("emulated_cvm=on").unwrap(),
            PlatformOption {
                emulated_cvm: true,
                ..Default::default()
            }
        );
        assert_eq!(
            parse_platform("emulated_cvm,root_key=/k/root.key").unwrap(),
            PlatformOption {
                emulated_cvm: true,
                root_key: Some("/k/root.key".into()),
                ..Default::default()
            }
        );
        assert!(!parse_platform("emulated_cvm=off").unwrap().emulated_cvm);
        let refused = |text: &str| parse_platform(text).unwrap_err().to_string();
        // On this machine: whatever the probes find, refused by name.
        if crate::platform::snp::probe_snp().is_err() {
            assert!(refused("sev_snp=on").starts_with("--platform: invalid sev_snp=on: "));
        }
        if crate::platform::tdx::probe_tdx().is_err() {
            assert!(refused("tdx=on").starts_with("--platform: invalid tdx=on: "));
        }
        assert!(refused("emulated_cvm=maybe").contains("'maybe' is not on or off"));
        assert_eq!(
            refused("root_key=/k"),
            "--platform: invalid root_key=/k: only emulated_cvm=on has a root key"
        );
        assert_eq!(
            refused("emulated_cvm=on,root_key="),
            "--platform: invalid root_key=: needs a path"
        );
        assert!(refused("emulated_cvm=on,emulated_cvm=off").contains("given twice"));
    }

    /// `id_block=`/`id_auth=`/`author_key=`: both files of the right
    /// sizes, read into the option; anything else refused by name.
    #[test]
    fn sev_snp_id_block_files() {
        let dir = std::env::temp_dir().join(format!("covm-idblock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, len: usize, byte: u8| {
            let path = dir.join(name);
            std::fs::write(&path, vec![byte; len]).unwrap();
            path.display().to_string()
        };
        let (block, auth) = (file("block", 96, 0xb1), file("auth", 4096, 0xa2));
        let (short, long) = (file("short", 95, 0), file("long", 4097, 0));
        let present = |_: &str| Ok(());
        let parsed = |text: &str| parse_platform_probed(text, &present);
        let refused = |text: &str| parsed(text).unwrap_err().to_string();
        let id = parsed(&format!("sev_snp=on,id_block={block},id_auth={auth},author_key=on"))
            .unwrap()
            .sev_snp
            .unwrap()
            .id
            .unwrap();
        assert_eq!((id.block, id.auth[4095], id.author_key), ([0xb1; 96], 0xa2, true));
        let id = parsed(&format!("sev_snp=on,id_block={block},id_auth={auth}"))
            .unwrap()
            .sev_snp
            .unwrap()
            .id;
        assert!(!id.unwrap().author_key);
        assert!(refused(&format!("sev_snp=on,id_block={short},id_auth={auth}"))
            .contains("95 bytes; an SEV-SNP ID block is 96 bytes"));
        assert!(refused(&format!("sev_snp=on,id_block={block},id_auth={long}"))
            .contains("4097 bytes; an ID authentication information structure is 4096 bytes"));
        assert!(refused(&format!("sev_snp=on,id_block={block}")).contains("needs id_auth=PATH too"));
        assert!(refused(&format!("sev_snp=on,id_auth={auth}")).contains("needs id_block=PATH too"));
        assert!(refused("sev_snp=on,author_key=on").contains("needs id_block=PATH and id_auth=PATH"));
        assert!(refused("sev_snp=on,id_block=/nonexistent/b,id_auth=/x").contains("cannot read it"));
        assert!(refused(&format!("emulated_cvm=on,id_block={block}")).contains("only sev_snp=on"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `sev_snp=on` (once probed) needs a policy and firmware, as
    /// emulated_cvm does, and becomes an SEV-SNP configuration.
    #[test]
    fn sev_snp_platform_config() {
        let good = policy_file("snp", &crate::platform::policy::tests::valid_json());
        let snp = |guest_policy, vcpu_type: Option<&str>| PlatformOption {
            sev_snp: Some(SnpOption {
                guest_policy,
                vcpu_type: vcpu_type.map(str::to_string),
                id: None,
            }),
            ..Default::default()
        };
        let config = platform_config(
            snp(0x70000, Some("EPYC-Milan")),
            Some(&good),
            &Payload::BuiltinFirmware,
            PolicyNeed::Required,
        )
        .unwrap();
        let PlatformConfig::SevSnp(c) = &config else {
            panic!("{config:?}")
        };
        assert_eq!((c.guest_policy, c.vcpu_type.as_deref()), (0x70000, Some("EPYC-Milan")));
        assert_eq!(c.policy.version(), 3);
        assert_eq!(config.host_data(), Some(c.policy.host_data()));
        let refused = |option, policy: Option<&Path>, payload: &Payload| {
            platform_config(option, policy, payload, PolicyNeed::Required)
                .unwrap_err()
                .to_string()
        };
        assert!(refused(snp(0x30000, None), None, &Payload::BuiltinFirmware)
            .starts_with("--platform sev_snp=on needs --migration-policy PATH"));
        let kernel = Payload::Kernel {
            kernel: "/k".into(),
            initramfs: None,
        };
        assert!(refused(snp(0x30000, None), Some(&good), &kernel)
            .starts_with("--platform sev_snp=on boots firmware (the built-in one or --firmware), not --kernel"));
        let both = PlatformOption {
            emulated_cvm: true,
            ..snp(0x30000, None)
        };
        assert_eq!(
            refused(both, Some(&good), &Payload::BuiltinFirmware),
            "--platform: give emulated_cvm=on or sev_snp=on, not both"
        );
        std::fs::remove_dir_all(good.parent().unwrap()).unwrap();
    }

    /// `tdx=on` (once probed) needs a policy and firmware, as the other
    /// confidential platforms do, and becomes a TDX configuration.
    #[test]
    fn tdx_platform_config() {
        let good = policy_file("tdx", &crate::platform::policy::tests::valid_json());
        let tdx = || PlatformOption {
            tdx: true,
            ..Default::default()
        };
        let config = platform_config(tdx(), Some(&good), &Payload::BuiltinFirmware, PolicyNeed::Required).unwrap();
        let PlatformConfig::Tdx(c) = &config else {
            panic!("{config:?}")
        };
        assert_eq!(c.policy.version(), 3);
        assert_eq!(config.host_data(), Some(c.policy.host_data()));
        let refused = |option, policy: Option<&Path>, payload: &Payload| {
            platform_config(option, policy, payload, PolicyNeed::Required)
                .unwrap_err()
                .to_string()
        };
        assert!(refused(tdx(), None, &Payload::BuiltinFirmware)
            .starts_with("--platform tdx=on needs --migration-policy PATH"));
        let kernel = Payload::Kernel {
            kernel: "/k".into(),
            initramfs: None,
        };
        assert!(refused(tdx(), Some(&good), &kernel)
            .starts_with("--platform tdx=on boots firmware (the built-in one or --firmware), not --kernel"));
        let both = PlatformOption {
            emulated_cvm: true,
            ..tdx()
        };
        assert_eq!(
            refused(both, Some(&good), &Payload::BuiltinFirmware),
            "--platform: give emulated_cvm=on or tdx=on, not both"
        );
        std::fs::remove_dir_all(good.parent().unwrap()).unwrap();
    }

    /// A policy file in a scratch directory, removed by the caller.
    fn policy_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("covm-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.json");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn platform_and_policy_go_together() {
        let good = policy_file("good", &crate::platform::policy::tests::valid_json());
        let bad = policy_file(
            "bad",
            r#"{"version": 1, "allowed_platforms": [], "allowed_measurements": [], "x": 1}"#,
        );
        let g = good.to_str().unwrap();
        let c = VmConfig::from_cli(
            &cli(&["--platform", "emulated_cvm=on,root_key=/r", "--migration-policy", g]),
            1 << 40,
        )
        .unwrap();
        let PlatformConfig::EmulatedCvm(e) = &c.platform else {
            panic!("{:?}", c.platform)
        };
        assert_eq!(e.root_key, Some("/r".into()));
        assert_eq!(e.policy.version(), 3);
        let refused = |args: &[&str]| VmConfig::from_cli(&cli(args), 1 << 40).unwrap_err().to_string();
        assert!(refused(&["--platform", "emulated_cvm=on"])
            .starts_with("--platform emulated_cvm=on needs --migration-policy"));
        assert!(refused(&["--migration-policy", g]).starts_with("--migration-policy needs a confidential platform"));
        assert!(refused(&["--platform", "emulated_cvm=off", "--migration-policy", g])
            .starts_with("--migration-policy needs a confidential platform"));
        let e = refused(&[
            "--platform",
            "emulated_cvm=on",
            "--migration-policy",
            bad.to_str().unwrap(),
        ]);
        assert!(
            e.starts_with(&format!("--migration-policy {}: unknown field `x`", bad.display())),
            "{e}"
        );
        let e = refused(&[
            "--platform",
            "emulated_cvm=on",
            "--migration-policy",
            "/nonexistent/p.json",
        ]);
        assert!(
            e.starts_with("--migration-policy: cannot read /nonexistent/p.json"),
            "{e}"
        );
        let e = refused(&[
            "--platform",
            "emulated_cvm=on",
            "--migration-policy",
            g,
            "--kernel",
            "/etc/hostname",
        ]);
        assert!(e.contains("not --kernel"), "{e}");
        for p in [good, bad] {
            std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
        }
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
