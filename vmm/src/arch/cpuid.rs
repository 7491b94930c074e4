//! CPUID for each vCPU: what KVM supports, with a coherent topology.
//!
//! One socket of N cores, one thread each; APIC ID = vCPU index. Leaf 1
//! carries the logical count (the built-in firmware reads it to know how
//! many vCPUs to start), the extended topology leaves and AMD's core count
//! agree with it, and the hypervisor leaves advertise the TSC frequency.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Leaf 1 ECX: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX: TSC-deadline timer mode of the LAPIC.
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 EDX: more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;
/// The timing-information hypervisor leaf (TSC and bus frequency in kHz).
pub const LEAF_TIMING: u32 = 0x4000_0010;

/// Per-VM inputs to the CPUID of each vCPU.
#[derive(Debug, Clone, Copy)]
pub struct Topology {
    /// vCPUs in the VM.
    pub vcpus: u8,
    /// TSC frequency in kHz, from KVM.
    pub tsc_khz: u32,
    /// Whether KVM emulates the TSC-deadline timer.
    pub tsc_deadline: bool,
}

/// Bits needed to number `n` items.
fn bits_for(n: u32) -> u32 {
    32 - n.saturating_sub(1).leading_zeros()
}

/// The CPUID of vCPU `index`, derived from KVM's supported CPUID.
pub fn for_vcpu(supported: &CpuId, topo: Topology, index: u8) -> CpuId {
    let mut entries: Vec<kvm_cpuid_entry2> = supported.as_slice().to_vec();
    let n = u32::from(topo.vcpus);
    let apic_id = u32::from(index);
    let core_bits = bits_for(n);
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (apic_id << 24) | (n << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= ECX_HYPERVISOR;
                if topo.tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if n > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            4 => {
                // Intel: cores per package minus one in EAX[31:26]; no sharing of caches across threads.
                e.eax = (e.eax & 0x03ff_c3ff) | ((n - 1) << 26);
            }
            0xb | 0x1f => {
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (1 << 8) | e.index;
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = n;
                        e.ecx = (2 << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
                e.edx = apic_id;
            }
            0x8000_0008 => {
                // AMD: NC = cores - 1, ApicIdCoreIdSize.
                e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | (n - 1);
            }
            0x8000_001e => {
                e.eax = apic_id;
                e.ebx = apic_id & 0xff;
                e.ecx = 0;
            }
            0x4000_0000 => {
                e.eax = e.eax.max(LEAF_TIMING);
            }
            _ => {}
        }
    }
    entries.retain(|e| e.function != LEAF_TIMING);
    entries.push(kvm_cpuid_entry2 {
        function: LEAF_TIMING,
        eax: topo.tsc_khz,
        // KVM's LAPIC timer runs at 1 GHz.
        ebx: 1_000_000,
        ..Default::default()
    });
    for e in entries.iter_mut().filter(|e| matches!(e.function, 0xb | 0x1f | 4)) {
        e.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
    }
    CpuId::from_entries(&entries).expect("CPUID entry count stays within KVM's limit")
}

/// A CPUID entry for tests: leaf `function`, subleaf `index`, outputs
/// `[eax, ebx, ecx, edx]`, no flags.
#[cfg(test)]
pub(crate) fn test_entry(function: u32, index: u32, [eax, ebx, ecx, edx]: [u32; 4]) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supported() -> CpuId {
        let entries = [
            test_entry(0, 0, [0x10, 0, 0, 0]),
            test_entry(1, 0, [0, 0xff00_0000, 0, EDX_HTT]),
            test_entry(0xb, 0, [0; 4]),
            test_entry(0xb, 1, [0; 4]),
            test_entry(0x4000_0000, 0, [0x4000_0001, 0, 0, 0]),
            test_entry(0x8000_0008, 0, [0, 0, 0xffff, 0]),
        ];
        CpuId::from_entries(&entries).unwrap()
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice().iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn topology_of_four_vcpus() {
        let topo = Topology {
            vcpus: 4,
            tsc_khz: 2_500_000,
            tsc_deadline: true,
        };
        let c = for_vcpu(&supported(), topo, 3);
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 3, "APIC ID");
        assert_eq!((l1.ebx >> 16) & 0xff, 4, "logical count");
        assert_ne!(l1.ecx & ECX_TSC_DEADLINE, 0);
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);
        let core = find(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.edx), (2, 4, 3));
        assert_eq!(find(&c, 0x8000_0008, 0).ecx & 0xf0ff, (2 << 12) | 3);
        assert_eq!(find(&c, 0x4000_0000, 0).eax, LEAF_TIMING);
        assert_eq!(find(&c, LEAF_TIMING, 0).eax, 2_500_000);
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let topo = Topology {
            vcpus: 1,
            tsc_khz: 1,
            tsc_deadline: false,
        };
        let l1 = find(&for_vcpu(&supported(), topo, 0), 1, 0);
        assert_eq!(l1.edx & EDX_HTT, 0);
        assert_eq!(l1.ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!((l1.ebx >> 16) & 0xff, 1);
    }

    #[test]
    fn bits() {
        assert_eq!(
            (bits_for(1), bits_for(2), bits_for(3), bits_for(4), bits_for(32)),
            (0, 1, 2, 2, 5)
        );
    }
}
