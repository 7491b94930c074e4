//! vm.create's `platform` object: Cloud Hypervisor's keys (at their
//! defaults) and covm's (`emulated_cvm`, `root_key`, `migration_policy`,
//! `agent_vcpus`, SEV-SNP's `policy` and `vcpu_type`), into the platform through the
//! rule the command line shares (`config::platform`), and back for
//! `vm.info`.

use super::other_keys;
use crate::config::{Payload, PlatformChoice, PlatformRefusal, SnpOption};
use crate::platform::hardware::host::Unavailable;
use crate::platform::hardware::{check_guest_policy, parse_guest_policy, DEFAULT_GUEST_POLICY};
use crate::platform::{EmulatedCvmConfig, MigrationPolicy, PlatformConfig};
use serde_json::Value;
use std::path::PathBuf;

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
const COVM_PLATFORM_KEYS: &[&str] = &[
    "emulated_cvm",
    "root_key",
    "migration_policy",
    "agent_vcpus",
    "policy",
    "vcpu_type",
];

/// The platform from CH's `platform` object and covm's keys in it, with
/// the hardware probes given (`sev_snp`, `tdx`), and the migration
/// agent's vCPUs (`agent_vcpus`, 1 when not given).
pub(super) fn platform_from_json_probed(
    platform: Option<&Value>,
    payload: &Payload,
    probe: &dyn Fn(&str) -> Result<(), Unavailable>,
) -> Result<(PlatformConfig, u8), String> {
    let Some(platform) = platform else {
        return Ok((PlatformConfig::Plain, 1));
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
    let max = crate::config::MAX_AGENT_VCPUS;
    let agent_vcpus = match map.get("agent_vcpus") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| (1..=u64::from(max)).contains(&n)) => {
            Some(n.as_u64().expect("checked") as u8)
        }
        Some(other) => return Err(format!("platform.agent_vcpus must be from 1 to {max}, not {other}")),
    };
    if agent_vcpus.is_some() && !(emulated_cvm || sev_snp || tdx) {
        return Err("platform.agent_vcpus needs a confidential platform (platform.emulated_cvm: true)".into());
    }
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
    let platform = crate::config::platform::select(choice).map_err(|refusal| match refusal {
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
    })?;
    Ok((platform, agent_vcpus.unwrap_or(1)))
}

/// The platform as CH's `platform` object with covm's keys (None: plain),
/// `agent_vcpus` among them.
pub(super) fn platform_to_json(platform: &PlatformConfig, agent_vcpus: u8) -> Option<Value> {
    let policy = platform.migration_policy()?;
    let mut map = serde_json::Map::new();
    map.insert(platform.name().into(), Value::Bool(true));
    map.insert("agent_vcpus".into(), Value::from(agent_vcpus));
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
