//! The hardware confidential platforms as covm's [`Platform`] objects:
//! AMD SEV-SNP ([`SevSnp`], constructed by `vm/snp.rs` through
//! [`super::snp::construct`]) and Intel TDX ([`Td`], through
//! [`super::tdx::construct`]), and what their launches share: VM and vCPU
//! creation ([`create`]), private memory ([`private_memory`], with the
//! guest's page conversions in [`map_gpa`]), the launch on real KVM
//! ([`kvm_launch`]), the host probe ([`host`]) and launch errors ([`error`]).
//!
//! Their measurement is the one covm *expects*: computed over what covm
//! loads, exactly as `covm measure` computes it (for SEV-SNP the same
//! [`snp_launch`], `SnpLaunch::apply` and the launch digest, whose pages
//! and VMSAs the launch then hands to the secure processor). The hardware's own value is
//! in the guest's attestation report, which only the guest can ask for:
//! covm's built-in firmware cannot yet, so [`Platform::evidence`] says so
//! instead of making anything up.

pub mod create;
pub mod error;
#[cfg(test)]
pub(crate) mod fake;
pub mod host;
#[cfg(test)]
pub(crate) mod hybrid;
pub mod kvm_launch;
pub mod map_gpa;
pub mod plan;
pub mod private_memory;

use super::measure::snp_launch;
use super::policy::MigrationPolicy;
use super::snp::plan::IdBlock;
use super::{hex, Platform, PlatformError};
use crate::vm::memory::GuestMemory;
use covm_agent_protocol::Evidence;
use covm_measure::mrtd::{TdMeasurement, TD_HOB_GPA};
use covm_measure::snp::{Measurement, SnpLaunch};
use covm_measure::vmsa::vcpu_type_signature;
use covm_measure::Launch;
use serde_json::{json, Value};

/// The guest policy of an SEV-SNP launch unless `policy=` says otherwise
/// (QEMU's `sev-snp-guest` default): SMT allowed (bit 16) and the
/// must-be-one bit 17; debugging, migration agent and single socket off,
/// minimum ABI version 0.0.
pub const DEFAULT_GUEST_POLICY: u64 = 0x30000;
/// Guest policy bit 17, which the SNP firmware requires set.
pub const GUEST_POLICY_RESERVED_MBO: u64 = 1 << 17;
/// Guest policy bits 63:26, reserved (must be zero) in the SNP firmware ABI.
pub const GUEST_POLICY_RESERVED: u64 = !((1 << 26) - 1);

/// Why the hardware platforms' migration is refused.
pub const SNP_NOT_MIGRATABLE: &str = "an AMD SEV-SNP VM cannot migrate yet: its memory is private \
(guest_memfd-backed), whose pages KVM cannot log as dirty, and covm's migration agent path runs only on \
emulated_cvm for now";

/// Why a TD's migration is refused.
pub const TDX_NOT_MIGRATABLE: &str = "an Intel TDX VM cannot migrate yet: its memory is private \
(guest_memfd-backed), whose pages KVM cannot log as dirty, its state is the TDX module's (TDX live migration \
needs a migration TD and the TDX module's export calls, which KVM does not offer), and covm's migration agent path \
runs only on emulated_cvm for now";

/// What an SEV-SNP VM's evidence needs.
const SNP_EVIDENCE: &str = "the AMD secure processor (an SNP_GUEST_REQUEST MSG_REPORT_REQ through the GHCB)";
/// What a TD's evidence needs.
const TDX_EVIDENCE: &str = "the TDX module (TDG.MR.REPORT, turned into a quote by a quoting enclave)";

/// What sets a launched hardware platform apart from the others; the rest
/// of it as a [`Platform`] is the same for all of them: hardware protects
/// the guest, the measurement is covm's expectation, HOST_DATA binds the
/// migration policy, and only the guest can ask for evidence.
trait HardwarePlatform: Send + Sync + std::fmt::Debug {
    /// [`Platform::kind`].
    const KIND: &'static str;
    /// Whom the guest must ask for its evidence.
    const EVIDENCE: &'static str;

    /// The measurement covm expects the hardware to arrive at.
    fn expected_measurement(&self) -> [u8; 48];

    /// The migration policy fixed at launch.
    fn policy(&self) -> &MigrationPolicy;

    /// [`Platform::info`].
    fn launched_info(&self) -> Value;
}

impl<T: HardwarePlatform> Platform for T {
    fn kind(&self) -> &'static str {
        T::KIND
    }

    fn hardware_protection(&self) -> bool {
        true
    }

    fn confidential(&self) -> bool {
        true
    }

    fn measurement(&self) -> Option<[u8; 48]> {
        Some(self.expected_measurement())
    }

    fn host_data(&self) -> Option<[u8; 32]> {
        Some(self.policy().host_data())
    }

    fn migration_policy(&self) -> Option<&MigrationPolicy> {
        Some(self.policy())
    }

    fn evidence(&self, _: &[u8; 64]) -> Result<Evidence, PlatformError> {
        Err(PlatformError::EvidenceUnavailable {
            platform: T::KIND,
            needs: T::EVIDENCE,
        })
    }

    fn info(&self) -> Value {
        self.launched_info()
    }
}

/// `--platform sev_snp=on[,policy=P][,vcpu_type=MODEL] --migration-policy PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SevSnpConfig {
    /// The guest policy (`SNP_LAUNCH_START`'s POLICY).
    pub guest_policy: u64,
    /// The vCPU model whose CPUID signature every vCPU starts with in RDX
    /// (and so every VMSA carries), as `covm measure --vcpu-type` names it;
    /// None: RDX 0.
    pub vcpu_type: Option<String>,
    /// The guest owner's signed ID block for `SNP_LAUNCH_FINISH`, if any
    /// (`--platform sev_snp=on,id_block=PATH,id_auth=PATH`).
    pub id: Option<IdBlock>,
    /// The guest owner's migration policy: HOST_DATA is its SHA-256.
    pub policy: MigrationPolicy,
}

impl SevSnpConfig {
    /// A launch binding `policy`, with the default guest policy and no vCPU type.
    #[cfg(test)]
    pub fn new(policy: MigrationPolicy) -> Self {
        SevSnpConfig {
            guest_policy: DEFAULT_GUEST_POLICY,
            vcpu_type: None,
            id: None,
            policy,
        }
    }

    /// The vCPU type's signature (0 without one).
    pub fn vcpu_signature(&self) -> Result<u32, String> {
        self.vcpu_type
            .as_deref()
            .map_or(Ok(0), vcpu_type_signature)
            .map_err(|e| e.to_string())
    }

    /// What the launch adds to covm's image: the vCPU signature in every
    /// VMSA's RDX. No kernel hashes table: an SEV-SNP VM boots firmware.
    pub fn snp_launch(&self) -> Result<SnpLaunch, String> {
        Ok(SnpLaunch {
            vcpu_signature: self.vcpu_signature()?,
            kernel_hashes: None,
            cpuid_page: None,
        })
    }
}

/// A guest policy as `policy=` gives it: hex with `0x`, or decimal; checked.
pub fn parse_guest_policy(text: &str) -> Result<u64, String> {
    let value = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(digits) => u64::from_str_radix(digits, 16),
        None => text.parse::<u64>(),
    }
    .map_err(|_| format!("'{text}' is not a number (give the guest policy as 0x… or decimal)"))?;
    check_guest_policy(value)
}

/// Checks the bits the SNP firmware ABI fixes (`SNP_LAUNCH_START`,
/// "Guest Policy Structure"): bit 17 must be one, bits 63:26 zero.
pub fn check_guest_policy(policy: u64) -> Result<u64, String> {
    if policy & GUEST_POLICY_RESERVED_MBO == 0 {
        return Err(format!(
            "guest policy {policy:#x} has bit 17 clear, which the SNP firmware requires set"
        ));
    }
    if policy & GUEST_POLICY_RESERVED != 0 {
        return Err(format!(
            "guest policy {policy:#x} sets reserved bits {:#x} (63:26)",
            policy & GUEST_POLICY_RESERVED
        ));
    }
    Ok(policy)
}

/// What an SEV-SNP launch of an image measures: the image as the launch
/// hands it over ([`SnpLaunch::apply`]) and its digest.
#[derive(Debug, Clone)]
pub struct SnpExpected {
    /// The pages to launch and the vCPUs' states (RDX the vCPU signature).
    pub image: Launch,
    /// The digest the secure processor must arrive at.
    pub measurement: Measurement,
}

/// The SEV-SNP launch of `image` (loaded in `memory`) under `config`, and
/// the measurement it must give: the computation `covm measure --platform
/// sev_snp=on` makes.
pub fn snp_expected(memory: &GuestMemory, image: &Launch, config: &SevSnpConfig) -> Result<SnpExpected, PlatformError> {
    let launch = config.snp_launch().map_err(PlatformError::Unsupported)?;
    let (image, measurement) = snp_launch(memory, image, &launch)?;
    Ok(SnpExpected { image, measurement })
}

/// A launched SEV-SNP VM.
#[derive(Debug)]
pub struct SevSnp {
    config: SevSnpConfig,
    measurement: Measurement,
}

impl SevSnp {
    /// The platform of a VM launched under `config`, whose launch measures
    /// `measurement` (covm's expectation).
    pub fn new(config: &SevSnpConfig, measurement: Measurement) -> Self {
        SevSnp {
            config: config.clone(),
            measurement,
        }
    }

    /// The expected launch measurement and its entries.
    #[cfg(test)]
    pub fn launch_measurement(&self) -> &Measurement {
        &self.measurement
    }
}

/// `vm.info`'s block for an SEV-SNP VM (`launched`: its measurement).
pub(super) fn snp_info(config: &SevSnpConfig, launched: Option<&Measurement>) -> Value {
    json!({
        "kind": "sev_snp",
        "hardware_protection": true,
        "note": super::snp::GUEST_NOT_READY,
        "measurement": launched.map(|m| hex(&m.digest)),
        "measurement_source": "expected: computed by covm over what it launched, as covm measure computes it; \
            the secure processor's own value is in the guest's attestation report",
        "host_data": hex(&config.policy.host_data()),
        "policy_version": config.policy.version(),
        "guest_policy": format!("{:#x}", config.guest_policy),
        "vcpu_type": config.vcpu_type,
        "vcpu_signature": config.vcpu_signature().ok().map(|s| format!("{s:#x}")),
        "id_block": config.id.as_ref().map(|id| json!({"author_key": id.author_key})),
        "evidence": format!("not available: needs the guest's own request to {SNP_EVIDENCE}"),
        "migration": format!("refused: {SNP_NOT_MIGRATABLE}"),
    })
}

impl HardwarePlatform for SevSnp {
    const KIND: &'static str = "sev_snp";
    const EVIDENCE: &'static str = SNP_EVIDENCE;

    fn expected_measurement(&self) -> [u8; 48] {
        self.measurement.digest
    }

    fn policy(&self) -> &MigrationPolicy {
        &self.config.policy
    }

    fn launched_info(&self) -> Value {
        snp_info(&self.config, Some(&self.measurement))
    }
}

/// `--platform tdx=on --migration-policy PATH` (measured by `covm
/// measure`, launched by `vm/tdx.rs` through [`super::tdx::construct`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxConfig {
    /// The guest owner's migration policy: its SHA-256 is MRCONFIGID's
    /// first 32 bytes.
    pub policy: MigrationPolicy,
}

/// A TD and its expected MRTD.
#[derive(Debug)]
pub struct Td {
    config: TdxConfig,
    measurement: TdMeasurement,
}

impl Td {
    /// The platform of a TD built under `config`, whose build measures
    /// `measurement` (covm's expectation).
    pub fn new(config: &TdxConfig, measurement: TdMeasurement) -> Self {
        Td {
            config: config.clone(),
            measurement,
        }
    }
}

/// `vm.info`'s block for a TD (`launched`: its MRTD).
pub(super) fn tdx_info(config: &TdxConfig, launched: Option<&TdMeasurement>) -> Value {
    json!({
        "kind": "tdx",
        "hardware_protection": true,
        "note": super::tdx::GUEST_NOT_READY,
        "devices": super::tdx::TD_DEVICES,
        "measurement": launched.map(|m| hex(&m.mrtd)),
        "measurement_source": "expected MRTD: computed by covm as covm measure computes it",
        "host_data": hex(&config.policy.host_data()),
        "policy_version": config.policy.version(),
        "td_hob": format!("{TD_HOB_GPA:#x}"),
        "evidence": format!("not available: needs the guest's own request to {TDX_EVIDENCE}"),
        "migration": format!("refused: {TDX_NOT_MIGRATABLE}"),
    })
}

impl HardwarePlatform for Td {
    const KIND: &'static str = "tdx";
    const EVIDENCE: &'static str = TDX_EVIDENCE;

    fn expected_measurement(&self) -> [u8; 48] {
        self.measurement.mrtd
    }

    fn policy(&self) -> &MigrationPolicy {
        &self.config.policy
    }

    fn launched_info(&self) -> Value {
        tdx_info(&self.config, Some(&self.measurement))
    }
}

/// `--platform` of the SEV-SNP VM the tests build: guest policy 0x70000,
/// vCPU type EPYC-Milan.
#[cfg(test)]
pub(crate) const SNP_TEST_PLATFORM: &str = "sev_snp=on,policy=0x70000,vcpu_type=EPYC-Milan";

/// The configuration `covm --platform PLATFORM --cpus boot=2 --memory
/// size=64M --cmdline workload=hello` would launch on a host that has the
/// hardware (the probe aside), with the empty migration policy: what
/// `covm measure` reads from the same options. The hardware platforms'
/// tests build their VMs from it.
#[cfg(test)]
pub(crate) fn test_config(platform: &str) -> crate::config::VmConfig {
    let args = crate::cli::VmArgs {
        cpus: Some("boot=2".into()),
        memory: Some("size=64M".into()),
        cmdline: Some("workload=hello".into()),
        platform: Some(platform.into()),
        ..Default::default()
    };
    crate::config::VmConfig::for_measure(&args, 1 << 40).unwrap().0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CpusConfig, MemoryConfig, Payload, SerialMode, VmConfig};
    use crate::platform::measure::{measure_sev_snp, measure_tdx};
    use crate::platform::PlatformConfig;
    use covm_measure::vmsa::rdx;
    use covm_measure::PageType;

    fn config(platform: PlatformConfig) -> VmConfig {
        VmConfig {
            cpus: CpusConfig::boot(2),
            memory: MemoryConfig { size: 64 << 20 },
            payload: Payload::BuiltinFirmware,
            cmdline: "workload=hello".into(),
            serial: SerialMode::Off,
            api_socket: None,
            dirty_tracking: Default::default(),
            devices: Default::default(),
            platform,
        }
    }

    #[test]
    fn guest_policies() {
        assert_eq!(parse_guest_policy("0x30000"), Ok(0x30000));
        assert_eq!(parse_guest_policy("196608"), Ok(0x30000));
        assert_eq!(parse_guest_policy("0X70000"), Ok(0x70000));
        assert_eq!(
            parse_guest_policy("0x10000").unwrap_err(),
            "guest policy 0x10000 has bit 17 clear, which the SNP firmware requires set"
        );
        assert_eq!(
            parse_guest_policy("0x4020000").unwrap_err(),
            "guest policy 0x4020000 sets reserved bits 0x4000000 (63:26)"
        );
        assert!(parse_guest_policy("0xzz").unwrap_err().contains("is not a number"));
        assert!(parse_guest_policy("").is_err());
    }

    /// A launched SEV-SNP VM's platform measures what `covm measure
    /// --platform sev_snp=on [--vcpu-type]` prints for the same options,
    /// binds the policy, and has no evidence to give.
    #[test]
    fn sev_snp_platform_measures_as_covm_measure() {
        let mut snp = SevSnpConfig::new(MigrationPolicy::empty());
        snp.vcpu_type = Some("EPYC-Milan".into());
        let vm = config(PlatformConfig::SevSnp(snp.clone()));
        let memory = crate::vm::memory::allocate(64 << 20).unwrap();
        let loaded = crate::platform::image::load(&memory, &vm).unwrap();
        let platform = vm.platform.launch(&memory, &loaded.image).unwrap();
        let measured = measure_sev_snp(&vm, &snp.snp_launch().unwrap()).unwrap();
        assert_eq!(platform.measurement(), Some(measured.digest));
        assert_eq!(platform.kind(), "sev_snp");
        assert!(platform.hardware_protection() && platform.confidential());
        assert_eq!(platform.host_data(), Some(MigrationPolicy::empty().host_data()));
        let expected = snp_expected(&memory, &loaded.image, &snp).unwrap();
        assert!(expected.image.vcpus.iter().all(|v| rdx(&v.to_vmsa()) == 0xa00f11));
        assert_eq!(expected.measurement.pages.len(), measured.pages.len());
        assert_eq!(
            expected
                .measurement
                .pages
                .iter()
                .filter(|p| p.page_type == PageType::Vmsa)
                .count(),
            3
        );
        let err = platform.evidence(&[0; 64]).unwrap_err().to_string();
        assert_eq!(
            err,
            "sev_snp attestation evidence is not available: it needs the guest's own request to the AMD secure \
             processor (an SNP_GUEST_REQUEST MSG_REPORT_REQ through the GHCB), which covm's built-in firmware \
             cannot make yet"
        );
        let info = platform.info();
        assert_eq!(info["kind"], "sev_snp");
        assert_eq!(info["hardware_protection"], true);
        assert_eq!(info["measurement"], hex(&measured.digest));
        assert_eq!(info["guest_policy"], "0x30000");
        assert_eq!(info["vcpu_signature"], "0xa00f11");
        assert!(info["migration"].as_str().unwrap().starts_with("refused: "));
        let before = vm.platform.info_before_launch();
        assert_eq!(before["measurement"], Value::Null);
        assert_eq!(before["kind"], "sev_snp");
    }

    #[test]
    fn td_platform_measures_mrtd_as_covm_measure() {
        let vm = config(PlatformConfig::Tdx(TdxConfig {
            policy: MigrationPolicy::empty(),
        }));
        let memory = crate::vm::memory::allocate(64 << 20).unwrap();
        let loaded = crate::platform::image::load(&memory, &vm).unwrap();
        let platform = vm.platform.launch(&memory, &loaded.image).unwrap();
        let measured = measure_tdx(&vm).unwrap();
        assert_eq!(platform.measurement(), Some(measured.mrtd));
        assert_eq!(platform.kind(), "tdx");
        assert!(platform.hardware_protection());
        assert!(platform
            .evidence(&[0; 64])
            .unwrap_err()
            .to_string()
            .contains("needs the guest's own request to the TDX module"));
        assert_eq!(platform.info()["td_hob"], "0x4000");
    }
}
