//! The VM's configuration, checked before anything is created.

pub(crate) mod devices;
pub(crate) mod net;
pub(crate) mod options;
pub(crate) mod parse;
pub(crate) mod platform;
pub(crate) mod size;
pub(crate) mod vsock;

use crate::cli::{Cli, VmArgs};
use crate::platform::measure::HardwarePlatform;
use crate::platform::{MigrationPolicy, PlatformConfig, SevSnpConfig, TdxConfig};
pub use devices::{ConsoleMode, DevicesConfig, DevicesError, DiskConfig, RngConfig};
pub use net::{NetBackend, NetConfig};
use options::{parse_toggle, OptionError, OptionMap};
pub use parse::*;
pub use platform::{PlatformChoice, PlatformRefusal, SnpOption};
use std::fs::File;
use std::path::{Path, PathBuf};
pub use vsock::VsockConfig;

/// Most vCPUs covm runs.
pub const MAX_VCPUS: u8 = 32;

/// Most vCPUs a confidential VM's migration agent may have (its firmware
/// has a stack for as many).
pub const MAX_AGENT_VCPUS: u8 = covm_guest_abi::mailbox::MAX_AGENT_VCPUS as u8;
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
    /// The virtio devices do not fit.
    #[error(transparent)]
    Devices(#[from] DevicesError),
    /// The migration policy file is not a valid policy.
    #[error("--migration-policy {}: {reason}", path.display())]
    Policy {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        reason: String,
    },
}

/// vCPU configuration (CH's `CpusConfig`, and covm's `agent_vcpus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpusConfig {
    /// vCPUs started at boot: the guest's.
    pub boot_vcpus: u8,
    /// On a confidential platform, the migration agent's vCPUs besides
    /// (`--platform agent_vcpus=N`, 1 by default): with more than one, a
    /// migration's record stream has as many lanes, each sealed and opened
    /// by its own agent vCPU.
    pub agent_vcpus: u8,
}

impl CpusConfig {
    /// `boot` vCPUs, and one for the migration agent on a confidential
    /// platform.
    pub fn boot(boot: u8) -> Self {
        CpusConfig {
            boot_vcpus: boot,
            agent_vcpus: 1,
        }
    }
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
    /// The virtio devices.
    pub devices: DevicesConfig,
}

impl VmConfig {
    /// vCPUs covm creates in KVM: the guest's, plus the migration agent's
    /// own on a confidential platform (the last, highest APIC IDs).
    pub fn kvm_vcpus(&self) -> u8 {
        self.cpus.boot_vcpus + self.agent_vcpus()
    }

    /// The migration agent's vCPUs: 0 on a plain VM.
    pub fn agent_vcpus(&self) -> u8 {
        if self.platform.is_confidential() {
            self.cpus.agent_vcpus
        } else {
            0
        }
    }

    /// Builds and checks the configuration given on the command line.
    pub fn from_cli(cli: &Cli, host_ram: u64) -> Result<Self, ConfigError> {
        let mut config = Self::from_vm_args(&cli.vm, host_ram)?;
        config.serial = parse_serial(cli.serial.as_deref().unwrap_or("tty"))?;
        config.devices = DevicesConfig {
            disks: cli
                .disk
                .iter()
                .map(|d| devices::parse_disk(d))
                .collect::<Result<_, _>>()?,
            console: cli
                .console
                .as_deref()
                .map(devices::parse_console)
                .transpose()?
                .unwrap_or_default(),
            nets: cli.net.iter().map(|n| net::parse_net(n)).collect::<Result<_, _>>()?,
            rng: cli.rng.as_deref().map(devices::parse_rng).transpose()?,
            vsock: cli.vsock.as_deref().map(vsock::parse_vsock).transpose()?,
        };
        config.devices.check()?;
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
        if let Ok(m) = OptionMap::parse("platform", cli.platform.as_deref().unwrap_or(""), PLATFORM_KEYS) {
            config.cpus.agent_vcpus = agent_vcpus_option(&m)?.unwrap_or(1);
        }
        check_confidential_shape(&config.platform, config.cpus, config.memory.size).map_err(ConfigError::Platform)?;
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
        let mut cpus = parse_cpus(cli.cpus.as_deref().unwrap_or("boot=1"))?;
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
        cpus.agent_vcpus = platform.agent_vcpus.unwrap_or(1);
        let platform = platform_config(platform, cli.migration_policy.as_deref(), &payload, need)?;
        check_confidential_shape(&platform, cpus, memory.size).map_err(ConfigError::Platform)?;
        Ok(Self {
            cpus,
            memory,
            payload,
            cmdline: cli.cmdline.clone().unwrap_or_default(),
            serial: SerialMode::Off,
            api_socket: None,
            dirty_tracking: DirtyTracking::default(),
            devices: Default::default(),
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
/// its agent's private window at 16-32 MiB; the agent takes vCPUs of its
/// own. So: RAM entirely below the 3 GiB MMIO hole, at least 64 MiB, and
/// the guest's vCPUs and the agent's together no more than a plain VM's.
pub fn check_confidential_shape(platform: &PlatformConfig, cpus: CpusConfig, memory: u64) -> Result<(), String> {
    if !platform.is_confidential() {
        return Ok(());
    }
    let name = platform.name();
    let (vcpus, agents) = (cpus.boot_vcpus, cpus.agent_vcpus);
    if !(1..=MAX_AGENT_VCPUS).contains(&agents) {
        return Err(format!(
            "agent_vcpus={agents}: the migration agent has 1 to {MAX_AGENT_VCPUS} vCPUs"
        ));
    }
    if u32::from(vcpus) + u32::from(agents) > u32::from(MAX_VCPUS) {
        return Err(format!(
            "a {name} VM has at most {MAX_VCPUS} vCPUs, its migration agent's {agents} included: {vcpus} for \
             the guest are too many"
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
mod tests;
