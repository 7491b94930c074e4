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

use super::ch_defaults;
use crate::config::{
    check_readable, ApiSocket, CpusConfig, DirtyTracking, MemoryConfig, Payload, SerialMode, VmConfig,
};
use crate::config::{PlatformChoice, PlatformRefusal, SnpOption};
use crate::config::{MAX_VCPUS, MIN_MEMORY};
use crate::platform::hardware::{check_guest_policy, parse_guest_policy, DEFAULT_GUEST_POLICY};
use crate::platform::snp::host::Unavailable;
use crate::platform::{EmulatedCvmConfig, MigrationPolicy, PlatformConfig};
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
    disks: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    net: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rng: Option<Value>,
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
    vsock: Option<Value>,
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
            ("disks", &self.disks, "covm has no block devices yet"),
            ("net", &self.net, "covm has no network devices yet"),
            ("rng", &self.rng, "covm has no virtio-rng yet"),
            ("balloon", &self.balloon, "covm has no balloon yet"),
            ("fs", &self.fs, "covm has no virtio-fs yet"),
            ("pmem", &self.pmem, "covm has no pmem devices yet"),
            ("devices", &self.devices, "covm has no device passthrough"),
            ("user_devices", &self.user_devices, "covm has no vfio-user devices"),
            ("vdpa", &self.vdpa, "covm has no vDPA devices"),
            ("vsock", &self.vsock, "covm has no vsock yet"),
            ("numa", &self.numa, "covm has no NUMA topology"),
            ("iommu", &self.iommu, "covm has no IOMMU"),
            ("watchdog", &self.watchdog, "covm has no watchdog"),
            ("rtc", &self.rtc, "covm has no RTC device"),
            ("pvpanic", &self.pvpanic, "covm has no pvpanic device"),
            ("pci_segments", &self.pci_segments, "covm has no PCI bus"),
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
/// CH's keys of `PlatformConfig`.
const CH_PLATFORM_KEYS: &[&str] = &[
    "num_pci_segments",
    "iommu_segments",
    "iommu_address_width_bits",
    "system_serial_number",
    "serial_number",
    "system_uuid",
    "uuid",
    "oem_strings",
    "system_manufacturer",
    "system_product_name",
    "system_version",
    "system_family",
    "system_sku_number",
    "chassis_asset_tag",
    "tdx",
    "sev_snp",
    "iommufd",
    "vfio_p2p_dma",
];

/// covm's keys in `PlatformConfig`.
const COVM_PLATFORM_KEYS: &[&str] = &["emulated_cvm", "root_key", "migration_policy", "policy", "vcpu_type"];

/// The platform from CH's `platform` object and covm's keys in it, with
/// the hardware probes given (`sev_snp`, `tdx`).
fn platform_from_json_probed(
    platform: Option<&Value>,
    payload: &Payload,
    probe: &dyn Fn(&str) -> Result<(), Unavailable>,
) -> Result<PlatformConfig, String> {
    let Some(platform) = platform else {
        return Ok(PlatformConfig::Plain);
    };
    let map = platform.as_object().ok_or("platform must be an object")?;
    let (mut sev_snp, mut tdx) = (false, false);
    for key in ["sev_snp", "tdx"] {
        match map.get(key) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => continue,
            Some(Value::Bool(true)) => {}
            Some(other) => return Err(format!("platform.{key} must be true or false, not {other}")),
        }
        // The same probe as --platform: nothing is created, and the host's
        // missing pieces are named.
        if let Err(missing) = probe(key) {
            return Err(format!(
                "field 'platform.{key}' cannot be honoured: {missing}. platform.emulated_cvm is covm's emulated \
                 confidential platform, without hardware protection"
            ));
        }
        match key {
            "tdx" => tdx = true,
            _ => sev_snp = true,
        }
    }
    let ch: serde_json::Map<String, Value> = map
        .iter()
        .filter(|(k, _)| !COVM_PLATFORM_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // No VFIO devices, so peer-to-peer DMA (default on) is moot; sev_snp
    // and tdx were read above.
    other_keys("platform", &ch, CH_PLATFORM_KEYS, &["vfio_p2p_dma", "sev_snp", "tdx"])?;
    let emulated_cvm = match map.get("emulated_cvm") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(format!("platform.emulated_cvm must be true or false, not {other}")),
    };
    let root_key = match map.get("root_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(path)) if !path.is_empty() => Some(PathBuf::from(path)),
        Some(other) => return Err(format!("platform.root_key must be a file path, not {other}")),
    };
    let policy = match map.get("migration_policy") {
        None | Some(Value::Null) => None,
        Some(value) => Some(MigrationPolicy::from_value(value).map_err(|e| format!("platform.migration_policy: {e}"))?),
    };
    let guest_policy = match map.get("policy") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(parse_guest_policy(text).map_err(|e| format!("platform.policy: {e}"))?),
        Some(Value::Number(n)) if n.as_u64().is_some() => {
            Some(check_guest_policy(n.as_u64().expect("checked")).map_err(|e| format!("platform.policy: {e}"))?)
        }
        Some(other) => {
            return Err(format!(
                "platform.policy must be a guest policy (\"0x30000\"), not {other}"
            ))
        }
    };
    let vcpu_type = match map.get("vcpu_type") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => {
            covm_measure::vmsa::vcpu_type_signature(name).map_err(|e| format!("platform.vcpu_type: {e}"))?;
            Some(name.clone())
        }
        Some(other) => return Err(format!("platform.vcpu_type must be a vCPU model name, not {other}")),
    };
    if !sev_snp && (guest_policy.is_some() || vcpu_type.is_some()) {
        return Err("platform.policy and platform.vcpu_type need platform.sev_snp: true".into());
    }
    let choice = PlatformChoice {
        emulated_cvm,
        root_key,
        sev_snp: sev_snp.then(|| SnpOption {
            guest_policy: guest_policy.unwrap_or(DEFAULT_GUEST_POLICY),
            vcpu_type,
            id: None,
        }),
        tdx,
        policy,
        boots_kernel: matches!(payload, Payload::Kernel { .. }),
    };
    crate::config::platform::select(choice).map_err(|refusal| match refusal {
        PlatformRefusal::TwoPlatforms { first, second } => {
            format!("give platform.{first} or platform.{second}, not both")
        }
        PlatformRefusal::PolicyWithoutPlatform => {
            "platform.migration_policy needs a confidential platform (platform.emulated_cvm: true)".into()
        }
        PlatformRefusal::PlatformWithoutPolicy(name) => format!(
            "platform.{name} needs platform.migration_policy: the guest owner's migration policy \
             (its JSON inline, see resources/policies/)"
        ),
        PlatformRefusal::KernelPayload(name) => format!(
            "platform.{name} boots firmware (the built-in one or payload.firmware), not payload.kernel: \
             the migration agent lives in the firmware"
        ),
        PlatformRefusal::RootKeyWithoutEmulatedCvm => "platform.root_key needs platform.emulated_cvm: true".into(),
        PlatformRefusal::RootKey(e) => format!("platform.root_key: {e}"),
    })
}

/// The platform as CH's `platform` object with covm's keys (None: plain).
fn platform_to_json(platform: &PlatformConfig) -> Option<Value> {
    let policy = platform.migration_policy()?;
    let mut map = serde_json::Map::new();
    map.insert(platform.name().into(), Value::Bool(true));
    match platform {
        PlatformConfig::EmulatedCvm(EmulatedCvmConfig {
            root_key: Some(path), ..
        }) => {
            map.insert("root_key".into(), Value::String(path.display().to_string()));
        }
        PlatformConfig::SevSnp(snp) => {
            map.insert("policy".into(), Value::String(format!("{:#x}", snp.guest_policy)));
            if let Some(vcpu_type) = &snp.vcpu_type {
                map.insert("vcpu_type".into(), Value::String(vcpu_type.clone()));
            }
        }
        _ => {}
    }
    map.insert(
        "migration_policy".into(),
        serde_json::to_value(policy.to_json()).expect("a policy serialises"),
    );
    Some(Value::Object(map))
}

/// Checks the keys of a section beyond those covm reads: each must be one
/// CH defines (`known`), and at its default unless covm meets it anyway
/// (`met`).
fn other_keys(section: &str, map: &serde_json::Map<String, Value>, known: &[&str], met: &[&str]) -> Result<(), String> {
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
        None => CpusConfig { boot_vcpus: 1 },
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
            CpusConfig {
                boot_vcpus: c.boot_vcpus,
            }
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
    if let Some(c) = json.console {
        // Tty is CH's default, which a configuration CH wrote carries.
        if !matches!(c.mode, ConsoleMode::Off | ConsoleMode::Null | ConsoleMode::Tty) {
            return Err(format!(
                "console.mode {:?} is not supported: covm has no virtio console yet (use Off)",
                c.mode
            ));
        }
        other_keys("console", &c.placement, CH_CONSOLE_KEYS, &[])?;
        refuse_unless_default("console.iommu", c.iommu.map(Value::Bool).as_ref(), "covm has no IOMMU")?;
    }
    let platform = platform_from_json_probed(json.platform.as_ref(), &payload, probe)?;
    crate::config::check_confidential_shape(&platform, cpus.boot_vcpus, size)?;
    Ok(VmConfig {
        cpus,
        memory: MemoryConfig { size },
        payload,
        cmdline: p.cmdline.unwrap_or_default(),
        serial,
        api_socket: None::<ApiSocket>,
        dirty_tracking: dirty_tracking_from_json(json.dirty_tracking)?,
        platform,
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
        console: Some(ConsoleJson {
            mode: ConsoleMode::Off,
            file: None,
            socket: None,
            iommu: None,
            placement: Default::default(),
        }),
        platform: platform_to_json(&config.platform),
        dirty_tracking: dirty_tracking_to_json(config.dirty_tracking),
        unsupported: Unsupported::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: u64 = 1 << 40;

    fn parse_str(s: &str) -> Result<VmConfig, String> {
        parse(s.as_bytes(), RAM)
    }

    #[test]
    fn minimal_config_boots_builtin_firmware() {
        let c = parse_str(r#"{"payload": {"cmdline": "workload=hello"}}"#).unwrap();
        assert_eq!(c.payload, Payload::BuiltinFirmware);
        assert_eq!(c.cmdline, "workload=hello");
        assert_eq!(c.cpus.boot_vcpus, 1);
        assert_eq!(c.memory.size, 512 << 20);
        assert_eq!(c.serial, SerialMode::Null);
    }

    #[test]
    fn full_ch_style_config() {
        let c = parse_str(
            r#"{"cpus": {"boot_vcpus": 2, "max_vcpus": 2, "kvm_hyperv": false, "nested": true},
                "memory": {"size": 268435456, "shared": false, "hugepages": false, "thp": true},
                "payload": {"cmdline": "workload=dirty mib=16"},
                "serial": {"mode": "File", "file": "/tmp/s.txt"}, "console": {"mode": "Off"},
                "disks": [], "net": null, "iommu": false, "watchdog": false,
                "platform": {"tdx": false, "sev_snp": false}}"#,
        )
        .unwrap();
        assert_eq!(c.cpus.boot_vcpus, 2);
        assert_eq!(c.memory.size, 256 << 20);
        assert_eq!(c.serial, SerialMode::File("/tmp/s.txt".into()));
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let e = parse_str(r#"{"payload": {}, "disks": [{"path": "/x"}]}"#).unwrap_err();
        assert_eq!(e, "field 'disks' cannot be honoured: covm has no block devices yet");
        let e = parse_str(r#"{"payload": {}, "memory": {"size": 268435456, "hugepages": true}}"#).unwrap_err();
        assert!(e.contains("'memory.hugepages'"), "{e}");
        // The hardware platforms are probed as --platform probes them: on
        // this machine the message names what is missing.
        let e = parse_str(r#"{"payload": {}, "platform": {"sev_snp": true}}"#).unwrap_err();
        match crate::platform::snp::probe_snp() {
            Err(missing) => assert_eq!(
                e,
                format!(
                    "field 'platform.sev_snp' cannot be honoured: {missing}. platform.emulated_cvm is covm's \
                     emulated confidential platform, without hardware protection"
                )
            ),
            Ok(()) => assert!(e.contains("platform.sev_snp needs platform.migration_policy"), "{e}"),
        }
        let e = parse_str(r#"{"payload": {}, "platform": {"tdx": true}}"#).unwrap_err();
        match crate::platform::tdx::probe_tdx() {
            Err(missing) => {
                assert!(e.starts_with("field 'platform.tdx' cannot be honoured: "), "{e}");
                assert!(e.contains(&missing.to_string()), "{e}");
            }
            Ok(()) => assert!(e.contains("platform.tdx needs platform.migration_policy"), "{e}"),
        }
        let e = parse_str(r#"{"payload": {"host_data": "ab"}}"#).unwrap_err();
        assert!(e.contains("'payload.host_data'"), "{e}");
    }

    #[test]
    fn fields_ch_does_not_define_are_refused() {
        let e = parse_str(r#"{"payload": {}, "frobnicate": 1}"#).unwrap_err();
        assert!(e.contains("unknown field `frobnicate`"), "{e}");
        let e = parse_str(r#"{"payload": {}, "cpus": {"boot_vcpus": 1, "sockets": 2}}"#).unwrap_err();
        assert!(e.contains("unknown field `cpus.sockets`"), "{e}");
        let e = parse_str(r#"{"cpus": {"boot_vcpus": 1}}"#).unwrap_err();
        assert!(e.contains("missing field `payload`"), "{e}");
        assert!(parse_str("not json").unwrap_err().starts_with("invalid VmConfig"));
    }

    #[test]
    fn values_are_checked_like_the_command_line() {
        assert!(parse_str(r#"{"payload": {}, "cpus": {"boot_vcpus": 33}}"#)
            .unwrap_err()
            .contains("1 to 32"));
        assert!(
            parse_str(r#"{"payload": {}, "cpus": {"boot_vcpus": 2, "max_vcpus": 4}}"#)
                .unwrap_err()
                .contains("hotplug")
        );
        assert!(parse_str(r#"{"payload": {}, "memory": {"size": 1000}}"#)
            .unwrap_err()
            .contains("memory.size=1000"));
        let e = parse(br#"{"payload": {}, "memory": {"size": 1073741824}}"#, 1 << 29).unwrap_err();
        assert!(e.contains("larger than this host"), "{e}");
        let e = parse_str(r#"{"payload": {"kernel": "/nonexistent/k"}}"#).unwrap_err();
        assert!(e.starts_with("payload.kernel: cannot read /nonexistent/k"), "{e}");
        let e = parse_str(r#"{"payload": {}, "serial": {"mode": "Pty"}}"#).unwrap_err();
        assert!(e.contains("serial.mode Pty"), "{e}");
    }

    fn emulated(extra: &str) -> String {
        format!(
            r#"{{"payload": {{"cmdline": "workload=hello"}}, "platform": {{"emulated_cvm": true{extra},
                "migration_policy": {}}}}}"#,
            crate::platform::policy::tests::valid_json()
        )
    }

    #[test]
    fn emulated_platform_and_its_policy() {
        let c = parse_str(&emulated(r#", "root_key": "/k/root.key""#)).unwrap();
        let PlatformConfig::EmulatedCvm(e) = &c.platform else {
            panic!("{:?}", c.platform)
        };
        assert_eq!(e.root_key, Some("/k/root.key".into()));
        assert_eq!(e.policy.version(), 3);
        // Through vm.info's JSON (and a migration) and back: the same
        // platform, the same policy bytes, so the same measurement.
        let json = serde_json::to_vec(&to_json(&c)).unwrap();
        assert_eq!(parse(&json, RAM).unwrap(), c);
        let info = serde_json::to_value(to_json(&c)).unwrap();
        assert_eq!(info["platform"]["emulated_cvm"], true);
        assert_eq!(info["platform"]["root_key"], "/k/root.key");
        assert_eq!(info["platform"]["migration_policy"]["version"], 3);
        assert!(parse_str(&emulated("")).is_ok());
    }

    /// vm.create and the command line share the platform rule: a relative
    /// root key becomes absolute in both (they had drifted).
    #[test]
    fn a_relative_root_key_becomes_absolute_as_on_the_command_line() {
        let c = parse_str(&emulated(r#", "root_key": "keys/root.key""#)).unwrap();
        let PlatformConfig::EmulatedCvm(e) = &c.platform else {
            panic!("{:?}", c.platform)
        };
        let expected = std::env::current_dir().unwrap().join("keys/root.key");
        assert_eq!(e.root_key.as_deref(), Some(expected.as_path()));
    }

    #[test]
    fn emulated_platform_refusals_name_the_field() {
        let policy = crate::platform::policy::tests::valid_json();
        let cases = [
            (
                r#"{"payload": {}, "platform": {"emulated_cvm": true}}"#.to_string(),
                "platform.emulated_cvm needs platform.migration_policy",
            ),
            (
                format!(r#"{{"payload": {{}}, "platform": {{"migration_policy": {policy}}}}}"#),
                "platform.migration_policy needs a confidential platform",
            ),
            (
                r#"{"payload": {}, "platform": {"root_key": "/k"}}"#.to_string(),
                "platform.root_key needs platform.emulated_cvm: true",
            ),
            (
                r#"{"payload": {}, "platform": {"emulated_cvm": "yes"}}"#.to_string(),
                "platform.emulated_cvm must be true or false",
            ),
            (
                r#"{"payload": {}, "platform": {"emulated_cvm": true, "root_key": 3}}"#.to_string(),
                "platform.root_key must be a file path",
            ),
            (
                r#"{"payload": {}, "platform": {"emulated_cvm": true, "migration_policy": {"version": 1}}}"#
                    .to_string(),
                "platform.migration_policy: missing field `allowed_platforms`",
            ),
            (
                r#"{"payload": {}, "platform": {"emulated_cvm": true, "migration_policy": {"version": 1,
                    "allowed_platforms": ["sgx"], "allowed_measurements": []}}}"#
                    .to_string(),
                "platform.migration_policy: allowed_platforms[0]: unknown platform 'sgx'",
            ),
            (
                format!(
                    r#"{{"payload": {{"kernel": "/etc/hostname"}}, "platform": {{"emulated_cvm": true,
                        "migration_policy": {policy}}}}}"#
                ),
                "not payload.kernel",
            ),
        ];
        for (body, needle) in cases {
            let e = parse_str(&body).unwrap_err();
            assert!(e.contains(needle), "expected {needle:?} in {e:?}");
        }
    }

    fn snp_json(extra: &str) -> String {
        format!(
            r#"{{"payload": {{"cmdline": "workload=hello"}}, "platform": {{"sev_snp": true{extra},
                "migration_policy": {}}}}}"#,
            crate::platform::policy::tests::valid_json()
        )
    }

    fn parse_with(body: &str, probe: &dyn Fn(&str) -> Result<(), Unavailable>) -> Result<VmConfig, String> {
        let json: VmConfigJson = serde_json::from_str(body).map_err(|e| e.to_string())?;
        to_vm_config_probed(json, RAM, probe)
    }

    /// On a host that passes the probe, `platform.sev_snp` is an SEV-SNP
    /// VM with its guest policy and vCPU type, and round-trips through
    /// vm.info's JSON; so is `platform.tdx`, a TD.
    #[test]
    fn sev_snp_on_a_host_that_has_it() {
        let present = |_: &str| Ok(());
        let c = parse_with(
            &snp_json(r#", "policy": "0x70000", "vcpu_type": "EPYC-Rome""#),
            &present,
        )
        .unwrap();
        let PlatformConfig::SevSnp(snp) = &c.platform else {
            panic!("{:?}", c.platform)
        };
        assert_eq!(
            (snp.guest_policy, snp.vcpu_type.as_deref()),
            (0x70000, Some("EPYC-Rome"))
        );
        assert_eq!(snp.policy.version(), 3);
        let json = serde_json::to_string(&to_json(&c)).unwrap();
        assert_eq!(parse_with(&json, &present).unwrap(), c);
        let info = serde_json::to_value(to_json(&c)).unwrap();
        assert_eq!(info["platform"]["sev_snp"], true);
        assert_eq!(info["platform"]["policy"], "0x70000");
        let default = parse_with(&snp_json(""), &present).unwrap();
        assert!(matches!(&default.platform, PlatformConfig::SevSnp(s) if s.guest_policy == 0x30000));
        let numeric = parse_with(&snp_json(r#", "policy": 196608"#), &present).unwrap();
        assert!(matches!(&numeric.platform, PlatformConfig::SevSnp(s) if s.guest_policy == 0x30000));

        let refused = |body: &str| parse_with(body, &present).unwrap_err();
        assert!(refused(&snp_json(r#", "policy": "0x10000""#)).starts_with("platform.policy: guest policy 0x10000"));
        assert!(refused(&snp_json(r#", "vcpu_type": "486""#)).contains("unknown vCPU type '486'"));
        assert!(refused(&snp_json(r#", "emulated_cvm": true"#)).contains("not both"));
        assert!(refused(&snp_json(r#", "root_key": "/k""#)).contains("platform.root_key needs platform.emulated_cvm"));
        assert!(refused(r#"{"payload": {}, "platform": {"sev_snp": true}}"#)
            .starts_with("platform.sev_snp needs platform.migration_policy"));
        assert!(refused(r#"{"payload": {}, "platform": {"sev_snp": "yes"}}"#)
            .starts_with("platform.sev_snp must be true or false"));
        assert_eq!(
            refused(&emulated(r#", "policy": "0x30000""#)),
            "platform.policy and platform.vcpu_type need platform.sev_snp: true"
        );
        let tdx_json = snp_json("").replace("\"sev_snp\"", "\"tdx\"");
        let c = parse_with(&tdx_json, &present).unwrap();
        let PlatformConfig::Tdx(tdx) = &c.platform else {
            panic!("{:?}", c.platform)
        };
        assert_eq!(tdx.policy.version(), 3);
        let json = serde_json::to_string(&to_json(&c)).unwrap();
        assert_eq!(parse_with(&json, &present).unwrap(), c);
        assert_eq!(serde_json::to_value(to_json(&c)).unwrap()["platform"]["tdx"], true);
        assert!(refused(r#"{"payload": {}, "platform": {"tdx": true}}"#)
            .starts_with("platform.tdx needs platform.migration_policy"));
        assert_eq!(
            refused(&tdx_json.replace("\"tdx\": true", "\"tdx\": true, \"sev_snp\": true")),
            "give platform.sev_snp or platform.tdx, not both"
        );
        assert_eq!(
            refused(&tdx_json.replace("\"tdx\": true", "\"tdx\": true, \"policy\": \"0x30000\"")),
            "platform.policy and platform.vcpu_type need platform.sev_snp: true"
        );
        // Lacking: the probe's words, before anything else is read.
        let lacking = |key: &str| {
            Err(Unavailable {
                what: "AMD SEV-SNP",
                missing: vec![format!("no {key}")],
            })
        };
        assert_eq!(
            parse_with(&snp_json(r#", "policy": "junk""#), &lacking).unwrap_err(),
            "field 'platform.sev_snp' cannot be honoured: AMD SEV-SNP is not available on this machine: no \
             sev_snp. platform.emulated_cvm is covm's emulated confidential platform, without hardware protection"
        );
    }

    #[test]
    fn round_trips_through_info_json() {
        let c = parse_str(r#"{"cpus": {"boot_vcpus": 2}, "payload": {"cmdline": "x=1"}, "serial": {"mode": "Tty"}}"#)
            .unwrap();
        let json = serde_json::to_vec(&to_json(&c)).unwrap();
        assert_eq!(parse(&json, RAM).unwrap(), c);
    }
}
