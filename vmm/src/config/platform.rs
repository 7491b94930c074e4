//! The one rule that turns what was asked for, by the command line
//! (`--platform`, `--migration-policy`) or by `vm.create`'s `platform`
//! object, into a [`PlatformConfig`]. Each front end reads its own syntax
//! and words the refusals its own way; the rule, and so the VM it gives,
//! is the same.

use crate::platform::hardware::DEFAULT_GUEST_POLICY;
use crate::platform::root_key::{self, RootKeyError};
use crate::platform::snp::plan::IdBlock;
use crate::platform::{EmulatedCvmConfig, MigrationPolicy, PlatformConfig, SevSnpConfig, TdxConfig};
use std::path::PathBuf;

/// SEV-SNP's own settings (covm's extension: Cloud Hypervisor's platform
/// has only `sev_snp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpOption {
    /// The guest policy (QEMU's `sev-snp-guest` name for it), default
    /// 0x30000.
    pub guest_policy: u64,
    /// The vCPU model whose signature is in every vCPU's RDX (as `covm
    /// measure --vcpu-type`).
    pub vcpu_type: Option<String>,
    /// The guest owner's signed ID block for `SNP_LAUNCH_FINISH` (QEMU's
    /// `id-block`, `id-auth`, `author-key-enabled`).
    pub id: Option<IdBlock>,
}

impl Default for SnpOption {
    fn default() -> Self {
        SnpOption {
            guest_policy: DEFAULT_GUEST_POLICY,
            vcpu_type: None,
            id: None,
        }
    }
}

/// What was asked for.
#[derive(Debug, Clone, Default)]
pub struct PlatformChoice {
    /// covm's emulated confidential platform.
    pub emulated_cvm: bool,
    /// The emulated platform's root key file.
    pub root_key: Option<PathBuf>,
    /// SEV-SNP, with its settings (the host already probed).
    pub sev_snp: Option<SnpOption>,
    /// TDX (the host already probed).
    pub tdx: bool,
    /// The guest owner's migration policy.
    pub policy: Option<MigrationPolicy>,
    /// The payload is a kernel, not firmware.
    pub boots_kernel: bool,
}

/// Why the rule refuses; each front end says it in its own words.
#[derive(Debug)]
pub enum PlatformRefusal {
    /// Two platforms switched on (the first two of those on).
    TwoPlatforms {
        /// The first.
        first: &'static str,
        /// The second.
        second: &'static str,
    },
    /// A migration policy for a plain VM.
    PolicyWithoutPlatform,
    /// A confidential platform without the guest owner's policy.
    PlatformWithoutPolicy(&'static str),
    /// A confidential platform booting a kernel: the migration agent lives
    /// in the firmware.
    KernelPayload(&'static str),
    /// A root key for another platform than emulated_cvm.
    RootKeyWithoutEmulatedCvm,
    /// An existing root key file covm would refuse at launch.
    RootKey(RootKeyError),
}

/// The one confidential platform switched on, by its key (`emulated_cvm`,
/// `sev_snp`, `tdx`), or None for a plain VM.
fn chosen(choice: &PlatformChoice) -> Result<Option<&'static str>, PlatformRefusal> {
    let mut on = [
        (choice.emulated_cvm, "emulated_cvm"),
        (choice.sev_snp.is_some(), "sev_snp"),
        (choice.tdx, "tdx"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name));
    match (on.next(), on.next()) {
        (Some(first), Some(second)) => Err(PlatformRefusal::TwoPlatforms { first, second }),
        (first, _) => Ok(first),
    }
}

/// The platform `choice` asks for, checked: at most one confidential
/// platform; a confidential platform with a policy and firmware, a policy
/// only with one; a root key only on emulated_cvm, usable if it exists
/// (refused now, before anything is created), and absolute (the path
/// travels in the VM's configuration, to a destination whose directory
/// differs).
pub fn select(choice: PlatformChoice) -> Result<PlatformConfig, PlatformRefusal> {
    let name = chosen(&choice)?;
    if choice.root_key.is_some() && !choice.emulated_cvm {
        return Err(PlatformRefusal::RootKeyWithoutEmulatedCvm);
    }
    let PlatformChoice {
        root_key,
        sev_snp,
        policy,
        boots_kernel,
        ..
    } = choice;
    match (name, policy) {
        (None, None) => Ok(PlatformConfig::Plain),
        (None, Some(_)) => Err(PlatformRefusal::PolicyWithoutPlatform),
        (Some(name), None) => Err(PlatformRefusal::PlatformWithoutPolicy(name)),
        (Some(name), Some(_)) if boots_kernel => Err(PlatformRefusal::KernelPayload(name)),
        (Some("tdx"), Some(policy)) => Ok(PlatformConfig::Tdx(TdxConfig { policy })),
        (Some("sev_snp"), Some(policy)) => {
            let snp = sev_snp.expect("sev_snp is on");
            Ok(PlatformConfig::SevSnp(SevSnpConfig {
                guest_policy: snp.guest_policy,
                vcpu_type: snp.vcpu_type,
                id: snp.id,
                policy,
            }))
        }
        (Some(_), Some(policy)) => {
            if let Some(path) = &root_key {
                root_key::check_existing(path).map_err(PlatformRefusal::RootKey)?;
            }
            Ok(PlatformConfig::EmulatedCvm(EmulatedCvmConfig {
                root_key: root_key.map(|p| std::path::absolute(&p).unwrap_or(p)),
                policy,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice() -> PlatformChoice {
        PlatformChoice {
            policy: Some(MigrationPolicy::empty()),
            ..Default::default()
        }
    }

    #[test]
    fn one_platform_its_policy_and_firmware() {
        assert_eq!(select(PlatformChoice::default()).unwrap(), PlatformConfig::Plain);
        assert!(matches!(select(choice()), Err(PlatformRefusal::PolicyWithoutPlatform)));
        let emulated = PlatformChoice {
            emulated_cvm: true,
            ..choice()
        };
        assert!(matches!(select(emulated.clone()), Ok(PlatformConfig::EmulatedCvm(_))));
        let both = PlatformChoice {
            tdx: true,
            ..emulated.clone()
        };
        assert!(matches!(
            select(both),
            Err(PlatformRefusal::TwoPlatforms {
                first: "emulated_cvm",
                second: "tdx"
            })
        ));
        let no_policy = PlatformChoice {
            policy: None,
            ..emulated.clone()
        };
        assert!(matches!(
            select(no_policy),
            Err(PlatformRefusal::PlatformWithoutPolicy("emulated_cvm"))
        ));
        let kernel = PlatformChoice {
            boots_kernel: true,
            ..emulated
        };
        assert!(matches!(
            select(kernel),
            Err(PlatformRefusal::KernelPayload("emulated_cvm"))
        ));
        let snp = PlatformChoice {
            sev_snp: Some(SnpOption::default()),
            ..choice()
        };
        assert!(matches!(select(snp), Ok(PlatformConfig::SevSnp(_))));
    }

    #[test]
    fn a_root_key_is_emulated_cvms_and_absolute() {
        let relative = PlatformChoice {
            emulated_cvm: true,
            root_key: Some("no-such-dir/root.key".into()),
            ..choice()
        };
        let Ok(PlatformConfig::EmulatedCvm(config)) = select(relative) else {
            panic!()
        };
        assert!(config.root_key.unwrap().is_absolute());
        let on_tdx = PlatformChoice {
            tdx: true,
            root_key: Some("/tmp/k".into()),
            ..choice()
        };
        assert!(matches!(
            select(on_tdx),
            Err(PlatformRefusal::RootKeyWithoutEmulatedCvm)
        ));
    }
}
