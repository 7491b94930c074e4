//! A running guest moved into a fresh VM in the same process: memory copied,
//! state saved and restored. The `dirty` workload must go on in the new VM
//! with its heartbeat numbering continued and no FAIL, which it can only do
//! if every piece of state it depends on (vCPU registers, FPU, MSRs with the
//! TSC and TSC deadline, LAPIC timers, APs' state, serial) arrived.

mod common;
use common::*;
use covm::config::VmConfig;
use covm::exit::VmExit;
use covm::vm::Vm;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

fn config(serial: &Path) -> VmConfig {
    firmware_vm_config(serial, "workload=dirty mib=16 rate=32")
}

fn heartbeat_numbers(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("heartbeat "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

fn copy_memory(from: &Vm, to: &Vm) {
    let mut buf = vec![0u8; 1 << 20];
    for region in from.memory().iter() {
        let start = region.start_addr().0;
        let mut offset = 0;
        while offset < region.len() {
            let n = (region.len() - offset).min(buf.len() as u64) as usize;
            from.memory()
                .read_slice(&mut buf[..n], GuestAddress(start + offset))
                .unwrap();
            to.memory()
                .write_slice(&buf[..n], GuestAddress(start + offset))
                .unwrap();
            offset += n as u64;
        }
    }
}

#[test]
fn running_guest_continues_in_a_fresh_vm() {
    if !kvm_available() {
        return;
    }
    covm::vcpu::control::install_kick_handler().unwrap();
    let dir = Scratch::new("vmstate");
    let (serial_a, serial_b) = (dir.path("a.txt"), dir.path("b.txt"));
    let exits: Arc<Mutex<Vec<VmExit>>> = Arc::default();
    let record = |exits: &Arc<Mutex<Vec<VmExit>>>| {
        let exits = exits.clone();
        Arc::new(move |exit| exits.lock().unwrap().push(exit)) as covm::vcpu::ExitNotifier
    };
    let start = Instant::now();

    let mut a = Vm::new(&config(&serial_a), start, record(&exits)).unwrap();
    a.start().unwrap();
    let before = wait_for_serial(&serial_a, Duration::from_secs(30), |t| heartbeat_numbers(t).len() >= 8);
    a.pause();
    let state = a.save_state().unwrap();
    let last_a = *heartbeat_numbers(&std::fs::read_to_string(&serial_a).unwrap())
        .last()
        .expect("heartbeats in A");
    assert!(!before.contains("FAIL"), "{before}");

    let mut b = Vm::new_incoming(&config(&serial_b), start, record(&exits)).unwrap();
    copy_memory(&a, &b);
    b.restore_state(&state).unwrap();
    a.stop();
    b.start().unwrap();
    let after = wait_for_serial(&serial_b, Duration::from_secs(30), |t| heartbeat_numbers(t).len() >= 8);
    b.stop();

    assert!(!after.contains("FAIL"), "B failed:\n{after}");
    let numbers = heartbeat_numbers(&after);
    assert!(numbers.len() >= 8, "B printed only:\n{after}");
    assert_eq!(
        numbers[0],
        last_a + 1,
        "B's heartbeat does not continue A's ({last_a}):\n{after}"
    );
    assert!(
        exits.lock().unwrap().is_empty(),
        "a VM ended: {:?}",
        exits.lock().unwrap()
    );
}

#[test]
fn state_from_another_shape_of_vm_is_refused() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("vmstate-mismatch");
    let notify = Arc::new(|_| {}) as covm::vcpu::ExitNotifier;
    let a = Vm::new(&config(&dir.path("a.txt")), Instant::now(), notify.clone()).unwrap();
    let state = a.save_state().unwrap();
    let mut one_vcpu = config(&dir.path("b.txt"));
    one_vcpu.cpus.boot_vcpus = 1;
    let mut b = Vm::new_incoming(&one_vcpu, Instant::now(), notify.clone()).unwrap();
    let err = b.restore_state(&state).unwrap_err().to_string();
    assert!(err.contains("2 vCPUs in the state, 1 in this VM"), "{err}");
    let mut c = Vm::new_incoming(&config(&dir.path("c.txt")), Instant::now(), notify).unwrap();
    assert!(c
        .restore_state(&state[..state.len() / 2])
        .unwrap_err()
        .to_string()
        .contains("malformed"));
    assert!(c.restore_state(b"garbage").is_err());
}

#[test]
fn zeroing_untouched_pages_of_an_incoming_vm_touches_nothing() {
    if !kvm_available() {
        return;
    }
    use covm_migration::vm::DestinationVm;
    let dir = Scratch::new("vmstate-zero");
    let mut big = config(&dir.path("z.txt"));
    big.memory.size = 1 << 30;
    let mut vm = Vm::new_incoming(&big, Instant::now(), Arc::new(|_| {}) as covm::vcpu::ExitNotifier).unwrap();
    let rss = || {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .parse::<u64>()
            .unwrap()
    };
    let before = rss();
    DestinationVm::zero_memory(&mut vm, 64 << 20, (512 << 20) / 4096).unwrap();
    let after = rss();
    assert!(
        after - before < 16 << 10,
        "zeroing 512 MiB of untouched memory grew RSS by {} KiB",
        after - before
    );
    // A page covm wrote is zeroed for real.
    DestinationVm::write_memory(&mut vm, 0x500_0000, &[7u8; 4096]).unwrap();
    DestinationVm::zero_memory(&mut vm, 0x500_0000, 1).unwrap();
    assert_eq!(vm.memory().read_obj::<u8>(GuestAddress(0x500_0000)).unwrap(), 0);
}
