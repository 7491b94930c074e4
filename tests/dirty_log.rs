//! KVM dirty logging with manual protection and vCPU throttling, on a real
//! guest: the built-in firmware's `dirty` workload.

mod common;
use common::*;
use covm::config::{DirtyTracking, VmConfig};
use covm::vm::Vm;
use covm_guest_abi::layout::{DIRTY_REGION, PAGE_SIZE};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

fn config(serial: &Path, cmdline: &str) -> VmConfig {
    firmware_vm_config(serial, cmdline)
}

fn dirty_in(bitmaps: &[covm_migration::vm::DirtyBitmap], from: u64, to: u64) -> u64 {
    let mut n = 0;
    for bitmap in bitmaps {
        let start = bitmap.range.0;
        for (w, word) in bitmap.bits.iter().enumerate() {
            for b in 0..64 {
                let gpa = start + ((w * 64 + b) as u64) * PAGE_SIZE;
                if word & (1 << b) != 0 && (from..to).contains(&gpa) {
                    n += 1;
                }
            }
        }
    }
    n
}

fn total_pages_written(serial: &Path) -> u64 {
    std::fs::read_to_string(serial)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split("pages=").nth(1)?.split_whitespace().next()?.parse().ok())
        .next_back()
        .unwrap_or(0)
}

#[test]
fn guest_and_vmm_writes_are_logged_and_cleared_exactly() {
    logged_and_cleared_exactly(DirtyTracking::Log);
}

#[test]
fn the_dirty_ring_reports_and_clears_like_the_log() {
    // 512 entries for a workload rewriting 1024 pages: the rings fill up,
    // and the vCPUs must harvest them themselves without losing a page.
    let vm = logged_and_cleared_exactly(DirtyTracking::Ring { entries: 512 });
    if let Some(counters) = vm {
        let full: u64 = counters
            .iter()
            .filter(|(name, _)| name.starts_with("vcpu"))
            .map(|(_, c)| c["dirty_ring_full"])
            .sum();
        assert!(full > 0, "the 512-entry rings never filled up: {counters:?}");
    }
}

#[test]
fn a_ring_larger_than_kvm_allows_is_refused_by_name() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("ringmax");
    let mut config = config(&dir.path("serial.txt"), "workload=hello");
    config.dirty_tracking = DirtyTracking::Ring { entries: 1 << 20 };
    match Vm::new(&config, Instant::now(), Arc::new(|_| {})) {
        // Some kernels allow 16 MiB rings; then there is nothing to refuse.
        Ok(vm) => vm.stop(),
        Err(e) => assert!(e.to_string().contains("entries per vCPU is more than"), "{e}"),
    }
}

/// Runs the dirty-log checks in `mode`; returns the VM's counters at the end.
fn logged_and_cleared_exactly(mode: DirtyTracking) -> Option<covm::vm::Counters> {
    if !kvm_available() {
        return None;
    }
    covm::vcpu::control::install_kick_handler().unwrap();
    let dir = Scratch::new("dirtylog");
    let serial = dir.path("serial.txt");
    // 4 MiB region at 8 MiB/s: every page is rewritten about twice a second.
    let mut config = config(&serial, "workload=dirty mib=4 rate=8");
    config.dirty_tracking = mode;
    let mut vm = Vm::new(&config, Instant::now(), Arc::new(|_| {})).unwrap();
    vm.start().unwrap();
    wait_for_serial(&serial, Duration::from_secs(30), |t| t.contains("heartbeat 3 "));
    vm.set_dirty_logging(true).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let region_end = DIRTY_REGION + (4 << 20);
    let logged = vm.dirty_bitmaps().unwrap();
    let in_region = dirty_in(&logged, DIRTY_REGION, region_end);
    assert!(
        in_region > 100,
        "only {in_region} of 1024 region pages logged after 600 ms"
    );
    // Nothing above the region is touched by the workload.
    assert_eq!(dirty_in(&logged, region_end + (1 << 20), 256 << 20), 0);

    // A page the VMM writes is reported too.
    let vmm_page = 200u64 << 20;
    vm.memory().write_obj(0x1234u64, GuestAddress(vmm_page)).unwrap();
    assert_eq!(
        dirty_in(&vm.dirty_bitmaps().unwrap(), vmm_page, vmm_page + PAGE_SIZE),
        1
    );

    // Reading does not clear (manual protection); clearing exactly a range does.
    vm.pause();
    let still = vm.dirty_bitmaps().unwrap();
    assert!(dirty_in(&still, DIRTY_REGION, region_end) >= in_region);
    vm.clear_dirty(DIRTY_REGION + 3 * PAGE_SIZE, 100).unwrap();
    vm.clear_dirty(vmm_page, 1).unwrap();
    let after = vm.dirty_bitmaps().unwrap();
    assert_eq!(
        dirty_in(&after, DIRTY_REGION + 3 * PAGE_SIZE, DIRTY_REGION + 103 * PAGE_SIZE),
        0
    );
    assert_eq!(dirty_in(&after, vmm_page, vmm_page + PAGE_SIZE), 0);
    assert_eq!(
        dirty_in(&after, DIRTY_REGION + 103 * PAGE_SIZE, region_end),
        dirty_in(&still, DIRTY_REGION + 103 * PAGE_SIZE, region_end),
        "pages outside the cleared range changed"
    );
    // Cleared pages are logged again when the guest writes them again.
    vm.resume().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        dirty_in(
            &vm.dirty_bitmaps().unwrap(),
            DIRTY_REGION + 3 * PAGE_SIZE,
            DIRTY_REGION + 103 * PAGE_SIZE
        ) > 0
    );
    assert!(
        vm.clear_dirty(300 << 20, 1).is_err(),
        "a range outside memory must be refused"
    );
    vm.set_dirty_logging(false).unwrap();
    let counters = vm.counters();
    vm.stop();
    assert!(!std::fs::read_to_string(&serial).unwrap().contains("FAIL"));
    Some(counters)
}

#[test]
fn throttling_slows_the_guest_and_releases_it() {
    if !kvm_available() {
        return;
    }
    covm::vcpu::control::install_kick_handler().unwrap();
    let dir = Scratch::new("throttle");
    let serial = dir.path("serial.txt");
    let mut vm = Vm::new(
        &config(&serial, "workload=dirty mib=16"),
        Instant::now(),
        Arc::new(|_| {}),
    )
    .unwrap();
    vm.start().unwrap();
    wait_for_serial(&serial, Duration::from_secs(30), |t| t.contains("heartbeat 3 "));
    let progress = |vm_serial: &Path| {
        let before = total_pages_written(vm_serial);
        std::thread::sleep(Duration::from_millis(1500));
        total_pages_written(vm_serial) - before
    };
    let free = progress(&serial);
    vm.set_throttle(95);
    let throttled = progress(&serial);
    vm.set_throttle(0);
    let released = progress(&serial);
    vm.stop();
    // Wide margins: 95% throttle leaves about 5% of the guest's speed.
    assert!(throttled * 4 < free, "throttled {throttled} vs free {free} pages");
    assert!(released * 2 > free, "released {released} vs free {free} pages");
    assert!(!std::fs::read_to_string(&serial).unwrap().contains("FAIL"));
}
