//! The `blk` workload: vCPU 0 rewrites and verifies the first N MiB of the
//! first virtio-blk disk, block by block, so a migration (or a restore) of
//! the VM and its disk has writes to chase and any block that comes back
//! stale or damaged is caught. Content: `covm_guest_abi::pattern`'s
//! `fill_block`; each block's generation lives in guest memory
//! (`layout::BLK_GEN_TABLE`), so memory and disk must agree.
//!
//! One request at a time through virtio-drivers' non-blocking calls; the
//! CPU waits for each completion halted in the sleep syscall, woken by the
//! request queue's MSI-X interrupt (counted in ring 0) or, at the latest,
//! by a 1 ms timer.

use crate::hw::{self, rdtsc, sleep_until};
use crate::pace::Pace;
use crate::println;
use crate::virtio::{self, Blk, Devices};
use core::sync::atomic::{compiler_fence, Ordering};
use covm_guest_abi::layout::{blk_gen_gpa, BLK_BLOCK_SIZE};
use covm_guest_abi::pattern::{check_block, fill_block, generation_digest, PageCheck, WORDS};
use covm_guest_abi::ports::{self, power};
use covm_guest_abi::workload::{BlkArgs, FAIL_DEVICE};
use virtio_drivers::device::blk::{BlkReq, BlkResp, RespStatus, SECTOR_SIZE};
use virtio_drivers::transport::pci::bus::DeviceFunction;

const SECTORS_PER_BLOCK: u64 = BLK_BLOCK_SIZE / SECTOR_SIZE as u64;
/// A request not completed after this long fails the workload. Checked
/// after looking at the used ring, so a VM paused with a request in flight
/// (the device completes it before the pause) does not trip it.
const IO_TIMEOUT_MS: u64 = 10_000;
/// Longest halt while waiting for a completion: a lost or missing
/// interrupt costs at most this, and shows as irqs not moving.
const POLL_MS: u64 = 1;

struct Workload {
    blk: Blk,
    df: DeviceFunction,
    seed: u64,
    blocks: u64,
    tsc_khz: u64,
    /// One block, in the DMA pool.
    buf: &'static mut [u64; WORDS],
    writes: u64,
    reads: u64,
    /// Whether `dirty` runs on the other vCPUs (its count joins the heartbeat).
    dirty: bool,
}

/// The virtio-blk name of a request status.
fn status_name(status: RespStatus) -> &'static str {
    match status {
        RespStatus::OK => "VIRTIO_BLK_S_OK",
        RespStatus::IO_ERR => "VIRTIO_BLK_S_IOERR",
        RespStatus::UNSUPPORTED => "VIRTIO_BLK_S_UNSUPP",
        _ => "an unknown status",
    }
}

fn generation(block: u64) -> u64 {
    // SAFETY: an entry of the table for a block of the region (RAM,
    // checked by `virtio::Devices::blk`), only this CPU touches it.
    // Volatile: what counts is what memory holds (after a migration).
    unsafe { (blk_gen_gpa(block) as *const u32).read_volatile() as u64 }
}

fn set_generation(block: u64, generation: u64) {
    // SAFETY: as in `generation`.
    unsafe { (blk_gen_gpa(block) as *mut u32).write_volatile(generation as u32) }
}

impl Workload {
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the block buffer viewed as bytes; no other reference to
        // it is alive while this one is.
        unsafe { core::slice::from_raw_parts_mut(self.buf.as_mut_ptr().cast::<u8>(), BLK_BLOCK_SIZE as usize) }
    }

    /// Reads or writes `block` through the buffer; powers off on an error.
    fn io(&mut self, block: u64, write: bool) {
        let what = if write { "write" } else { "read" };
        if let Err((e, status)) = self.try_io(block, write) {
            let sector = block * SECTORS_PER_BLOCK;
            self.fail_io(format_args!(
                "{what} of block {block} (sector {sector}) failed: {e} (status {status:?})"
            ));
        }
        if write {
            self.writes += 1;
        } else {
            self.reads += 1;
        }
    }

    /// One request for `block` through the buffer, waited for; the device's
    /// error and status if it failed it.
    fn try_io(&mut self, block: u64, write: bool) -> Result<(), (virtio_drivers::Error, RespStatus)> {
        let what = if write { "write" } else { "read" };
        let sector = (block * SECTORS_PER_BLOCK) as usize;
        let (mut req, mut resp) = (BlkReq::default(), BlkResp::default());
        let buf: *mut [u8] = self.bytes();
        // SAFETY: `req`, `resp` and the buffer stay put and untouched until
        // the request completes below (`wait` only reads the used ring).
        let token = unsafe {
            if write {
                self.blk.write_blocks_nb(sector, &mut req, &*buf, &mut resp)
            } else {
                self.blk.read_blocks_nb(sector, &mut req, &mut *buf, &mut resp)
            }
        };
        let token = token.unwrap_or_else(|e| self.fail_io(format_args!("{what} of block {block} not queued: {e}")));
        self.wait(token, block, what);
        // SAFETY: the same buffers as for the submission, now completed.
        let done = unsafe {
            if write {
                self.blk.complete_write_blocks(token, &req, &*buf, &mut resp)
            } else {
                self.blk.complete_read_blocks(token, &req, &mut *buf, &mut resp)
            }
        };
        done.map_err(|e| (e, resp.status()))
    }

    /// Waits, halted, until the device has used `token`.
    fn wait(&mut self, token: u16, block: u64, what: &str) {
        let timeout = rdtsc() + IO_TIMEOUT_MS * self.tsc_khz;
        loop {
            match self.blk.peek_used() {
                Some(used) if used == token => return,
                Some(used) => self.fail_io(format_args!(
                    "the device completed request {used}, not the only one in flight ({token}, {what} of block {block})"
                )),
                None => {}
            }
            let now = rdtsc();
            if now >= timeout {
                self.fail_io(format_args!(
                    "{what} of block {block} not completed within {IO_TIMEOUT_MS} ms (irqs={})",
                    hw::virtio_irqs_taken()
                ));
            }
            if !hw::halt_until(now + POLL_MS * self.tsc_khz) {
                core::hint::spin_loop();
            }
        }
    }

    fn fail_io(&self, why: core::fmt::Arguments) -> ! {
        println!("FAIL blk {}: {why}", self.df);
        hw::power_off(FAIL_DEVICE)
    }

    /// Reads `block` back and checks it against its generation.
    fn verify(&mut self, block: u64) {
        let expected = generation(block);
        if expected == 0 {
            return;
        }
        self.io(block, false);
        let sector = block * SECTORS_PER_BLOCK;
        match check_block(self.buf, self.seed, block, expected) {
            PageCheck::Ok => return,
            PageCheck::RolledBack { found } => {
                println!("FAIL block {block} sector {sector} rolled back: holds generation {found}, expected {expected}")
            }
            PageCheck::Wrong {
                word,
                found,
                expected: want,
            } => println!(
                "FAIL block {block} sector {sector} word {word} is {found:#x} expected {want:#x} (generation {expected})"
            ),
        }
        hw::power_off(power::FAIL_VERIFY);
    }

    /// Verifies `block`, then writes its next generation.
    fn write(&mut self, block: u64) {
        self.verify(block);
        let next = generation(block) + 1;
        fill_block(self.buf, self.seed, block, next);
        self.io(block, true);
        // The block is on the disk; now its table entry.
        compiler_fence(Ordering::Release);
        set_generation(block, next);
    }

    /// On a disk the device calls read-only: one write anyway, which the
    /// device must fail with an I/O error (a guest that ignores the flag
    /// must not change the image), and a power-off naming the disk.
    fn write_refused(&mut self) -> ! {
        fill_block(self.buf, self.seed, 0, 1);
        match self.try_io(0, true) {
            Ok(()) => {
                println!("FAIL blk: the read-only disk {} accepted a write", self.df);
                hw::power_off(power::FAIL_VERIFY)
            }
            Err((_, status)) => virtio::fail_device(format_args!(
                "blk: the virtio-blk disk {} is read-only (a write anyway: {})",
                self.df,
                status_name(status)
            )),
        }
    }

    /// Flushes, prints the summary a host-side checker compares the disk
    /// with, and powers off cleanly.
    fn stop(&mut self, heartbeats: u64, why: &str) -> ! {
        if let Err(e) = self.blk.flush() {
            self.fail_io(format_args!("flush failed: {e}"));
        }
        let table = (0..self.blocks).map(|b| generation(b) as u32);
        let digest = generation_digest(table.clone());
        let sum: u64 = table.map(u64::from).sum();
        println!(
            "blk: stopped ({why}) after {heartbeats} heartbeats: blocks={} reads={} irqs={} generations={sum} digest={digest:#x}",
            self.writes,
            self.reads,
            hw::virtio_irqs_taken()
        );
        hw::power_off(power::OFF)
    }
}

/// vCPU 0's `blk` loop; `dirty` says whether the other vCPUs run `dirty`.
pub fn run(args: &BlkArgs, mut devices: Devices, tsc_khz: u64, dirty: bool) -> ! {
    let apic = hw::apic_id();
    let (blk, df) = devices
        .blk(Some(apic))
        .unwrap_or_else(|e| virtio::fail_device(format_args!("blk: {e}")));
    let blocks = args.mib * (1 << 20) / BLK_BLOCK_SIZE;
    let disk_mib = (blk.capacity() * SECTOR_SIZE as u64) >> 20;
    if blk.capacity() < blocks * SECTORS_PER_BLOCK {
        virtio::fail_device(format_args!(
            "blk mib={} needs a disk of at least {} MiB; the virtio-blk disk {df} has {} sectors ({disk_mib} MiB)",
            args.mib,
            args.mib,
            blk.capacity()
        ));
    }
    let readonly = blk.readonly();
    let buf = virtio::dma_pages(1).unwrap_or_else(|| virtio::fail_device(format_args!("blk: the DMA pool is used up")));
    println!(
        "blk: {} MiB of the {disk_mib} MiB disk {df}, {blocks} blocks, rate {} MiB/s, seed {}, \
         msi-x vector {:#x} to apic {apic}, tsc {tsc_khz} kHz",
        args.mib,
        args.rate_mib_s,
        args.seed,
        hw::VIRTIO_VECTOR
    );
    // SAFETY: the table's first `blocks` entries are RAM (checked when the
    // disk was opened; BLK_MAX_BLOCKS bounds `mib`) used by nothing else.
    unsafe { core::ptr::write_bytes(blk_gen_gpa(0) as *mut u32, 0, blocks as usize) };
    let mut w = Workload {
        blk,
        df,
        seed: args.seed,
        blocks,
        tsc_khz,
        // SAFETY: a fresh, zeroed, page-aligned page of the pool, ours alone.
        buf: unsafe { &mut *(buf as *mut [u64; WORDS]) },
        writes: 0,
        reads: 0,
        dirty,
    };
    if readonly {
        w.write_refused()
    }
    w.run(args)
}

impl Workload {
    fn run(&mut self, args: &BlkArgs) -> ! {
        let throttled = args.rate_mib_s > 0;
        let blocks_per_mib = (1 << 20) / BLK_BLOCK_SIZE;
        let ticks_per_write = if throttled {
            self.tsc_khz * 1000 / (args.rate_mib_s * blocks_per_mib)
        } else {
            0
        };
        let sweep_chunk = if throttled { 8 } else { 1 };
        let heartbeat_ticks = 100 * self.tsc_khz;
        let (mut write_slot, mut sweep_slot) = (0u64, 0u64);
        let start = rdtsc();
        let mut pace = Pace::new(self.tsc_khz, ticks_per_write, start);
        let mut next_heartbeat = start + heartbeat_ticks;
        let mut heartbeats = 0u64;
        loop {
            let now = rdtsc();
            if now >= next_heartbeat {
                heartbeats += 1;
                let irqs = hw::virtio_irqs_taken();
                if self.dirty {
                    let pages = crate::dirty::total_writes();
                    println!(
                        "heartbeat {heartbeats} blocks={} irqs={irqs} pages={pages} ok",
                        self.writes
                    );
                } else {
                    println!("heartbeat {heartbeats} blocks={} irqs={irqs} ok", self.writes);
                }
                next_heartbeat = (next_heartbeat + heartbeat_ticks).max(now);
                // The power button (vm.power-button): a clean stop.
                if hw::inb(ports::POWER) == power::READ_BUTTON_PRESSED {
                    println!("power button pressed: powering off");
                    self.stop(heartbeats, "power button");
                }
                if args.stop_after != 0 && heartbeats >= args.stop_after {
                    self.stop(heartbeats, "stop_after");
                }
            }
            if pace.due(now) {
                self.write(write_slot);
                write_slot = (write_slot + 1) % self.blocks;
                pace.wrote(now);
                for _ in 0..sweep_chunk {
                    self.verify(sweep_slot);
                    sweep_slot = (sweep_slot + 1) % self.blocks;
                }
                continue;
            }
            sleep_until(pace.wake_at(now).min(next_heartbeat));
        }
    }
}
