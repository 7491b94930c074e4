//! Every bad input ends covm with one clear line naming the problem and a
//! non-zero status (2 for an unparsable command line, 1 otherwise).

mod common;
use common::*;
use std::process::Output;

fn run(args: &[&str]) -> Output {
    covm().args(args).output().unwrap()
}

fn assert_refused(out: &Output, status: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(status), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("covm: "), "{err}");
}

#[test]
fn unknown_option() {
    assert_refused(&run(&["--bogus"]), 2, "unexpected argument '--bogus'");
}

#[test]
fn unknown_key() {
    assert_refused(
        &run(&["--cpus", "boot=2,threads=2"]),
        2,
        "--cpus: unknown key 'threads'",
    );
    assert_refused(
        &run(&["--memory", "size=1G,hugepages=on"]),
        2,
        "--memory: unknown key 'hugepages'",
    );
}

#[test]
fn vcpu_count_out_of_range() {
    assert_refused(
        &run(&["--cpus", "boot=33"]),
        2,
        "--cpus: invalid boot=33: must be a number from 1 to 32",
    );
    assert_refused(&run(&["--cpus", "boot=0"]), 2, "boot=0");
}

#[test]
fn unparsable_size() {
    assert_refused(
        &run(&["--memory", "size=12Q"]),
        2,
        "--memory: invalid size=12Q: '12Q' is not a size",
    );
}

#[test]
fn memory_larger_than_the_host() {
    assert_refused(&run(&["--memory", "size=100000G"]), 2, "is larger than this host's");
}

#[test]
fn missing_kernel_names_the_path() {
    assert_refused(
        &run(&["--kernel", "/nonexistent/bzImage"]),
        2,
        "--kernel: cannot read /nonexistent/bzImage",
    );
    assert_refused(
        &run(&["--firmware", "/nonexistent/fw.elf"]),
        2,
        "--firmware: cannot read /nonexistent/fw.elf",
    );
}

#[test]
fn image_that_is_neither_elf_nor_bzimage() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("notimage");
    let junk = dir.path("junk.bin");
    std::fs::write(&junk, vec![0x42u8; 4096]).unwrap();
    let path = junk.display().to_string();
    assert_refused(
        &run(&["--kernel", &path]),
        1,
        &format!("{path} is neither an ELF nor a bzImage"),
    );
    assert_refused(
        &run(&["--firmware", &path]),
        1,
        &format!("--firmware: {path} is not an ELF image"),
    );
}

#[test]
fn no_kvm_device() {
    let out = covm().env("COVM_KVM_DEVICE", "/nonexistent/kvm").output().unwrap();
    assert_refused(&out, 1, "/nonexistent/kvm does not exist: this host has no KVM");
}

/// `--platform sev_snp=on` and `tdx=on` probe the host before any VM
/// exists and name each missing piece (on a host that has them all, both
/// are launched, so without a migration policy they are refused for that).
#[test]
fn hardware_platforms_say_what_the_host_lacks() {
    for (option, what) in [("sev_snp=on", "AMD SEV-SNP"), ("tdx=on", "Intel TDX")] {
        let out = run(&["--platform", option, "--cmdline", "workload=hello"]);
        let err = stderr(&out);
        let prefix = format!("covm: --platform: invalid {option}: ");
        if !err.contains(&format!("{what} is not available on this machine: ")) {
            assert_refused(
                &out,
                2,
                &format!("covm: --platform {option} needs --migration-policy PATH"),
            );
            continue;
        }
        assert_refused(&out, 2, &prefix);
        assert!(err.starts_with(&prefix), "{err}");
        let reason = &err[prefix.len()..];
        assert!(
            reason.starts_with(&format!("{what} is not available on this machine: ")),
            "{err}"
        );
        assert!(
            reason.ends_with(
                "emulated_cvm=on runs covm's emulated confidential platform instead, without hardware protection\n"
            ),
            "{err}"
        );
    }
    // What this project's machines lack, said by name.
    let snp = stderr(&run(&["--platform", "sev_snp=on"]));
    if !std::path::Path::new("/dev/sev").exists() {
        assert!(snp.contains("/dev/sev does not exist"), "{snp}");
    }
    if !std::path::Path::new("/sys/module/kvm_amd").exists() {
        assert!(snp.contains("kvm_amd is not loaded (no /sys/module/kvm_amd"), "{snp}");
    }
    let tdx = stderr(&run(&["--platform", "tdx=on"]));
    if !std::path::Path::new("/sys/module/kvm_intel").exists() {
        assert!(
            tdx.contains("kvm_intel is not loaded (no /sys/module/kvm_intel"),
            "{tdx}"
        );
    }
    // Without KVM the probe says so, still before creating anything.
    let out = covm()
        .args(["--platform", "sev_snp=on"])
        .env("COVM_KVM_DEVICE", "/nonexistent/kvm")
        .output()
        .unwrap();
    assert_refused(
        &out,
        2,
        "KVM cannot be asked: /nonexistent/kvm does not exist: this host has no KVM",
    );
}

#[test]
fn no_permission_on_the_kvm_device() {
    // Root opens any file, so drop to an unprivileged user for this check.
    let setpriv = std::path::Path::new("/usr/bin/setpriv");
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !setpriv.exists() || !is_root {
        covm_test_support::skip("needs root and /usr/bin/setpriv to run covm as an unprivileged user");
        return;
    }
    let dir = Scratch::new("kvmperm");
    let device = dir.path("kvm");
    std::fs::write(&device, b"").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&device, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_covm"))
        .env("COVM_KVM_DEVICE", &device)
        .output()
        .unwrap();
    if out.status.code() == Some(126) || stderr(&out).contains("Permission denied") && !stderr(&out).starts_with("covm")
    {
        covm_test_support::skip(format!(
            "the unprivileged user cannot execute the covm binary here: {}",
            stderr(&out)
        ));
        return;
    }
    assert_refused(&out, 1, &format!("no permission to open {}", device.display()));
}

#[test]
fn kernel_and_firmware_together() {
    assert_refused(
        &run(&["--kernel", "/etc/hostname", "--firmware", "/etc/hostname"]),
        2,
        "not both",
    );
}

#[test]
fn bad_serial_and_console_modes() {
    assert_refused(&run(&["--serial", "pty"]), 2, "--serial: unknown key 'pty'");
    assert_refused(
        &run(&["--console", "pty"]),
        2,
        "--console: invalid mode=pty: covm's virtio console writes to off, null, tty or file=PATH",
    );
}

#[test]
fn version_and_help_succeed() {
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("covm "));
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--cpus",
        "--memory",
        "--kernel",
        "--serial",
        "--api-socket",
        "--platform",
        "--log-file",
    ] {
        assert!(help.contains(option), "help lacks {option}");
    }
    assert!(!help.contains("--test-hook"), "test hooks must stay hidden");
}
