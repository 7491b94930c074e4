//! The command line's option strings, each into its part of a
//! configuration: `--cpus`, `--memory`, `--serial`, `--console`,
//! `--api-socket`, `--dirty-tracking` and `--platform` (Cloud Hypervisor's
//! syntax, `config::options`).

use super::options::{parse_toggle, OptionError, OptionMap};
use super::size;
use super::{ApiSocket, ConfigError, CpusConfig, DirtyTracking, MemoryConfig, SerialMode, SnpOption, MAX_VCPUS};
use super::{DEFAULT_MEMORY, MIN_MEMORY};
use crate::platform::hardware::{parse_guest_policy, DEFAULT_GUEST_POLICY};
use crate::platform::snp::plan::IdBlock;
use std::path::PathBuf;

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
    /// `agent_vcpus=N`: the migration agent's vCPUs (with a confidential
    /// platform only).
    pub agent_vcpus: Option<u8>,
}

/// `--platform`'s keys: Cloud Hypervisor's, then covm's.
pub(super) const PLATFORM_KEYS: &[&str] = &[
    "num_pci_segments",
    "iommu_segments",
    "serial_number",
    "uuid",
    "oem_strings",
    "tdx",
    "sev_snp",
    "emulated_cvm",
    "root_key",
    "agent_vcpus",
    "policy",
    "vcpu_type",
    "id_block",
    "id_auth",
    "author_key",
];

/// `agent_vcpus=N`, checked against the firmware's limit.
pub(super) fn agent_vcpus_option(m: &OptionMap) -> Result<Option<u8>, OptionError> {
    m.get_with("agent_vcpus", |v| match v.parse::<u8>() {
        Ok(n) if (1..=super::MAX_AGENT_VCPUS).contains(&n) => Ok(n),
        _ => Err(format!(
            "the migration agent's vCPUs: a number from 1 to {}",
            super::MAX_AGENT_VCPUS
        )),
    })
}

/// `policy=` and `vcpu_type=`, checked.
pub(super) fn snp_option(m: &OptionMap) -> Result<SnpOption, OptionError> {
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
    Ok(CpusConfig::boot(boot))
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
pub(super) fn parse_platform_probed(
    text: &str,
    probe: &dyn Fn(&str) -> Result<(), crate::platform::hardware::host::Unavailable>,
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
    let agent_vcpus = agent_vcpus_option(&m)?;
    if let (Some(n), false) = (agent_vcpus, emulated_cvm || sev_snp || tdx) {
        return Err(m.invalid(
            "agent_vcpus",
            &n.to_string(),
            "only a confidential platform (emulated_cvm=on, sev_snp=on, tdx=on) has a migration agent",
        ));
    }
    Ok(PlatformOption {
        emulated_cvm,
        root_key,
        sev_snp: sev_snp.then(|| snp_option(&m)).transpose()?,
        tdx,
        agent_vcpus,
    })
}
