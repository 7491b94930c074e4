//! The SEV-SNP launch digest, and the measurement of what covm loads.
//!
//! The primitive is AMD's (SEV Secure Nested Paging Firmware ABI
//! specification, `SNP_LAUNCH_UPDATE`, section "Launch Digest Calculation"
//! and Table "Layout of the PAGE_INFO Structure"): the digest starts as 48
//! zero bytes and every page added to the guest extends it,
//!
//! ```text
//! digest = SHA-384(PAGE_INFO)
//! PAGE_INFO (0x70 bytes, little-endian):
//!   0x00  48  DIGEST_CUR   the digest so far
//!   0x30  48  CONTENTS     SHA-384 of the page for NORMAL and VMSA pages, zero otherwise
//!   0x60   2  LENGTH       0x70
//!   0x62   1  PAGE_TYPE    NORMAL 1, VMSA 2, ZERO 3, UNMEASURED 4, SECRETS 5, CPUID 6
//!   0x63   1  IMI_PAGE     bit 0: part of an initial migration image (covm: 0)
//!   0x64   1  VMPL3_PERMS  (covm: 0)
//!   0x65   1  VMPL2_PERMS  (covm: 0)
//!   0x66   1  VMPL1_PERMS  (covm: 0)
//!   0x67   1  reserved, 0
//!   0x68   8  GPA          the page's guest-physical address
//! ```
//!
//! [`launch_digest`] applies it to a [`LaunchImage`]: the pages covm
//! wrote, in the order the image lists them, then one VMSA entry per vCPU.
//! docs/platforms.md lists the sequence for the built-in firmware.
//!
//! [`snp_launch_digest`] is the same with what only a real SEV-SNP launch
//! adds ([`SnpLaunch`]): the vCPU type, whose CPUID signature the
//! hypervisor puts in every vCPU's RDX (so in every VMSA; without a type
//! RDX stays 0, as on the emulated platform), and the SEV kernel hashes
//! table ([`super::kernel_hashes`]) as one NORMAL page at
//! [`SEV_HASHES_GPA`] after the image's pages and before the VMSAs.
//! [`SnpLaunch::apply`] turns covm's image into the one an SEV-SNP launch
//! measures (for the launch to update exactly those pages), and
//! [`measure_sev_snp`] measures it over a configuration the way `covm
//! measure --platform sev_snp=on` does; [`super::mrtd`] is TDX's
//! counterpart.

use super::image::{self, LaunchImage, LaunchPage};
use super::kernel_hashes::{KernelHashes, SEV_HASHES_GPA};
use super::vmsa::{set_rdx, VMSA_GPA};
use super::PlatformError;
use crate::config::VmConfig;
use crate::memory::{self, GuestMemory};
use covm_guest_abi::metadata::SectionKind;
use sha2::{Digest, Sha384};
use vm_memory::{Bytes, GuestAddress};

/// Bytes of a launch digest (SHA-384).
pub const DIGEST_LEN: usize = 48;
/// Bytes of a PAGE_INFO structure.
pub const PAGE_INFO_LEN: usize = 0x70;
/// Bytes of a guest page.
pub const PAGE_SIZE: usize = 4096;

/// SNP page types (`PAGE_TYPE` of `SNP_LAUNCH_UPDATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PageType {
    /// Contents measured and encrypted.
    Normal = 1,
    /// A vCPU's save area.
    Vmsa = 2,
    /// A page of zeros (measured as its type and address).
    Zero = 3,
    /// Encrypted but not measured (only its type and address are).
    Unmeasured = 4,
    /// The platform's secrets page.
    Secrets = 5,
    /// The CPUID page (checked by the firmware, not measured).
    Cpuid = 6,
}

impl PageType {
    /// The name docs and `covm measure --pages` use.
    pub fn name(self) -> &'static str {
        match self {
            PageType::Normal => "normal",
            PageType::Vmsa => "vmsa",
            PageType::Zero => "zero",
            PageType::Unmeasured => "unmeasured",
            PageType::Secrets => "secrets",
            PageType::Cpuid => "cpuid",
        }
    }

    /// Whether the page's contents enter the digest.
    pub fn measures_contents(self) -> bool {
        matches!(self, PageType::Normal | PageType::Vmsa)
    }
}

/// One `PAGE_INFO` but for its first field (the current digest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageInfo {
    /// The page type.
    pub page_type: PageType,
    /// `CONTENTS`: SHA-384 of the page (NORMAL, VMSA) or zeros.
    pub contents: [u8; DIGEST_LEN],
    /// The page's guest-physical address.
    pub gpa: u64,
    /// `IMI_PAGE`.
    pub imi: bool,
    /// VMPL3, VMPL2 and VMPL1 permissions.
    pub vmpl_perms: [u8; 3],
}

impl PageInfo {
    /// The entry for a page of `page_type` at `gpa` holding `page` (read
    /// only for the types whose contents are measured).
    pub fn for_page(page_type: PageType, gpa: u64, page: &[u8]) -> Self {
        let contents = if page_type.measures_contents() {
            Sha384::digest(page).into()
        } else {
            [0; DIGEST_LEN]
        };
        PageInfo {
            page_type,
            contents,
            gpa,
            imi: false,
            vmpl_perms: [0; 3],
        }
    }

    /// The whole structure after `current`.
    pub fn to_bytes(&self, current: &[u8; DIGEST_LEN]) -> [u8; PAGE_INFO_LEN] {
        let mut b = [0u8; PAGE_INFO_LEN];
        b[0x00..0x30].copy_from_slice(current);
        b[0x30..0x60].copy_from_slice(&self.contents);
        b[0x60..0x62].copy_from_slice(&(PAGE_INFO_LEN as u16).to_le_bytes());
        b[0x62] = self.page_type as u8;
        b[0x63] = u8::from(self.imi);
        b[0x64..0x67].copy_from_slice(&self.vmpl_perms);
        b[0x68..0x70].copy_from_slice(&self.gpa.to_le_bytes());
        b
    }
}

/// A launch digest being extended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchDigest {
    current: [u8; DIGEST_LEN],
}

impl Default for LaunchDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl LaunchDigest {
    /// The digest before any page: 48 zero bytes.
    pub fn new() -> Self {
        LaunchDigest {
            current: [0; DIGEST_LEN],
        }
    }

    /// Extends the digest with one entry.
    pub fn update(&mut self, info: &PageInfo) {
        self.current = Sha384::digest(info.to_bytes(&self.current)).into();
    }

    /// Extends the digest with a page of `page_type` at `gpa`.
    pub fn update_page(&mut self, page_type: PageType, gpa: u64, page: &[u8]) {
        self.update(&PageInfo::for_page(page_type, gpa, page));
    }

    /// The digest so far.
    pub fn value(&self) -> [u8; DIGEST_LEN] {
        self.current
    }
}

/// One entry of a measurement, for `covm measure --pages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasuredPage {
    /// Its guest-physical address.
    pub gpa: u64,
    /// Its page type.
    pub page_type: PageType,
    /// What covm put there.
    pub what: &'static str,
}

/// A launch measurement and the entries it was computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurement {
    /// The final digest: what an SNP report's MEASUREMENT carries.
    pub digest: [u8; DIGEST_LEN],
    /// The entries, in order.
    pub pages: Vec<MeasuredPage>,
}

/// Errors measuring.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// A page of the image that cannot be read.
    #[error("cannot read guest page {gpa:#x} to measure it: {reason}")]
    Read {
        /// The page.
        gpa: u64,
        /// Why.
        reason: String,
    },
    /// A page the platform adds where the image already has one.
    #[error("cannot place the {what} at {gpa:#x}: the image already loads that page")]
    Occupied {
        /// The page.
        gpa: u64,
        /// What the platform adds there.
        what: &'static str,
    },
    /// Kernel hashes for a payload whose metadata has no place for them.
    #[error(
        "the payload's launch metadata has no KERNEL_HASHES section: it has no place for the SEV kernel hashes table"
    )]
    NoHashesSection,
    /// A page the platform adds that cannot be written.
    #[error("cannot place the {what} at {gpa:#x}: {reason}")]
    Write {
        /// The page.
        gpa: u64,
        /// What the platform adds there.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// The hardware platforms `covm measure` models without the hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HardwarePlatform {
    /// AMD SEV-SNP (`--platform sev_snp=on`): the launch digest.
    SevSnp,
    /// Intel TDX (`--platform tdx=on`): MRTD.
    Tdx,
}

impl HardwarePlatform {
    /// The name `--platform` and the output use.
    pub fn name(self) -> &'static str {
        match self {
            HardwarePlatform::SevSnp => "sev_snp",
            HardwarePlatform::Tdx => "tdx",
        }
    }
}

/// What an SEV-SNP launch adds to covm's image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnpLaunch {
    /// The vCPU type's CPUID signature, in every VMSA's RDX (0: no type).
    pub vcpu_signature: u32,
    /// The SEV kernel hashes table, measured at [`SEV_HASHES_GPA`].
    pub kernel_hashes: Option<KernelHashes>,
    /// The CPUID page's contents ([`super::cpuid_page`]) where the
    /// firmware's metadata asks for one; None: an empty table (count 0).
    /// The contents are not measured, so `covm measure` needs none; the
    /// launch writes the vCPUs' own table there before it updates the page.
    pub cpuid_page: Option<Box<[u8; PAGE_SIZE]>>,
}

/// What the launch puts in each kind of metadata section, for listings.
pub const SEC_MEM_WHAT: &str = "pre-validated firmware memory (SNP_SEC_MEM)";
/// The secrets page's listing.
pub const SECRETS_WHAT: &str = "SEV-SNP secrets page";
/// The CPUID page's listing.
pub const CPUID_WHAT: &str = "SEV-SNP CPUID page";
/// The kernel hashes table's listing.
pub const HASHES_WHAT: &str = "SEV kernel hashes table";
/// The kernel hashes page's listing without a table.
pub const NO_HASHES_WHAT: &str = "SEV kernel hashes page (no hashes: zero)";

impl SnpLaunch {
    /// The image an SEV-SNP launch of `image` measures: the image's pages,
    /// then the pages the payload's launch metadata asks for, in its order
    /// (SNP_SEC_MEM as ZERO pages, the SECRETS page, the CPUID page,
    /// KERNEL_HASHES as the kernel hashes table, NORMAL, or a ZERO page
    /// without one); without metadata, the kernel hashes page (if any) at
    /// [`SEV_HASHES_GPA`] as a NORMAL page. The secrets, CPUID and hashes
    /// pages are written to `memory` for the launch to update. Every VMSA's
    /// RDX is set to the vCPU signature. An SNP launch that updates exactly
    /// these pages, with vCPUs in exactly these states, measures
    /// [`launch_digest`] of it.
    pub fn apply(&self, memory: &GuestMemory, image: &LaunchImage) -> Result<LaunchImage, MeasureError> {
        let mut snp = image.clone();
        let add = |snp: &mut LaunchImage, gpa: u64, page_type: PageType, what: &'static str, bytes: Option<&[u8]>| {
            if snp.pages.iter().any(|p| p.gpa == gpa) {
                return Err(MeasureError::Occupied { gpa, what });
            }
            if let Some(bytes) = bytes {
                let mut page = [0u8; PAGE_SIZE];
                page[..bytes.len()].copy_from_slice(bytes);
                memory
                    .write_slice(&page, GuestAddress(gpa))
                    .map_err(|e| MeasureError::Write {
                        gpa,
                        what,
                        reason: e.to_string(),
                    })?;
            }
            snp.pages.push(LaunchPage { gpa, page_type, what });
            Ok(())
        };
        let hashes = self.kernel_hashes.as_ref().map(|h| h.page());
        let mut hashes_placed = false;
        for section in &image.metadata {
            let gpa = section.gpa;
            match section.kind {
                SectionKind::SnpSecMem => {
                    for i in 0..section.pages {
                        add(&mut snp, gpa + i * PAGE_SIZE as u64, PageType::Zero, SEC_MEM_WHAT, None)?;
                    }
                }
                SectionKind::SnpSecrets => add(&mut snp, gpa, PageType::Secrets, SECRETS_WHAT, Some(&[]))?,
                SectionKind::Cpuid => {
                    let empty = [0u8; PAGE_SIZE];
                    let page = self.cpuid_page.as_deref().unwrap_or(&empty);
                    add(&mut snp, gpa, PageType::Cpuid, CPUID_WHAT, Some(&page[..]))?
                }
                SectionKind::KernelHashes => {
                    match &hashes {
                        Some(page) => add(&mut snp, gpa, PageType::Normal, HASHES_WHAT, Some(&page[..]))?,
                        None => add(&mut snp, gpa, PageType::Zero, NO_HASHES_WHAT, None)?,
                    }
                    hashes_placed = true;
                }
            }
        }
        if let Some(page) = &hashes {
            if !hashes_placed {
                if !image.metadata.is_empty() {
                    return Err(MeasureError::NoHashesSection);
                }
                add(&mut snp, SEV_HASHES_GPA, PageType::Normal, HASHES_WHAT, Some(&page[..]))?;
            }
        }
        for vmsa in &mut snp.vcpus {
            set_rdx(vmsa, u64::from(self.vcpu_signature));
        }
        Ok(snp)
    }
}

/// The launch digest of `image`, whose pages are read from `memory`: each
/// page in the image's order, then each vCPU's VMSA in vCPU order.
pub fn launch_digest(memory: &GuestMemory, image: &LaunchImage) -> Result<Measurement, MeasureError> {
    let mut digest = LaunchDigest::new();
    let mut pages = Vec::with_capacity(image.pages.len() + image.vcpus.len());
    let mut buf = [0u8; PAGE_SIZE];
    for page in &image.pages {
        if page.page_type.measures_contents() {
            memory
                .read_slice(&mut buf, GuestAddress(page.gpa))
                .map_err(|e| MeasureError::Read {
                    gpa: page.gpa,
                    reason: e.to_string(),
                })?;
        }
        digest.update_page(page.page_type, page.gpa, &buf);
        pages.push(MeasuredPage {
            gpa: page.gpa,
            page_type: page.page_type,
            what: page.what,
        });
    }
    for vmsa in &image.vcpus {
        digest.update_page(PageType::Vmsa, VMSA_GPA, &vmsa[..]);
        pages.push(MeasuredPage {
            gpa: VMSA_GPA,
            page_type: PageType::Vmsa,
            what: "vCPU initial state (VMSA)",
        });
    }
    Ok(Measurement {
        digest: digest.value(),
        pages,
    })
}

/// The SEV-SNP launch digest of `image` (loaded in `memory`) with
/// `launch`'s additions ([`SnpLaunch::apply`]): the image's pages, then the
/// kernel hashes page (if any), then the VMSAs with RDX set to the vCPU
/// signature. Writes the hashes page into `memory`.
pub fn snp_launch_digest(
    memory: &GuestMemory,
    image: &LaunchImage,
    launch: &SnpLaunch,
) -> Result<Measurement, MeasureError> {
    launch_digest(memory, &launch.apply(memory, image)?)
}

/// The SEV-SNP launch digest `config` gives with `launch`, computed in
/// scratch memory as a launch loads it (`covm measure --platform
/// sev_snp=on`). `config` is a confidential configuration (its platform
/// places the migration policy page and adds the agent's vCPU).
pub fn measure_sev_snp(config: &VmConfig, launch: &SnpLaunch) -> Result<Measurement, PlatformError> {
    let scratch = memory::allocate(config.memory.size)?;
    let loaded = image::load(&scratch, config)?;
    Ok(snp_launch_digest(&scratch, &loaded.image, launch)?)
}

/// Runs `script` with `sevsnpmeasure` importable: from
/// `COVM_SEV_SNP_MEASURE` (a `pip install --target` directory, set by
/// .ci/run) or the Python path. `None`, with the reason printed, when it
/// cannot run; a script that fails once imported panics.
#[cfg(test)]
pub(crate) fn sev_snp_measure(script: &str) -> Option<String> {
    let python = || {
        let mut cmd = std::process::Command::new("python3");
        if let Some(dir) = std::env::var_os("COVM_SEV_SNP_MEASURE") {
            cmd.env("PYTHONPATH", dir);
        }
        cmd
    };
    let probe = python().arg("-c").arg("import sevsnpmeasure.gctx").output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!(
                "SKIP: sev-snp-measure is not importable (pip install sev-snp-measure, or run .ci/run): {}",
                String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default()
            );
            return None;
        }
        Err(e) => {
            eprintln!("SKIP: cannot run python3 for the sev-snp-measure cross-check: {e}");
            return None;
        }
    }
    let out = python()
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3 ran a moment ago");
    assert!(
        out.status.success(),
        "the sev-snp-measure script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A small ELF kernel for tests: one PT_LOAD segment of 5000 bytes of
/// `i % 253` at 1 MiB (entry there, 8 KiB of `.bss` after it), no PVH
/// note, so covm boots it through the 64-bit Linux entry (zero page, page
/// tables).
#[cfg(test)]
pub(crate) fn tiny_elf() -> Vec<u8> {
    const LOAD: u64 = 0x10_0000;
    const CODE: usize = 5000;
    let mut elf = vec![0u8; 64 + 56];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little-endian
    elf[6] = 1; // version
    elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[24..32].copy_from_slice(&LOAD.to_le_bytes()); // entry
    elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
    elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
    elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
    let ph = 64;
    elf[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf[ph + 4..ph + 8].copy_from_slice(&7u32.to_le_bytes()); // RWX
    elf[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes()); // offset
    elf[ph + 16..ph + 24].copy_from_slice(&LOAD.to_le_bytes()); // vaddr
    elf[ph + 24..ph + 32].copy_from_slice(&LOAD.to_le_bytes()); // paddr
    elf[ph + 32..ph + 40].copy_from_slice(&(CODE as u64).to_le_bytes()); // filesz
    elf[ph + 40..ph + 48].copy_from_slice(&(CODE as u64 + 0x2000).to_le_bytes()); // memsz
    elf[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes()); // align
    elf.extend((0..CODE).map(|i| (i % 253) as u8));
    elf
}

/// A confidential configuration of `vcpus` for tests (the migration
/// policy page and the agent's vCPU, as every confidential launch loads
/// them): 64 MiB, emulated_cvm with an empty migration policy.
#[cfg(test)]
pub(crate) fn confidential_config(vcpus: u8, payload: crate::config::Payload, cmdline: &str) -> VmConfig {
    use crate::config::{CpusConfig, MemoryConfig, SerialMode};
    use crate::platform::{EmulatedCvmConfig, MigrationPolicy, PlatformConfig};
    VmConfig {
        cpus: CpusConfig { boot_vcpus: vcpus },
        memory: MemoryConfig { size: 64 << 20 },
        payload,
        cmdline: cmdline.into(),
        serial: SerialMode::Off,
        api_socket: None,
        dirty_tracking: Default::default(),
        platform: PlatformConfig::EmulatedCvm(EmulatedCvmConfig {
            root_key: None,
            policy: MigrationPolicy::empty(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Payload;
    use crate::platform::hex;
    use crate::platform::kernel_hashes::TABLE_OFFSET;
    use crate::platform::vmsa::{vcpu_type_signature, Segment, VcpuState, VCPU_TYPES};
    use crate::platform::{MigrationPolicy, PlatformConfig};
    use serde_json::{json, Value};
    use std::path::{Path, PathBuf};

    /// The pages of the chained vector: (type, gpa, page contents).
    fn chain() -> Vec<(PageType, u64, Vec<u8>)> {
        vec![
            (
                PageType::Normal,
                0x10_0000,
                (0..PAGE_SIZE).map(|i| (i % 251) as u8).collect(),
            ),
            (PageType::Zero, 0x20_0000, vec![]),
            (PageType::Unmeasured, 0x6000, vec![]),
            (PageType::Secrets, 0x7000, vec![]),
            (PageType::Cpuid, 0x8000, vec![]),
            (PageType::Vmsa, VMSA_GPA, vec![0xab; PAGE_SIZE]),
        ]
    }

    #[test]
    fn page_info_layout() {
        let info = PageInfo {
            page_type: PageType::Vmsa,
            contents: [0x11; 48],
            gpa: 0x1122_3344_5566_7000,
            imi: true,
            vmpl_perms: [3, 2, 1],
        };
        let b = info.to_bytes(&[0x22; 48]);
        assert_eq!(&b[..0x30], &[0x22; 48]);
        assert_eq!(&b[0x30..0x60], &[0x11; 48]);
        assert_eq!(
            &b[0x60..],
            &[0x70, 0x00, 0x02, 0x01, 3, 2, 1, 0, 0x00, 0x70, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]
        );
    }

    /// Fixed vectors, computed independently from the specification with
    /// Python's hashlib (`struct.pack('<HBBBBBBQ', 0x70, type, 0, 0, 0, 0,
    /// 0, gpa)` after the current digest and the contents hash):
    /// 1. one NORMAL page of zeros at GPA 0 over the zero digest;
    /// 2. the chain of [`chain`]: a NORMAL page of `i % 251` at 1 MiB, ZERO
    ///    at 2 MiB, UNMEASURED at 0x6000, SECRETS at 0x7000, CPUID at
    ///    0x8000, and a VMSA page of 0xab bytes at the VMSA GPA.
    #[test]
    fn fixed_vectors() {
        let mut d = LaunchDigest::new();
        d.update_page(PageType::Normal, 0, &[0; PAGE_SIZE]);
        assert_eq!(
            hex(&d.value()),
            "9d13634b6014bb21cf059b2dc694e7bff01a8a7137041100cd2b695f3d10fb687267b97808b27f8f471d943bc6f53a20"
        );
        let mut d = LaunchDigest::new();
        for (t, gpa, page) in chain() {
            d.update_page(t, gpa, &page);
        }
        assert_eq!(
            hex(&d.value()),
            "2080ba6feeb6c6c354de1da63f8964990a20ffa16db59feab59bfd827095eb0e28e8603124e6402d9b7fc8ab47d62e38"
        );
    }

    #[test]
    fn digest_agrees_with_sev_snp_measure() {
        let script = r#"
from sevsnpmeasure.gctx import GCTX
g = GCTX()
g.update_normal_pages(0x100000, bytes(i % 251 for i in range(4096)))
g.update_zero_pages(0x200000, 4096)
g.update_unmeasured_pages(0x6000, 4096)
g.update_secrets_page(0x7000)
g.update_cpuid_page(0x8000)
g.update_vmsa_page(b'\xab' * 4096)
g.update_normal_pages(0x300000, bytes(8192))
print(g.hex_ld())
"#;
        let Some(theirs) = sev_snp_measure(script) else {
            return;
        };
        let mut d = LaunchDigest::new();
        for (t, gpa, page) in chain() {
            d.update_page(t, gpa, &page);
        }
        d.update_page(PageType::Normal, 0x30_0000, &[0; PAGE_SIZE]);
        d.update_page(PageType::Normal, 0x30_1000, &[0; PAGE_SIZE]);
        assert_eq!(hex(&d.value()), theirs);
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

    /// The VMSA fields covm sets but RDX, by sev-snp-measure's names.
    fn state_json(s: &VcpuState) -> Value {
        let seg = |g: &Segment| json!([g.selector, g.attrib, g.limit, g.base]);
        json!({
            "es": seg(&s.es), "cs": seg(&s.cs), "ss": seg(&s.ss), "ds": seg(&s.ds), "fs": seg(&s.fs),
            "gs": seg(&s.gs), "gdtr": seg(&s.gdtr), "ldtr": seg(&s.ldtr), "idtr": seg(&s.idtr),
            "tr": seg(&s.tr), "efer": s.efer, "cr4": s.cr4, "cr3": s.cr3, "cr0": s.cr0, "dr7": s.dr7,
            "dr6": s.dr6, "rflags": s.rflags, "rip": s.rip, "rsp": s.rsp, "rax": s.rax, "g_pat": s.g_pat,
            "rcx": s.rcx, "rbx": s.rbx, "rbp": s.rbp, "rsi": s.rsi, "rdi": s.rdi, "xcr0": s.xcr0,
            "mxcsr": s.mxcsr, "x87_fcw": s.x87_fcw,
        })
    }

    /// sev-snp-measure's launch digest over the sequence in `listing`:
    /// NORMAL pages from covm's bytes, UNMEASURED and ZERO pages by
    /// address, the kernel hashes page built by its `SevHashes` from the
    /// files themselves, and each VMSA built by its `VMSA.build_save_area`
    /// with RDX from its `CPU_SIGS`, covm's fields set over it.
    const REFERENCE_DIGEST: &str = r#"
import json, sys
from sevsnpmeasure.gctx import GCTX
from sevsnpmeasure.sev_hashes import SevHashes
from sevsnpmeasure.vcpu_types import CPU_SIGS
from sevsnpmeasure.vmm_types import VMMType
from sevsnpmeasure.vmsa import VMSA, VmcbSeg
d = json.load(open(sys.argv[1]))
g = GCTX()
for p in d["pages"]:
    t, gpa = p["type"], p["gpa"]
    if t == "normal":
        g.update_normal_pages(gpa, bytes.fromhex(p["data"]))
    elif t == "unmeasured":
        g.update_unmeasured_pages(gpa, 4096)
    elif t == "zero":
        g.update_zero_pages(gpa, 4096)
    elif t == "secrets":
        g.update_secrets_page(gpa)
    elif t == "cpuid":
        g.update_cpuid_page(gpa)
    elif t == "hashes":
        h = d["hashes"]
        g.update_normal_pages(gpa, SevHashes(h["kernel"], h["initrd"], h["cmdline"]).construct_page(h["offset"]))
    elif t == "vmsa":
        assert gpa == GCTX.VMSA_GPA
        sig = CPU_SIGS[d["vcpu_type"]] if d["vcpu_type"] else 0
        area = VMSA.build_save_area(0xfffffff0, 0, sig, VMMType.QEMU)
        for k, v in p["state"].items():
            setattr(area, k, VmcbSeg(*v) if isinstance(v, list) else v)
        g.update_vmsa_page(bytes(area))
    else:
        raise ValueError(t)
print(g.hex_ld())
"#;

    /// One configuration of the cross-check.
    struct Case {
        vcpus: u8,
        vcpu_type: Option<&'static str>,
        /// None: the built-in firmware; else the kernel file.
        kernel: Option<PathBuf>,
        initrd: Option<PathBuf>,
        cmdline: &'static str,
        hashes: bool,
    }

    /// covm's SEV-SNP digest of `case` and sev-snp-measure's over the same
    /// sequence (None when sev-snp-measure is missing).
    fn digests(case: &Case, dir: &Path, n: usize) -> Option<(String, String)> {
        let payload = match &case.kernel {
            None => Payload::BuiltinFirmware,
            Some(kernel) => Payload::Kernel {
                kernel: kernel.clone(),
                initramfs: case.initrd.clone(),
            },
        };
        let config = confidential_config(case.vcpus, payload, case.cmdline);
        let launch = SnpLaunch {
            vcpu_signature: case.vcpu_type.map_or(0, |t| vcpu_type_signature(t).unwrap()),
            kernel_hashes: case.hashes.then(|| {
                let kernel = case.kernel.as_deref().unwrap();
                KernelHashes::from_files(kernel, case.initrd.as_deref(), case.cmdline).unwrap()
            }),
            cpuid_page: None,
        };
        let scratch = memory::allocate(config.memory.size).unwrap();
        let loaded = image::load(&scratch, &config).unwrap();
        let ours = snp_launch_digest(&scratch, &loaded.image, &launch).unwrap();
        assert_eq!(
            ours,
            measure_sev_snp(&config, &launch).unwrap(),
            "the same as covm measure's path"
        );
        // The vCPU states behind the image's VMSAs: the agent's vCPU too.
        let states: Vec<VcpuState> = (0..loaded.image.vcpus.len())
            .map(|i| match i {
                0 => VcpuState::boot(&loaded.bsp),
                _ => VcpuState::reset(),
            })
            .collect();
        assert_eq!(states.len(), usize::from(case.vcpus) + 1);
        for (state, vmsa) in states.iter().zip(&loaded.image.vcpus) {
            assert_eq!(state.to_vmsa(), *vmsa);
        }
        let mut vcpu = states.iter();
        let pages: Vec<Value> = ours
            .pages
            .iter()
            .map(|p| match (p.page_type, p.what) {
                (PageType::Normal, "SEV kernel hashes table") => json!({"type": "hashes", "gpa": p.gpa}),
                (PageType::Normal, _) => {
                    let mut page = vec![0u8; PAGE_SIZE];
                    scratch.read_slice(&mut page, GuestAddress(p.gpa)).unwrap();
                    json!({"type": "normal", "gpa": p.gpa, "data": hex(&page)})
                }
                (PageType::Vmsa, _) => {
                    json!({"type": "vmsa", "gpa": p.gpa, "state": state_json(vcpu.next().unwrap())})
                }
                (t, _) => json!({"type": t.name(), "gpa": p.gpa}),
            })
            .collect();
        assert!(vcpu.next().is_none(), "one VMSA entry per vCPU");
        // The firmware (built in or as a PVH kernel) carries metadata: its
        // secrets and CPUID pages are in the sequence; the tiny ELF has none.
        let firmware = case.kernel.as_ref().is_none_or(|k| k.ends_with("firmware.elf"));
        for t in ["secrets", "cpuid"] {
            assert_eq!(pages.iter().any(|p| p["type"] == t), firmware, "{t} page");
        }
        let listing = json!({
            "pages": pages,
            "vcpu_type": case.vcpu_type,
            "hashes": {
                "kernel": case.kernel.as_ref().map(|k| k.display().to_string()),
                "initrd": case.initrd.as_ref().map(|k| k.display().to_string()),
                "cmdline": case.cmdline,
                "offset": TABLE_OFFSET,
            },
        });
        let file = dir.join(format!("case{n}.json"));
        std::fs::write(&file, listing.to_string()).unwrap();
        let script = format!(
            "import sys\nsys.argv = ['x', {:?}]\n{REFERENCE_DIGEST}",
            file.display().to_string()
        );
        let theirs = sev_snp_measure(&script)?;
        Some((hex(&ours.digest), theirs))
    }

    /// covm's SEV-SNP launch digest equals sev-snp-measure's for the same
    /// page sequence and VMSA contents: 1, 2 and 4 vCPUs (plus the
    /// agent's), five vCPU types and none, the built-in firmware, a small
    /// ELF kernel (64-bit entry, page tables) and the firmware booted as a
    /// PVH kernel, with and without an initrd, and with and without the
    /// kernel hashes table.
    #[test]
    fn snp_digest_agrees_with_sev_snp_measure() {
        let dir = std::env::temp_dir().join(format!("covm-snp-measure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (elf, pvh, initrd) = (dir.join("tiny.elf"), dir.join("firmware.elf"), dir.join("initrd"));
        std::fs::write(&elf, tiny_elf()).unwrap();
        std::fs::write(&pvh, crate::boot::firmware::ELF).unwrap();
        std::fs::write(&initrd, (0..9000u32).map(|i| (i * 31 % 256) as u8).collect::<Vec<u8>>()).unwrap();
        let case = |vcpus, vcpu_type, kernel: Option<&PathBuf>, initrd: Option<&PathBuf>, cmdline, hashes| Case {
            vcpus,
            vcpu_type,
            kernel: kernel.cloned(),
            initrd: initrd.cloned(),
            cmdline,
            hashes,
        };
        let cases = [
            case(1, Some("EPYC"), None, None, "workload=hello", false),
            case(2, Some("EPYC-Milan"), None, None, "workload=hello", false),
            case(4, Some("EPYC-Genoa"), None, None, "workload=dirty mib=4", false),
            case(2, None, None, None, "workload=hello", false),
            case(
                1,
                Some("EPYC-Rome"),
                Some(&elf),
                Some(&initrd),
                "console=ttyS0 quiet",
                true,
            ),
            case(2, Some("EPYC-Milan"), Some(&elf), None, "", true),
            case(4, Some("EPYC-Genoa"), Some(&pvh), Some(&initrd), "workload=hello", true),
            case(2, Some("EPYC-v4"), Some(&elf), Some(&initrd), "console=ttyS0", false),
            case(1, Some("EPYC-Turin"), Some(&pvh), None, "workload=hello", true),
        ];
        let mut seen = std::collections::HashSet::new();
        for (n, case) in cases.iter().enumerate() {
            let Some((ours, theirs)) = digests(case, &dir, n) else {
                break;
            };
            assert_eq!(
                ours, theirs,
                "case {n}: {} vCPUs, {:?}, hashes {}",
                case.vcpus, case.vcpu_type, case.hashes
            );
            assert!(seen.insert(ours), "case {n} repeats an earlier digest");
        }
        let _ = std::fs::remove_dir_all(&dir);
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
            .map(|(name, _)| format!("{name}={:x}", vcpu_type_signature(name).unwrap()))
            .collect();
        assert_eq!(ours.join(" "), theirs);
    }

    #[test]
    fn snp_additions() {
        let config = confidential_config(2, Payload::BuiltinFirmware, "workload=hello");
        let plain = measure_sev_snp(&config, &SnpLaunch::default()).unwrap();
        let scratch = memory::allocate(config.memory.size).unwrap();
        let loaded = image::load(&scratch, &config).unwrap();
        // No additions and no metadata: emulated_cvm's.
        let mut bare = loaded.image.clone();
        bare.metadata.clear();
        assert_eq!(
            snp_launch_digest(&scratch, &bare, &SnpLaunch::default()).unwrap(),
            launch_digest(&scratch, &loaded.image).unwrap(),
            "no additions: emulated_cvm's"
        );
        assert_ne!(
            plain,
            launch_digest(&scratch, &loaded.image).unwrap(),
            "the metadata pages"
        );
        let plain = launch_digest(&scratch, &loaded.image).unwrap();
        let hashes = KernelHashes::new(b"k", None, "");
        let launch = SnpLaunch {
            vcpu_signature: 0xa00f11,
            kernel_hashes: Some(hashes),
            cpuid_page: None,
        };
        let applied = launch.apply(&scratch, &loaded.image).unwrap();
        let mut table = [0u8; 176];
        scratch.read_slice(&mut table, GuestAddress(SEV_HASHES_GPA)).unwrap();
        assert_eq!(table, hashes.table(), "the page is written for the launch to update");
        assert!(applied
            .vcpus
            .iter()
            .all(|v| v[0x310..0x318] == 0xa00f11u64.to_le_bytes()));
        let snp = snp_launch_digest(&scratch, &loaded.image, &launch).unwrap();
        assert_eq!(snp, launch_digest(&scratch, &applied).unwrap());
        assert_ne!(snp.digest, plain.digest);
        // The firmware's metadata pages follow the image's, in its order,
        // the hashes table in the KERNEL_HASHES section's place.
        let n = loaded.image.pages.len();
        assert_eq!(&snp.pages[..n], &plain.pages[..n]);
        let added: Vec<(u64, PageType, &str)> = snp.pages[n..]
            .iter()
            .filter(|p| p.page_type != PageType::Vmsa)
            .map(|p| (p.gpa, p.page_type, p.what))
            .collect();
        assert_eq!(
            added,
            [
                (0x8000, PageType::Zero, SEC_MEM_WHAT),
                (0x2000, PageType::Secrets, SECRETS_WHAT),
                (0x3000, PageType::Cpuid, CPUID_WHAT),
                (SEV_HASHES_GPA, PageType::Normal, HASHES_WHAT),
            ]
        );
        assert!(snp.pages[n + 4..].iter().all(|p| p.page_type == PageType::Vmsa));
        assert_eq!(snp.pages.len(), n + 4 + 3);
        // The page must be free.
        let mut taken = loaded.image.clone();
        taken.pages[0].gpa = 0x2000;
        let err = snp_launch_digest(&scratch, &taken, &launch).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot place the SEV-SNP secrets page at 0x2000: the image already loads that page"
        );
    }

    /// The SNP launch of the built-in firmware adds the pages its metadata
    /// declares: SNP_SEC_MEM as ZERO, the SECRETS and CPUID pages (the
    /// CPUID page holding the given table, or an empty one), a ZERO page
    /// for KERNEL_HASHES without hashes. emulated_cvm and TDX measure none
    /// of them.
    #[test]
    fn snp_metadata_pages() {
        let config = confidential_config(2, Payload::BuiltinFirmware, "workload=hello");
        let scratch = memory::allocate(config.memory.size).unwrap();
        let loaded = image::load(&scratch, &config).unwrap();
        assert_eq!(loaded.image.metadata.len(), 4);
        let mut cpuid = Box::new([0u8; PAGE_SIZE]);
        cpuid[0] = 7;
        cpuid[16] = 0xaa;
        let launch = SnpLaunch {
            cpuid_page: Some(cpuid.clone()),
            ..Default::default()
        };
        let applied = launch.apply(&scratch, &loaded.image).unwrap();
        let n = loaded.image.pages.len();
        let added: Vec<(u64, PageType)> = applied.pages[n..].iter().map(|p| (p.gpa, p.page_type)).collect();
        assert_eq!(
            added,
            [
                (0x8000, PageType::Zero),
                (0x2000, PageType::Secrets),
                (0x3000, PageType::Cpuid),
                (0x5000, PageType::Zero)
            ]
        );
        assert_eq!(applied.pages[n + 3].what, NO_HASHES_WHAT);
        let mut page = [0u8; PAGE_SIZE];
        scratch.read_slice(&mut page, GuestAddress(0x3000)).unwrap();
        assert_eq!(page, *cpuid, "the CPUID page is written for the launch");
        scratch.read_slice(&mut page, GuestAddress(0x2000)).unwrap();
        assert_eq!(page, [0; PAGE_SIZE], "the secrets page is zero");
        // The CPUID page's contents are not measured.
        let other = SnpLaunch::default();
        let scratch2 = memory::allocate(config.memory.size).unwrap();
        let loaded2 = image::load(&scratch2, &config).unwrap();
        assert_eq!(
            snp_launch_digest(&scratch2, &loaded2.image, &other).unwrap(),
            snp_launch_digest(&scratch, &loaded.image, &launch).unwrap()
        );
        // Each type's entry: SECRETS and CPUID by type and address alone.
        let mut d = LaunchDigest::new();
        d.update_page(PageType::Secrets, 0x2000, &[0xff; PAGE_SIZE]);
        let mut e = LaunchDigest::new();
        e.update_page(PageType::Secrets, 0x2000, &[0; PAGE_SIZE]);
        assert_eq!(d, e);
        // emulated_cvm measures the image alone: none of these pages.
        let emulated = launch_digest(&scratch, &loaded.image).unwrap();
        assert!(emulated
            .pages
            .iter()
            .all(|p| ![0x2000, 0x3000, 0x5000, 0x8000].contains(&p.gpa)));
        // TDX ignores the metadata.
        let mut tdx = config.clone();
        tdx.platform = PlatformConfig::Tdx(crate::platform::TdxConfig {
            policy: MigrationPolicy::empty(),
        });
        let td = super::super::mrtd::measure_tdx(&tdx).unwrap();
        assert!(td.pages.iter().all(|p| ![0x2000, 0x3000, 0x8000].contains(&p.gpa)));
    }

    /// Metadata from any ELF: SNP_SEC_MEM of several pages, a payload
    /// without metadata keeps today's hashes page, and one with metadata
    /// but no KERNEL_HASHES section refuses hashes.
    #[test]
    fn snp_metadata_of_other_elfs() {
        use crate::boot::metadata::tests::{table, with_section};
        let dir = std::env::temp_dir().join(format!("covm-snp-metadata-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plain_elf = dir.join("plain.elf");
        std::fs::write(&plain_elf, tiny_elf()).unwrap();
        let meta_elf = dir.join("meta.elf");
        let t = table(&[(0x1000, 0x2000, 1), (0x4000, 4096, 3), (0x3000, 4096, 2)]);
        std::fs::write(&meta_elf, with_section(&tiny_elf(), ".covm_metadata", &t, 0)).unwrap();
        let kernel = |path: &PathBuf| Payload::Kernel {
            kernel: path.clone(),
            initramfs: None,
        };
        let hashes = SnpLaunch {
            kernel_hashes: Some(KernelHashes::new(b"k", None, "")),
            ..Default::default()
        };
        // Without metadata: the hashes page after the image, as before.
        let config = confidential_config(1, kernel(&plain_elf), "");
        let m = measure_sev_snp(&config, &hashes).unwrap();
        let tail: Vec<(u64, PageType)> = m
            .pages
            .iter()
            .filter(|p| p.page_type != PageType::Vmsa)
            .rev()
            .take(2)
            .map(|p| (p.gpa, p.page_type))
            .collect();
        assert_eq!(
            tail,
            [(SEV_HASHES_GPA, PageType::Normal), (0x6000, PageType::Unmeasured)]
        );
        // With metadata: its pages in its order.
        let config = confidential_config(1, kernel(&meta_elf), "");
        let m = measure_sev_snp(&config, &SnpLaunch::default()).unwrap();
        let tail: Vec<(u64, PageType)> = m
            .pages
            .iter()
            .skip_while(|p| p.gpa != 0x6000)
            .skip(1)
            .filter(|p| p.page_type != PageType::Vmsa)
            .map(|p| (p.gpa, p.page_type))
            .collect();
        assert_eq!(
            tail,
            [
                (0x1000, PageType::Zero),
                (0x2000, PageType::Zero),
                (0x4000, PageType::Cpuid),
                (0x3000, PageType::Secrets)
            ]
        );
        let err = measure_sev_snp(&config, &hashes).unwrap_err().to_string();
        assert!(err.contains("no KERNEL_HASHES section"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `covm measure --platform sev_snp=on` / `tdx=on` is read without
    /// `parse_platform` (which probes the host, and refuses both here):
    /// a confidential configuration, `--kernel` allowed.
    #[test]
    fn for_measure_reads_hardware_platforms_without_probing() {
        use crate::cli::VmArgs;
        let args = |platform: &str| VmArgs {
            platform: Some(platform.into()),
            cmdline: Some("workload=hello".into()),
            ..Default::default()
        };
        let host = 1 << 40;
        for (text, hardware) in [
            ("sev_snp=on", HardwarePlatform::SevSnp),
            ("tdx=on,sev_snp=off", HardwarePlatform::Tdx),
        ] {
            let (config, found, no_policy) = VmConfig::for_measure(&args(text), host).unwrap();
            assert_eq!(found, Some(hardware));
            assert!(no_policy);
            assert!(config.platform.is_confidential());
            assert_eq!(config.platform.name(), hardware.name());
            assert_eq!(config.kvm_vcpus(), 2, "the agent's vCPU too");
        }
        // SEV-SNP's keys, read as a launch reads them.
        let (config, _, _) =
            VmConfig::for_measure(&args("sev_snp=on,policy=0x70000,vcpu_type=EPYC-Genoa"), host).unwrap();
        let crate::platform::PlatformConfig::SevSnp(snp) = &config.platform else {
            panic!("{:?}", config.platform)
        };
        assert_eq!(
            (snp.guest_policy, snp.vcpu_type.as_deref()),
            (0x70000, Some("EPYC-Genoa"))
        );
        let (config, found, _) = VmConfig::for_measure(&args("emulated_cvm=on"), host).unwrap();
        assert_eq!((found, config.platform.name()), (None, "emulated_cvm"));
        let dir = std::env::temp_dir().join(format!("covm-for-measure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = dir.join("tiny.elf");
        std::fs::write(&kernel, tiny_elf()).unwrap();
        let with_kernel = VmArgs {
            kernel: Some(kernel.clone()),
            ..args("sev_snp=on")
        };
        let (config, _, _) = VmConfig::for_measure(&with_kernel, host).unwrap();
        assert!(matches!(config.payload, Payload::Kernel { .. }));
        let _ = std::fs::remove_dir_all(&dir);
        let refused = |text: &str| VmConfig::for_measure(&args(text), host).unwrap_err().to_string();
        assert_eq!(
            refused("sev_snp=on,tdx=on"),
            "--platform: invalid tdx=on: give sev_snp=on or tdx=on, not both"
        );
        assert_eq!(
            refused("tdx=on,emulated_cvm=on"),
            "--platform: invalid emulated_cvm=on: not with tdx=on"
        );
        assert_eq!(
            refused("sev_snp=on,root_key=/k"),
            "--platform: invalid root_key=/k: not with sev_snp=on"
        );
        assert!(refused("sev_snp=maybe").contains("'maybe' is not on or off"));
        assert_eq!(
            refused("tdx=on,vcpu_type=EPYC"),
            "--platform: invalid vcpu_type=EPYC: not with tdx=on"
        );
        assert!(refused("sev_snp=on,policy=0x1").contains("bit 17 clear"));
        let too_many = VmArgs {
            cpus: Some("boot=32".into()),
            ..args("sev_snp=on")
        };
        assert_eq!(
            VmConfig::for_measure(&too_many, host).unwrap_err().to_string(),
            "a sev_snp VM has at most 31 vCPUs: its migration agent runs on a vCPU of its own"
        );
    }
}
