//! The `net` workload: the first virtio-net device driven by virtio-drivers,
//! with smoltcp's TCP/IP stack on top, all in ring 3. It answers ARP and
//! ICMP echo (smoltcp does both), echoes every TCP connection to its port
//! (one at a time; the listener comes back after each) and every UDP
//! datagram to its port, and prints `heartbeat <n> rx=<frames> tx=<frames>
//! tcp=<bytes echoed> udp=<datagrams echoed> ok` every 100 ms. The power
//! button stops it cleanly. The device is polled: while frames flow the CPU
//! polls without pause; after 2 ms without one it sleeps at most 1 ms
//! between polls (less when smoltcp has a timer due).

use crate::hw::{self, rdtsc};
use crate::println;
use crate::virtio::{self, Devices, Net};
use alloc::vec;
use core::cell::RefCell;
use covm_guest_abi::ports::{self, power};
use covm_guest_abi::workload::NetArgs;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};
use virtio_drivers::device::net::RxBuffer;

/// Counters the heartbeat prints.
#[derive(Default)]
struct Counts {
    rx: u64,
    tx: u64,
}

/// The driver as smoltcp's device; a RefCell because a receive token and
/// its reply's transmit token both need the driver.
struct Phy {
    net: RefCell<Net>,
    counts: RefCell<Counts>,
}

struct Rx<'a> {
    buf: RxBuffer,
    phy: &'a Phy,
}

struct Tx<'a> {
    phy: &'a Phy,
}

impl RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(self.buf.packet());
        self.phy.counts.borrow_mut().rx += 1;
        if let Err(e) = self.phy.net.borrow_mut().recycle_rx_buffer(self.buf) {
            virtio::fail_device(format_args!("net: a receive buffer could not be given back: {e}"));
        }
        r
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut net = self.phy.net.borrow_mut();
        let mut tx = net.new_tx_buffer(len);
        let r = f(tx.packet_mut());
        // A full transmit queue waits for the device to use a buffer.
        while !net.can_send() {
            core::hint::spin_loop();
        }
        if let Err(e) = net.send(tx) {
            virtio::fail_device(format_args!("net: a frame could not be sent: {e}"));
        }
        self.phy.counts.borrow_mut().tx += 1;
        r
    }
}

impl Device for &Phy {
    type RxToken<'a>
        = Rx<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = Tx<'a>
    where
        Self: 'a;

    fn receive(&mut self, _: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let buf = self.net.borrow_mut().receive().ok()?;
        Some((Rx { buf, phy: self }, Tx { phy: self }))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx { phy: self })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps.max_burst_size = Some(1);
        caps
    }
}

fn now(tsc_khz: u64) -> Instant {
    Instant::from_micros((rdtsc() * 1000 / tsc_khz) as i64)
}

/// vCPU 0's `net` loop.
pub fn run(args: &NetArgs, mut devices: Devices, tsc_khz: u64) -> ! {
    let (net, df) = devices
        .net()
        .unwrap_or_else(|e| virtio::fail_device(format_args!("net: {e}")));
    let mac = net.mac_address();
    let phy = Phy {
        net: RefCell::new(net),
        counts: RefCell::default(),
    };
    let mut device = &phy;
    let mut iface = Interface::new(
        Config::new(HardwareAddress::Ethernet(EthernetAddress(mac))),
        &mut device,
        now(tsc_khz),
    );
    let ip: Ipv4Address = args.ip;
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(ip), args.prefix));
    });
    if let Some(gw) = args.gw {
        let _ = iface.routes_mut().add_default_ipv4_route(gw);
    }
    let mut tcp_socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 64 << 10]),
        tcp::SocketBuffer::new(vec![0; 64 << 10]),
    );
    // An echo answers at once: acknowledging later (smoltcp's default
    // 10 ms) or holding small segments back (Nagle) only stalls it.
    tcp_socket.set_ack_delay(None);
    tcp_socket.set_nagle_enabled(false);
    let udp_socket = udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16 << 10]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16 << 10]),
    );
    let mut sockets = SocketSet::new(vec![]);
    let tcp_handle = sockets.add(tcp_socket);
    let udp_handle = sockets.add(udp_socket);
    println!(
        "net: {df} mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} ip {}/{} port {}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], args.ip, args.prefix, args.port
    );
    let (mut tcp_bytes, mut udp_datagrams) = (0u64, 0u64);
    let mut buf = vec![0u8; 64 << 10];
    let heartbeat_ticks = 100 * tsc_khz;
    let mut next_heartbeat = rdtsc() + heartbeat_ticks;
    let mut heartbeats = 0u64;
    let (mut last_frames, mut last_activity) = (0u64, rdtsc());
    loop {
        let t = now(tsc_khz);
        iface.poll(t, &mut device, &mut sockets);
        let tcp = sockets.get_mut::<tcp::Socket>(tcp_handle);
        if !tcp.is_open() {
            let _ = tcp.listen(args.port);
        }
        if tcp.may_recv() && tcp.can_send() {
            let room = tcp.send_capacity() - tcp.send_queue();
            let want = room.min(buf.len());
            if let Ok(n) = tcp.recv_slice(&mut buf[..want]) {
                if n > 0 {
                    let sent = tcp.send_slice(&buf[..n]).unwrap_or(0);
                    tcp_bytes += sent as u64;
                }
            }
        } else if tcp.state() == tcp::State::CloseWait {
            tcp.close();
        }
        let udp = sockets.get_mut::<udp::Socket>(udp_handle);
        if !udp.is_open() {
            let _ = udp.bind(args.port);
        }
        while let Ok((n, meta)) = udp.recv_slice(&mut buf) {
            if udp.send_slice(&buf[..n], meta.endpoint).is_ok() {
                udp_datagrams += 1;
            }
        }
        iface.poll(now(tsc_khz), &mut device, &mut sockets);
        let tsc = rdtsc();
        if tsc >= next_heartbeat {
            heartbeats += 1;
            let c = phy.counts.borrow();
            println!(
                "heartbeat {heartbeats} rx={} tx={} tcp={tcp_bytes} udp={udp_datagrams} ok",
                c.rx, c.tx
            );
            next_heartbeat = (next_heartbeat + heartbeat_ticks).max(tsc);
            if hw::inb(ports::POWER) == power::READ_BUTTON_PRESSED {
                println!("power button pressed: powering off");
                hw::power_off(power::OFF);
            }
        }
        // While frames flow, keep polling (ring 3 spins at native speed);
        // after 2 ms without one, sleep until smoltcp's next timer, a
        // millisecond at most (the device is polled, not interrupting).
        let frames = {
            let c = phy.counts.borrow();
            c.rx + c.tx
        };
        let tsc = rdtsc();
        if frames != last_frames {
            last_frames = frames;
            last_activity = tsc;
        }
        let idle = tsc - last_activity > 2 * tsc_khz;
        let delay_us = iface
            .poll_delay(now(tsc_khz), &sockets)
            .map_or(1000, |d| d.total_micros().min(1000));
        if idle && delay_us > 50 && !phy.net.borrow().can_recv() {
            hw::halt_until(rdtsc() + delay_us * tsc_khz / 1000);
        } else {
            core::hint::spin_loop();
        }
    }
}
