//! The built-in firmware boots on real KVM and powers off cleanly.

mod common;
use common::*;
use std::time::Duration;

fn hello(vcpus: u8) {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new(&format!("hello{vcpus}"));
    let serial = dir.path("serial.txt");
    let cpus = format!("boot={vcpus}");
    let (out, text) = run_to_end(
        &["--cpus", &cpus, "--cmdline", "workload=hello"],
        &serial,
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let plural = if vcpus == 1 { "" } else { "s" };
    let expected = format!("hello from covm firmware ({vcpus} vCPU{plural})");
    assert!(text.lines().any(|l| l == expected), "serial output: {text:?}");
}

#[test]
fn hello_on_one_vcpu() {
    hello(1);
}

#[test]
fn hello_on_two_vcpus() {
    hello(2);
}

#[test]
fn hello_on_four_vcpus() {
    hello(4);
}

#[test]
fn no_cmdline_runs_hello() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("default");
    let serial = dir.path("serial.txt");
    let (out, text) = run_to_end(&[], &serial, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(text.contains("hello from covm firmware (1 vCPU)"), "{text:?}");
}

#[test]
fn boot_markers_are_logged_in_order() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("markers");
    let serial = dir.path("serial.txt");
    let (out, _) = run_to_end(&["-v", "--cmdline", "workload=hello"], &serial, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0));
    let log = stderr(&out);
    let codes: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("debug port ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert_eq!(codes, ["0x01", "0x02", "0x03", "0x04", "0x05"], "log:\n{log}");
}

#[test]
fn bad_workload_powers_off_with_failure() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("badwl");
    let serial = dir.path("serial.txt");
    let (out, text) = run_to_end(&["--cmdline", "workload=nope"], &serial, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(4), "stderr: {}", stderr(&out));
    assert!(text.contains("error: unknown workload 'nope'"), "{text:?}");
    let (out, text) = run_to_end(
        &["--cmdline", "workload=dirty mib=lots"],
        &serial,
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(4));
    assert!(text.contains("error: mib=lots is not a number"), "{text:?}");
}

#[test]
fn serial_off_and_null_still_boot() {
    if !kvm_available() {
        return;
    }
    for mode in ["off", "null"] {
        let out = covm()
            .args(["--serial", mode, "--cmdline", "workload=hello"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{mode}: {}", stderr(&out));
        assert!(
            out.stdout.is_empty(),
            "{mode} printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn serial_tty_goes_to_stdout() {
    if !kvm_available() {
        return;
    }
    let out = covm().args(["--cmdline", "workload=hello"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from covm firmware"));
}
