//! The `dirty` workload runs, verifies itself, and catches corruption made
//! from the VMM side (a wrong page and a page rolled back to an older
//! generation).

mod common;
use common::*;
use covm_guest_abi::layout::dirty_page_gpa;
use std::time::Duration;

fn heartbeats(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("heartbeat ")?;
            let mut it = rest.split_whitespace();
            let n = it.next()?.parse().ok()?;
            let pages = it.next()?.strip_prefix("pages=")?.parse().ok()?;
            (it.next()? == "ok").then_some((n, pages))
        })
        .collect()
}

#[test]
fn two_vcpus_run_with_heartbeats_and_no_failure() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("dirty");
    let serial = dir.path("serial.txt");
    let mut child = spawn(
        &[
            "--cpus",
            "boot=2",
            "--memory",
            "size=512M",
            "--cmdline",
            "workload=dirty mib=64",
        ],
        &serial,
    );
    let text = wait_for_serial(&serial, Duration::from_secs(60), |t| heartbeats(t).len() >= 25);
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(still_running, "covm stopped by itself; serial:\n{text}");
    assert!(!text.contains("FAIL"), "serial:\n{text}");
    assert!(
        text.contains("dirty: 64 MiB at 0x4000000, 16384 pages"),
        "serial:\n{text}"
    );
    let beats = heartbeats(&text);
    assert!(beats.len() >= 25, "only {} heartbeats:\n{text}", beats.len());
    for pair in beats.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "heartbeat numbers skip");
        assert!(pair[1].1 > pair[0].1, "page count did not grow: {pair:?}");
    }
    // 64 MiB is 16384 pages: a few seconds of unthrottled writing passes
    // over the whole region, so every page has been verified at least once.
    assert!(beats.last().unwrap().1 > 3 * 16384, "{:?}", beats.last());
}

/// Runs a slowly dirtying guest with `hook` and returns (exit status, serial).
fn run_with_hook(name: &str, hook: &str) -> (Option<i32>, String) {
    let dir = Scratch::new(name);
    let serial = dir.path("serial.txt");
    // 4 MiB at 4 MiB/s: every page is rewritten about once a second and
    // verified several times in between.
    let (out, text) = run_to_end(
        &[
            "--cpus",
            "boot=2",
            "--cmdline",
            "workload=dirty mib=4 rate=4",
            "--test-hook",
            hook,
        ],
        &serial,
        Duration::from_secs(60),
    );
    (out.status.code(), text)
}

#[test]
fn verifier_catches_a_wrong_page() {
    if !kvm_available() {
        return;
    }
    let gpa = dirty_page_gpa(1);
    let (status, text) = run_with_hook("flip", &format!("flip,gpa={gpa:#x},at_ms=1500"));
    assert_eq!(status, Some(4), "serial:\n{text}");
    let fail = text.lines().find(|l| l.starts_with("FAIL")).expect("a FAIL line");
    assert!(
        fail.starts_with(&format!("FAIL page 1 gpa {gpa:#x} word 8 is")),
        "{fail}"
    );
}

#[test]
fn verifier_catches_a_page_rolled_back_to_an_older_generation() {
    if !kvm_available() {
        return;
    }
    let gpa = dirty_page_gpa(2);
    let (status, text) = run_with_hook(
        "rollback",
        &format!("rollback,gpa={gpa:#x},save_ms=1000,restore_ms=3500"),
    );
    assert_eq!(status, Some(4), "serial:\n{text}");
    let fail = text.lines().find(|l| l.starts_with("FAIL")).expect("a FAIL line");
    assert!(
        fail.starts_with(&format!("FAIL page 2 gpa {gpa:#x} rolled back: holds generation")),
        "{fail}"
    );
}

#[test]
fn too_little_memory_for_the_region_is_refused_by_the_firmware() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("nomem");
    let serial = dir.path("serial.txt");
    let (out, text) = run_to_end(
        &["--memory", "size=64M", "--cmdline", "workload=dirty mib=64"],
        &serial,
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(4), "serial:\n{text}");
    assert!(text.contains("error"), "serial:\n{text}");
}
