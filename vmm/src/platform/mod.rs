//! Platforms: how a VM is launched and measured, whether its memory is
//! protected from the host, and where its attestation evidence comes from.
//!
//! The platform is chosen once, from the configuration ([`PlatformConfig`],
//! `--platform`), when a VM is launched: [`PlatformConfig::launch`] is the
//! one place that turns the choice into a [`Platform`] object, and the rest
//! of covm asks that object rather than matching on the kind. Today:
//!
//! - [`Plain`]: a normal KVM VM; nothing measured, nothing attested.
//! - [`EmulatedCvm`] (`emulated_cvm=on`): measured as SEV-SNP measures,
//!   policy bound by HOST_DATA, SNP-layout evidence signed by an emulated
//!   root key. No hardware protection (see its module).
//! - [`SevSnp`] (`sev_snp=on`, on a host that passes [`snp::probe_snp`]):
//!   `vm/snp.rs` builds the VM through the SEV-SNP launch ([`snp::construct`]): the
//!   pages and VMSAs of the launch image as [`measure::snp_launch`]
//!   hands them over, `SNP_LAUNCH_FINISH` with [`PlatformConfig::host_data`];
//!   its [`Platform::measurement`] is the digest covm expects (what `covm
//!   measure` prints). Its evidence needs the guest's own request to the
//!   secure processor, which the built-in firmware cannot make yet.
//! - [`Td`] (`tdx=on`, on a host that passes [`tdx::probe_tdx`]): `vm.rs`
//!   builds the VM through the TDX launch ([`tdx::construct`]); its
//!   [`Platform::measurement`] is the MRTD covm expects
//!   ([`measure::image_mrtd`], what `covm measure` prints). Its evidence (a quote) needs the guest's own
//!   request, which the built-in firmware cannot make yet.
//!
//! The measurements themselves are covm-measure's (`measure/`): pure
//! functions over a launch description, which [`image`] records as covm
//! loads a VM and [`mod@measure`] hands over.

pub(crate) mod emulated;
pub(crate) mod hardware;
pub(crate) mod image;
pub(crate) mod measure;
pub(crate) mod policy;
pub(crate) mod root_key;
pub(crate) mod snp;
pub(crate) mod tdx;

pub use covm_measure::hex;
pub use emulated::EmulatedCvm;
pub use hardware::{SevSnp, SevSnpConfig, Td, TdxConfig};
pub use policy::MigrationPolicy;

use crate::config::VmConfig;
use crate::vm::memory::{self, GuestMemory, MemoryError};
use covm_agent_protocol::Evidence;
use covm_guest_abi::layout::MIGRATION_POLICY;
use covm_measure::mrtd::MrtdError;
use covm_measure::snp::{MeasureError, Measurement};
use covm_measure::{Launch, PageType};
use image::{LoadError, PlacedPage};
use root_key::RootKeyError;
use serde_json::{json, Value};
use std::path::PathBuf;

/// What a launched VM's platform answers.
pub trait Platform: Send + Sync + std::fmt::Debug {
    /// The platform's name as `--platform` spells it (`plain` for none).
    fn kind(&self) -> &'static str;

    /// Whether hardware keeps the guest's memory and registers from the
    /// host. False for the emulated platform.
    fn hardware_protection(&self) -> bool;

    /// Whether the guest is confidential: its memory and vCPU state must
    /// never leave covm in the clear (migration needs the agent).
    fn confidential(&self) -> bool;

    /// The launch measurement (SNP's 48-byte MEASUREMENT), if measured.
    fn measurement(&self) -> Option<[u8; 48]>;

    /// The 32 bytes bound at launch (SNP's HOST_DATA): the SHA-256 of the
    /// migration policy.
    fn host_data(&self) -> Option<[u8; 32]>;

    /// The migration policy fixed at launch.
    fn migration_policy(&self) -> Option<&MigrationPolicy>;

    /// Attestation evidence binding `report_data`.
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, PlatformError>;

    /// The `platform` block of `vm.info`.
    fn info(&self) -> Value;
}

/// Errors choosing, launching or asking a platform.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The emulated root key.
    #[error(transparent)]
    RootKey(#[from] RootKeyError),
    /// Loading the image to measure.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Measuring.
    #[error(transparent)]
    Measure(#[from] MeasureError),
    /// Scratch memory to measure an incoming VM in.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Evidence asked of a platform that has none.
    #[error("a {0} VM has no attestation evidence")]
    NoEvidence(&'static str),
    /// Evidence only the guest itself can obtain, and covm's firmware does not yet.
    #[error(
        "{platform} attestation evidence is not available: it needs the guest's own request to {needs}, which \
         covm's built-in firmware cannot make yet"
    )]
    EvidenceUnavailable {
        /// The platform.
        platform: &'static str,
        /// Whom the guest must ask.
        needs: &'static str,
    },
    /// Something this platform cannot do (yet), said precisely.
    #[error("{0}")]
    Unsupported(String),
    /// A TD's measurement.
    #[error(transparent)]
    Mrtd(Box<MrtdError>),
}

/// The choice of platform, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PlatformConfig {
    /// A normal VM.
    #[default]
    Plain,
    /// The emulated confidential platform.
    EmulatedCvm(EmulatedCvmConfig),
    /// AMD SEV-SNP.
    SevSnp(SevSnpConfig),
    /// Intel TDX.
    Tdx(TdxConfig),
}

/// `--platform emulated_cvm=on[,root_key=PATH] --migration-policy PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatedCvmConfig {
    /// The root key file (loaded, or created if missing); None: a fresh
    /// key for this VM only.
    pub root_key: Option<PathBuf>,
    /// The guest owner's migration policy.
    pub policy: MigrationPolicy,
}

impl PlatformConfig {
    /// The platform's name (`plain`, `emulated_cvm`, `sev_snp`, `tdx`).
    pub fn name(&self) -> &'static str {
        match self {
            PlatformConfig::Plain => "plain",
            PlatformConfig::EmulatedCvm(_) => "emulated_cvm",
            PlatformConfig::SevSnp(_) => "sev_snp",
            PlatformConfig::Tdx(_) => "tdx",
        }
    }

    /// Whether the VM will be confidential.
    pub fn is_confidential(&self) -> bool {
        !matches!(self, PlatformConfig::Plain)
    }

    /// The migration policy, on a confidential platform.
    pub fn migration_policy(&self) -> Option<&MigrationPolicy> {
        match self {
            PlatformConfig::Plain => None,
            PlatformConfig::EmulatedCvm(c) => Some(&c.policy),
            PlatformConfig::SevSnp(c) => Some(&c.policy),
            PlatformConfig::Tdx(c) => Some(&c.policy),
        }
    }

    /// HOST_DATA: the SHA-256 of the migration policy's encoding.
    pub fn host_data(&self) -> Option<[u8; 32]> {
        self.migration_policy().map(MigrationPolicy::host_data)
    }

    /// The pages the platform places in guest memory itself, after the
    /// payload's: the migration policy at `layout::MIGRATION_POLICY`, as an
    /// UNMEASURED page (its contents are bound by HOST_DATA instead).
    pub fn placed_pages(&self) -> Vec<PlacedPage> {
        match self.migration_policy() {
            None => vec![],
            Some(policy) => vec![PlacedPage {
                gpa: MIGRATION_POLICY,
                page_type: PageType::Unmeasured,
                bytes: policy.encoded(),
                what: "migration policy",
            }],
        }
    }

    /// The platform of a VM whose image was just loaded into `memory`.
    ///
    /// For SEV-SNP and TDX this is covm's side only (the expected
    /// measurement, as `covm measure` computes it): the hardware launch is
    /// `vm/snp.rs`'s and `vm/tdx.rs`'s ([`snp::construct`], [`tdx::construct`]).
    pub fn launch(&self, memory: &GuestMemory, image: &Launch) -> Result<Box<dyn Platform>, PlatformError> {
        match self {
            PlatformConfig::Plain => Ok(Box::new(Plain)),
            PlatformConfig::EmulatedCvm(config) => {
                let key = root_key::load_or_create(config.root_key.as_deref())?;
                if let Some(line) = key.announcement() {
                    tracing::info!("{line}");
                    eprintln!("covm: {line}");
                }
                let measurement = measure::image_digest(memory, image)?;
                tracing::info!(
                    "emulated_cvm launch measurement {} over {} entries",
                    hex(&measurement.digest),
                    measurement.pages.len()
                );
                Ok(Box::new(EmulatedCvm::new(config, key, measurement)))
            }
            PlatformConfig::SevSnp(config) => {
                let expected = hardware::snp_expected(memory, image, config)?;
                Ok(Box::new(SevSnp::new(config, expected.measurement)))
            }
            PlatformConfig::Tdx(config) => {
                let td = measure::image_mrtd(memory, image)?;
                Ok(Box::new(Td::new(config, td)))
            }
        }
    }

    /// The `platform` block of `vm.info` before a launch (no measurement yet).
    pub fn info_before_launch(&self) -> Value {
        match self {
            PlatformConfig::Plain => Plain.info(),
            PlatformConfig::EmulatedCvm(config) => emulated::info(config, None),
            PlatformConfig::SevSnp(config) => hardware::snp_info(config, None),
            PlatformConfig::Tdx(config) => hardware::tdx_info(config, None),
        }
    }
}

/// A normal KVM VM.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl Platform for Plain {
    fn kind(&self) -> &'static str {
        "plain"
    }

    fn hardware_protection(&self) -> bool {
        false
    }

    fn confidential(&self) -> bool {
        false
    }

    fn measurement(&self) -> Option<[u8; 48]> {
        None
    }

    fn host_data(&self) -> Option<[u8; 32]> {
        None
    }

    fn migration_policy(&self) -> Option<&MigrationPolicy> {
        None
    }

    fn evidence(&self, _: &[u8; 64]) -> Result<Evidence, PlatformError> {
        Err(PlatformError::NoEvidence("plain"))
    }

    fn info(&self) -> Value {
        json!({"kind": "plain", "hardware_protection": false})
    }
}

/// The launch measurement `config` gives, computed in scratch memory
/// exactly as a launch loads it (`covm measure`, incoming VMs).
pub fn measure(config: &VmConfig) -> Result<Measurement, PlatformError> {
    let scratch = memory::allocate(config.memory.size)?;
    let loaded = image::load(&scratch, config)?;
    measure::image_digest(&scratch, &loaded.image)
}

/// The platform of an incoming VM, whose memory and state arrive by
/// migration: the same as if `config` were launched here, measured over
/// the image this covm would load (in scratch memory; the VM's own memory
/// stays untouched for the migration to fill).
pub fn launch_incoming(config: &VmConfig) -> Result<Box<dyn Platform>, PlatformError> {
    if !config.platform.is_confidential() {
        return Ok(Box::new(Plain));
    }
    let refused = match &config.platform {
        PlatformConfig::SevSnp(_) => Some(hardware::SNP_NOT_MIGRATABLE),
        PlatformConfig::Tdx(_) => Some(hardware::TDX_NOT_MIGRATABLE),
        _ => None,
    };
    if let Some(why) = refused {
        return Err(PlatformError::Unsupported(format!(
            "a {} VM cannot be received: {why}",
            config.platform.name()
        )));
    }
    let scratch = memory::allocate(config.memory.size)?;
    let loaded = image::load(&scratch, config)?;
    config.platform.launch(&scratch, &loaded.image)
}

/// Exactly `N` bytes from hex (either case).
pub fn parse_hex<const N: usize>(text: &str) -> Result<[u8; N], String> {
    if text.len() != 2 * N {
        return Err(format!("{} hex digits, expected {} ({N} bytes)", text.len(), 2 * N));
    }
    if let Some(at) = text.bytes().position(|b| !b.is_ascii_hexdigit()) {
        return Err(format!("not hex (at digit {at})"));
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("checked hex digits");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex(&[0x00, 0xab, 0x10]), "00ab10");
        assert_eq!(parse_hex::<3>("00AB10"), Ok([0x00, 0xab, 0x10]));
        assert_eq!(parse_hex::<2>("abc").unwrap_err(), "3 hex digits, expected 4 (2 bytes)");
        assert!(parse_hex::<2>("ab+1").unwrap_err().starts_with("not hex"));
        assert!(parse_hex::<1>("é").is_err());
    }

    #[test]
    fn plain_has_no_measurement_or_evidence() {
        assert_eq!(Plain.kind(), "plain");
        assert!(!Plain.confidential());
        assert!(Plain.evidence(&[0; 64]).is_err());
        assert_eq!(Plain.info()["hardware_protection"], false);
        assert!(PlatformConfig::Plain.placed_pages().is_empty());
    }
}
