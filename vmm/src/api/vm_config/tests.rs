//! vm.create's VmConfig JSON: CH's fields, covm's, refusals, round trips.

use super::*;
use crate::platform::PlatformConfig;

const RAM: u64 = 1 << 40;

fn parse_str(s: &str) -> Result<VmConfig, String> {
    parse(s.as_bytes(), RAM)
}

#[test]
fn minimal_config_boots_builtin_firmware() {
    let c = parse_str(r#"{"payload": {"cmdline": "workload=hello"}}"#).unwrap();
    assert_eq!(c.payload, Payload::BuiltinFirmware);
    assert_eq!(c.cmdline, "workload=hello");
    assert_eq!(c.cpus.boot_vcpus, 1);
    assert_eq!(c.memory.size, 512 << 20);
    assert_eq!(c.serial, SerialMode::Null);
}

#[test]
fn full_ch_style_config() {
    let c = parse_str(
        r#"{"cpus": {"boot_vcpus": 2, "max_vcpus": 2, "kvm_hyperv": false, "nested": true},
            "memory": {"size": 268435456, "shared": false, "hugepages": false, "thp": true},
            "payload": {"cmdline": "workload=dirty mib=16"},
            "serial": {"mode": "File", "file": "/tmp/s.txt"}, "console": {"mode": "Off"},
            "disks": [], "net": null, "iommu": false, "watchdog": false,
            "platform": {"tdx": false, "sev_snp": false}}"#,
    )
    .unwrap();
    assert_eq!(c.cpus.boot_vcpus, 2);
    assert_eq!(c.memory.size, 256 << 20);
    assert_eq!(c.serial, SerialMode::File("/tmp/s.txt".into()));
}

#[test]
fn unsupported_fields_are_refused_by_name() {
    let e = parse_str(r#"{"payload": {}, "balloon": {"size": 1048576}}"#).unwrap_err();
    assert!(e.contains("'balloon.size'"), "{e}");
    let c = parse_str(r#"{"payload": {}, "vsock": {"cid": 3, "socket": "/tmp/v"}}"#).unwrap();
    assert_eq!(c.devices.vsock_id().as_deref(), Some("_vsock0"));
    let e = parse_str(r#"{"payload": {}, "vsock": {"cid": 3, "socket": "/tmp/v", "iommu": true}}"#).unwrap_err();
    assert!(e.contains("vsock.iommu"), "{e}");
    let e = parse_str(r#"{"payload": {}, "net": [{"tap": "tap0", "vhost_user": true}]}"#).unwrap_err();
    assert!(e.contains("'net[0].vhost_user'"), "{e}");
    let e = parse_str(r#"{"payload": {}, "disks": [{"path": "/x", "vhost_user": true}]}"#).unwrap_err();
    assert!(e.contains("'disks[0].vhost_user'"), "{e}");
    let e = parse_str(r#"{"payload": {}, "memory": {"size": 268435456, "hugepages": true}}"#).unwrap_err();
    assert!(e.contains("'memory.hugepages'"), "{e}");
    // The hardware platforms are probed as --platform probes them: on
    // this machine the message names what is missing.
    let e = parse_str(r#"{"payload": {}, "platform": {"sev_snp": true}}"#).unwrap_err();
    match crate::platform::snp::probe_snp() {
        Err(missing) => assert_eq!(
            e,
            format!(
                "field 'platform.sev_snp' cannot be honoured: {missing}. platform.emulated_cvm is covm's \
                 emulated confidential platform, without hardware protection"
            )
        ),
        Ok(()) => assert!(e.contains("platform.sev_snp needs platform.migration_policy"), "{e}"),
    }
    let e = parse_str(r#"{"payload": {}, "platform": {"tdx": true}}"#).unwrap_err();
    match crate::platform::tdx::probe_tdx() {
        Err(missing) => {
            assert!(e.starts_with("field 'platform.tdx' cannot be honoured: "), "{e}");
            assert!(e.contains(&missing.to_string()), "{e}");
        }
        Ok(()) => assert!(e.contains("platform.tdx needs platform.migration_policy"), "{e}"),
    }
    let e = parse_str(r#"{"payload": {"host_data": "ab"}}"#).unwrap_err();
    assert!(e.contains("'payload.host_data'"), "{e}");
}

#[test]
fn fields_ch_does_not_define_are_refused() {
    let e = parse_str(r#"{"payload": {}, "frobnicate": 1}"#).unwrap_err();
    assert!(e.contains("unknown field `frobnicate`"), "{e}");
    let e = parse_str(r#"{"payload": {}, "cpus": {"boot_vcpus": 1, "sockets": 2}}"#).unwrap_err();
    assert!(e.contains("unknown field `cpus.sockets`"), "{e}");
    let e = parse_str(r#"{"cpus": {"boot_vcpus": 1}}"#).unwrap_err();
    assert!(e.contains("missing field `payload`"), "{e}");
    assert!(parse_str("not json").unwrap_err().starts_with("invalid VmConfig"));
}

#[test]
fn values_are_checked_like_the_command_line() {
    assert!(parse_str(r#"{"payload": {}, "cpus": {"boot_vcpus": 33}}"#)
        .unwrap_err()
        .contains("1 to 32"));
    assert!(
        parse_str(r#"{"payload": {}, "cpus": {"boot_vcpus": 2, "max_vcpus": 4}}"#)
            .unwrap_err()
            .contains("hotplug")
    );
    assert!(parse_str(r#"{"payload": {}, "memory": {"size": 1000}}"#)
        .unwrap_err()
        .contains("memory.size=1000"));
    let e = parse(br#"{"payload": {}, "memory": {"size": 1073741824}}"#, 1 << 29).unwrap_err();
    assert!(e.contains("larger than this host"), "{e}");
    let e = parse_str(r#"{"payload": {"kernel": "/nonexistent/k"}}"#).unwrap_err();
    assert!(e.starts_with("payload.kernel: cannot read /nonexistent/k"), "{e}");
    let e = parse_str(r#"{"payload": {}, "serial": {"mode": "Pty"}}"#).unwrap_err();
    assert!(e.contains("serial.mode Pty"), "{e}");
}

fn emulated(extra: &str) -> String {
    format!(
        r#"{{"payload": {{"cmdline": "workload=hello"}}, "platform": {{"emulated_cvm": true{extra},
            "migration_policy": {}}}}}"#,
        crate::platform::policy::tests::valid_json()
    )
}

#[test]
fn emulated_platform_and_its_policy() {
    let c = parse_str(&emulated(r#", "root_key": "/k/root.key""#)).unwrap();
    let PlatformConfig::EmulatedCvm(e) = &c.platform else {
        panic!("{:?}", c.platform)
    };
    assert_eq!(e.root_key, Some("/k/root.key".into()));
    assert_eq!(e.policy.version(), 3);
    // Through vm.info's JSON (and a migration) and back: the same
    // platform, the same policy bytes, so the same measurement.
    let json = serde_json::to_vec(&to_json(&c)).unwrap();
    assert_eq!(parse(&json, RAM).unwrap(), c);
    let info = serde_json::to_value(to_json(&c)).unwrap();
    assert_eq!(info["platform"]["emulated_cvm"], true);
    assert_eq!(info["platform"]["root_key"], "/k/root.key");
    assert_eq!(info["platform"]["migration_policy"]["version"], 3);
    assert!(parse_str(&emulated("")).is_ok());
}

/// `platform.agent_vcpus` gives the migration agent more vCPUs: counted
/// with the guest's, carried through vm.info's JSON (so a migration's
/// destination has as many), refused without a confidential platform.
#[test]
fn the_agents_vcpus_travel_with_the_platform() {
    let c = parse_str(&emulated(r#", "agent_vcpus": 3"#)).unwrap();
    assert_eq!((c.cpus.boot_vcpus, c.cpus.agent_vcpus, c.kvm_vcpus()), (1, 3, 4));
    let json = serde_json::to_value(to_json(&c)).unwrap();
    assert_eq!(json["platform"]["agent_vcpus"], 3);
    assert_eq!(parse(&serde_json::to_vec(&json).unwrap(), RAM).unwrap(), c);
    assert_eq!(
        parse_str(&emulated("")).unwrap().kvm_vcpus(),
        2,
        "one agent vCPU by default"
    );
    for (extra, error) in [
        (
            r#", "agent_vcpus": 0"#,
            "platform.agent_vcpus must be from 1 to 24, not 0",
        ),
        (r#", "agent_vcpus": "2""#, "platform.agent_vcpus must be from 1 to 24"),
    ] {
        let e = parse_str(&emulated(extra)).unwrap_err();
        assert!(e.contains(error), "{e}");
    }
    let e = parse_str(r#"{"payload": {}, "platform": {"agent_vcpus": 2}}"#).unwrap_err();
    assert!(e.contains("platform.agent_vcpus needs a confidential platform"), "{e}");
    let e = parse_str(&format!(
        r#"{{"payload": {{}}, "cpus": {{"boot_vcpus": 30}}, "platform": {{"emulated_cvm": true, "agent_vcpus": 3,
            "migration_policy": {}}}}}"#,
        crate::platform::policy::tests::valid_json()
    ))
    .unwrap_err();
    assert!(e.contains("at most 32 vCPUs, its migration agent's 3 included"), "{e}");
}

/// vm.create and the command line share the platform rule: a relative
/// root key becomes absolute in both (they had drifted).
#[test]
fn a_relative_root_key_becomes_absolute_as_on_the_command_line() {
    let c = parse_str(&emulated(r#", "root_key": "keys/root.key""#)).unwrap();
    let PlatformConfig::EmulatedCvm(e) = &c.platform else {
        panic!("{:?}", c.platform)
    };
    let expected = std::env::current_dir().unwrap().join("keys/root.key");
    assert_eq!(e.root_key.as_deref(), Some(expected.as_path()));
}

#[test]
fn emulated_platform_refusals_name_the_field() {
    let policy = crate::platform::policy::tests::valid_json();
    let cases = [
        (
            r#"{"payload": {}, "platform": {"emulated_cvm": true}}"#.to_string(),
            "platform.emulated_cvm needs platform.migration_policy",
        ),
        (
            format!(r#"{{"payload": {{}}, "platform": {{"migration_policy": {policy}}}}}"#),
            "platform.migration_policy needs a confidential platform",
        ),
        (
            r#"{"payload": {}, "platform": {"root_key": "/k"}}"#.to_string(),
            "platform.root_key needs platform.emulated_cvm: true",
        ),
        (
            r#"{"payload": {}, "platform": {"emulated_cvm": "yes"}}"#.to_string(),
            "platform.emulated_cvm must be true or false",
        ),
        (
            r#"{"payload": {}, "platform": {"emulated_cvm": true, "root_key": 3}}"#.to_string(),
            "platform.root_key must be a file path",
        ),
        (
            r#"{"payload": {}, "platform": {"emulated_cvm": true, "migration_policy": {"version": 1}}}"#.to_string(),
            "platform.migration_policy: missing field `allowed_platforms`",
        ),
        (
            r#"{"payload": {}, "platform": {"emulated_cvm": true, "migration_policy": {"version": 1,
                "allowed_platforms": ["sgx"], "allowed_measurements": []}}}"#
                .to_string(),
            "platform.migration_policy: allowed_platforms[0]: unknown platform 'sgx'",
        ),
        (
            format!(
                r#"{{"payload": {{"kernel": "/etc/hostname"}}, "platform": {{"emulated_cvm": true,
                    "migration_policy": {policy}}}}}"#
            ),
            "not payload.kernel",
        ),
    ];
    for (body, needle) in cases {
        let e = parse_str(&body).unwrap_err();
        assert!(e.contains(needle), "expected {needle:?} in {e:?}");
    }
}

fn snp_json(extra: &str) -> String {
    format!(
        r#"{{"payload": {{"cmdline": "workload=hello"}}, "platform": {{"sev_snp": true{extra},
            "migration_policy": {}}}}}"#,
        crate::platform::policy::tests::valid_json()
    )
}

fn parse_with(body: &str, probe: &dyn Fn(&str) -> Result<(), Unavailable>) -> Result<VmConfig, String> {
    let json: VmConfigJson = serde_json::from_str(body).map_err(|e| e.to_string())?;
    to_vm_config_probed(json, RAM, probe)
}

/// On a host that passes the probe, `platform.sev_snp` is an SEV-SNP
/// VM with its guest policy and vCPU type, and round-trips through
/// vm.info's JSON; so is `platform.tdx`, a TD.
#[test]
fn sev_snp_on_a_host_that_has_it() {
    let present = |_: &str| Ok(());
    let c = parse_with(
        &snp_json(r#", "policy": "0x70000", "vcpu_type": "EPYC-Rome""#),
        &present,
    )
    .unwrap();
    let PlatformConfig::SevSnp(snp) = &c.platform else {
        panic!("{:?}", c.platform)
    };
    assert_eq!(
        (snp.guest_policy, snp.vcpu_type.as_deref()),
        (0x70000, Some("EPYC-Rome"))
    );
    assert_eq!(snp.policy.version(), 3);
    let json = serde_json::to_string(&to_json(&c)).unwrap();
    assert_eq!(parse_with(&json, &present).unwrap(), c);
    let info = serde_json::to_value(to_json(&c)).unwrap();
    assert_eq!(info["platform"]["sev_snp"], true);
    assert_eq!(info["platform"]["policy"], "0x70000");
    let default = parse_with(&snp_json(""), &present).unwrap();
    assert!(matches!(&default.platform, PlatformConfig::SevSnp(s) if s.guest_policy == 0x30000));
    let numeric = parse_with(&snp_json(r#", "policy": 196608"#), &present).unwrap();
    assert!(matches!(&numeric.platform, PlatformConfig::SevSnp(s) if s.guest_policy == 0x30000));

    let refused = |body: &str| parse_with(body, &present).unwrap_err();
    assert!(refused(&snp_json(r#", "policy": "0x10000""#)).starts_with("platform.policy: guest policy 0x10000"));
    assert!(refused(&snp_json(r#", "vcpu_type": "486""#)).contains("unknown vCPU type '486'"));
    assert!(refused(&snp_json(r#", "emulated_cvm": true"#)).contains("not both"));
    assert!(refused(&snp_json(r#", "root_key": "/k""#)).contains("platform.root_key needs platform.emulated_cvm"));
    assert!(refused(r#"{"payload": {}, "platform": {"sev_snp": true}}"#)
        .starts_with("platform.sev_snp needs platform.migration_policy"));
    assert!(refused(r#"{"payload": {}, "platform": {"sev_snp": "yes"}}"#)
        .starts_with("platform.sev_snp must be true or false"));
    assert_eq!(
        refused(&emulated(r#", "policy": "0x30000""#)),
        "platform.policy and platform.vcpu_type need platform.sev_snp: true"
    );
    let tdx_json = snp_json("").replace("\"sev_snp\"", "\"tdx\"");
    let c = parse_with(&tdx_json, &present).unwrap();
    let PlatformConfig::Tdx(tdx) = &c.platform else {
        panic!("{:?}", c.platform)
    };
    assert_eq!(tdx.policy.version(), 3);
    let json = serde_json::to_string(&to_json(&c)).unwrap();
    assert_eq!(parse_with(&json, &present).unwrap(), c);
    assert_eq!(serde_json::to_value(to_json(&c)).unwrap()["platform"]["tdx"], true);
    assert!(refused(r#"{"payload": {}, "platform": {"tdx": true}}"#)
        .starts_with("platform.tdx needs platform.migration_policy"));
    assert_eq!(
        refused(&tdx_json.replace("\"tdx\": true", "\"tdx\": true, \"sev_snp\": true")),
        "give platform.sev_snp or platform.tdx, not both"
    );
    assert_eq!(
        refused(&tdx_json.replace("\"tdx\": true", "\"tdx\": true, \"policy\": \"0x30000\"")),
        "platform.policy and platform.vcpu_type need platform.sev_snp: true"
    );
    // Lacking: the probe's words, before anything else is read.
    let lacking = |key: &str| {
        Err(Unavailable {
            what: "AMD SEV-SNP",
            missing: vec![format!("no {key}")],
        })
    };
    assert_eq!(
        parse_with(&snp_json(r#", "policy": "junk""#), &lacking).unwrap_err(),
        "field 'platform.sev_snp' cannot be honoured: AMD SEV-SNP is not available on this machine: no \
         sev_snp. platform.emulated_cvm is covm's emulated confidential platform, without hardware protection"
    );
}

#[test]
fn round_trips_through_info_json() {
    let c =
        parse_str(r#"{"cpus": {"boot_vcpus": 2}, "payload": {"cmdline": "x=1"}, "serial": {"mode": "Tty"}}"#).unwrap();
    let json = serde_json::to_vec(&to_json(&c)).unwrap();
    assert_eq!(parse(&json, RAM).unwrap(), c);
}
