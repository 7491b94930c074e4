//! The emulated confidential platform on real KVM: launch with a migration
//! policy and a root key, vm.info's platform block, `covm measure` agreeing
//! with the launch (command line, API and incoming VMs alike), evidence
//! from a launched VM, refusals, and a failed send-migration of a
//! confidential VM whose guest keeps running.

mod common;
use common::api::*;
use common::*;
use covm::config::VmConfig;
use covm::platform::{EmulatedCvmConfig, MigrationPolicy, PlatformConfig};
use covm::vm::Vm;
use covm_agent_protocol::{EmulatedRootVerifier, EvidenceVerifier};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

const POLICY_EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../resources/policies/emulated-cvm.json");
const WORKLOAD: &str = "workload=dirty mib=16 rate=32";

/// The VM options every test here launches and measures.
fn vm_args(cmdline: &str) -> Vec<String> {
    ["--cpus", "boot=2", "--memory", "size=256M", "--cmdline", cmdline]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn run(args: &[String]) -> Output {
    covm().args(args).output().unwrap()
}

/// `covm measure` with `platform` (the --platform value), `policy` and the
/// VM options of `cmdline`: its JSON and its standard error.
fn measure(platform: &str, policy: Option<&Path>, cmdline: &str) -> (Value, String) {
    let mut args = vec!["measure".to_string(), "--platform".into(), platform.into()];
    if let Some(policy) = policy {
        args.extend(["--migration-policy".into(), policy.display().to_string()]);
    }
    args.extend(vm_args(cmdline));
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "covm measure failed: {}", stderr(&out));
    let json = serde_json::from_slice(&out.stdout).unwrap();
    (json, stderr(&out))
}

/// A policy allowing `measurement` and trusting `root` (hex), written to `dir`.
fn write_policy(dir: &Scratch, measurement: &str, root: &str) -> PathBuf {
    let path = dir.path("policy.json");
    let policy = serde_json::json!({
        "version": 7,
        "allowed_platforms": ["emulated_cvm"],
        "allowed_measurements": [measurement],
        "min_tcb": {"bootloader": 1, "tee": 1, "snp": 1, "microcode": 1},
        "min_guest_svn": 1,
        "trusted_roots": [root],
    });
    std::fs::write(&path, policy.to_string()).unwrap();
    path
}

fn info(api: &Api) -> Value {
    let (status, body) = api.get("/vm.info");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn is_hex(text: &str, bytes: usize) -> bool {
    text.len() == 2 * bytes && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[test]
fn launch_reports_the_platform_measure_agrees_and_a_failed_migration_keeps_it_running() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("platform-launch");
    let key = dir.path("root.key");
    let platform = format!("emulated_cvm=on,root_key={}", key.display());
    // 1. measure creates the root key and shows the measurement to allow.
    let (measured, err) = measure(&platform, None, WORKLOAD);
    let root = measured["root_public_key"].as_str().unwrap().to_string();
    let measurement = measured["measurement"].as_str().unwrap().to_string();
    assert!(is_hex(&root, 49) && is_hex(&measurement, 48), "{measured}");
    assert_eq!(measured["platform"], "emulated_cvm");
    assert_eq!(measured["host_data"], Value::Null, "no policy given");
    assert!(
        err.contains(&format!("written to {}", key.display())) && err.contains(&root),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    // 2. The policy lists both; measuring again with it gives HOST_DATA and
    //    the same measurement (the policy's contents are not measured).
    let policy = write_policy(&dir, &measurement, &root);
    let (with_policy, err) = measure(&platform, Some(&policy), WORKLOAD);
    assert_eq!(with_policy["measurement"], measurement.as_str());
    assert_eq!(with_policy["root_public_key"], root.as_str());
    assert_eq!(with_policy["policy_version"], 7);
    assert!(!err.contains("generated"), "the key exists now: {err}");
    let host_data = with_policy["host_data"].as_str().unwrap().to_string();
    assert!(is_hex(&host_data, 32));
    // 3. Launch.
    let serial = dir.path("serial.txt");
    let mut args: Vec<String> = vec![
        "--platform".into(),
        platform.clone(),
        "--migration-policy".into(),
        policy.display().to_string(),
        "--serial".into(),
        format!("file={}", serial.display()),
    ];
    args.extend(vm_args(WORKLOAD));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (child, api) = start(&dir, &args);
    wait_heartbeats(&serial, 3);
    let info = info(&api);
    let p = &info["platform"];
    assert_eq!(p["kind"], "emulated_cvm", "{info}");
    assert_eq!(p["hardware_protection"], false);
    assert!(p["note"].as_str().unwrap().contains("no hardware protection"), "{p}");
    assert_eq!(
        p["measurement"],
        measurement.as_str(),
        "vm.info and covm measure must agree"
    );
    assert_eq!(p["host_data"], host_data.as_str());
    assert_eq!(p["policy_version"], 7);
    assert_eq!(p["root_public_key"], root.as_str());
    let c = &info["config"]["platform"];
    assert_eq!(c["emulated_cvm"], true, "{c}");
    assert_eq!(c["root_key"], key.display().to_string());
    assert_eq!(c["migration_policy"]["allowed_measurements"][0], measurement.as_str());
    // 4. A confidential migration to nowhere fails cleanly and the guest
    //    keeps running (tests/confidential.rs has the real ones).
    let (status, message) = api.put(
        "/vm.send-migration",
        Some(&format!(
            r#"{{"destination_url": "unix:{}"}}"#,
            dir.path("nowhere.sock").display()
        )),
    );
    assert_eq!(status, 204, "{message}");
    let started = Instant::now();
    let error = loop {
        let i = self::info(&api);
        if let Some(e) = i["migration"]["error"].as_str() {
            break e.to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{i}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(error.contains("connect"), "{error}");
    assert_eq!(api.state(), "Running");
    let before = heartbeats(&serial);
    wait_heartbeats(&serial, before + 3);
    assert_eq!(api.put("/vmm.shutdown", None).0, 204);
    let (status, err) = exit_and_stderr(child);
    assert_eq!(status, Some(0), "{err}");
    assert!(!err.contains("generated"), "the key was loaded: {err}");
}

/// Waits (20 s at most) for `child` to exit: its status and standard error.
fn exit_and_stderr(mut child: Process) -> (Option<i32>, String) {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "covm did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut err);
    }
    (status.code(), err)
}

#[test]
fn a_key_for_one_vm_is_generated_and_printed() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("platform-ephemeral");
    let mut args: Vec<String> = vec![
        "--platform".into(),
        "emulated_cvm=on".into(),
        "--migration-policy".into(),
        POLICY_EXAMPLE.into(),
    ];
    args.extend(vm_args("workload=hello"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (out, serial) = run_to_end(&args, &dir.path("serial.txt"), Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(serial.contains("hello from covm firmware (2 vCPUs)"), "{serial}");
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.contains("root key generated for this VM only"))
        .unwrap_or_else(|| panic!("no key announced: {err}"));
    let key = line.rsplit(' ').next().unwrap();
    assert!(is_hex(key, 49), "{line}");
}

/// One line on standard error, starting `covm`, naming the problem; the
/// status of a refused command line (2).
fn assert_refused(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("covm"), "{err}");
}

#[test]
fn refusals_name_the_problem() {
    let dir = Scratch::new("platform-refusals");
    let bad = dir.path("bad.json");
    std::fs::write(
        &bad,
        r#"{"version": 1, "allowed_platforms": ["emulated_cvm"], "allowed_measurements": ["00ff"]}"#,
    )
    .unwrap();
    let unknown = dir.path("unknown.json");
    std::fs::write(
        &unknown,
        r#"{"version": 1, "allowed_platforms": [], "allowed_measurements": [], "min_tcb": {"fmc": 1}}"#,
    )
    .unwrap();
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_refused(
        &run(&s(&["--platform", "emulated_cvm=on"])),
        "--platform emulated_cvm=on needs --migration-policy PATH",
    );
    assert_refused(
        &run(&s(&[
            "--platform",
            "emulated_cvm=on",
            "--migration-policy",
            bad.to_str().unwrap(),
        ])),
        &format!(
            "--migration-policy {}: allowed_measurements[0]: 4 hex digits, expected 96",
            bad.display()
        ),
    );
    assert_refused(
        &run(&s(&[
            "--platform",
            "emulated_cvm=on",
            "--migration-policy",
            unknown.to_str().unwrap(),
        ])),
        "min_tcb: unknown field `fmc`",
    );
    assert_refused(
        &run(&s(&[
            "--platform",
            "emulated_cvm=on",
            "--migration-policy",
            "/nonexistent/p.json",
        ])),
        "--migration-policy: cannot read /nonexistent/p.json",
    );
    assert_refused(
        &run(&s(&["--migration-policy", POLICY_EXAMPLE])),
        "--migration-policy needs a confidential platform (--platform emulated_cvm=on)",
    );
    assert_refused(
        &run(&s(&["--platform", "sev_snp=on"])),
        "--platform: invalid sev_snp=on: AMD SEV-SNP is not available on this machine: ",
    );
    assert_refused(
        &run(&s(&["--platform", "tdx=on"])),
        "--platform: invalid tdx=on: Intel TDX is not available on this machine",
    );
    assert_refused(
        &run(&s(&["--platform", "root_key=/tmp/k"])),
        "only emulated_cvm=on has a root key",
    );
    assert_refused(
        &run(&s(&["measure", "--cmdline", "workload=hello"])),
        "covm measure: give a confidential platform (--platform emulated_cvm=on)",
    );
}

/// `covm measure` needs no hardware for sev_snp and tdx: the SNP digest of
/// the same launch is emulated_cvm's sequence plus the four pages the
/// firmware's launch metadata declares (SNP_SEC_MEM, secrets, CPUID,
/// kernel hashes; same VMSAs, RDX 0 without a vCPU type); a vCPU type
/// changes it; TDX gives an MRTD.
#[test]
fn hardware_platforms_are_measured_without_hardware() {
    let (emulated, _) = measure("emulated_cvm=on", None, "workload=hello");
    let (snp, err) = measure("sev_snp=on", None, "workload=hello");
    assert_eq!(snp["platform"], "sev_snp", "{snp} {err}");
    assert_ne!(snp["measurement"], emulated["measurement"], "{snp}");
    assert_eq!(
        snp["entries"].as_u64().unwrap(),
        emulated["entries"].as_u64().unwrap() + 4,
        "{snp} {emulated}"
    );
    let mut args: Vec<String> = ["measure", "--platform", "sev_snp=on", "--vcpu-type", "EPYC-Milan"]
        .map(String::from)
        .to_vec();
    args.extend(vm_args("workload=hello"));
    let out = run(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let milan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(milan["vcpu_signature"], "0xa00f11", "{milan}");
    assert_ne!(milan["measurement"], snp["measurement"]);
    // vcpu_type= (and policy=) in --platform, as a launch takes them, measure the same.
    let (launch_keys, err) = measure("sev_snp=on,policy=0x70000,vcpu_type=EPYC-Milan", None, "workload=hello");
    assert_eq!(launch_keys["measurement"], milan["measurement"], "{launch_keys} {err}");
    assert_eq!(launch_keys["vcpu_type"], "EPYC-Milan");
    assert_eq!(launch_keys["guest_policy"], "0x70000");
    assert_eq!(snp["guest_policy"], "0x30000");
    let mut args: Vec<String> = [
        "measure",
        "--platform",
        "sev_snp=on,vcpu_type=EPYC-Rome",
        "--vcpu-type",
        "EPYC-Milan",
    ]
    .map(String::from)
    .to_vec();
    args.extend(vm_args("workload=hello"));
    assert_refused(
        &run(&args),
        "covm measure: --vcpu-type EPYC-Milan and --platform vcpu_type=EPYC-Rome differ: give one",
    );
    let (tdx, err) = measure("tdx=on", None, "workload=hello");
    assert_eq!(tdx["platform"], "tdx", "{tdx} {err}");
    assert_eq!(tdx["mrtd"].as_str().map(str::len), Some(96), "{tdx}");
}

#[test]
fn an_open_root_key_is_refused_at_launch() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("platform-openkey");
    let key = dir.path("root.key");
    std::fs::write(&key, format!("{}\n", "01".repeat(48))).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let args: Vec<String> = vec![
        "--platform".into(),
        format!("emulated_cvm=on,root_key={}", key.display()),
        "--migration-policy".into(),
        POLICY_EXAMPLE.into(),
        "--cmdline".into(),
        "workload=hello".into(),
    ];
    assert_refused(
        &run(&args),
        &format!("--platform root_key={}: permissions 0644 are too open", key.display()),
    );
}

#[test]
fn vm_create_with_an_inline_policy_measures_as_the_command_line() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("platform-api");
    let key = dir.path("root.key");
    let (measured, _) = measure(
        &format!("emulated_cvm=on,root_key={}", key.display()),
        Some(Path::new(POLICY_EXAMPLE)),
        WORKLOAD,
    );
    let (child, api) = start(&dir, &[]);
    let policy: Value = serde_json::from_str(&std::fs::read_to_string(POLICY_EXAMPLE).unwrap()).unwrap();
    let serial = dir.path("serial.txt");
    let body = |platform: Value| {
        serde_json::json!({
            "cpus": {"boot_vcpus": 2, "max_vcpus": 2}, "memory": {"size": 256u64 << 20},
            "payload": {"cmdline": WORKLOAD},
            "serial": {"mode": "File", "file": serial}, "console": {"mode": "Off"},
            "platform": platform,
        })
        .to_string()
    };
    let (status, message) = api.put("/vm.create", Some(&body(serde_json::json!({"sev_snp": true}))));
    assert_eq!(status, 400);
    assert!(message.contains("'platform.sev_snp'"), "{message}");
    let (status, message) = api.put("/vm.create", Some(&body(serde_json::json!({"emulated_cvm": true}))));
    assert_eq!(status, 400);
    assert!(
        message.contains("platform.emulated_cvm needs platform.migration_policy"),
        "{message}"
    );
    let platform = serde_json::json!({"emulated_cvm": true, "root_key": key, "migration_policy": policy});
    assert_eq!(api.put("/vm.create", Some(&body(platform))).0, 204);
    let before = info(&api);
    assert_eq!(before["platform"]["kind"], "emulated_cvm");
    assert_eq!(before["platform"]["measurement"], Value::Null, "not launched yet");
    assert_eq!(before["platform"]["host_data"], measured["host_data"]);
    assert_eq!(api.put("/vm.boot", None).0, 204);
    wait_heartbeats(&serial, 2);
    let p = &info(&api)["platform"];
    assert_eq!(p["measurement"], measured["measurement"]);
    assert_eq!(p["host_data"], measured["host_data"]);
    assert_eq!(p["root_public_key"], measured["root_public_key"]);
    assert_eq!(api.put("/vmm.shutdown", None).0, 204);
    let (status, err) = exit_and_stderr(child);
    assert_eq!(status, Some(0), "{err}");
}

/// An emulated_cvm configuration for the in-process VMs, with the example
/// policy and a root key file holding the published test secret 01 × 48
/// (the root the example policy trusts).
fn emulated_config(dir: &Scratch) -> VmConfig {
    let key = dir.path("root.key");
    std::fs::write(&key, "01".repeat(48)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let policy = MigrationPolicy::from_json_bytes(&std::fs::read(POLICY_EXAMPLE).unwrap()).unwrap();
    VmConfig {
        platform: PlatformConfig::EmulatedCvm(EmulatedCvmConfig {
            root_key: Some(key),
            policy,
        }),
        ..firmware_vm_config(&dir.path("serial.txt"), WORKLOAD)
    }
}

#[test]
fn an_incoming_vm_measures_as_its_launch_and_launched_vms_attest() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("platform-incoming");
    let config = emulated_config(&dir);
    let notify = Arc::new(|_| {}) as covm::vcpu::ExitNotifier;
    let launched = Vm::new(&config, Instant::now(), notify.clone()).unwrap();
    let incoming = Vm::new_incoming(&config, Instant::now(), notify).unwrap();
    let measurement = launched.platform().measurement().unwrap();
    assert_eq!(incoming.platform().measurement(), Some(measurement));
    assert_eq!(covm::platform::measure(&config).unwrap().digest, measurement);
    assert_eq!(incoming.platform().host_data(), launched.platform().host_data());
    assert!(incoming.platform().confidential() && !incoming.platform().hardware_protection());
    // An incoming confidential VM is launched like its source (its agent
    // imports the rest): both hold the firmware and the policy's encoding.
    let policy_page = covm_guest_abi::layout::MIGRATION_POLICY;
    assert!(incoming.written_since_creation(covm_guest_abi::layout::FIRMWARE_BASE));
    use vm_memory::{Bytes, GuestAddress};
    let PlatformConfig::EmulatedCvm(e) = &config.platform else {
        unreachable!()
    };
    let encoded = e.policy.encoded();
    for vm in [&launched, &incoming] {
        let mut page = vec![0u8; 4096];
        vm.memory().read_slice(&mut page, GuestAddress(policy_page)).unwrap();
        assert_eq!(&page[..encoded.len()], &encoded[..]);
        assert!(page[encoded.len()..].iter().all(|&b| b == 0));
    }
    // Evidence: signed by the root the policy trusts, carrying the launch.
    let report_data = [0x42; 64];
    let evidence = launched.platform().evidence(&report_data).unwrap();
    EmulatedRootVerifier.verify(&evidence, e.policy.policy()).unwrap();
    let report = evidence.report();
    assert_eq!(report.measurement, measurement);
    assert_eq!(report.host_data, e.policy.host_data());
    assert_eq!(report.report_data, report_data);
    // Other launch options, another measurement.
    let two_mib = VmConfig {
        cmdline: "workload=dirty mib=2".into(),
        ..config.clone()
    };
    assert_ne!(covm::platform::measure(&two_mib).unwrap().digest, measurement);
    let one_vcpu = VmConfig {
        cpus: covm::config::CpusConfig::boot(1),
        ..config
    };
    assert_ne!(covm::platform::measure(&one_vcpu).unwrap().digest, measurement);
}

#[test]
fn help_says_no_hardware_protection_and_lists_measure() {
    let out = run(&["--help".to_string()]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("NO hardware protection"), "{help}");
    assert!(help.contains("--migration-policy"), "{help}");
    assert!(help.contains("measure"), "{help}");
    assert!(help.contains("sev_snp=on[,policy=P][,vcpu_type=MODEL]"), "{help}");
    assert!(help.contains("it needs SEV-SNP hardware"), "{help}");
    assert!(!help.contains("not supported yet"), "{help}");
    let out = run(&["measure".to_string(), "--help".to_string()]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--platform") && help.contains("--pages"), "{help}");
    assert!(!help.contains("--api-socket"), "{help}");
}
