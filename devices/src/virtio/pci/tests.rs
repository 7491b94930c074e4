//! The transport driven as a guest's driver drives it: through
//! configuration space and BAR 0 only, with an entropy device behind.

use super::*;
use crate::pci::config::command;
use crate::pci::msix::tests::Recorder;
use crate::virtio::rng::Rng;
use std::time::{Duration, Instant};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const BAR: u64 = 0xc000_0000;
const MEMORY: usize = 16 << 20;

fn memory() -> GuestMemory {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY)]).unwrap()
}

fn rng_transport(memory: &GuestMemory) -> (VirtioPci, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let source = std::fs::File::open("/dev/urandom").unwrap();
    let t = VirtioPci::new("rng0", Box::new(Rng::new(source)), BAR, memory.clone(), rec.clone()).unwrap();
    (t, rec)
}

fn cfg32(t: &mut VirtioPci, offset: usize) -> u32 {
    let mut b = [0u8; 4];
    t.config_read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn bar_w(t: &mut VirtioPci, offset: u64, data: &[u8]) {
    t.bar_write(0, offset, data);
}

fn bar_r(t: &mut VirtioPci, offset: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    t.bar_read(0, offset, &mut b[..len]);
    u64::from_le_bytes(b)
}

/// The virtio capabilities, by cfg_type: (offset in BAR 0, length).
fn virtio_caps(t: &mut VirtioPci) -> Vec<(u8, u32, u32)> {
    let mut caps = Vec::new();
    let mut at = (cfg32(t, 0x34) & 0xff) as usize;
    while at != 0 {
        let head = cfg32(t, at);
        if head & 0xff == u32::from(CAP_VENDOR) {
            caps.push(((head >> 24) as u8, cfg32(t, at + 8), cfg32(t, at + 12)));
        }
        at = ((head >> 8) & 0xff) as usize;
    }
    caps
}

/// A driver bringing the device up with one queue laid out by `mock`.
fn bring_up(t: &mut VirtioPci, (desc, avail, used): (u64, u64, u64), size: u16, features: u64) -> u8 {
    bar_w(t, 0x14, &[status::ACKNOWLEDGE | status::DRIVER]);
    bar_w(t, 0x08, &0u32.to_le_bytes());
    bar_w(t, 0x0c, &(features as u32).to_le_bytes());
    bar_w(t, 0x08, &1u32.to_le_bytes());
    bar_w(t, 0x0c, &((features >> 32) as u32).to_le_bytes());
    bar_w(t, 0x14, &[status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK]);
    if bar_r(t, 0x14, 1) as u8 & status::FEATURES_OK == 0 {
        return bar_r(t, 0x14, 1) as u8;
    }
    bar_w(t, 0x10, &0u16.to_le_bytes());
    bar_w(t, 0x16, &0u16.to_le_bytes());
    bar_w(t, 0x18, &size.to_le_bytes());
    bar_w(t, 0x1a, &1u16.to_le_bytes());
    bar_w(t, 0x20, &desc.to_le_bytes());
    bar_w(t, 0x28, &avail.to_le_bytes());
    bar_w(t, 0x30, &used.to_le_bytes());
    bar_w(t, 0x1c, &1u16.to_le_bytes());
    bar_w(t, 0x14, &[0x0f]);
    bar_r(t, 0x14, 1) as u8
}

/// Where `mock` put its rings.
fn rings(mock: &MockSplitQueue<GuestMemory>) -> (u64, u64, u64) {
    (mock.desc_table_addr().0, mock.avail_addr().0, mock.used_addr().0)
}

fn enable_msix(t: &mut VirtioPci) {
    let cap = t.msix_cap;
    t.config_write(cap + 2, &0x8000u16.to_le_bytes());
    for vector in 0..2u64 {
        bar_w(t, MSIX_TABLE_OFFSET + vector * 16, &0xfee0_0000u32.to_le_bytes());
        bar_w(
            t,
            MSIX_TABLE_OFFSET + vector * 16 + 8,
            &(0x41 + vector as u32).to_le_bytes(),
        );
        bar_w(t, MSIX_TABLE_OFFSET + vector * 16 + 12, &0u32.to_le_bytes());
    }
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn configuration_space_announces_every_structure() {
    let mem = memory();
    let (mut t, _) = rng_transport(&mem);
    assert_eq!(cfg32(&mut t, 0), 0x1044_1af4, "modern entropy device");
    assert_eq!(cfg32(&mut t, 0x10), 0xc000_0004, "64-bit BAR 0");
    let caps = virtio_caps(&mut t);
    assert_eq!(
        caps,
        vec![
            (cfg_type::COMMON, 0, common::LEN as u32),
            (cfg_type::NOTIFY, 0x3000, 4),
            (cfg_type::ISR, 0x1000, 1),
            (cfg_type::DEVICE, 0x2000, 0x1000),
            (cfg_type::PCI_CFG, 0, 0),
        ]
    );
    // The MSI-X capability: 2 vectors (one queue and the configuration).
    let cap = t.msix_cap;
    assert_eq!(cfg32(&mut t, cap) >> 16 & 0x7ff, 1);
}

#[test]
fn a_request_is_served_off_the_caller_and_interrupts_its_vector() {
    let mem = memory();
    let (mut t, rec) = rng_transport(&mem);
    t.config_write(4, &command::MEMORY.to_le_bytes());
    enable_msix(&mut t);
    let mock = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), 16);
    let got = bring_up(&mut t, rings(&mock), 16, features::VERSION_1);
    assert_eq!(got, 0x0f, "DRIVER_OK and no DEVICE_NEEDS_RESET");
    assert!(t.active());
    let desc = RawDescriptor::from(SplitDescriptor::new(0x20_0000, 512, 2 /* WRITE */, 0));
    mock.add_desc_chains(&[desc], 0).unwrap();
    // A notification through BAR 0 (what an ioeventfd would catch).
    let (notify_addr, _) = t.notify_addresses()[0];
    assert_eq!(notify_addr, BAR + NOTIFY_OFFSET);
    bar_w(&mut t, NOTIFY_OFFSET, &0u16.to_le_bytes());
    wait_for("the used ring", || mock.used().idx().load() == 1);
    let used = mock.used().ring().ref_at(0).unwrap().load();
    assert_eq!(used.len(), 512);
    let mut bytes = [0u8; 512];
    mem.read_slice(&mut bytes, GuestAddress(0x20_0000)).unwrap();
    assert!(bytes.iter().any(|&b| b != bytes[0]), "entropy, not a constant");
    wait_for("the queue's vector", || rec.triggers.lock().unwrap().contains(&1));
    assert_eq!(bar_r(&mut t, ISR_OFFSET, 1), 1, "ISR says: a queue");
    assert_eq!(bar_r(&mut t, ISR_OFFSET, 1), 0, "and reading it cleared it");
    assert!(t.counters().contains(&("read_bytes", 512)));
}

#[test]
fn a_driver_that_breaks_the_rules_gets_needs_reset_not_a_panic() {
    let mem = memory();
    // Features without VERSION_1: FEATURES_OK does not stick.
    let (mut t, _) = rng_transport(&mem);
    let mock = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), 16);
    assert_eq!(bring_up(&mut t, rings(&mock), 16, 0) & status::FEATURES_OK, 0);
    // Features the device does not offer: the same.
    let (mut t, _) = rng_transport(&mem);
    assert_eq!(
        bring_up(&mut t, rings(&mock), 16, features::VERSION_1 | 1 << 40) & status::FEATURES_OK,
        0
    );
    // A queue size that is not a power of two.
    let (mut t, rec) = rng_transport(&mem);
    enable_msix(&mut t);
    let got = bring_up(&mut t, rings(&mock), 12, features::VERSION_1);
    assert_ne!(got & status::DEVICE_NEEDS_RESET, 0);
    assert!(!t.active());
    assert_eq!(
        *rec.triggers.lock().unwrap(),
        vec![0],
        "the configuration vector tells the driver"
    );
    // Rings outside guest memory.
    let (mut t, _) = rng_transport(&mem);
    let far = MEMORY as u64 - 0x100;
    assert_ne!(
        bring_up(&mut t, (far, far + 0x100, far + 0x200), 16, features::VERSION_1) & status::DEVICE_NEEDS_RESET,
        0
    );
    // A reset clears it, and the device comes up again properly.
    bar_w(&mut t, 0x14, &[0]);
    assert_eq!(bar_r(&mut t, 0x14, 1), 0);
    assert_eq!(bring_up(&mut t, rings(&mock), 16, features::VERSION_1), 0x0f);
}

#[test]
fn every_configuration_and_bar_access_is_survived() {
    let mem = memory();
    let (mut t, _) = rng_transport(&mem);
    for pattern in [0x00u8, 0xff, 0xa5] {
        for offset in 0..CONFIG_SPACE {
            for len in [1usize, 2, 4] {
                t.config_write(offset, &vec![pattern; len]);
                let mut b = vec![0u8; len];
                t.config_read(offset, &mut b);
            }
        }
    }
    // The identity is read-only whatever was written.
    assert_eq!(cfg32(&mut t, 0), 0x1044_1af4);
    let (mut t, _) = rng_transport(&mem);
    for offset in (0..BAR_SIZE + 64).step_by(3) {
        for len in [1usize, 2, 4, 8] {
            let mut b = vec![0u8; len];
            t.bar_read(0, offset, &mut b);
            t.bar_write(0, offset, &vec![0xff; len]);
            t.bar_write(1, offset, &vec![0xff; len]);
        }
    }
    assert!(t.ignored > 0, "the stray accesses were counted");
}

const CONFIG_SPACE: usize = 0x120;

#[test]
fn pci_cfg_capability_reaches_bar_0() {
    let mem = memory();
    let (mut t, _) = rng_transport(&mem);
    let cap = t.pci_cfg_cap;
    t.config_write(cap + 4, &[0]); // BAR 0
    t.config_write(cap + 8, &0x12u32.to_le_bytes()); // num_queues
    t.config_write(cap + 12, &2u32.to_le_bytes());
    assert_eq!(cfg32(&mut t, cap + 16) & 0xffff, 1);
    // A write through it: the device status.
    t.config_write(cap + 8, &0x14u32.to_le_bytes());
    t.config_write(cap + 12, &1u32.to_le_bytes());
    t.config_write(cap + 16, &[status::ACKNOWLEDGE]);
    assert_eq!(bar_r(&mut t, 0x14, 1), 1);
}

#[test]
fn state_restores_into_a_paused_device_and_bad_state_is_named() {
    let mem = memory();
    let (mut a, _) = rng_transport(&mem);
    a.config_write(4, &command::MEMORY.to_le_bytes());
    enable_msix(&mut a);
    let mock = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), 16);
    assert_eq!(bring_up(&mut a, rings(&mock), 16, features::VERSION_1), 0x0f);
    let desc = RawDescriptor::from(SplitDescriptor::new(0x20_0000, 64, 2, 0));
    mock.add_desc_chains(&[desc], 0).unwrap();
    bar_w(&mut a, NOTIFY_OFFSET, &0u16.to_le_bytes());
    wait_for("the used ring", || mock.used().idx().load() == 1);
    a.pause();
    let state = a.save();
    assert_eq!(
        state.queues,
        vec![state::SavedQueue {
            index: 0,
            next_avail: 1,
            next_used: 1
        }]
    );

    // The destination: paused until resumed, then it serves from entry 1.
    let (mut b, rec) = rng_transport(&mem);
    b.restore(&state).unwrap();
    assert_eq!(b.save(), state);
    let desc = RawDescriptor::from(SplitDescriptor::new(0x20_1000, 64, 2, 0));
    mock.add_desc_chains(&[desc], 1).unwrap();
    let _ = b.notifies[0].write(1);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(mock.used().idx().load(), 1, "paused: nothing served before the commit");
    b.resume();
    wait_for("the used ring at the destination", || mock.used().idx().load() == 2);
    wait_for("the interrupt", || !rec.triggers.lock().unwrap().is_empty());

    let (mut c, _) = rng_transport(&mem);
    let mut bad = state.clone();
    bad.device_type = 2;
    assert!(c.restore(&bad).unwrap_err().contains("saved as virtio device type 2"));
    let mut bad = state.clone();
    bad.common.driver_features |= 1 << 50;
    assert!(c.restore(&bad).unwrap_err().contains("does not offer"));
    let mut bad = state.clone();
    bad.common.queues[0].desc = MEMORY as u64 - 16;
    assert!(c.restore(&bad).unwrap_err().contains("not all inside guest memory"));
    let mut bad = state.clone();
    bad.queues[0].next_avail = 40;
    assert!(c.restore(&bad).unwrap_err().contains("39 requests in flight"));
    let mut bad = state;
    bad.config.bytes[0] = 0;
    assert!(c.restore(&bad).unwrap_err().contains("configuration byte 0x0"));
}

/// A gate that lets devices start only when told, counting them.
#[derive(Default)]
struct Gate {
    open: AtomicBool,
    running: std::sync::atomic::AtomicI32,
}

impl crate::virtio::MemoryGate for Gate {
    fn start(&self) -> Result<(), String> {
        if !self.open.load(Ordering::SeqCst) {
            return Err("the window is private".into());
        }
        self.running.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn stopped(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[test]
fn a_gated_device_starts_only_through_its_gate() {
    let mem = memory();
    let (mut t, _) = rng_transport(&mem);
    let gate = Arc::new(Gate::default());
    t.set_memory_gate(gate.clone());
    t.config_write(4, &command::MEMORY.to_le_bytes());
    let mock = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), 16);
    let got = bring_up(&mut t, rings(&mock), 16, features::VERSION_1);
    assert_ne!(got & status::DEVICE_NEEDS_RESET, 0, "closed gate: {got:#x}");
    assert!(!t.active());
    // Reset, open the gate, start again: counted while it runs.
    bar_w(&mut t, 0x14, &[0]);
    gate.open.store(true, Ordering::SeqCst);
    let got = bring_up(&mut t, rings(&mock), 16, features::VERSION_1);
    assert_eq!(got, 0x0f);
    assert_eq!(gate.running.load(Ordering::SeqCst), 1);
    bar_w(&mut t, 0x14, &[0]);
    assert_eq!(gate.running.load(Ordering::SeqCst), 0);
}
