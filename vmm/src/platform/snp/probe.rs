//! Whether this host can launch an SEV-SNP VM, checked before anything is
//! created, and if not, exactly what is missing.

use super::bindings::SEV_DEVICE;
use crate::platform::hardware::host::{
    cpu_offers, kvm_private_vm, module_param_on, verdict, CpuNeed, Host, Unavailable,
};

/// The oldest SNP API the kernel accepts (Linux's `SNP_MIN_API_MAJOR` and
/// `SNP_MIN_API_MINOR` in drivers/crypto/ccp/sev-dev.c): an older firmware
/// leaves SEV-SNP off.
pub const MIN_SNP_API: (u8, u8) = (1, 51);
use kvm_bindings::KVM_X86_SNP_VM;

/// The platform's name in messages.
pub const WHAT: &str = "AMD SEV-SNP";

/// Probes this machine.
pub fn probe_snp() -> Result<(), Unavailable> {
    probe_snp_on(&Host::this_machine())
}

/// Probes `host`: an AMD CPU with SEV-SNP, kvm_amd with `sev_snp` on, the
/// secure processor's `/dev/sev`, and KVM's `KVM_X86_SNP_VM` type with
/// private memory. Every missing piece is listed.
pub fn probe_snp_on(host: &Host) -> Result<(), Unavailable> {
    let mut missing = Vec::new();
    let need = CpuNeed {
        vendor: "AuthenticAMD",
        maker: "an AMD",
        feature: "SEV-SNP",
        flag: "sev_snp",
        why: "",
    };
    cpu_offers(host, need, &mut missing);
    module_param_on(host, "kvm_amd", "sev_snp", &mut missing);
    if !host.exists(SEV_DEVICE) {
        missing.push(format!(
            "{SEV_DEVICE} does not exist (the ccp driver is not loaded, or the AMD secure processor offers no SEV \
             firmware)"
        ));
    } else {
        match host.snp_firmware() {
            Ok(fw) if fw.api < MIN_SNP_API => missing.push(format!(
                "the SEV firmware is too old: SNP API {}.{} (build {}), SEV-SNP needs {}.{} or later (update the \
                 platform's SEV firmware)",
                fw.api.0, fw.api.1, fw.build, MIN_SNP_API.0, MIN_SNP_API.1
            )),
            Ok(_) => {}
            Err(why) => missing.push(format!(
                "the SEV firmware does not answer SNP_PLATFORM_STATUS on {SEV_DEVICE}: {why}"
            )),
        }
    }
    kvm_private_vm(host, KVM_X86_SNP_VM, "KVM_X86_SNP_VM", &mut missing);
    verdict(WHAT, missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::hardware::host::{KvmAnswers, ScratchHost, SevAnswers, SnpFirmware};
    use kvm_bindings::{
        KVM_CAP_EXIT_HYPERCALL, KVM_CAP_GUEST_MEMFD, KVM_CAP_MEMORY_ATTRIBUTES, KVM_CAP_USER_MEMORY2, KVM_CAP_VM_TYPES,
    };

    fn snp_kvm() -> Vec<(u32, i32)> {
        vec![
            (KVM_CAP_VM_TYPES, 0b11101),
            (KVM_CAP_GUEST_MEMFD, 1),
            (KVM_CAP_USER_MEMORY2, 1),
            (KVM_CAP_MEMORY_ATTRIBUTES, 8),
            (KVM_CAP_EXIT_HYPERCALL, 0x1000),
        ]
    }

    fn snp_host(name: &str) -> ScratchHost {
        let scratch = ScratchHost::new(name);
        scratch
            .file(
                "/proc/cpuinfo",
                "vendor_id\t: AuthenticAMD\nflags\t\t: fpu svm sev sev_es sev_snp\n",
            )
            .file("/sys/module/kvm_amd/parameters/sev_snp", "Y\n")
            .file("/dev/sev", "");
        scratch
    }

    #[test]
    fn an_snp_host_passes() {
        let scratch = snp_host("snp-ok");
        assert_eq!(probe_snp_on(&scratch.host(KvmAnswers::Fixed(snp_kvm()))), Ok(()));
    }

    #[test]
    fn each_missing_piece_is_named() {
        let scratch = snp_host("snp-each");
        let probe = |kvm: Vec<(u32, i32)>| probe_snp_on(&scratch.host(KvmAnswers::Fixed(kvm))).unwrap_err();
        let without = |cap: u32, value: i32| {
            let mut kvm = snp_kvm();
            kvm.iter_mut().find(|(c, _)| *c == cap).unwrap().1 = value;
            probe(kvm).missing
        };
        assert_eq!(
            without(KVM_CAP_VM_TYPES, 0b101111),
            ["KVM does not offer the KVM_X86_SNP_VM VM type (KVM_CHECK_EXTENSION(KVM_CAP_VM_TYPES) = 0x2f: bit 4 clear)"]
        );
        assert_eq!(
            without(KVM_CAP_GUEST_MEMFD, 0),
            ["KVM has no guest_memfd for private memory (KVM_CAP_GUEST_MEMFD = 0)"]
        );
        assert_eq!(
            without(KVM_CAP_USER_MEMORY2, 0),
            ["KVM has no KVM_SET_USER_MEMORY_REGION2 (KVM_CAP_USER_MEMORY2 = 0)"]
        );
        assert_eq!(
            without(KVM_CAP_MEMORY_ATTRIBUTES, 0),
            [
                "KVM cannot mark guest memory private (KVM_CAP_MEMORY_ATTRIBUTES = 0x0: KVM_MEMORY_ATTRIBUTE_PRIVATE, \
              bit 3, clear)"
            ]
        );
        assert_eq!(
            without(KVM_CAP_EXIT_HYPERCALL, 0),
            [
                "KVM cannot hand the guest's KVM_HC_MAP_GPA_RANGE conversions to covm (KVM_CAP_EXIT_HYPERCALL = 0x0: \
              bit 12 clear)"
            ]
        );
        scratch.file("/sys/module/kvm_amd/parameters/sev_snp", "N\n");
        assert_eq!(
            probe(snp_kvm()).missing,
            ["kvm_amd's sev_snp parameter is off (/sys/module/kvm_amd/parameters/sev_snp = N)"]
        );
        std::fs::remove_file(scratch.root.join("sys/module/kvm_amd/parameters/sev_snp")).unwrap();
        assert_eq!(
            probe(snp_kvm()).missing,
            [
                "kvm_amd has no sev_snp parameter (/sys/module/kvm_amd/parameters/sev_snp is absent: this kernel's \
              kvm_amd predates it)"
            ]
        );
        scratch.file("/sys/module/kvm_amd/parameters/sev_snp", "Y\n");
        std::fs::remove_file(scratch.root.join("dev/sev")).unwrap();
        assert_eq!(
            probe(snp_kvm()).to_string(),
            "AMD SEV-SNP is not available on this machine: /dev/sev does not exist (the ccp driver is not loaded, \
             or the AMD secure processor offers no SEV firmware)"
        );
    }

    #[test]
    fn a_firmware_too_old_or_silent_is_named() {
        let scratch = snp_host("snp-firmware");
        let probe = |sev| probe_snp_on(&scratch.host_with_sev(KvmAnswers::Fixed(snp_kvm()), sev));
        let old = SevAnswers::Fixed(Ok(SnpFirmware { api: (1, 49), build: 3 }));
        assert_eq!(
            probe(old).unwrap_err().missing,
            [
                "the SEV firmware is too old: SNP API 1.49 (build 3), SEV-SNP needs 1.51 or later (update the \
              platform's SEV firmware)"
            ]
        );
        let oldest = SevAnswers::Fixed(Ok(SnpFirmware { api: (1, 51), build: 0 }));
        assert_eq!(probe(oldest), Ok(()));
        let major = SevAnswers::Fixed(Ok(SnpFirmware { api: (2, 0), build: 0 }));
        assert_eq!(probe(major), Ok(()));
        let silent = SevAnswers::Fixed(Err("Permission denied (os error 13)".into()));
        assert_eq!(
            probe(silent).unwrap_err().missing,
            ["the SEV firmware does not answer SNP_PLATFORM_STATUS on /dev/sev: Permission denied (os error 13)"]
        );
    }

    /// This project's machine kind: an AMD CPU without SEV, KVM from
    /// another module, default VMs only, no private memory attributes.
    #[test]
    fn a_host_like_this_projects_machine() {
        let scratch = ScratchHost::new("snp-none");
        scratch
            .file("/proc/cpuinfo", "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2\n")
            .file("/sys/module/kvm/parameters/tdp_mmu", "Y\n")
            .file("/sys/module/kvm_pvm/parameters/x", "");
        let kvm = vec![
            (KVM_CAP_VM_TYPES, 1),
            (KVM_CAP_GUEST_MEMFD, 1),
            (KVM_CAP_USER_MEMORY2, 1),
            (KVM_CAP_EXIT_HYPERCALL, 0x1000),
        ];
        let err = probe_snp_on(&scratch.host(KvmAnswers::Fixed(kvm))).unwrap_err();
        assert_eq!(
            err.missing,
            [
                "the CPU does not advertise SEV-SNP (no sev_snp flag in /proc/cpuinfo)",
                "kvm_amd is not loaded (no /sys/module/kvm_amd; this host's KVM comes from kvm_pvm)",
                "/dev/sev does not exist (the ccp driver is not loaded, or the AMD secure processor offers no SEV \
                 firmware)",
                "KVM does not offer the KVM_X86_SNP_VM VM type (KVM_CHECK_EXTENSION(KVM_CAP_VM_TYPES) = 0x1: bit 4 \
                 clear)",
                "KVM cannot mark guest memory private (KVM_CAP_MEMORY_ATTRIBUTES = 0x0: KVM_MEMORY_ATTRIBUTE_PRIVATE, \
                 bit 3, clear)",
            ]
        );
        assert!(err
            .to_string()
            .starts_with("AMD SEV-SNP is not available on this machine: the CPU does not"));
        let intel = ScratchHost::new("snp-intel");
        intel.file("/proc/cpuinfo", "vendor_id\t: GenuineIntel\nflags\t\t: vmx\n");
        let err = probe_snp_on(&intel.host(KvmAnswers::Unusable("/dev/kvm does not exist".into()))).unwrap_err();
        assert_eq!(err.missing[0], "the CPU is GenuineIntel: SEV-SNP needs an AMD CPU");
        assert_eq!(
            err.missing.last().unwrap(),
            "KVM cannot be asked: /dev/kvm does not exist"
        );
    }

    /// The real probe on this machine: it never creates anything, and on
    /// a host without SEV-SNP it says what is missing.
    #[test]
    fn this_machine() {
        match probe_snp() {
            Ok(()) => eprintln!("this host offers SEV-SNP"),
            Err(e) => {
                assert!(!e.missing.is_empty());
                assert!(e
                    .to_string()
                    .starts_with("AMD SEV-SNP is not available on this machine: "));
            }
        }
    }
}
