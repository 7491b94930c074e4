//! A vCPU's initial state, encoded canonically for the launch measurement.
//!
//! The encoding is AMD's own: the SEV-ES/SEV-SNP **VMSA** (VM save area,
//! AMD64 APM volume 2, Table B-4 "VMSA Layout, State Save Area for SEV-ES"),
//! one 4096-byte page per vCPU, little-endian. covm fills the fields its
//! initial state defines ([`VcpuState`]) and leaves every other byte zero.
//! On SEV-SNP the same page is what the hardware measures as the vCPU's
//! VMSA entry, so the emulated platform measures vCPUs the way SNP does.
//!
//! Segments are VMCB segments (16 bytes: selector u16, attributes u16,
//! limit u32, base u64); the attributes pack the descriptor's type (bits
//! 3:0), S (4), DPL (6:5), P (7), AVL (8), L (9), D/B (10), G (11).
//! GDTR and IDTR use only limit and base.
//!
//! [`VCPU_TYPES`] names the CPU models an SEV-SNP launch can give its
//! vCPUs, whose CPUID signature every vCPU starts with in RDX (and so every
//! VMSA carries).

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

/// Bytes of a VMSA page.
pub const VMSA_LEN: usize = 4096;

/// The guest-physical address a VMSA entry carries in the launch digest:
/// KVM records VMSA pages in the RMP at GPA -1, page-aligned with the bits
/// above 51 clear (the same value `sev-snp-measure` uses).
pub const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;

/// Field offsets in the VMSA (APM vol. 2, Table B-4).
pub mod offset {
    #![allow(missing_docs)]
    pub const ES: usize = 0x000;
    pub const CS: usize = 0x010;
    pub const SS: usize = 0x020;
    pub const DS: usize = 0x030;
    pub const FS: usize = 0x040;
    pub const GS: usize = 0x050;
    pub const GDTR: usize = 0x060;
    pub const LDTR: usize = 0x070;
    pub const IDTR: usize = 0x080;
    pub const TR: usize = 0x090;
    pub const EFER: usize = 0x0D0;
    pub const CR4: usize = 0x148;
    pub const CR3: usize = 0x150;
    pub const CR0: usize = 0x158;
    pub const DR7: usize = 0x160;
    pub const DR6: usize = 0x168;
    pub const RFLAGS: usize = 0x170;
    pub const RIP: usize = 0x178;
    pub const RSP: usize = 0x1D8;
    pub const RAX: usize = 0x1F8;
    pub const G_PAT: usize = 0x268;
    pub const RCX: usize = 0x308;
    pub const RDX: usize = 0x310;
    pub const RBX: usize = 0x318;
    pub const RBP: usize = 0x328;
    pub const RSI: usize = 0x330;
    pub const RDI: usize = 0x338;
    pub const XCR0: usize = 0x3E8;
    pub const MXCSR: usize = 0x408;
    pub const X87_FCW: usize = 0x410;
}

/// A CPU model's CPUID signature: CPUID Fn0000_0001_EAX as AMD defines it
/// (CPUID Specification, publication 25481, "Family, Model, Stepping
/// Identifiers"): stepping in bits 3:0, the model's low nibble in 7:4, the
/// base family in 11:8 (0xF once the family exceeds 15), the model's high
/// nibble in 19:16 and the extended family (family - 0xF) in 27:20.
pub const fn cpu_signature(family: u32, model: u32, stepping: u32) -> u32 {
    let (base_family, ext_family) = if family > 0xf {
        (0xf, (family - 0xf) & 0xff)
    } else {
        (family, 0)
    };
    ext_family << 20 | ((model >> 4) & 0xf) << 16 | base_family << 8 | (model & 0xf) << 4 | (stepping & 0xf)
}

/// The vCPU types an SEV-SNP launch can name (QEMU's `-cpu` model names of
/// AMD's EPYC generations, as `sev-snp-measure --vcpu-type` takes them),
/// with the family, model and stepping QEMU's model reports. On SEV-SNP
/// the hypervisor starts every vCPU with this signature in RDX, so it is
/// part of each VMSA and therefore of the launch digest.
pub const VCPU_TYPES: &[(&str, (u32, u32, u32))] = &[
    ("EPYC", (23, 1, 2)),
    ("EPYC-v1", (23, 1, 2)),
    ("EPYC-v2", (23, 1, 2)),
    ("EPYC-IBPB", (23, 1, 2)),
    ("EPYC-v3", (23, 1, 2)),
    ("EPYC-v4", (23, 1, 2)),
    ("EPYC-Rome", (23, 49, 0)),
    ("EPYC-Rome-v1", (23, 49, 0)),
    ("EPYC-Rome-v2", (23, 49, 0)),
    ("EPYC-Rome-v3", (23, 49, 0)),
    ("EPYC-Milan", (25, 1, 1)),
    ("EPYC-Milan-v1", (25, 1, 1)),
    ("EPYC-Milan-v2", (25, 1, 1)),
    ("EPYC-Genoa", (25, 17, 0)),
    ("EPYC-Genoa-v1", (25, 17, 0)),
    ("EPYC-Turin", (26, 0, 0)),
];

/// A vCPU type [`VCPU_TYPES`] does not name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown vCPU type '{name}' (known: {known})")]
pub struct UnknownVcpuType {
    /// The name given.
    pub name: String,
    /// The known names, comma separated.
    pub known: String,
}

/// The CPUID signature of the vCPU type `name` (exactly as
/// [`VCPU_TYPES`] spells it), or an error listing the known names.
pub fn vcpu_type_signature(name: &str) -> Result<u32, UnknownVcpuType> {
    VCPU_TYPES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, (family, model, stepping))| cpu_signature(family, model, stepping))
        .ok_or_else(|| {
            let known: Vec<&str> = VCPU_TYPES.iter().map(|(n, _)| *n).collect();
            UnknownVcpuType {
                name: name.into(),
                known: known.join(", "),
            }
        })
}

/// Sets RDX in an encoded VMSA (an SEV-SNP vCPU's CPUID signature).
pub fn set_rdx(vmsa: &mut [u8; VMSA_LEN], rdx: u64) {
    vmsa[offset::RDX..offset::RDX + 8].copy_from_slice(&rdx.to_le_bytes());
}

/// RDX in an encoded VMSA: what an SEV-SNP launch gives the vCPU's RDX so
/// that KVM's VMSA carries the measured value.
pub fn rdx(vmsa: &[u8; VMSA_LEN]) -> u64 {
    u64::from_le_bytes(vmsa[offset::RDX..offset::RDX + 8].try_into().expect("8 bytes"))
}

/// A VMCB segment register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Attributes (type, S, DPL, P, AVL, L, D/B, G).
    pub attrib: u16,
    /// Limit, byte granular (already expanded when G is set).
    pub limit: u32,
    /// Base.
    pub base: u64,
}

impl Segment {
    /// A segment register.
    pub const fn new(selector: u16, attrib: u16, limit: u32, base: u64) -> Self {
        Segment {
            selector,
            attrib,
            limit,
            base,
        }
    }

    /// The attributes of a descriptor's fields (each masked to its width):
    /// type, S, DPL, P, AVL, L, D/B, G.
    #[allow(clippy::too_many_arguments)]
    pub fn attributes(type_: u8, s: u8, dpl: u8, present: u8, avl: u8, l: u8, db: u8, g: u8) -> u16 {
        u16::from(type_ & 0xf)
            | u16::from(s & 1) << 4
            | u16::from(dpl & 3) << 5
            | u16::from(present & 1) << 7
            | u16::from(avl & 1) << 8
            | u16::from(l & 1) << 9
            | u16::from(db & 1) << 10
            | u16::from(g & 1) << 11
    }

    /// A descriptor-table register (GDTR, IDTR): limit and base only.
    pub fn table(base: u64, limit: u16) -> Self {
        Segment::new(0, 0, u32::from(limit), base)
    }
}

/// The state of one vCPU when the guest starts: the VMSA fields covm sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct VcpuState {
    pub es: Segment,
    pub cs: Segment,
    pub ss: Segment,
    pub ds: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub gdtr: Segment,
    pub ldtr: Segment,
    pub idtr: Segment,
    pub tr: Segment,
    pub efer: u64,
    pub cr4: u64,
    pub cr3: u64,
    pub cr0: u64,
    pub dr7: u64,
    pub dr6: u64,
    pub rflags: u64,
    pub rip: u64,
    pub rsp: u64,
    pub rax: u64,
    pub g_pat: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rbx: u64,
    pub rbp: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub xcr0: u64,
    pub mxcsr: u32,
    pub x87_fcw: u16,
}

/// The PAT MSR after reset (AMD APM vol. 2, §A.3).
pub const RESET_PAT: u64 = 0x0007_0406_0007_0406;

impl VcpuState {
    /// The x86 INIT state (AMD APM vol. 2 §14.1.3), as KVM gives a new
    /// vCPU and as covm leaves the vCPUs other than the bootstrap one: they
    /// wait for the firmware's INIT/SIPI, which resets them again. RDX (the
    /// CPUID signature on real hardware) is 0, so the encoding does not
    /// depend on the host's CPU model. x87 FCW and MXCSR are the values
    /// covm sets on every vCPU (`arch::regs::setup_fpu`).
    pub fn reset() -> Self {
        let data = Segment::new(0, 0x93, 0xffff, 0);
        VcpuState {
            es: data,
            cs: Segment::new(0xf000, 0x9b, 0xffff, 0xffff_0000),
            ss: data,
            ds: data,
            fs: data,
            gs: data,
            gdtr: Segment::table(0, 0xffff),
            ldtr: Segment::new(0, 0x82, 0xffff, 0),
            idtr: Segment::table(0, 0xffff),
            tr: Segment::new(0, 0x8b, 0xffff, 0),
            efer: 0,
            cr4: 0,
            cr3: 0,
            cr0: 0x6000_0010,
            dr7: 0x400,
            dr6: 0xffff_0ff0,
            rflags: 2,
            rip: 0xfff0,
            rsp: 0,
            rax: 0,
            g_pat: RESET_PAT,
            rcx: 0,
            rdx: 0,
            rbx: 0,
            rbp: 0,
            rsi: 0,
            rdi: 0,
            xcr0: 1,
            mxcsr: 0x1f80,
            x87_fcw: 0x37f,
        }
    }

    /// The VMSA page.
    pub fn to_vmsa(&self) -> Box<[u8; VMSA_LEN]> {
        use offset::*;
        let mut page = Box::new([0u8; VMSA_LEN]);
        let mut put = |at: usize, bytes: &[u8]| page[at..at + bytes.len()].copy_from_slice(bytes);
        for (at, s) in [
            (ES, self.es),
            (CS, self.cs),
            (SS, self.ss),
            (DS, self.ds),
            (FS, self.fs),
            (GS, self.gs),
            (GDTR, self.gdtr),
            (LDTR, self.ldtr),
            (IDTR, self.idtr),
            (TR, self.tr),
        ] {
            put(at, &s.selector.to_le_bytes());
            put(at + 2, &s.attrib.to_le_bytes());
            put(at + 4, &s.limit.to_le_bytes());
            put(at + 8, &s.base.to_le_bytes());
        }
        for (at, v) in [
            (EFER, self.efer),
            (CR4, self.cr4),
            (CR3, self.cr3),
            (CR0, self.cr0),
            (DR7, self.dr7),
            (DR6, self.dr6),
            (RFLAGS, self.rflags),
            (RIP, self.rip),
            (RSP, self.rsp),
            (RAX, self.rax),
            (G_PAT, self.g_pat),
            (RCX, self.rcx),
            (RDX, self.rdx),
            (RBX, self.rbx),
            (RBP, self.rbp),
            (RSI, self.rsi),
            (RDI, self.rdi),
            (XCR0, self.xcr0),
        ] {
            put(at, &v.to_le_bytes());
        }
        put(MXCSR, &self.mxcsr.to_le_bytes());
        put(X87_FCW, &self.x87_fcw.to_le_bytes());
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;
    use crate::testing::sev_snp_measure;

    #[test]
    fn descriptor_fields_pack_into_vmcb_attributes() {
        // covm's PVH code segment: flat 32-bit code, G and D set.
        assert_eq!(Segment::attributes(0xb, 1, 0, 1, 0, 0, 1, 1), 0xc9b);
        assert_eq!(Segment::attributes(0xb, 1, 0, 1, 0, 1, 0, 1), 0xa9b, "64-bit code");
        // Each field masked to its width.
        assert_eq!(
            Segment::attributes(0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff),
            0xfff
        );
        assert_eq!(Segment::attributes(0, 0, 3, 0, 0, 0, 0, 0), 0x60, "DPL");
    }

    /// sev-snp-measure's VMSA for QEMU's reset state, byte for byte: proves
    /// the VMSA offsets covm encodes.
    #[test]
    fn vmsa_layout_agrees_with_sev_snp_measure() {
        let script = r#"
from sevsnpmeasure.vmsa import VMSA
from sevsnpmeasure.vmm_types import VMMType
area = VMSA.build_save_area(0xfffffff0, 0, 0x800f12, VMMType.QEMU)
print(bytes(area).hex())
"#;
        let Some(theirs) = sev_snp_measure(script) else {
            return;
        };
        let state = VcpuState {
            cs: Segment {
                selector: 0xf000,
                attrib: 0x9b,
                limit: 0xffff,
                base: 0xffff_0000,
            },
            efer: 0x1000,
            cr4: 0x40,
            cr0: 0x10,
            rdx: 0x800f12,
            ..VcpuState::reset()
        };
        assert_eq!(hex(&state.to_vmsa()[..]), theirs);
    }

    /// covm's vCPU types and signatures are sev-snp-measure's `CPU_SIGS`,
    /// name for name.
    #[test]
    fn vcpu_types_agree_with_sev_snp_measure() {
        let script = "from sevsnpmeasure.vcpu_types import CPU_SIGS\n\
                      print(' '.join(f'{k}={v:x}' for k, v in CPU_SIGS.items()))";
        let Some(theirs) = sev_snp_measure(script) else {
            return;
        };
        let ours: Vec<String> = VCPU_TYPES
            .iter()
            .map(|(name, _)| alloc::format!("{name}={:x}", vcpu_type_signature(name).unwrap()))
            .collect();
        assert_eq!(ours.join(" "), theirs);
    }

    /// Signatures worked by hand from the CPUID specification's layout, and
    /// the ones real parts report (Naples 0x800f12, Rome 0x830f10, Milan
    /// 0xa00f11, Genoa 0xa10f10, Turin 0xb00f00).
    #[test]
    fn vcpu_type_signatures() {
        assert_eq!(cpu_signature(6, 0x55, 7), 0x50657);
        assert_eq!(cpu_signature(0xf, 0x21, 1), 0x20f11);
        let sig = |name| vcpu_type_signature(name).unwrap();
        assert_eq!(sig("EPYC"), 0x800f12);
        assert_eq!(sig("EPYC-v4"), 0x800f12);
        assert_eq!(sig("EPYC-Rome"), 0x830f10);
        assert_eq!(sig("EPYC-Milan-v2"), 0xa00f11);
        assert_eq!(sig("EPYC-Genoa"), 0xa10f10);
        assert_eq!(sig("EPYC-Turin"), 0xb00f00);
        let err = vcpu_type_signature("epyc-milan").unwrap_err().to_string();
        assert!(
            err.starts_with("unknown vCPU type 'epyc-milan' (known: EPYC, EPYC-v1,"),
            "{err}"
        );
        let mut page = VcpuState::reset().to_vmsa();
        set_rdx(&mut page, 0xa00f11);
        assert_eq!(
            *page,
            *VcpuState {
                rdx: 0xa00f11,
                ..VcpuState::reset()
            }
            .to_vmsa()
        );
    }

    #[test]
    fn fields_land_at_the_apm_offsets() {
        let page = VcpuState::reset().to_vmsa();
        let u64_at = |at: usize| u64::from_le_bytes(page[at..at + 8].try_into().unwrap());
        // CS: selector 0xf000, attributes 0x9b, limit 0xffff, base 0xffff0000.
        assert_eq!(
            &page[0x10..0x20],
            &[0x00, 0xf0, 0x9b, 0, 0xff, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]
        );
        assert_eq!(u64_at(0x158), 0x6000_0010);
        assert_eq!(u64_at(0x178), 0xfff0);
        assert_eq!(u64_at(0x268), RESET_PAT);
        assert_eq!(u64_at(0x3E8), 1);
        assert_eq!(&page[0x408..0x40C], &0x1f80u32.to_le_bytes());
        assert_eq!(&page[0x410..0x412], &0x37fu16.to_le_bytes());
        assert!(page[0x418..].iter().all(|&b| b == 0));
    }
}
