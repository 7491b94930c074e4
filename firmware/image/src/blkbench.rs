//! The `blkbench` workload: throughput and IOPS of the first virtio-blk
//! disk, measured with the TSC, then a clean power-off.
//!
//! Sequential write then read of the first `mib` MiB in 128 KiB requests
//! (as many in flight as the queue takes), then 4 KiB random writes and
//! reads over the same span for `ms` each, at queue depth 1 and 32.
//! Requests go through virtio-drivers' non-blocking calls and completions
//! are polled (no interrupts: the device's MSI-X stays off), so the
//! numbers are the device's and the VMM's, not the emulated ring 0's.
//!
//! virtio-drivers 0.13's `VirtIOBlk` has a 16-entry queue: with indirect
//! descriptors (which QEMU offers) 16 requests fit, without them 5. The
//! depth actually reached is printed next to the one asked for.
//!
//! Every 4 KiB block written carries its block number + 1 in its first
//! 8 bytes, and every read checks it: a bench that read the wrong block
//! would fail rather than print a number.

use crate::hw::{self, rdtsc};
use crate::println;
use crate::virtio::{self, Blk, Devices};
use covm_guest_abi::pattern::{splitmix64, GOLDEN};
use covm_guest_abi::ports::power;
use covm_guest_abi::workload::{BlkBenchArgs, FAIL_DEVICE};
use virtio_drivers::device::blk::{BlkReq, BlkResp, SECTOR_SIZE};
use virtio_drivers::transport::pci::bus::DeviceFunction;
use virtio_drivers::{Error, PAGE_SIZE};

const BLOCK: usize = 4096;
const SEQ_BS: usize = 128 << 10;
/// Request slots: the driver's queue size (`VirtIOBlk::virt_queue_size`).
const SLOTS: usize = 16;
/// No completion for this long fails the bench.
const STALL_MS: u64 = 10_000;

struct Slot {
    req: BlkReq,
    resp: BlkResp,
    /// The request in flight in this slot: (token, first block, blocks).
    busy: Option<(u16, u64, usize)>,
    buf: &'static mut [u8],
}

/// What one test does.
struct Test {
    name: &'static str,
    write: bool,
    bs: usize,
    qd: usize,
    /// Random offsets (else sequential from block 0).
    random: bool,
    /// Stop issuing after this many TSC ticks (sequential: after the span).
    ticks: u64,
}

struct Bench {
    blk: Blk,
    df: DeviceFunction,
    slots: [Slot; SLOTS],
    span_blocks: u64,
    tsc_khz: u64,
    rng: u64,
}

pub fn run(args: &BlkBenchArgs, mut devices: Devices, tsc_khz: u64) -> ! {
    let (blk, df) = devices
        .blk(None)
        .unwrap_or_else(|e| virtio::fail_device(format_args!("blkbench: {e}")));
    let disk_bytes = blk.capacity() * SECTOR_SIZE as u64;
    let span = (args.mib << 20).min(disk_bytes) / SEQ_BS as u64 * SEQ_BS as u64;
    if span == 0 {
        virtio::fail_device(format_args!(
            "blkbench: the virtio-blk disk {df} has {} sectors, less than one {SEQ_BS}-byte request",
            blk.capacity()
        ));
    }
    if blk.readonly() {
        virtio::fail_device(format_args!("blkbench: the virtio-blk disk {df} is read-only"));
    }
    let slots = core::array::from_fn(|_| {
        let at = virtio::dma_pages(SEQ_BS / PAGE_SIZE)
            .unwrap_or_else(|| virtio::fail_device(format_args!("blkbench: the DMA pool is used up")));
        Slot {
            req: BlkReq::default(),
            resp: BlkResp::default(),
            busy: None,
            // SAFETY: fresh pages of the pool, this slot's alone for good.
            buf: unsafe { core::slice::from_raw_parts_mut(at as *mut u8, SEQ_BS) },
        }
    });
    println!(
        "blkbench: disk {df} {} MiB, span {} MiB, {} ms per random test, queue of {}, tsc {tsc_khz} kHz",
        disk_bytes >> 20,
        span >> 20,
        args.ms,
        blk.virt_queue_size()
    );
    let mut bench = Bench {
        blk,
        df,
        slots,
        span_blocks: span / BLOCK as u64,
        tsc_khz,
        rng: rdtsc(),
    };
    let ms = args.ms * tsc_khz;
    for (name, write, bs, qd, random, ticks) in [
        ("seq-write", true, SEQ_BS, SLOTS, false, u64::MAX),
        ("seq-read", false, SEQ_BS, SLOTS, false, u64::MAX),
        ("rand-write", true, BLOCK, 1, true, ms),
        ("rand-read", false, BLOCK, 1, true, ms),
        ("rand-write", true, BLOCK, 32, true, ms),
        ("rand-read", false, BLOCK, 32, true, ms),
    ] {
        bench.test(&Test {
            name,
            write,
            bs,
            qd,
            random,
            ticks,
        });
    }
    println!("blkbench: done");
    hw::power_off(power::OFF)
}

impl Bench {
    fn fail(&self, test: &Test, why: core::fmt::Arguments, code: u8) -> ! {
        println!("FAIL blkbench {} {}: {why}", test.name, self.df);
        hw::power_off(code)
    }

    /// The first block of request number `op`.
    fn place(&mut self, test: &Test, op: u64) -> u64 {
        let per = (test.bs / BLOCK) as u64;
        if test.random {
            self.rng = self.rng.wrapping_add(GOLDEN);
            splitmix64(self.rng) % (self.span_blocks / per) * per
        } else {
            op * per
        }
    }

    fn submit(&mut self, test: &Test, slot: usize, first: u64) -> Result<u16, Error> {
        let blocks = test.bs / BLOCK;
        let s = &mut self.slots[slot];
        if test.write {
            for b in 0..blocks {
                s.buf[b * BLOCK..b * BLOCK + 8].copy_from_slice(&(first + b as u64 + 1).to_le_bytes());
            }
        }
        let sector = first as usize * (BLOCK / SECTOR_SIZE);
        let buf = &mut s.buf[..test.bs];
        // SAFETY: the slot's request, response and buffer stay untouched
        // until `complete` pops this token.
        let token = unsafe {
            if test.write {
                self.blk.write_blocks_nb(sector, &mut s.req, buf, &mut s.resp)
            } else {
                self.blk.read_blocks_nb(sector, &mut s.req, buf, &mut s.resp)
            }
        }?;
        s.busy = Some((token, first, blocks));
        Ok(token)
    }

    /// Completes the request `token` and checks what a read brought.
    fn complete(&mut self, test: &Test, token: u16) {
        let Some(slot) = self
            .slots
            .iter()
            .position(|s| s.busy.is_some_and(|(t, _, _)| t == token))
        else {
            self.fail(
                test,
                format_args!("the device completed unknown request {token}"),
                FAIL_DEVICE,
            )
        };
        let s = &mut self.slots[slot];
        let (_, first, blocks) = s.busy.take().expect("found busy");
        let buf = &mut s.buf[..blocks * BLOCK];
        // SAFETY: the buffers this token was submitted with.
        let done = unsafe {
            if test.write {
                self.blk.complete_write_blocks(token, &s.req, buf, &mut s.resp)
            } else {
                self.blk.complete_read_blocks(token, &s.req, buf, &mut s.resp)
            }
        };
        if let Err(e) = done {
            self.fail(test, format_args!("request for block {first} failed: {e}"), FAIL_DEVICE);
        }
        if !test.write {
            for b in 0..blocks {
                let s = &self.slots[slot];
                let stamp = u64::from_le_bytes(s.buf[b * BLOCK..b * BLOCK + 8].try_into().expect("8 bytes"));
                let block = first + b as u64;
                if stamp != block + 1 {
                    self.fail(
                        test,
                        format_args!("block {block} holds stamp {stamp:#x}, expected {:#x}", block + 1),
                        power::FAIL_VERIFY,
                    );
                }
            }
        }
    }

    fn test(&mut self, test: &Test) {
        let ops_limit = if test.random {
            u64::MAX
        } else {
            self.span_blocks * BLOCK as u64 / test.bs as u64
        };
        let start = rdtsc();
        let stop_issuing = start.saturating_add(test.ticks);
        let (mut issued, mut done, mut inflight, mut deepest) = (0u64, 0u64, 0usize, 0usize);
        let mut progress = start;
        loop {
            let now = rdtsc();
            while inflight < test.qd && issued < ops_limit && now < stop_issuing {
                let Some(slot) = self.slots.iter().position(|s| s.busy.is_none()) else {
                    break;
                };
                let first = self.place(test, issued);
                match self.submit(test, slot, first) {
                    Ok(_) => {}
                    // The queue holds no more: wait for a completion.
                    Err(Error::QueueFull) => break,
                    Err(e) => self.fail(
                        test,
                        format_args!("request for block {first} not queued: {e}"),
                        FAIL_DEVICE,
                    ),
                }
                issued += 1;
                inflight += 1;
            }
            deepest = deepest.max(inflight);
            if inflight == 0 {
                break;
            }
            match self.blk.peek_used() {
                Some(token) => {
                    self.complete(test, token);
                    inflight -= 1;
                    done += 1;
                    progress = rdtsc();
                }
                None if rdtsc() - progress > STALL_MS * self.tsc_khz => self.fail(
                    test,
                    format_args!("no completion for {STALL_MS} ms with {inflight} requests in flight"),
                    FAIL_DEVICE,
                ),
                None => core::hint::spin_loop(),
            }
        }
        let us = ((rdtsc() - start) * 1000 / self.tsc_khz).max(1);
        let bytes = done * test.bs as u64;
        // Decimal megabytes: bytes per microsecond.
        let mbps10 = bytes * 10 / us;
        let iops = done * 1_000_000 / us;
        println!(
            "blkbench: {} bs={} qd={}/{} ops={done} time={}.{:03} s {}.{} MB/s {iops} IOPS",
            test.name,
            test.bs,
            deepest,
            test.qd,
            us / 1_000_000,
            us / 1000 % 1000,
            mbps10 / 10,
            mbps10 % 10
        );
    }
}
