//! Cloud Hypervisor's `VmConfig` JSON, and its conversion to and from
//! covm's [`VmConfig`].
//!
//! Every field CH defines is accepted by the parser; a field covm cannot
//! honour yet is refused by name unless it holds its default (null, false,
//! empty). Fields CH does not define are refused by serde, by name, except
//! covm's extensions: `dirty_tracking` (see `--dirty-tracking`) and, in
//! `platform`, `emulated_cvm`, `root_key`, `migration_policy` (the
//! policy inline, as its JSON file holds it; see `--platform` and
//! docs/platforms.md), and `sev_snp`'s `policy` and `vcpu_type`.
//! `platform.sev_snp` and `platform.tdx` probe the host as `--platform`
//! does and say what it lacks. They travel with a migration, so an incoming VM is
//! built on the same platform with the same policy, and measures the same.

pub mod devices;
pub mod net;
mod platform;
pub mod vsock;

use super::ch_defaults;
use crate::config::{
    check_readable, ApiSocket, CpusConfig, DirtyTracking, MemoryConfig, Payload, SerialMode, VmConfig,
};
use crate::config::{MAX_VCPUS, MIN_MEMORY};
use crate::platform::hardware::host::Unavailable;
use devices::{DiskJson, RngJson};
use platform::{platform_from_json_probed, platform_to_json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;

/// CH's `VmConfig`, the fields covm reads plus those it refuses by name.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfigJson {
    /// vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<CpusJson>,
    /// Memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryJson>,
    /// What to boot.
    pub payload: PayloadJson,
    /// Serial port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<ConsoleJson>,
    /// virtio console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleJson>,
    /// Disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<DiskJson>>,
    /// Network interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<Vec<net::NetJson>>,
    /// The entropy device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<RngJson>,
    /// The socket device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<vsock::VsockJson>,
    /// Platform options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Value>,
    /// covm's extension: how a migration tracks dirty pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_tracking: Option<DirtyTrackingJson>,
    /// CH's other fields: accepted only at their defaults.
    #[serde(flatten)]
    pub unsupported: Unsupported,
}

/// The CH fields covm has no devices for yet.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Unsupported {
    #[serde(skip_serializing_if = "Option::is_none")]
    balloon: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fs: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pmem: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    devices: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_devices: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vdpa: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    numa: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iommu: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    watchdog: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rtc: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pvpanic: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pci_segments: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tpm: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    debug_console: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generic_vhost_user: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit_groups: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    landlock_enable: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    landlock_rules: Option<Value>,
}

impl Unsupported {
    fn check(&self) -> Result<(), String> {
        let fields = [
            ("balloon", &self.balloon, "covm has no balloon yet"),
            ("fs", &self.fs, "covm has no virtio-fs yet"),
            ("pmem", &self.pmem, "covm has no pmem devices yet"),
            ("devices", &self.devices, "covm has no device passthrough"),
            ("user_devices", &self.user_devices, "covm has no vfio-user devices"),
            ("vdpa", &self.vdpa, "covm has no vDPA devices"),
            ("numa", &self.numa, "covm has no NUMA topology"),
            ("iommu", &self.iommu, "covm has no IOMMU"),
            ("watchdog", &self.watchdog, "covm has no watchdog"),
            ("rtc", &self.rtc, "covm has no RTC device"),
            ("pvpanic", &self.pvpanic, "covm has no pvpanic device"),
            ("pci_segments", &self.pci_segments, "covm has one PCI segment"),
            ("tpm", &self.tpm, "covm has no TPM"),
            ("debug_console", &self.debug_console, "covm has no debug console"),
            (
                "generic_vhost_user",
                &self.generic_vhost_user,
                "covm has no vhost-user devices",
            ),
            (
                "rate_limit_groups",
                &self.rate_limit_groups,
                "covm has no rate-limited devices",
            ),
            (
                "landlock_enable",
                &self.landlock_enable,
                "covm does not sandbox with Landlock yet",
            ),
            (
                "landlock_rules",
                &self.landlock_rules,
                "covm does not sandbox with Landlock yet",
            ),
        ];
        for (name, value, reason) in fields {
            refuse_unless_default(name, value.as_ref(), reason)?;
        }
        Ok(())
    }
}

/// [`ch_defaults::refuse_unless_default`] for a field that may be absent.
fn refuse_unless_default(name: &str, value: Option<&Value>, reason: &str) -> Result<(), String> {
    value.map_or(Ok(()), |v| ch_defaults::refuse_unless_default(name, v, reason))
}

/// CH's `CpusConfig`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CpusJson {
    /// vCPUs at boot.
    pub boot_vcpus: u8,
    /// Most vCPUs (covm: equal to boot).
    #[serde(default)]
    pub max_vcpus: Option<u8>,
    /// Other CH keys, refused unless default.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

/// CH's `MemoryConfig`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct MemoryJson {
    /// Bytes.
    pub size: u64,
    /// Other CH keys, refused unless default.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

/// CH's `PayloadConfig`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadJson {
    /// A firmware ELF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<PathBuf>,
    /// A kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// Its command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// An initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    /// An IGVM file (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub igvm: Option<PathBuf>,
    /// SEV-SNP host data (refused: covm binds HOST_DATA to the migration policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_data: Option<String>,
}

/// covm's `dirty_tracking` (the `--dirty-tracking` option as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirtyTrackingJson {
    /// `log` or `ring`.
    pub mode: DirtyTrackingMode,
    /// Entries per vCPU ring, for `ring`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_entries: Option<u32>,
}

/// The two dirty-tracking modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DirtyTrackingMode {
    /// KVM's dirty bitmap.
    Log,
    /// KVM's dirty ring.
    Ring,
}

fn dirty_tracking_from_json(json: Option<DirtyTrackingJson>) -> Result<DirtyTracking, String> {
    let Some(json) = json else {
        return Ok(DirtyTracking::Log);
    };
    match (json.mode, json.ring_entries) {
        (DirtyTrackingMode::Log, None) => Ok(DirtyTracking::Log),
        (DirtyTrackingMode::Log, Some(_)) => Err("dirty_tracking.ring_entries: only mode ring has a ring".into()),
        (DirtyTrackingMode::Ring, entries) => Ok(DirtyTracking::Ring {
            entries: match entries {
                None => crate::dirty::ring::DEFAULT_RING_ENTRIES,
                Some(n) => {
                    crate::config::check_ring_entries(n).map_err(|e| format!("dirty_tracking.ring_entries={n}: {e}"))?
                }
            },
        }),
    }
}

fn dirty_tracking_to_json(tracking: DirtyTracking) -> Option<DirtyTrackingJson> {
    match tracking {
        DirtyTracking::Log => None,
        DirtyTracking::Ring { entries } => Some(DirtyTrackingJson {
            mode: DirtyTrackingMode::Ring,
            ring_entries: Some(entries),
        }),
    }
}

/// CH's `ConsoleConfig` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleMode {
    /// No device.
    Off,
    /// A pseudo-terminal.
    Pty,
    /// covm's terminal.
    Tty,
    /// A file.
    File,
    /// A UNIX socket.
    Socket,
    /// A device with output discarded.
    Null,
}

/// CH's `ConsoleConfig` (and `SerialConfig`, its subset). Keys beyond those
/// named here land in `placement`, where the caller refuses any CH does
/// not define.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConsoleJson {
    /// The mode.
    pub mode: ConsoleMode,
    /// The file, for `File`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// The socket, for `Socket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// Behind an IOMMU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommu: Option<bool>,
    /// CH's device placement keys (`id`, `pci_segment`, `pci_device_id`):
    /// accepted at their defaults.
    #[serde(flatten, skip_serializing_if = "serde_json::Map::is_empty")]
    pub placement: serde_json::Map<String, Value>,
}

/// CH's keys of `ConsoleConfig` beyond those covm reads.
const CH_CONSOLE_KEYS: &[&str] = &["id", "pci_segment", "pci_device_id"];

/// Parses a `vm.create` body into a checked [`VmConfig`].
pub fn parse(body: &[u8], host_ram: u64) -> Result<VmConfig, String> {
    let json: VmConfigJson = serde_json::from_slice(body).map_err(|e| format!("invalid VmConfig: {e}"))?;
    to_vm_config(json, host_ram)
}

/// CH's other keys of `CpusConfig`.
const CH_CPUS_KEYS: &[&str] = &[
    "topology",
    "kvm_hyperv",
    "max_phys_bits",
    "nested",
    "affinity",
    "features",
    "core_scheduling",
    "profile",
];
/// CH's other keys of `MemoryConfig`.
const CH_MEMORY_KEYS: &[&str] = &[
    "hotplug_size",
    "hotplugged_size",
    "mergeable",
    "hotplug_method",
    "shared",
    "hugepages",
    "hugepage_size",
    "prefault",
    "reserve",
    "thp",
    "zones",
];
/// Checks the keys of a section beyond those covm reads: each must be one
/// CH defines (`known`), and at its default unless covm meets it anyway
/// (`met`).
pub(super) fn other_keys(
    section: &str,
    map: &serde_json::Map<String, Value>,
    known: &[&str],
    met: &[&str],
) -> Result<(), String> {
    for (key, value) in map {
        if !known.contains(&key.as_str()) {
            return Err(format!("invalid VmConfig: unknown field `{section}.{key}`"));
        }
        if !met.contains(&key.as_str()) {
            ch_defaults::refuse_unless_default(&format!("{section}.{key}"), value, "covm does not support it yet")?;
        }
    }
    Ok(())
}

/// Checks a CH `VmConfig` as the command line is checked, and converts it.
pub fn to_vm_config(json: VmConfigJson, host_ram: u64) -> Result<VmConfig, String> {
    use crate::platform::{snp, tdx};
    to_vm_config_probed(json, host_ram, &|key| match key {
        "sev_snp" => snp::probe_snp(),
        _ => tdx::probe_tdx(),
    })
}

/// [`to_vm_config`] with the hardware probes given (`sev_snp`, `tdx`).
fn to_vm_config_probed(
    json: VmConfigJson,
    host_ram: u64,
    probe: &dyn Fn(&str) -> Result<(), Unavailable>,
) -> Result<VmConfig, String> {
    json.unsupported.check()?;
    // CH's nested=true and thp=true are defaults covm meets (KVM decides nesting, the kernel THP).
    let cpus = match json.cpus {
        None => CpusConfig::boot(1),
        Some(c) => {
            other_keys("cpus", &c.other, CH_CPUS_KEYS, &["nested"])?;
            if !(1..=MAX_VCPUS).contains(&c.boot_vcpus) {
                return Err(format!(
                    "cpus.boot_vcpus={} must be from 1 to {MAX_VCPUS}",
                    c.boot_vcpus
                ));
            }
            if c.max_vcpus.is_some_and(|m| m != c.boot_vcpus) {
                return Err("cpus.max_vcpus must equal boot_vcpus: vCPU hotplug is not supported".into());
            }
            CpusConfig::boot(c.boot_vcpus)
        }
    };
    let size = match json.memory {
        None => crate::config::DEFAULT_MEMORY,
        Some(m) => {
            other_keys("memory", &m.other, CH_MEMORY_KEYS, &["thp", "hotplug_method"])?;
            if m.other.get("thp") == Some(&Value::Bool(false)) {
                return Err("field 'memory.thp' cannot be honoured: covm always allows transparent huge pages".into());
            }
            m.size
        }
    };
    if size < MIN_MEMORY || size % 4096 != 0 {
        return Err(format!(
            "memory.size={size} must be a multiple of 4 KiB and at least {MIN_MEMORY}"
        ));
    }
    if size > host_ram {
        return Err(format!(
            "memory.size={size} is larger than this host's {host_ram} bytes of RAM"
        ));
    }
    let p = json.payload;
    refuse_unless_default(
        "payload.igvm",
        p.igvm.as_ref().map(|v| Value::String(v.display().to_string())).as_ref(),
        "covm does not load IGVM files",
    )?;
    refuse_unless_default(
        "payload.host_data",
        p.host_data.clone().map(Value::String).as_ref(),
        "covm binds HOST_DATA to the SHA-256 of platform.migration_policy",
    )?;
    let payload = match (p.kernel, p.firmware, p.initramfs) {
        (Some(_), Some(_), _) => return Err("payload: give kernel or firmware, not both".into()),
        (None, _, Some(_)) => return Err("payload.initramfs needs payload.kernel".into()),
        (Some(kernel), None, initramfs) => {
            check_readable("payload.kernel", &kernel).map_err(|e| e.to_string())?;
            if let Some(i) = &initramfs {
                check_readable("payload.initramfs", i).map_err(|e| e.to_string())?;
            }
            Payload::Kernel { kernel, initramfs }
        }
        (None, Some(firmware), None) => {
            check_readable("payload.firmware", &firmware).map_err(|e| e.to_string())?;
            Payload::Firmware(firmware)
        }
        (None, None, None) => Payload::BuiltinFirmware,
    };
    let serial = match json.serial {
        // CH's default serial mode.
        None => SerialMode::Null,
        // CH's SerialConfig has no device placement keys.
        Some(ConsoleJson { placement, .. }) if !placement.is_empty() => {
            let key = placement.keys().next().expect("not empty");
            return Err(format!("invalid VmConfig: unknown field `serial.{key}`"));
        }
        Some(ConsoleJson { iommu: Some(true), .. }) => {
            return Err("field 'serial.iommu' cannot be honoured: covm has no IOMMU".into())
        }
        Some(s) => match s.mode {
            ConsoleMode::Off => SerialMode::Off,
            ConsoleMode::Null => SerialMode::Null,
            ConsoleMode::Tty => SerialMode::Tty,
            ConsoleMode::File => SerialMode::File(s.file.ok_or("serial.mode File needs serial.file")?),
            other => {
                return Err(format!(
                    "serial.mode {other:?} is not supported (use Off, Null, Tty or File)"
                ))
            }
        },
    };
    let (platform, agent_vcpus) = platform_from_json_probed(json.platform.as_ref(), &payload, probe)?;
    let cpus = CpusConfig { agent_vcpus, ..cpus };
    crate::config::check_confidential_shape(&platform, cpus, size)?;
    let devices = devices::devices_from_json(devices::DevicesJson {
        disks: json.disks,
        nets: json.net,
        console: json.console,
        rng: json.rng,
        vsock: json.vsock,
    })?;
    Ok(VmConfig {
        cpus,
        memory: MemoryConfig { size },
        payload,
        cmdline: p.cmdline.unwrap_or_default(),
        serial,
        api_socket: None::<ApiSocket>,
        dirty_tracking: dirty_tracking_from_json(json.dirty_tracking)?,
        platform,
        devices,
    })
}

/// The configuration as CH's JSON, for `vm.info`.
pub fn to_json(config: &VmConfig) -> VmConfigJson {
    let (kernel, firmware, initramfs) = match &config.payload {
        Payload::BuiltinFirmware => (None, None, None),
        Payload::Firmware(f) => (None, Some(f.clone()), None),
        Payload::Kernel { kernel, initramfs } => (Some(kernel.clone()), None, initramfs.clone()),
    };
    let (mode, file) = match &config.serial {
        SerialMode::Tty => (ConsoleMode::Tty, None),
        SerialMode::Off => (ConsoleMode::Off, None),
        SerialMode::Null => (ConsoleMode::Null, None),
        SerialMode::File(f) => (ConsoleMode::File, Some(f.clone())),
    };
    VmConfigJson {
        cpus: Some(CpusJson {
            boot_vcpus: config.cpus.boot_vcpus,
            max_vcpus: Some(config.cpus.boot_vcpus),
            other: Default::default(),
        }),
        memory: Some(MemoryJson {
            size: config.memory.size,
            other: Default::default(),
        }),
        payload: PayloadJson {
            firmware,
            kernel,
            cmdline: Some(config.cmdline.clone()),
            initramfs,
            igvm: None,
            host_data: None,
        },
        serial: Some(ConsoleJson {
            mode,
            file,
            socket: None,
            iommu: None,
            placement: Default::default(),
        }),
        console: Some(devices::console_to_json(&config.devices.console)),
        disks: (!config.devices.disks.is_empty()).then(|| {
            config
                .devices
                .disks
                .iter()
                .enumerate()
                .map(|(i, d)| devices::disk_to_json(d, config.devices.disk_id(i)))
                .collect()
        }),
        net: (!config.devices.nets.is_empty()).then(|| {
            (0..config.devices.nets.len())
                .map(|i| net::net_to_json(&config.devices.nets[i], config.devices.net_id(i)))
                .collect()
        }),
        rng: config.devices.rng.as_ref().map(|r| RngJson {
            src: r.src.clone(),
            iommu: None,
            other: Default::default(),
        }),
        vsock: config
            .devices
            .vsock
            .as_ref()
            .zip(config.devices.vsock_id())
            .map(|(v, id)| vsock::vsock_to_json(v, id)),
        platform: platform_to_json(&config.platform, config.cpus.agent_vcpus),
        dirty_tracking: dirty_tracking_to_json(config.dirty_tracking),
        unsupported: Unsupported::default(),
    }
}

#[cfg(test)]
mod tests;
