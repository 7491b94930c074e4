//! The configuration's tests: the command line into a VmConfig, each
//! option string, the platform and its policy.

use super::parse::parse_platform_probed;
use super::*;
use clap::Parser;

fn cli(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("covm").chain(args.iter().copied())).unwrap()
}

#[test]
fn dirty_tracking_modes_and_ring_sizes() {
    assert_eq!(parse_dirty_tracking("mode=log").unwrap(), DirtyTracking::Log);
    assert_eq!(
        parse_dirty_tracking("mode=ring").unwrap(),
        DirtyTracking::Ring {
            entries: crate::dirty::ring::DEFAULT_RING_ENTRIES
        }
    );
    assert_eq!(
        parse_dirty_tracking("mode=ring,ring_entries=512").unwrap(),
        DirtyTracking::Ring { entries: 512 }
    );
    for bad in [
        "mode=ring,ring_entries=1000",
        "mode=ring,ring_entries=256",
        "mode=ring,ring_entries=x",
    ] {
        let e = parse_dirty_tracking(bad).unwrap_err().to_string();
        assert!(
            e.contains("ring_entries") && e.contains("power of two from 512"),
            "{bad}: {e}"
        );
    }
    assert!(parse_dirty_tracking("mode=log,ring_entries=512").is_err());
    assert!(parse_dirty_tracking("mode=bitmap")
        .unwrap_err()
        .to_string()
        .contains("log or ring"));
    assert_eq!(check_ring_entries(1 << 20), Ok(1 << 20));
    assert!(check_ring_entries((1 << 20) + 1).is_err());
}

#[test]
fn defaults_boot_builtin_firmware() {
    let c = VmConfig::from_cli(&cli(&[]), 1 << 40).unwrap();
    assert_eq!(c.cpus.boot_vcpus, 1);
    assert_eq!(c.memory.size, 512 << 20);
    assert_eq!(c.payload, Payload::BuiltinFirmware);
    assert_eq!(c.serial, SerialMode::Tty);
}

#[test]
fn cpus() {
    assert_eq!(parse_cpus("boot=4").unwrap().boot_vcpus, 4);
    assert_eq!(parse_cpus("boot=2,max=2").unwrap().boot_vcpus, 2);
    assert!(parse_cpus("boot=0").unwrap_err().to_string().contains("from 1 to 32"));
    assert!(parse_cpus("boot=33").is_err());
    assert!(parse_cpus("boot=2,max=4").unwrap_err().to_string().contains("hotplug"));
    assert!(parse_cpus("cores=2")
        .unwrap_err()
        .to_string()
        .contains("unknown key 'cores'"));
}

#[test]
fn memory() {
    assert_eq!(parse_memory("size=1G", 1 << 40).unwrap().size, 1 << 30);
    let e = parse_memory("size=lots", 1 << 40).unwrap_err().to_string();
    assert!(e.contains("size=lots") && e.contains("not a size"), "{e}");
    let e = parse_memory("size=64G", 8 << 30).unwrap_err().to_string();
    assert_eq!(e, "--memory: size 64.0 GiB is larger than this host's 8.0 GiB of RAM");
    assert!(parse_memory("size=1M", 1 << 40)
        .unwrap_err()
        .to_string()
        .contains("at least 16 MiB"));
}

#[test]
fn serial_modes() {
    assert_eq!(parse_serial("tty").unwrap(), SerialMode::Tty);
    assert_eq!(parse_serial("off").unwrap(), SerialMode::Off);
    assert_eq!(parse_serial("null").unwrap(), SerialMode::Null);
    assert_eq!(parse_serial("file=/tmp/x").unwrap(), SerialMode::File("/tmp/x".into()));
    assert!(parse_serial("file=").is_err());
    assert!(parse_serial("tty,off").is_err());
    assert!(parse_serial("pty")
        .unwrap_err()
        .to_string()
        .contains("unknown key 'pty'"));
}

#[test]
fn api_socket_forms() {
    assert_eq!(parse_api_socket("/tmp/s").unwrap(), ApiSocket::Path("/tmp/s".into()));
    assert_eq!(
        parse_api_socket("path=/tmp/s").unwrap(),
        ApiSocket::Path("/tmp/s".into())
    );
    assert_eq!(parse_api_socket("fd=3").unwrap(), ApiSocket::Fd(3));
    assert!(parse_api_socket("fd=x").is_err());
    assert!(parse_api_socket("path=/a,fd=3").is_err());
}

#[test]
fn platform_keys() {
    assert!(parse_platform("serial_number=abc").is_ok());
    assert_eq!(parse_platform("sev_snp=off").unwrap(), PlatformOption::default());
    assert!(parse_platform("bogus=1")
        .unwrap_err()
        .to_string()
        .contains("unknown key 'bogus'"));
}

/// `sev_snp=on` and `tdx=on` say what the host lacks; on a host that
/// has it all, `sev_snp=on` is taken with its keys and `tdx=on` is taken.
#[test]
fn hardware_platforms_are_probed() {
    use crate::platform::hardware::host::Unavailable;
    use crate::platform::{snp, tdx};
    let lacking = |key: &str| {
        Err(Unavailable {
            what: if key == "sev_snp" { "AMD SEV-SNP" } else { "Intel TDX" },
            missing: vec![format!("{key} piece one"), "piece two".into()],
        })
    };
    let refused = |text: &str| parse_platform_probed(text, &lacking).unwrap_err().to_string();
    assert_eq!(
        refused("sev_snp=on"),
        "--platform: invalid sev_snp=on: AMD SEV-SNP is not available on this machine: sev_snp piece one; \
         piece two. emulated_cvm=on runs covm's emulated confidential platform instead, without hardware \
         protection"
    );
    assert_eq!(
        refused("tdx=on"),
        "--platform: invalid tdx=on: Intel TDX is not available on this machine: tdx piece one; piece two. \
         emulated_cvm=on runs covm's emulated confidential platform instead, without hardware protection"
    );
    // The probe comes first: bad SNP keys on a host without SNP hear
    // what the host lacks.
    assert!(refused("sev_snp=on,policy=junk").contains("sev_snp piece one"));
    let present = |_: &str| Ok(());
    let parsed = |text: &str| parse_platform_probed(text, &present);
    let refused = |text: &str| parsed(text).unwrap_err().to_string();
    assert_eq!(
        parsed("sev_snp=on").unwrap().sev_snp,
        Some(SnpOption {
            guest_policy: 0x30000,
            vcpu_type: None,
            id: None,
        })
    );
    assert_eq!(
        parsed("sev_snp=on,policy=0x70000,vcpu_type=EPYC-Genoa")
            .unwrap()
            .sev_snp,
        Some(SnpOption {
            guest_policy: 0x70000,
            vcpu_type: Some("EPYC-Genoa".into()),
            id: None,
        })
    );
    assert_eq!(
        refused("sev_snp=on,policy=0x10000"),
        "--platform: invalid policy=0x10000: guest policy 0x10000 has bit 17 clear, which the SNP firmware \
         requires set"
    );
    assert!(refused("sev_snp=on,vcpu_type=Pentium").contains("unknown vCPU type 'Pentium'"));
    assert_eq!(
        refused("emulated_cvm=on,policy=0x30000"),
        "--platform: invalid policy=0x30000: only sev_snp=on has a guest policy, vCPU type and ID block"
    );
    assert_eq!(
        parsed("tdx=on").unwrap(),
        PlatformOption {
            tdx: true,
            ..Default::default()
        }
    );
    assert_eq!(
        refused("tdx=on,policy=0x30000"),
        "--platform: invalid policy=0x30000: only sev_snp=on has a guest policy, vCPU type and ID block"
    );
    assert_eq!(
        refused("tdx=on,sev_snp=on"),
        "--platform: invalid tdx=on: give sev_snp=on or tdx=on, not both"
    );
    // Off, nothing is probed.
    let never = |key: &str| -> Result<(), Unavailable> { panic!("probed {key}") };
    assert_eq!(
        parse_platform_probed("sev_snp=off,tdx=off", &never).unwrap(),
        PlatformOption::default()
    );
    // On this machine the real probes say what is missing (or, on a host
    // that has it all, the platform is taken).
    match snp::probe_snp() {
        Err(missing) => {
            let message = parse_platform("sev_snp=on").unwrap_err().to_string();
            assert!(message.contains(&missing.to_string()), "{message}");
        }
        Ok(()) => assert!(parse_platform("sev_snp=on").unwrap().sev_snp.is_some()),
    }
    match tdx::probe_tdx() {
        Err(missing) => {
            let message = parse_platform("tdx=on").unwrap_err().to_string();
            assert!(message.contains(&missing.to_string()), "{message}");
        }
        Ok(()) => assert!(parse_platform("tdx=on").unwrap().tdx),
    }
}

#[test]
fn platform_option() {
    assert_eq!(
        parse_platform("emulated_cvm=on").unwrap(),
        PlatformOption {
            emulated_cvm: true,
            ..Default::default()
        }
    );
    assert_eq!(
        parse_platform("emulated_cvm,root_key=/k/root.key").unwrap(),
        PlatformOption {
            emulated_cvm: true,
            root_key: Some("/k/root.key".into()),
            ..Default::default()
        }
    );
    assert!(!parse_platform("emulated_cvm=off").unwrap().emulated_cvm);
    let refused = |text: &str| parse_platform(text).unwrap_err().to_string();
    // On this machine: whatever the probes find, refused by name.
    if crate::platform::snp::probe_snp().is_err() {
        assert!(refused("sev_snp=on").starts_with("--platform: invalid sev_snp=on: "));
    }
    if crate::platform::tdx::probe_tdx().is_err() {
        assert!(refused("tdx=on").starts_with("--platform: invalid tdx=on: "));
    }
    assert!(refused("emulated_cvm=maybe").contains("'maybe' is not on or off"));
    assert_eq!(
        refused("root_key=/k"),
        "--platform: invalid root_key=/k: only emulated_cvm=on has a root key"
    );
    assert_eq!(
        refused("emulated_cvm=on,root_key="),
        "--platform: invalid root_key=: needs a path"
    );
    assert!(refused("emulated_cvm=on,emulated_cvm=off").contains("given twice"));
    assert_eq!(
        parse_platform("emulated_cvm=on,agent_vcpus=4").unwrap().agent_vcpus,
        Some(4)
    );
    assert_eq!(
        refused("agent_vcpus=2"),
        "--platform: invalid agent_vcpus=2: only a confidential platform (emulated_cvm=on, sev_snp=on, tdx=on) \
         has a migration agent"
    );
    assert!(refused("emulated_cvm=on,agent_vcpus=0").contains("a number from 1 to 24"));
    assert!(refused("emulated_cvm=on,agent_vcpus=x").contains("a number from 1 to 24"));
}

/// `id_block=`/`id_auth=`/`author_key=`: both files of the right
/// sizes, read into the option; anything else refused by name.
#[test]
fn sev_snp_id_block_files() {
    let dir = std::env::temp_dir().join(format!("covm-idblock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, len: usize, byte: u8| {
        let path = dir.join(name);
        std::fs::write(&path, vec![byte; len]).unwrap();
        path.display().to_string()
    };
    let (block, auth) = (file("block", 96, 0xb1), file("auth", 4096, 0xa2));
    let (short, long) = (file("short", 95, 0), file("long", 4097, 0));
    let present = |_: &str| Ok(());
    let parsed = |text: &str| parse_platform_probed(text, &present);
    let refused = |text: &str| parsed(text).unwrap_err().to_string();
    let id = parsed(&format!("sev_snp=on,id_block={block},id_auth={auth},author_key=on"))
        .unwrap()
        .sev_snp
        .unwrap()
        .id
        .unwrap();
    assert_eq!((id.block, id.auth[4095], id.author_key), ([0xb1; 96], 0xa2, true));
    let id = parsed(&format!("sev_snp=on,id_block={block},id_auth={auth}"))
        .unwrap()
        .sev_snp
        .unwrap()
        .id;
    assert!(!id.unwrap().author_key);
    assert!(refused(&format!("sev_snp=on,id_block={short},id_auth={auth}"))
        .contains("95 bytes; an SEV-SNP ID block is 96 bytes"));
    assert!(refused(&format!("sev_snp=on,id_block={block},id_auth={long}"))
        .contains("4097 bytes; an ID authentication information structure is 4096 bytes"));
    assert!(refused(&format!("sev_snp=on,id_block={block}")).contains("needs id_auth=PATH too"));
    assert!(refused(&format!("sev_snp=on,id_auth={auth}")).contains("needs id_block=PATH too"));
    assert!(refused("sev_snp=on,author_key=on").contains("needs id_block=PATH and id_auth=PATH"));
    assert!(refused("sev_snp=on,id_block=/nonexistent/b,id_auth=/x").contains("cannot read it"));
    assert!(refused(&format!("emulated_cvm=on,id_block={block}")).contains("only sev_snp=on"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `sev_snp=on` (once probed) needs a policy and firmware, as
/// emulated_cvm does, and becomes an SEV-SNP configuration.
#[test]
fn sev_snp_platform_config() {
    let good = policy_file("snp", &crate::platform::policy::tests::valid_json());
    let snp = |guest_policy, vcpu_type: Option<&str>| PlatformOption {
        sev_snp: Some(SnpOption {
            guest_policy,
            vcpu_type: vcpu_type.map(str::to_string),
            id: None,
        }),
        ..Default::default()
    };
    let config = platform_config(
        snp(0x70000, Some("EPYC-Milan")),
        Some(&good),
        &Payload::BuiltinFirmware,
        PolicyNeed::Required,
    )
    .unwrap();
    let PlatformConfig::SevSnp(c) = &config else {
        panic!("{config:?}")
    };
    assert_eq!((c.guest_policy, c.vcpu_type.as_deref()), (0x70000, Some("EPYC-Milan")));
    assert_eq!(c.policy.version(), 3);
    assert_eq!(config.host_data(), Some(c.policy.host_data()));
    let refused = |option, policy: Option<&Path>, payload: &Payload| {
        platform_config(option, policy, payload, PolicyNeed::Required)
            .unwrap_err()
            .to_string()
    };
    assert!(refused(snp(0x30000, None), None, &Payload::BuiltinFirmware)
        .starts_with("--platform sev_snp=on needs --migration-policy PATH"));
    let kernel = Payload::Kernel {
        kernel: "/k".into(),
        initramfs: None,
    };
    assert!(refused(snp(0x30000, None), Some(&good), &kernel)
        .starts_with("--platform sev_snp=on boots firmware (the built-in one or --firmware), not --kernel"));
    let both = PlatformOption {
        emulated_cvm: true,
        ..snp(0x30000, None)
    };
    assert_eq!(
        refused(both, Some(&good), &Payload::BuiltinFirmware),
        "--platform: give emulated_cvm=on or sev_snp=on, not both"
    );
    std::fs::remove_dir_all(good.parent().unwrap()).unwrap();
}

/// `tdx=on` (once probed) needs a policy and firmware, as the other
/// confidential platforms do, and becomes a TDX configuration.
#[test]
fn tdx_platform_config() {
    let good = policy_file("tdx", &crate::platform::policy::tests::valid_json());
    let tdx = || PlatformOption {
        tdx: true,
        ..Default::default()
    };
    let config = platform_config(tdx(), Some(&good), &Payload::BuiltinFirmware, PolicyNeed::Required).unwrap();
    let PlatformConfig::Tdx(c) = &config else {
        panic!("{config:?}")
    };
    assert_eq!(c.policy.version(), 3);
    assert_eq!(config.host_data(), Some(c.policy.host_data()));
    let refused = |option, policy: Option<&Path>, payload: &Payload| {
        platform_config(option, policy, payload, PolicyNeed::Required)
            .unwrap_err()
            .to_string()
    };
    assert!(
        refused(tdx(), None, &Payload::BuiltinFirmware).starts_with("--platform tdx=on needs --migration-policy PATH")
    );
    let kernel = Payload::Kernel {
        kernel: "/k".into(),
        initramfs: None,
    };
    assert!(refused(tdx(), Some(&good), &kernel)
        .starts_with("--platform tdx=on boots firmware (the built-in one or --firmware), not --kernel"));
    let both = PlatformOption {
        emulated_cvm: true,
        ..tdx()
    };
    assert_eq!(
        refused(both, Some(&good), &Payload::BuiltinFirmware),
        "--platform: give emulated_cvm=on or tdx=on, not both"
    );
    std::fs::remove_dir_all(good.parent().unwrap()).unwrap();
}

/// A policy file in a scratch directory, removed by the caller.
fn policy_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("covm-config-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.json");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn platform_and_policy_go_together() {
    let good = policy_file("good", &crate::platform::policy::tests::valid_json());
    let bad = policy_file(
        "bad",
        r#"{"version": 1, "allowed_platforms": [], "allowed_measurements": [], "x": 1}"#,
    );
    let g = good.to_str().unwrap();
    let c = VmConfig::from_cli(
        &cli(&["--platform", "emulated_cvm=on,root_key=/r", "--migration-policy", g]),
        1 << 40,
    )
    .unwrap();
    let PlatformConfig::EmulatedCvm(e) = &c.platform else {
        panic!("{:?}", c.platform)
    };
    assert_eq!(e.root_key, Some("/r".into()));
    assert_eq!(e.policy.version(), 3);
    let refused = |args: &[&str]| VmConfig::from_cli(&cli(args), 1 << 40).unwrap_err().to_string();
    assert!(
        refused(&["--platform", "emulated_cvm=on"]).starts_with("--platform emulated_cvm=on needs --migration-policy")
    );
    assert!(refused(&["--migration-policy", g]).starts_with("--migration-policy needs a confidential platform"));
    assert!(refused(&["--platform", "emulated_cvm=off", "--migration-policy", g])
        .starts_with("--migration-policy needs a confidential platform"));
    let e = refused(&[
        "--platform",
        "emulated_cvm=on",
        "--migration-policy",
        bad.to_str().unwrap(),
    ]);
    assert!(
        e.starts_with(&format!("--migration-policy {}: unknown field `x`", bad.display())),
        "{e}"
    );
    let e = refused(&[
        "--platform",
        "emulated_cvm=on",
        "--migration-policy",
        "/nonexistent/p.json",
    ]);
    assert!(
        e.starts_with("--migration-policy: cannot read /nonexistent/p.json"),
        "{e}"
    );
    let e = refused(&[
        "--platform",
        "emulated_cvm=on",
        "--migration-policy",
        g,
        "--kernel",
        "/etc/hostname",
    ]);
    assert!(e.contains("not --kernel"), "{e}");
    for p in [good, bad] {
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }
}

#[test]
fn files_are_checked_and_named() {
    let e = VmConfig::from_cli(&cli(&["--kernel", "/nonexistent/vmlinux"]), 1 << 40).unwrap_err();
    assert!(
        e.to_string().starts_with("--kernel: cannot read /nonexistent/vmlinux"),
        "{e}"
    );
    let e = VmConfig::from_cli(&cli(&["--firmware", "/"]), 1 << 40).unwrap_err();
    assert!(e.to_string().contains("is a directory"), "{e}");
    let e = VmConfig::from_cli(&cli(&["--initramfs", "/etc/hostname"]), 1 << 40).unwrap_err();
    assert_eq!(e.to_string(), "--initramfs needs --kernel");
}
