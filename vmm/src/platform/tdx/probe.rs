//! Whether this host can launch a TD, checked before anything is created,
//! and if not, exactly what is missing.

use crate::platform::hardware::host::{
    cpu_offers, kvm_private_vm, module_param_on, verdict, CpuNeed, Host, Unavailable,
};
use kvm_bindings::KVM_X86_TDX_VM;

/// The platform's name in messages.
pub const WHAT: &str = "Intel TDX";

/// Probes this machine.
pub fn probe_tdx() -> Result<(), Unavailable> {
    probe_tdx_on(&Host::this_machine())
}

/// Probes `host`: an Intel CPU whose BIOS enabled TDX, kvm_intel with
/// `tdx` on, and KVM's `KVM_X86_TDX_VM` type with private memory. Every
/// missing piece is listed.
pub fn probe_tdx_on(host: &Host) -> Result<(), Unavailable> {
    let mut missing = Vec::new();
    let need = CpuNeed {
        vendor: "GenuineIntel",
        maker: "an Intel",
        feature: "TDX",
        flag: "tdx_host_platform",
        why: ": TDX is off in the BIOS, or the kernel has no TDX host support",
    };
    cpu_offers(host, need, &mut missing);
    module_param_on(host, "kvm_intel", "tdx", &mut missing);
    kvm_private_vm(host, KVM_X86_TDX_VM, "KVM_X86_TDX_VM", &mut missing);
    verdict(WHAT, missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::hardware::host::{KvmAnswers, ScratchHost};
    use kvm_bindings::{
        KVM_CAP_EXIT_HYPERCALL, KVM_CAP_GUEST_MEMFD, KVM_CAP_MEMORY_ATTRIBUTES, KVM_CAP_USER_MEMORY2, KVM_CAP_VM_TYPES,
    };

    fn tdx_kvm(types: i32) -> KvmAnswers {
        KvmAnswers::Fixed(vec![
            (KVM_CAP_VM_TYPES, types),
            (KVM_CAP_GUEST_MEMFD, 1),
            (KVM_CAP_USER_MEMORY2, 1),
            (KVM_CAP_MEMORY_ATTRIBUTES, 8),
            (KVM_CAP_EXIT_HYPERCALL, 0x1000),
        ])
    }

    #[test]
    fn a_tdx_host_passes_and_each_missing_piece_is_named() {
        let scratch = ScratchHost::new("tdx");
        scratch
            .file(
                "/proc/cpuinfo",
                "vendor_id\t: GenuineIntel\nflags\t\t: vmx tdx_host_platform\n",
            )
            .file("/sys/module/kvm_intel/parameters/tdx", "Y\n");
        assert_eq!(probe_tdx_on(&scratch.host(tdx_kvm(0b100011))), Ok(()));
        assert_eq!(
            probe_tdx_on(&scratch.host(tdx_kvm(0b11111))).unwrap_err().to_string(),
            "Intel TDX is not available on this machine: KVM does not offer the KVM_X86_TDX_VM VM type \
             (KVM_CHECK_EXTENSION(KVM_CAP_VM_TYPES) = 0x1f: bit 5 clear)"
        );
        scratch.file("/sys/module/kvm_intel/parameters/tdx", "N\n");
        scratch.file("/proc/cpuinfo", "vendor_id\t: GenuineIntel\nflags\t\t: vmx\n");
        assert_eq!(
            probe_tdx_on(&scratch.host(tdx_kvm(0b100011))).unwrap_err().missing,
            [
                "the CPU does not advertise TDX (no tdx_host_platform flag in /proc/cpuinfo: TDX is off in the BIOS, \
                 or the kernel has no TDX host support)",
                "kvm_intel's tdx parameter is off (/sys/module/kvm_intel/parameters/tdx = N)",
            ]
        );
    }

    /// This project's machine kind: an AMD CPU, KVM from another module.
    #[test]
    fn an_amd_host() {
        let scratch = ScratchHost::new("tdx-amd");
        scratch
            .file("/proc/cpuinfo", "vendor_id\t: AuthenticAMD\nflags\t\t: fpu\n")
            .file("/sys/module/kvm_pvm/parameters/x", "");
        let err = probe_tdx_on(&scratch.host(KvmAnswers::Fixed(vec![(KVM_CAP_VM_TYPES, 1)]))).unwrap_err();
        assert_eq!(err.missing[0], "the CPU is AuthenticAMD: TDX needs an Intel CPU");
        assert_eq!(
            err.missing[1],
            "kvm_intel is not loaded (no /sys/module/kvm_intel; this host's KVM comes from kvm_pvm)"
        );
        assert!(err.missing[2].starts_with("KVM does not offer the KVM_X86_TDX_VM VM type"));
        assert_eq!(err.missing.len(), 7, "{:?}", err.missing);
    }

    #[test]
    fn this_machine() {
        if let Err(e) = probe_tdx() {
            assert!(e
                .to_string()
                .starts_with("Intel TDX is not available on this machine: "));
        }
    }
}
