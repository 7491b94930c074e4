//! virtio-net tests: a real TAP in a network namespace of the test's own
//! (the test thread's: nothing reaches the host's network), frames seen
//! and sent on the interface through an AF_PACKET socket, queues driven as
//! a driver would. Skipped, saying why, without root or /dev/net/tun.

use super::tap::TapError;
use super::*;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: u64 = 1 << 20;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn memory() -> GuestMemory {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// A TAP `covmtest0` up in a fresh network namespace entered by this
/// thread; `None` (with the reason printed) where that cannot be done.
fn private_tap() -> Option<Tap> {
    // SAFETY: unshare affects only the calling thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!(
            "SKIP: cannot enter a network namespace of the test's own: {}",
            std::io::Error::last_os_error()
        );
        return None;
    }
    // No IPv6 in it, so the kernel sends nothing of its own on the TAP
    // (router solicitations) and the frames seen are the test's.
    for knob in ["all", "default"] {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6"), "1");
    }
    match Tap::open("covmtest0") {
        Ok(tap) => {
            tap.configure([10, 0, 9, 1].into(), [255, 255, 255, 0].into()).unwrap();
            Some(tap)
        }
        Err(e) => {
            eprintln!("SKIP: {e}");
            None
        }
    }
}

/// An AF_PACKET socket on `name`, seeing every frame on it.
fn packet_socket(name: &str) -> OwnedFd {
    // SAFETY: plain socket calls on values that live for each call.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            (libc::ETH_P_ALL as u16).to_be() as i32,
        );
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        let name = std::ffi::CString::new(name).unwrap();
        let index = libc::if_nametoindex(name.as_ptr());
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = index as i32;
        let r = libc::bind(
            fd,
            &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        let timeout = libc::timeval { tv_sec: 5, tv_usec: 0 };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        OwnedFd::from_raw_fd(fd)
    }
}

/// A test frame: to `dst` from `src`, EtherType 0x88b5 (local
/// experimental), `payload`.
fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(payload);
    f
}

/// Frames on the packet socket until one with EtherType 0x88b5.
fn next_test_frame(sock: &OwnedFd) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    loop {
        // SAFETY: recv into a buffer that lives for the call.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(n > 0, "no frame: {}", std::io::Error::last_os_error());
        let f = &buf[..n as usize];
        if f.len() >= 14 && f[12..14] == [0x88, 0xb5] {
            return f.to_vec();
        }
    }
}

/// The flags of interface `name` in this thread's namespace, if it exists.
fn interface_flags(name: &str) -> Option<i32> {
    // SAFETY: plain socket and ioctl calls on values that live for each call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let sock = OwnedFd::from_raw_fd(fd);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return None;
        }
        Some(i32::from(req.ifr_ifru.ifru_flags))
    }
}

/// The queues' handler of `net`, driven directly.
fn handler(net: &Net, mem: &GuestMemory) -> Handler {
    Handler {
        shared: net.shared.clone(),
        buffer: Vec::new(),
        memory: Arc::new(mem.clone()),
        held: VecDeque::new(),
        held_count: Arc::default(),
    }
}

fn raw(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
}

#[test]
fn config_space_and_features() {
    let Some(tap) = private_tap() else { return };
    let net = Net::new(tap, MAC, None).unwrap();
    let mut config = [0u8; 12];
    net.read_config(0, &mut config);
    assert_eq!(config[..6], MAC);
    assert_eq!(u16::from_le_bytes([config[6], config[7]]), LINK_UP);
    let f = net.features();
    assert_ne!(f & net_features::MAC, 0);
    assert_ne!(f & features::VERSION_1, 0);
    // Past the end reads zeros.
    let mut past = [0xffu8; 4];
    net.read_config(64, &mut past);
    assert_eq!(past, [0; 4]);
}

#[test]
fn frames_go_both_ways_and_bad_buffers_are_counted() {
    let Some(tap) = private_tap() else { return };
    let sock = packet_socket(tap.name());
    let net = Net::new(tap, MAC, None).unwrap();
    let mem = memory();
    let mut handler = handler(&net, &mem);

    // Transmit: header + frame in two buffers.
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x20000), 16);
    let mut tx_queue = tx.create_queue().unwrap();
    let out = frame([0xff; 6], MAC, b"from the guest");
    mem.write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(0x40000)).unwrap();
    mem.write_slice(&out, GuestAddress(0x41000)).unwrap();
    tx.add_desc_chains(
        &[
            raw(0x40000, VNET_HDR_LEN as u32, VRING_DESC_F_NEXT, 1),
            raw(0x41000, out.len() as u32, 0, 0),
        ],
        0,
    )
    .unwrap();
    assert!(handler.process(&mem, TX, &mut tx_queue).unwrap());
    assert_eq!(next_test_frame(&sock), out);
    assert_eq!(net.shared.tx_frames.load(Ordering::Relaxed), 1);
    assert_eq!(net.shared.tx_bytes.load(Ordering::Relaxed), out.len() as u64);

    // A runt (no Ethernet header) is dropped and counted, and still used.
    mem.write_slice(&[0u8; 16], GuestAddress(0x42000)).unwrap();
    tx.add_desc_chains(&[raw(0x42000, 16, 0, 0)], 2).unwrap();
    assert!(handler.process(&mem, TX, &mut tx_queue).unwrap());
    assert_eq!(net.shared.tx_dropped.load(Ordering::Relaxed), 1);

    // Receive: a frame sent on the interface reaches the driver's buffer,
    // header first, num_buffers 1.
    let inbound = frame(MAC, [0x02, 0, 0, 0, 0, 1], b"to the guest");
    // SAFETY: send from a buffer that lives for the call.
    let sent = unsafe { libc::send(sock.as_raw_fd(), inbound.as_ptr().cast(), inbound.len(), 0) };
    assert_eq!(sent, inbound.len() as isize, "{}", std::io::Error::last_os_error());
    let start = Instant::now();
    while lock(&net.shared.pending).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(5), "the TAP frame never arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    let rx = MockSplitQueue::create(&mem, GuestAddress(0x60000), 16);
    let mut rx_queue = rx.create_queue().unwrap();
    // No buffer yet: the frame waits.
    assert!(!handler.process(&mem, RX, &mut rx_queue).unwrap());
    assert_eq!(lock(&net.shared.pending).len(), 1);
    // A buffer too small: dropped, counted, used with length 0.
    rx.add_desc_chains(&[raw(0x70000, 20, VRING_DESC_F_WRITE, 0)], 0)
        .unwrap();
    assert!(handler.process(&mem, RX, &mut rx_queue).unwrap());
    assert_eq!(net.shared.rx_dropped.load(Ordering::Relaxed), 1);
    // A buffer with no frame to fill it is taken and held (the worker
    // serves a queue until nothing is left available), not left behind.
    rx.add_desc_chains(&[raw(0x71000, 1526, VRING_DESC_F_WRITE, 0)], 1)
        .unwrap();
    assert!(!handler.process(&mem, RX, &mut rx_queue).unwrap());
    assert_eq!(handler.held.len(), 1);
    assert_eq!(rx_queue.next_avail(), 2);
    // The next frame goes into it.
    // SAFETY: as above.
    unsafe { libc::send(sock.as_raw_fd(), inbound.as_ptr().cast(), inbound.len(), 0) };
    let start = Instant::now();
    while lock(&net.shared.pending).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(5), "the TAP frame never arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(handler.process(&mem, RX, &mut rx_queue).unwrap());
    assert!(handler.held.is_empty());
    let used = rx.used().ring().ref_at(1).unwrap().load();
    assert_eq!(used.len() as usize, VNET_HDR_LEN + inbound.len());
    let mut got = vec![0u8; VNET_HDR_LEN + inbound.len()];
    mem.read_slice(&mut got, GuestAddress(0x71000)).unwrap();
    assert_eq!(&got[VNET_HDR_LEN..], &inbound[..]);
    assert_eq!(u16::from_le_bytes([got[NUM_BUFFERS_AT], got[NUM_BUFFERS_AT + 1]]), 1);
    assert_eq!(net.shared.rx_frames.load(Ordering::Relaxed), 1);
}

#[test]
fn a_bad_tap_name_or_descriptor_is_named() {
    let long = "x".repeat(20);
    assert!(matches!(Tap::open(&long), Err(TapError::Name(_))));
    assert!(matches!(Tap::open("a/b"), Err(TapError::Name(_))));
    // A descriptor that is not a TAP.
    let file = std::fs::File::open("/dev/null").unwrap();
    let e = Tap::from_fd(OwnedFd::from(file)).unwrap_err().to_string();
    assert!(e.contains("not a TAP interface"), "{e}");
}

#[test]
fn the_tap_is_let_go_kept_and_taken_again() {
    let Some(tap) = private_tap() else { return };
    let reattach = Reattach {
        name: String::new(),
        ip: [10, 0, 9, 1].into(),
        mask: [255, 255, 255, 0].into(),
    };
    let mut net = Net::new(tap, MAC, Some(reattach.clone())).unwrap();
    assert_eq!(net.tap_name(), Some("covmtest0"));
    net.handover(Handover::Release).unwrap();
    assert_eq!(net.tap_name(), None);
    // Kept, up, for the next holder.
    let flags = interface_flags("covmtest0").expect("the TAP was kept");
    assert_ne!(flags & libc::IFF_UP, 0, "still up");
    // Another device (the next covm) takes it; it goes with that one.
    let mut next = Net::detached(
        Reattach {
            name: "covmtest0".into(),
            ..reattach
        },
        MAC,
    );
    next.handover(Handover::Acquire).unwrap();
    assert_eq!(next.tap_name(), Some("covmtest0"));
    drop(next);
    drop(net);
    assert_eq!(interface_flags("covmtest0"), None, "the TAP outlived its last holder");
    // A TAP passed as a descriptor cannot be handed over.
    let tap = Tap::open("covmtest1").unwrap();
    let mut fixed = Net::new(tap, MAC, None).unwrap();
    assert!(fixed.handover(Handover::Release).unwrap_err().contains("descriptor"));
}

#[test]
fn hostile_buffers_are_dropped_and_counted() {
    let Some(tap) = private_tap() else { return };
    let net = Net::new(tap, MAC, None).unwrap();
    let mem = memory();
    let mut handler = handler(&net, &mem);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x20000), 16);
    let mut tx_queue = tx.create_queue().unwrap();
    // Larger than any frame; outside guest memory; a looping chain.
    tx.add_desc_chains(&[raw(0x40000, (MAX_FRAME + 1) as u32, 0, 0)], 0)
        .unwrap();
    tx.add_desc_chains(&[raw(MEM_SIZE - 16, 4096, 0, 0)], 1).unwrap();
    tx.add_desc_chains(&[raw(0x41000, 64, VRING_DESC_F_NEXT, 2)], 2)
        .unwrap();
    tx.desc_table()
        .store(2, raw(0x41000, 64, VRING_DESC_F_NEXT, 2))
        .unwrap();
    assert!(handler.process(&mem, TX, &mut tx_queue).unwrap());
    // The first two are dropped; the loop ends after a queue's worth of
    // descriptors (virtio-queue bounds every chain), a bounded frame.
    assert_eq!(net.shared.tx_dropped.load(Ordering::Relaxed), 2);
    assert!(net.shared.tx_bytes.load(Ordering::Relaxed) <= 16 * 64);
    // Every chain was used, so the driver gets its buffers back.
    assert_eq!(tx.used().idx().load(), 3);
    // A receive buffer outside guest memory: the frame is dropped.
    lock(&net.shared.pending).push_back(vec![0u8; 64]);
    let rx = MockSplitQueue::create(&mem, GuestAddress(0x60000), 16);
    let mut rx_queue = rx.create_queue().unwrap();
    rx.add_desc_chains(&[raw(MEM_SIZE - 16, 1526, VRING_DESC_F_WRITE, 0)], 0)
        .unwrap();
    assert!(handler.process(&mem, RX, &mut rx_queue).unwrap());
    assert_eq!(net.shared.rx_dropped.load(Ordering::Relaxed), 1);
}

/// `net` activated on `mem` with its queues at fixed addresses (the
/// control queue only if `announces`), paused as an incoming VM's.
fn activate_incoming(
    net: &mut Net,
    mem: &GuestMemory,
    announces: bool,
) -> (Arc<crate::virtio::test_support::Irqs>, Vec<EventFd>) {
    let irqs = Arc::new(crate::virtio::test_support::Irqs::default());
    let mut queues = Vec::new();
    let mut notifies = Vec::new();
    let count = if announces { 3 } else { 2 };
    for index in 0..count {
        let mock = MockSplitQueue::create(mem, GuestAddress(0x10000 * (u64::from(index) + 1)), 16);
        let notify = EventFd::new(EFD_NONBLOCK).unwrap();
        notifies.push(notify.try_clone().unwrap());
        queues.push(super::super::ActiveQueue {
            index,
            queue: mock.create_queue().unwrap(),
            notify,
        });
    }
    let mut features = features::VERSION_1 | net_features::MAC;
    if announces {
        features |= net_features::GUEST_ANNOUNCE | net_features::CTRL_VQ;
    }
    net.activate(super::super::Activation {
        memory: mem.clone(),
        acked_features: features,
        queues,
        interrupt: irqs.clone(),
        failed: Arc::default(),
        paused: true,
    })
    .unwrap();
    (irqs, notifies)
}

fn status(net: &Net) -> u16 {
    let mut s = [0u8; 2];
    net.read_config(6, &mut s);
    u16::from_le_bytes(s)
}

#[test]
fn a_migrated_driver_that_announces_is_asked_to_and_acks_on_the_control_queue() {
    let Some(tap) = private_tap() else { return };
    let mut net = Net::new(tap, MAC, None).unwrap();
    let mem = memory();
    let (irqs, notifies) = activate_incoming(&mut net, &mem, true);
    net.restore_state(&crate::virtio::DeviceState::Stateless).unwrap();
    assert_eq!(status(&net), LINK_UP, "nothing asked before the guest runs");
    net.resume();
    assert_eq!(status(&net), LINK_UP | announce::STATUS_ANNOUNCE);
    assert_eq!(irqs.config.load(Ordering::SeqCst), 1);
    // The driver's acknowledgement: class 3, command 0, a result byte.
    let ctrl = MockSplitQueue::create(&mem, GuestAddress(0x30000), 16);
    mem.write_slice(&[3, 0], GuestAddress(0x50000)).unwrap();
    mem.write_slice(&[0xff], GuestAddress(0x51000)).unwrap();
    ctrl.add_desc_chains(
        &[
            raw(0x50000, 2, VRING_DESC_F_NEXT, 1),
            raw(0x51000, 1, VRING_DESC_F_WRITE, 0),
        ],
        0,
    )
    .unwrap();
    notifies[2].write(1).unwrap();
    crate::virtio::test_support::wait_for("the announcement's ack", || status(&net) == LINK_UP);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x51000)).unwrap(), announce::CTRL_OK);
    // Resuming again (a later vm.resume) asks nothing more.
    net.pause();
    net.resume();
    assert_eq!(status(&net), LINK_UP);
    net.reset();
}

#[test]
fn a_migrated_driver_that_cannot_announce_gets_rarps_from_covm() {
    let Some(tap) = private_tap() else { return };
    let sock = packet_socket(tap.name());
    let mut net = Net::new(tap, MAC, None).unwrap();
    let mem = memory();
    let (irqs, _notifies) = activate_incoming(&mut net, &mem, false);
    net.restore_state(&crate::virtio::DeviceState::Stateless).unwrap();
    net.resume();
    assert_eq!(irqs.config.load(Ordering::SeqCst), 0);
    let mut buf = vec![0u8; 2048];
    let mut rarps = 0;
    let start = Instant::now();
    while rarps < announce::RARP_SCHEDULE.len() {
        assert!(start.elapsed() < Duration::from_secs(5), "{rarps} RARP frames seen");
        // SAFETY: recv into a buffer that lives for the call.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(n > 0);
        let f = &buf[..n as usize];
        if f.len() >= 14 && f[12..14] == [0x80, 0x35] {
            assert_eq!(&f[6..12], &MAC);
            rarps += 1;
        }
    }
    net.reset();
}
