//! covm's launch measurements over its own launches: the built-in
//! firmware, small ELF kernels and their metadata, as the launch loads
//! them, against sev-snp-measure and the independent MRTD computation
//! (`covm_measure::testing`), and what an SEV-SNP launch writes.

use super::*;
use crate::config::Payload;
use crate::platform::hex;
use crate::platform::image::bsp_state;
use crate::platform::tdx::plan::{TdxOptions, TdxPlan};
use crate::platform::{MigrationPolicy, PlatformConfig};
use covm_measure::kernel_hashes::{KernelHashes, SEV_HASHES_GPA};
use covm_measure::snp::{CPUID_WHAT, HASHES_WHAT, NO_HASHES_WHAT, SECRETS_WHAT, SEC_MEM_WHAT};
use covm_measure::testing::{independent_mrtd, reference_digest, HashFiles};
use covm_measure::vmsa::{rdx, vcpu_type_signature, VcpuState};
use covm_measure::{PageType, PAGE_SIZE};
use std::path::{Path, PathBuf};
use vm_memory::{Bytes, GuestAddress};

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
    let (applied, ours) = snp_launch(&scratch, &loaded.image, &launch).unwrap();
    assert_eq!(
        ours,
        measure_sev_snp(&config, &launch).unwrap(),
        "the same as covm measure's path"
    );
    // The vCPU states behind the image's VMSAs: the agent's vCPU too.
    let states: Vec<VcpuState> = (0..loaded.image.vcpus.len())
        .map(|i| match i {
            0 => bsp_state(&loaded.bsp),
            _ => VcpuState::reset(),
        })
        .collect();
    assert_eq!(states.len(), usize::from(case.vcpus) + 1);
    assert_eq!(loaded.image.vcpus, states);
    let vmsas = ours.pages.iter().filter(|p| p.page_type == PageType::Vmsa).count();
    assert_eq!(vmsas, states.len(), "one VMSA entry per vCPU");
    // The firmware (built in or as a PVH kernel) carries metadata: its
    // secrets and CPUID pages are in the sequence; the tiny ELF has none.
    let firmware = case.kernel.as_ref().is_none_or(|k| k.ends_with("firmware.elf"));
    for t in [PageType::Secrets, PageType::Cpuid] {
        assert_eq!(applied.pages.iter().any(|p| p.page_type == t), firmware, "{t:?} page");
    }
    let hashes = HashFiles {
        kernel: case.kernel.as_deref(),
        initrd: case.initrd.as_deref(),
        cmdline: case.cmdline,
    };
    let theirs = reference_digest(&applied, case.vcpu_type, &hashes, &dir.join(format!("case{n}.json")))?;
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
        snp_launch(&scratch, &bare, &SnpLaunch::default()).unwrap().1,
        image_digest(&scratch, &loaded.image).unwrap(),
        "no additions: emulated_cvm's"
    );
    assert_ne!(
        plain,
        image_digest(&scratch, &loaded.image).unwrap(),
        "the metadata pages"
    );
    let plain = image_digest(&scratch, &loaded.image).unwrap();
    let hashes = KernelHashes::new(b"k", None, "");
    let launch = SnpLaunch {
        vcpu_signature: 0xa00f11,
        kernel_hashes: Some(hashes),
        cpuid_page: None,
    };
    let (applied, snp) = snp_launch(&scratch, &loaded.image, &launch).unwrap();
    let mut table = [0u8; 176];
    scratch.read_slice(&mut table, GuestAddress(SEV_HASHES_GPA)).unwrap();
    assert_eq!(table, hashes.table(), "the page is written for the launch to update");
    assert!(applied.vcpus.iter().all(|v| rdx(&v.to_vmsa()) == 0xa00f11));
    // covm-measure's digest of the loaded pages with the additions.
    let described = image::with_contents(&scratch, &loaded.image).unwrap();
    assert_eq!(snp, covm_measure::snp::snp_launch_digest(&described, &launch).unwrap());
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
    let err = snp_launch(&scratch, &taken, &launch).unwrap_err();
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
    let (applied, measured) = snp_launch(&scratch, &loaded.image, &launch).unwrap();
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
    assert_eq!(snp_launch(&scratch2, &loaded2.image, &other).unwrap().1, measured);
    // emulated_cvm measures the image alone: none of these pages.
    let emulated = image_digest(&scratch, &loaded.image).unwrap();
    assert!(emulated
        .pages
        .iter()
        .all(|p| ![0x2000, 0x3000, 0x5000, 0x8000].contains(&p.gpa)));
    // TDX ignores the metadata.
    let mut tdx = config.clone();
    tdx.platform = PlatformConfig::Tdx(crate::platform::TdxConfig {
        policy: MigrationPolicy::empty(),
    });
    let td = measure_tdx(&tdx).unwrap();
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

/// A confidential configuration of the built-in firmware.
fn firmware_config(vcpus: u8, cmdline: &str) -> VmConfig {
    confidential_config(vcpus, Payload::BuiltinFirmware, cmdline)
}

#[test]
fn covm_launch_pages() {
    let td = measure_tdx(&firmware_config(2, "workload=hello")).unwrap();
    let last = td.pages.last().unwrap();
    assert_eq!((last.gpa, last.extended, last.what), (TD_HOB_GPA, false, "TD HOB"));
    let policy = td.pages.iter().find(|p| p.what == "migration policy").unwrap();
    assert_eq!((policy.gpa, policy.extended), (0x6000, false));
    assert!(td
        .pages
        .iter()
        .filter(|p| p.what == "payload image")
        .all(|p| p.extended));
    // The vCPU count does not enter MRTD; the command line does.
    assert_eq!(
        td.mrtd,
        measure_tdx(&firmware_config(4, "workload=hello")).unwrap().mrtd
    );
    assert_ne!(
        td.mrtd,
        measure_tdx(&firmware_config(2, "workload=dirty")).unwrap().mrtd
    );
}

/// covm's MRTD follows exactly the adds and extends the TDX launch
/// plan (`platform::tdx::plan`) makes for the same image and HOB.
/// covm's MRTD follows exactly the adds and extends the TDX launch
/// plan (`platform::tdx::plan`) makes for the same image and HOB.
#[test]
fn pages_are_the_tdx_plans() {
    let config = firmware_config(2, "workload=hello");
    let scratch = memory::allocate(config.memory.size).unwrap();
    let loaded = image::load(&scratch, &config).unwrap();
    let td = image_mrtd(&scratch, &loaded.image).unwrap();
    let options = TdxOptions::new([0; 32], vec![], TD_HOB_GPA);
    let plan = TdxPlan::new(&scratch, &loaded.image, options).unwrap();
    let planned: Vec<(u64, bool)> = plan
        .regions
        .iter()
        .flat_map(|r| (0..r.pages).map(move |i| (r.gpa + i * PAGE_SIZE as u64, r.measure)))
        .collect();
    let ours: Vec<(u64, bool)> = td.pages.iter().map(|p| (p.gpa, p.extended)).collect();
    assert_eq!(ours, planned);
}

/// covm's MRTD of its launch (the built-in firmware, and a small ELF
/// kernel with page tables) equals an independent Python computation
/// written from the ABI text over the same pages: covm writes each
/// page's address, whether it is extended, and its bytes; Python adds
/// and extends them itself. Skips, saying so, without python3.
#[test]
fn mrtd_agrees_with_an_independent_python_computation() {
    let dir = std::env::temp_dir().join(format!("covm-mrtd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("kernel.elf");
    std::fs::write(&kernel, tiny_elf()).unwrap();
    let kernel_payload = Payload::Kernel {
        kernel: kernel.clone(),
        initramfs: None,
    };
    let kernel_config = confidential_config(1, kernel_payload, "console=ttyS0");
    for config in [firmware_config(2, "workload=hello"), kernel_config] {
        let scratch = memory::allocate(config.memory.size).unwrap();
        let loaded = image::load(&scratch, &config).unwrap();
        let td = image_mrtd(&scratch, &loaded.image).unwrap();
        let described = image::with_contents(&scratch, &loaded.image).unwrap();
        let Some(theirs) = independent_mrtd(&described, &td, &dir.join("pages.txt")) else {
            break;
        };
        assert_eq!(hex(&td.mrtd), theirs);
    }
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
    let (config, _, _) = VmConfig::for_measure(&args("sev_snp=on,policy=0x70000,vcpu_type=EPYC-Genoa"), host).unwrap();
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
        "a sev_snp VM has at most 32 vCPUs, its migration agent's 1 included: 32 for the guest are too many"
    );
    // The agent's vCPUs are measured too (one VMSA each).
    let (one, _, _) = VmConfig::for_measure(&args("sev_snp=on"), host).unwrap();
    let (three, _, _) = VmConfig::for_measure(&args("sev_snp=on,agent_vcpus=3"), host).unwrap();
    assert_eq!((one.kvm_vcpus(), three.kvm_vcpus()), (2, 4));
    assert!(refused("sev_snp=on,agent_vcpus=0").contains("a number from 1 to 24"));
    assert!(refused("sev_snp=on,agent_vcpus=25").contains("a number from 1 to 24"));
}
