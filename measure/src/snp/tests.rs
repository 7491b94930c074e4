//! The SNP launch digest's tests: fixed vectors, sev-snp-measure's digest
//! of the same launches, and what [`SnpLaunch::apply`] adds.

use super::*;
use crate::hex;
use crate::kernel_hashes::KernelHashes;
use crate::launch::FirmwareSection;
use crate::testing::{reference_digest, sev_snp_measure, HashFiles};
use crate::vmsa::{vcpu_type_signature, Segment, VcpuState};
use alloc::string::{String, ToString};
use alloc::{format, vec};
use std::path::Path;

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
    // The same chain as a launch description, measured by launch_digest.
    let launch = Launch {
        pages: chain()
            .into_iter()
            .map(|(t, gpa, page)| Page::with_contents(gpa, t, "chain", &page))
            .collect(),
        ..Default::default()
    };
    let measured = launch_digest(&launch).unwrap();
    assert_eq!(
        hex(&measured.digest),
        "2080ba6feeb6c6c354de1da63f8964990a20ffa16db59feab59bfd827095eb0e28e8603124e6402d9b7fc8ab47d62e38"
    );
    let listed: Vec<(u64, PageType)> = measured.pages.iter().map(|p| (p.gpa, p.page_type)).collect();
    let chained: Vec<(u64, PageType)> = chain().into_iter().map(|(t, gpa, _)| (gpa, t)).collect();
    assert_eq!(listed, chained);
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

/// covm's firmware metadata: SNP_SEC_MEM at the AP trampoline, the
/// secrets and CPUID pages, KERNEL_HASHES.
fn firmware_metadata() -> Vec<FirmwareSection> {
    [
        (0x8000, 1, SectionKind::SnpSecMem),
        (0x2000, 1, SectionKind::SnpSecrets),
        (0x3000, 1, SectionKind::Cpuid),
        (0x5000, 1, SectionKind::KernelHashes),
    ]
    .into_iter()
    .map(|(gpa, pages, kind)| FirmwareSection { gpa, pages, kind })
    .collect()
}

/// A launch shaped like covm's: a boot data page, a command line, a
/// firmware image at 1 MiB, the migration policy page; a bootstrap vCPU
/// in flat 32-bit mode and `vcpus - 1` others in their INIT state.
fn covm_like(vcpus: usize, metadata: Vec<FirmwareSection>) -> Launch {
    let mut launch = Launch {
        metadata,
        ..Default::default()
    };
    launch.add_normal(0, &[0xcf; 40], "boot GDT and IDT");
    launch.add_normal(0x20000, b"workload=hello\0", "command line");
    let image: Vec<u8> = (0..3 * PAGE_SIZE as u32 + 77).map(|i| (i * 13 % 256) as u8).collect();
    launch.add_normal(0x10_0000, &image, "payload image");
    launch
        .pages
        .push(Page::new(0x6000, PageType::Unmeasured, "migration policy"));
    let flat = |attrib| Segment::new(0x10, attrib, 0xffff_ffff, 0);
    let bsp = VcpuState {
        cs: Segment::new(0x8, 0xc9b, 0xffff_ffff, 0),
        ds: flat(0xc93),
        es: flat(0xc93),
        ss: flat(0xc93),
        gdtr: Segment::table(0x500, 31),
        cr0: 0x11,
        rip: 0x10_0000,
        rbx: 0x7000,
        rflags: 2,
        ..VcpuState::reset()
    };
    launch.vcpus = core::iter::once(bsp)
        .chain(core::iter::repeat_n(VcpuState::reset(), vcpus - 1))
        .collect();
    launch
}

#[test]
fn metadata_pages_in_order() {
    let launch = covm_like(2, firmware_metadata());
    let n = launch.pages.len();
    let mut cpuid = Box::new([0u8; PAGE_SIZE]);
    cpuid[0] = 7;
    cpuid[16] = 0xaa;
    let snp = SnpLaunch {
        vcpu_signature: 0xa00f11,
        kernel_hashes: None,
        cpuid_page: Some(cpuid.clone()),
    };
    let applied = snp.apply(launch.clone()).unwrap();
    assert_eq!(&applied.pages[..n], &launch.pages[..], "only appended");
    // Each added page with what the launch writes there: the CPUID table,
    // a zero secrets page; nothing for the ZERO pages.
    let zero = [0u8; PAGE_SIZE];
    let added: Vec<(u64, PageType, &str, Option<&[u8; PAGE_SIZE]>)> = applied.pages[n..]
        .iter()
        .map(|p| (p.gpa, p.page_type, p.what, p.contents.as_deref()))
        .collect();
    let expected = [
        (0x8000, PageType::Zero, SEC_MEM_WHAT, None),
        (0x2000, PageType::Secrets, SECRETS_WHAT, Some(&zero)),
        (0x3000, PageType::Cpuid, CPUID_WHAT, Some(&*cpuid)),
        (0x5000, PageType::Zero, NO_HASHES_WHAT, None),
    ];
    assert_eq!(added, expected);
    assert!(applied.vcpus.iter().all(|v| v.rdx == 0xa00f11));
    assert!(applied.vcpus.iter().all(|v| crate::vmsa::rdx(&v.to_vmsa()) == 0xa00f11));
    // The CPUID page's contents are not measured.
    let measured = launch_digest(&applied).unwrap();
    let without = SnpLaunch {
        cpuid_page: None,
        ..snp.clone()
    };
    assert_eq!(snp_launch_digest(&launch, &without).unwrap(), measured);
    assert_eq!(measured.pages.len(), n + 4 + 2);
    // Each type's entry: SECRETS and CPUID by type and address alone.
    let mut d = LaunchDigest::new();
    d.update_page(PageType::Secrets, 0x2000, &[0xff; PAGE_SIZE]);
    let mut e = LaunchDigest::new();
    e.update_page(PageType::Secrets, 0x2000, &[0; PAGE_SIZE]);
    assert_eq!(d, e);
    // Without additions or metadata: the launch's own digest.
    let bare = covm_like(2, vec![]);
    assert_eq!(
        snp_launch_digest(&bare, &SnpLaunch::default()).unwrap(),
        launch_digest(&bare).unwrap()
    );
    assert_ne!(
        snp_launch_digest(&launch, &SnpLaunch::default()).unwrap(),
        launch_digest(&launch).unwrap(),
        "the metadata pages"
    );
}

#[test]
fn kernel_hashes_page() {
    let hashes = KernelHashes::new(b"k", None, "");
    let snp = SnpLaunch {
        kernel_hashes: Some(hashes),
        ..Default::default()
    };
    // In the KERNEL_HASHES section's place.
    let launch = covm_like(1, firmware_metadata());
    let n = launch.pages.len();
    let applied = snp.apply(launch).unwrap();
    let page = &applied.pages[n + 3];
    assert_eq!(
        (page.gpa, page.page_type, page.what),
        (0x5000, PageType::Normal, HASHES_WHAT)
    );
    assert_eq!(page.contents.as_deref(), Some(&*hashes.page()));
    // Without metadata: after the launch's pages, at SEV_HASHES_GPA.
    let launch = covm_like(1, vec![]);
    let n = launch.pages.len();
    let applied = snp.apply(launch).unwrap();
    assert_eq!(applied.pages.len(), n + 1);
    let page = &applied.pages[n];
    assert_eq!((page.gpa, page.page_type), (SEV_HASHES_GPA, PageType::Normal));
    assert_eq!(&page.contents.as_ref().unwrap()[..176], &hashes.table());
    // With metadata but no KERNEL_HASHES section: refused.
    let mut metadata = firmware_metadata();
    metadata.pop();
    let err = snp.apply(covm_like(1, metadata)).unwrap_err();
    assert_eq!(err, MeasureError::NoHashesSection);
    assert!(err.to_string().contains("no KERNEL_HASHES section"), "{err}");
}

#[test]
fn refusals() {
    // A page the metadata asks for must be free.
    let mut taken = covm_like(1, firmware_metadata());
    taken.pages[0].gpa = 0x2000;
    let err = snp_launch_digest(&taken, &SnpLaunch::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot place the SEV-SNP secrets page at 0x2000: the image already loads that page"
    );
    // A measured page needs its contents.
    let mut unread = covm_like(1, vec![]);
    unread.pages[1].contents = None;
    assert_eq!(
        launch_digest(&unread).unwrap_err().to_string(),
        "the command line page at 0x20000 is measured, but the launch description has no contents for it"
    );
}

/// The kernel hashes files of a cross-check case.
struct Files<'a> {
    kernel: &'a Path,
    initrd: Option<&'a Path>,
    cmdline: &'a str,
}

/// This crate's SNP digest of `launch` with `snp`'s additions equals
/// sev-snp-measure's over the same sequence, built from its own parts
/// (VMSAs from its save area and CPU_SIGS, the hashes page from the
/// files). None when sev-snp-measure is missing.
fn agree(launch: &Launch, vcpu_type: Option<&str>, files: Option<&Files>, n: usize) -> Option<String> {
    let snp = SnpLaunch {
        vcpu_signature: vcpu_type.map_or(0, |t| vcpu_type_signature(t).unwrap()),
        kernel_hashes: files.map(|f| KernelHashes::from_files(f.kernel, f.initrd, f.cmdline).unwrap()),
        cpuid_page: None,
    };
    let applied = snp.apply(launch.clone()).unwrap();
    let ours = hex(&launch_digest(&applied).unwrap().digest);
    let hashes = files.map_or(HashFiles::default(), |f| HashFiles {
        kernel: Some(f.kernel),
        initrd: f.initrd,
        cmdline: f.cmdline,
    });
    let listing = std::env::temp_dir().join(format!("covm-measure-snp-{}-{n}.json", std::process::id()));
    let theirs = reference_digest(&applied, vcpu_type, &hashes, &listing);
    let _ = std::fs::remove_file(&listing);
    assert_eq!(ours, theirs?, "case {n}: {} vCPUs, {vcpu_type:?}", launch.vcpus.len());
    Some(ours)
}

/// The digest of launches shaped like covm's equals sev-snp-measure's:
/// 1 to 4 vCPUs, vCPU types and none, with and without metadata, with and
/// without the kernel hashes table (and its initrd). covm's tests repeat
/// this over its own launches.
#[test]
fn snp_digest_agrees_with_sev_snp_measure() {
    let dir = std::env::temp_dir().join(format!("covm-measure-hashes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (kernel, initrd) = (dir.join("kernel"), dir.join("initrd"));
    std::fs::write(&kernel, b"a kernel".repeat(1000)).unwrap();
    std::fs::write(&initrd, (0..9000u32).map(|i| (i * 31 % 256) as u8).collect::<Vec<u8>>()).unwrap();
    let with_initrd = Files {
        kernel: &kernel,
        initrd: Some(&initrd),
        cmdline: "console=ttyS0 quiet",
    };
    let bare = Files {
        kernel: &kernel,
        initrd: None,
        cmdline: "",
    };
    let cases: [(usize, Option<&str>, bool, Option<&Files>); 6] = [
        (1, Some("EPYC"), true, None),
        (2, None, true, None),
        (4, Some("EPYC-Genoa"), true, Some(&with_initrd)),
        (2, Some("EPYC-Milan"), false, Some(&bare)),
        (3, Some("EPYC-Turin"), false, None),
        (1, Some("EPYC-Rome"), true, Some(&bare)),
    ];
    let mut seen = std::collections::HashSet::new();
    for (n, (vcpus, vcpu_type, metadata, files)) in cases.into_iter().enumerate() {
        let metadata = if metadata { firmware_metadata() } else { vec![] };
        let Some(digest) = agree(&covm_like(vcpus, metadata), vcpu_type, files, n) else {
            break;
        };
        assert!(seen.insert(digest), "case {n} repeats an earlier digest");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
