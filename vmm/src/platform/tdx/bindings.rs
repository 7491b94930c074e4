//! The KVM TDX uapi (`arch/x86/include/uapi/asm/kvm.h`, Linux 6.16+;
//! `Documentation/virt/kvm/x86/intel-tdx.rst`), which kvm-bindings 0.14
//! lacks: the `KVM_MEMORY_ENCRYPT_OP` sub-commands and their structures.
//! `struct kvm_tdx_capabilities` and `struct kvm_tdx_init_vm` end in a
//! `struct kvm_cpuid2` with its entries inline, so they are built and read
//! as bytes ([`TdxCapabilities`], [`TdxInitVm`]).

use kvm_bindings::{kvm_cpuid_entry2, KVM_X86_TDX_VM};

/// `KVM_CREATE_VM`'s type for a TD.
pub const TDX_VM_TYPE: u64 = KVM_X86_TDX_VM as u64;

/// `enum kvm_tdx_cmd_id`.
pub mod cmd {
    /// VM: what KVM and the TDX module let a TD configure.
    pub const CAPABILITIES: u32 = 0;
    /// VM: the TD's parameters, before any vCPU.
    pub const INIT_VM: u32 = 1;
    /// vCPU: `TDH.VP.INIT`, `data` the vCPU's initial RCX.
    pub const INIT_VCPU: u32 = 2;
    /// vCPU: add initial private memory (`TDH.MEM.PAGE.ADD`, and
    /// `TDH.MR.EXTEND` with [`super::MEASURE_MEMORY_REGION`]).
    pub const INIT_MEM_REGION: u32 = 3;
    /// VM: `TDH.MR.FINALIZE`; the TD may run.
    pub const FINALIZE_VM: u32 = 4;
}

/// `KVM_TDX_INIT_MEM_REGION`'s flag: extend MRTD with the pages' contents.
pub const MEASURE_MEMORY_REGION: u32 = 1;

/// TD attribute bit 28: no #VE on EPT violations of pending pages.
pub const ATTR_SEPT_VE_DISABLE: u64 = 1 << 28;
/// XFAM bits 1:0 (x87, SSE), which every TD has.
pub const XFAM_FIXED: u64 = 0x3;

/// `struct kvm_tdx_cmd`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TdxCmd {
    /// `enum kvm_tdx_cmd_id`.
    pub id: u32,
    /// The sub-command's flags.
    pub flags: u32,
    /// An immediate or a pointer to the sub-command's structure.
    pub data: u64,
    /// Out: the SEAMCALL status on failure.
    pub hw_error: u64,
}

/// `struct kvm_tdx_init_mem_region`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TdxInitMemRegion {
    /// covm's copy of the pages (page-aligned).
    pub source_addr: u64,
    /// The guest-physical address.
    pub gpa: u64,
    /// 4 KiB pages.
    pub nr_pages: u64,
}

const _: () = assert!(std::mem::size_of::<TdxCmd>() == 24);
const _: () = assert!(std::mem::size_of::<TdxInitMemRegion>() == 24);

/// `KVM_MEMORY_ENCRYPT_OP` (`_IOWR(KVMIO, 0xba, unsigned long)`), for the
/// vCPU fd (kvm-ioctls has it only on the VM fd).
pub mod ioctls {
    #![allow(missing_docs)]
    use kvm_bindings::KVMIO;
    use vmm_sys_util::ioctl_iowr_nr;
    ioctl_iowr_nr!(KVM_MEMORY_ENCRYPT_OP, KVMIO, 0xba, std::os::raw::c_ulong);
}

/// Bytes of a `struct kvm_cpuid_entry2`.
pub const CPUID_ENTRY_LEN: usize = 40;
/// Offset of `cpuid` in `struct kvm_tdx_capabilities`: six u64 and 250
/// reserved u64.
pub const CAPABILITIES_CPUID: usize = 8 * (6 + 250);
/// Offset of `cpuid` in `struct kvm_tdx_init_vm` (TD_PARAMS' 256 bytes).
pub const INIT_VM_CPUID: usize = 256;

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Appends a `struct kvm_cpuid2` (nent, padding, entries).
fn put_cpuid2(out: &mut Vec<u8>, entries: &[kvm_cpuid_entry2]) {
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    for e in entries {
        for v in [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx, 0, 0, 0] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// Reads `nent` entries of a `struct kvm_cpuid2` at `at` (its nent field).
fn get_cpuid2(b: &[u8], at: usize) -> Result<Vec<kvm_cpuid_entry2>, String> {
    let nent = u32_at(b, at) as usize;
    let start = at + 8;
    if b.len() < start + nent * CPUID_ENTRY_LEN {
        return Err(format!("{nent} CPUID entries do not fit in {} bytes", b.len()));
    }
    Ok((0..nent)
        .map(|i| {
            let e = start + i * CPUID_ENTRY_LEN;
            kvm_cpuid_entry2 {
                function: u32_at(b, e),
                index: u32_at(b, e + 4),
                flags: u32_at(b, e + 8),
                eax: u32_at(b, e + 12),
                ebx: u32_at(b, e + 16),
                ecx: u32_at(b, e + 20),
                edx: u32_at(b, e + 24),
                ..Default::default()
            }
        })
        .collect())
}

/// `struct kvm_tdx_capabilities`, read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TdxCapabilities {
    /// TD attributes a TD may set.
    pub supported_attrs: u64,
    /// XFAM bits a TD may set.
    pub supported_xfam: u64,
    /// TDG.VP.VMCALL leaves KVM handles (R11 = 1 `GetTdVmCallInfo`).
    pub kernel_tdvmcallinfo_1_r11: u64,
    /// ... and forwards to covm.
    pub user_tdvmcallinfo_1_r11: u64,
    /// Sub-functions KVM handles (R12).
    pub kernel_tdvmcallinfo_1_r12: u64,
    /// ... and forwards to covm.
    pub user_tdvmcallinfo_1_r12: u64,
    /// The configurable CPUID leaves, each register a mask of the bits a
    /// TD may configure.
    pub cpuid: Vec<kvm_cpuid_entry2>,
}

impl TdxCapabilities {
    /// A buffer for `KVM_TDX_CAPABILITIES` with room for `nent` CPUID entries.
    pub fn buffer(nent: u32) -> Vec<u8> {
        let mut b = vec![0u8; CAPABILITIES_CPUID + 8 + nent as usize * CPUID_ENTRY_LEN];
        b[CAPABILITIES_CPUID..CAPABILITIES_CPUID + 4].copy_from_slice(&nent.to_le_bytes());
        b
    }

    /// Reads a buffer KVM filled.
    pub fn parse(b: &[u8]) -> Result<Self, String> {
        if b.len() < CAPABILITIES_CPUID + 8 {
            return Err(format!("{} bytes are too few for kvm_tdx_capabilities", b.len()));
        }
        Ok(TdxCapabilities {
            supported_attrs: u64_at(b, 0),
            supported_xfam: u64_at(b, 8),
            kernel_tdvmcallinfo_1_r11: u64_at(b, 16),
            user_tdvmcallinfo_1_r11: u64_at(b, 24),
            kernel_tdvmcallinfo_1_r12: u64_at(b, 32),
            user_tdvmcallinfo_1_r12: u64_at(b, 40),
            cpuid: get_cpuid2(b, CAPABILITIES_CPUID)?,
        })
    }

    /// The buffer KVM would fill for these capabilities (for tests).
    #[cfg(test)]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(CAPABILITIES_CPUID + 8 + self.cpuid.len() * CPUID_ENTRY_LEN);
        for v in [
            self.supported_attrs,
            self.supported_xfam,
            self.kernel_tdvmcallinfo_1_r11,
            self.user_tdvmcallinfo_1_r11,
            self.kernel_tdvmcallinfo_1_r12,
            self.user_tdvmcallinfo_1_r12,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.resize(CAPABILITIES_CPUID, 0);
        put_cpuid2(&mut b, &self.cpuid);
        b
    }
}

/// `struct kvm_tdx_init_vm`.
#[derive(Debug, Clone, PartialEq)]
pub struct TdxInitVm {
    /// TD attributes.
    pub attributes: u64,
    /// Extended features the TD may use (XCR0 and IA32_XSS bits).
    pub xfam: u64,
    /// MRCONFIGID (SHA-384 size): covm puts HOST_DATA in its first 32 bytes.
    pub mrconfigid: [u8; 48],
    /// MROWNER.
    pub mrowner: [u8; 48],
    /// MROWNERCONFIG.
    pub mrownerconfig: [u8; 48],
    /// The TD's configurable CPUID values.
    pub cpuid: Vec<kvm_cpuid_entry2>,
}

impl TdxInitVm {
    /// The structure as KVM reads it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(INIT_VM_CPUID + 8 + self.cpuid.len() * CPUID_ENTRY_LEN);
        b.extend_from_slice(&self.attributes.to_le_bytes());
        b.extend_from_slice(&self.xfam.to_le_bytes());
        b.extend_from_slice(&self.mrconfigid);
        b.extend_from_slice(&self.mrowner);
        b.extend_from_slice(&self.mrownerconfig);
        b.resize(INIT_VM_CPUID, 0);
        put_cpuid2(&mut b, &self.cpuid);
        b
    }

    /// Reads the structure back (for tests).
    #[cfg(test)]
    pub fn parse(b: &[u8]) -> Result<Self, String> {
        if b.len() < INIT_VM_CPUID + 8 {
            return Err(format!("{} bytes are too few for kvm_tdx_init_vm", b.len()));
        }
        let digest = |at: usize| -> [u8; 48] { b[at..at + 48].try_into().expect("48 bytes") };
        Ok(TdxInitVm {
            attributes: u64_at(b, 0),
            xfam: u64_at(b, 8),
            mrconfigid: digest(16),
            mrowner: digest(64),
            mrownerconfig: digest(112),
            cpuid: get_cpuid2(b, INIT_VM_CPUID)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, eax: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn uapi_values() {
        assert_eq!(TDX_VM_TYPE, 5);
        assert_eq!(
            (
                cmd::CAPABILITIES,
                cmd::INIT_VM,
                cmd::INIT_VCPU,
                cmd::INIT_MEM_REGION,
                cmd::FINALIZE_VM
            ),
            (0, 1, 2, 3, 4)
        );
        assert_eq!(std::mem::size_of::<kvm_cpuid_entry2>(), CPUID_ENTRY_LEN);
        // _IOWR(0xAE, 0xba, unsigned long)
        assert_eq!(ioctls::KVM_MEMORY_ENCRYPT_OP(), 0xc008_aeba);
        assert_eq!(CAPABILITIES_CPUID, 2048);
    }

    #[test]
    fn capabilities_layout() {
        let caps = TdxCapabilities {
            supported_attrs: 0x1000_0000,
            supported_xfam: 0x6_02ff,
            user_tdvmcallinfo_1_r11: 0x10,
            cpuid: vec![entry(1, 0, 0x0fff_3fff, 0xbfff_ffff), entry(7, 0, 0, 0xffff)],
            ..Default::default()
        };
        let b = caps.to_bytes();
        assert_eq!(b.len(), 2048 + 8 + 2 * 40);
        assert_eq!(&b[0..8], &0x1000_0000u64.to_le_bytes());
        assert_eq!(&b[24..32], &0x10u64.to_le_bytes());
        assert_eq!(&b[2048..2052], &2u32.to_le_bytes(), "cpuid.nent");
        assert_eq!(&b[2056..2060], &1u32.to_le_bytes(), "entries[0].function");
        assert_eq!(
            &b[2056 + 24..2056 + 28],
            &0xbfff_ffffu32.to_le_bytes(),
            "entries[0].edx"
        );
        assert_eq!(TdxCapabilities::parse(&b).unwrap(), caps);
        let empty = TdxCapabilities::buffer(4);
        assert_eq!(empty.len(), 2048 + 8 + 160);
        assert_eq!(TdxCapabilities::parse(&empty).unwrap().cpuid.len(), 4);
        let mut short = caps.to_bytes();
        short.truncate(2100);
        assert!(TdxCapabilities::parse(&short).is_err());
    }

    #[test]
    fn init_vm_layout() {
        let init = TdxInitVm {
            attributes: ATTR_SEPT_VE_DISABLE,
            xfam: XFAM_FIXED,
            mrconfigid: [1; 48],
            mrowner: [2; 48],
            mrownerconfig: [3; 48],
            cpuid: vec![entry(0xd, 1, 0xf, 0)],
        };
        let b = init.to_bytes();
        assert_eq!(b.len(), 256 + 8 + 40);
        assert_eq!(&b[0..8], &(1u64 << 28).to_le_bytes());
        assert_eq!(&b[8..16], &3u64.to_le_bytes());
        assert_eq!(&b[16..64], &[1; 48], "mrconfigid");
        assert_eq!(&b[64..112], &[2; 48], "mrowner");
        assert_eq!(&b[112..160], &[3; 48], "mrownerconfig");
        assert_eq!(&b[160..256], &[0; 96], "reserved");
        assert_eq!(&b[256..260], &1u32.to_le_bytes());
        assert_eq!(&b[264..272], &[0xd, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(TdxInitVm::parse(&b).unwrap(), init);
    }
}
