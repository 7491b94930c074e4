//! The `dirty` workload: every vCPU rewrites and verifies its share of a
//! memory region, so live migration has pages to chase and any page that
//! arrives stale or damaged is caught (content: `covm_guest_abi::pattern`).

use crate::hw::{self, rdtsc, sleep_until, MAX_CPUS};
use crate::pace::Pace;
use crate::println;
use crate::pvh::{MemmapEntry, E820_RAM};
use core::sync::atomic::{compiler_fence, AtomicU64, Ordering};
use covm_guest_abi::layout::{dirty_gen_gpa, dirty_page_gpa, DIRTY_GEN_TABLE, DIRTY_REGION};
use covm_guest_abi::pattern::{check_page, fill_page, PageCheck, WORDS};
use covm_guest_abi::ports::power;
use covm_guest_abi::workload::DirtyArgs;

/// Parameters the BSP publishes before releasing the APs.
pub struct Params {
    pub seed: u64,
    pub pages: u64,
    pub cpus: u64,
    pub tsc_khz: u64,
    pub rate_mib_s: u64,
    /// vCPU i keeps `canary + i` in its FS base: a register value that
    /// is in no page, different at every boot, printed for tests that
    /// look for vCPU state in migration streams.
    pub canary: u64,
    /// Workload CPU index of this run's CPU 0: 1 when vCPU 0 runs `blk`
    /// beside it, else 0.
    pub first_cpu: u32,
    /// Whether its CPU 0 prints heartbeats and answers the power button
    /// (not beside `blk`, whose heartbeat reports both).
    pub heartbeat: bool,
}

/// A canonical user address, different at every boot (TSC-derived: it
/// marks, it protects nothing): bit 46 set so all six low bytes count,
/// the top 16 bits clear.
fn register_canary(seed: u64) -> u64 {
    // splitmix64's finaliser spreads the TSC's low-entropy bits.
    let mut z = rdtsc() ^ seed.rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z & 0x0000_3fff_ffff_ff00) | 0x0000_4000_0000_0000
}

/// Page writes per CPU, one cache line each so counting costs no sharing.
#[repr(align(64))]
struct Counter(AtomicU64);
static WRITES: [Counter; MAX_CPUS as usize] = [const { Counter(AtomicU64::new(0)) }; MAX_CPUS as usize];

/// The identity map covers the first 4 GiB only.
const MAPPED_END: u64 = 1 << 32;

/// BSP: checks the memory, prints the banner and clears the generation
/// table. Powers off when the region does not fit in RAM.
pub fn prepare(args: &DirtyArgs, memmap: &[MemmapEntry], cpus: u32, tsc_khz: u64) -> Params {
    let pages = args.mib * 256;
    let end = DIRTY_REGION + args.mib * (1 << 20);
    let ram = memmap
        .iter()
        .find(|e| e.kind == E820_RAM && e.addr <= DIRTY_GEN_TABLE && DIRTY_GEN_TABLE - e.addr < e.size);
    let ram_end = ram.map_or(0, |e| e.addr + e.size);
    if ram_end < end || end > MAPPED_END {
        println!(
            "error: dirty mib={} needs RAM from {:#x} to {:#x} (at least {} MiB of guest memory)",
            args.mib,
            DIRTY_GEN_TABLE,
            end,
            end >> 20
        );
        if memmap.is_empty() {
            println!("error: the loader gave no memory map");
        } else if end > MAPPED_END {
            println!("error: the firmware maps only the first 4 GiB");
        } else if ram_end == 0 {
            println!("error: no RAM entry holds {DIRTY_GEN_TABLE:#x}");
        } else {
            println!("error: the RAM entry holding {DIRTY_GEN_TABLE:#x} ends at {ram_end:#x}");
        }
        hw::power_off(power::FAIL_NO_MEMORY);
    }
    println!(
        "dirty: {} MiB at {:#x}, {} pages, rate {} MiB/s, seed {}, {} vCPUs, tsc {} kHz",
        args.mib, DIRTY_REGION, pages, args.rate_mib_s, args.seed, cpus, tsc_khz
    );
    // SAFETY: the table lies in RAM (checked above), below the region and
    // above the image; nothing else uses it.
    unsafe { core::ptr::write_bytes(DIRTY_GEN_TABLE as *mut u32, 0, pages as usize) };
    let canary = register_canary(args.seed);
    println!("dirty: register canary fs_base={canary:#x} + vCPU index");
    Params {
        seed: args.seed,
        pages,
        cpus: cpus as u64,
        tsc_khz,
        rate_mib_s: args.rate_mib_s,
        canary,
        first_cpu: 0,
        heartbeat: true,
    }
}

/// Page writes so far over all CPUs.
pub fn total_writes() -> u64 {
    WRITES.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
}

fn generation(page: u64) -> u64 {
    // SAFETY: entry of a page of the checked region; only its CPU touches
    // it. Volatile: what matters is what memory holds (after a migration).
    unsafe { (dirty_gen_gpa(page) as *const u32).read_volatile() as u64 }
}

fn page_words(page: u64) -> &'static mut [u64; WORDS] {
    // SAFETY: a page of the checked region, identity-mapped; pages are
    // owned by exactly one CPU (page % cpus), which holds one reference at
    // a time.
    unsafe { &mut *(dirty_page_gpa(page) as *mut [u64; WORDS]) }
}

/// Checks `page` against the table; powers off on a mismatch.
fn verify(seed: u64, page: u64) {
    let expected = generation(page);
    if expected == 0 {
        return;
    }
    let gpa = dirty_page_gpa(page);
    match check_page(page_words(page), seed, page, expected) {
        PageCheck::Ok => return,
        PageCheck::RolledBack { found } => {
            println!("FAIL page {page} gpa {gpa:#x} rolled back: holds generation {found}, expected {expected}")
        }
        PageCheck::Wrong {
            word,
            found,
            expected: want,
        } => println!(
            "FAIL page {page} gpa {gpa:#x} word {word} is {found:#x} expected {want:#x} (generation {expected})"
        ),
    }
    hw::power_off(power::FAIL_VERIFY);
}

fn write(seed: u64, page: u64) {
    verify(seed, page);
    let next = generation(page) + 1;
    fill_page(page_words(page), seed, page, next);
    // The page first, then its table entry.
    compiler_fence(Ordering::Release);
    // SAFETY: as in `generation`.
    unsafe { (dirty_gen_gpa(page) as *mut u32).write_volatile(next as u32) };
}

/// Every CPU's loop (`cpu`: its workload CPU index); never returns unless
/// a check fails.
pub fn run(cpu: u32, p: &Params) -> ! {
    let cpu = (cpu - p.first_cpu) as u64;
    hw::set_fs_base(p.canary + cpu);
    // This CPU's pages: cpu, cpu + cpus, ... (pages >= 256 > cpus).
    let mine = (p.pages - cpu).div_ceil(p.cpus);
    let throttled = p.rate_mib_s > 0;
    // Per CPU, pages/s = rate * 256 / cpus.
    let ticks_per_write = if throttled {
        p.tsc_khz * 1000 * p.cpus / (p.rate_mib_s * 256)
    } else {
        0
    };
    // Throttled CPUs have time to sweep more between writes.
    let sweep_chunk = if throttled { 8 } else { 1 };
    let heartbeat_ticks = 100 * p.tsc_khz;

    let (mut write_slot, mut sweep_slot) = (0u64, 0u64);
    let start = rdtsc();
    let mut pace = Pace::new(p.tsc_khz, ticks_per_write, start);
    let mut next_heartbeat = start + heartbeat_ticks;
    let mut heartbeats = 0u64;
    loop {
        let now = rdtsc();
        if cpu == 0 && p.heartbeat && now >= next_heartbeat {
            heartbeats += 1;
            println!("heartbeat {heartbeats} pages={} ok", total_writes());
            next_heartbeat = (next_heartbeat + heartbeat_ticks).max(now);
            // The power button (vm.power-button): a clean power-off.
            if hw::inb(covm_guest_abi::ports::POWER) == power::READ_BUTTON_PRESSED {
                println!("power button pressed: powering off");
                hw::power_off(power::OFF);
            }
        }
        if pace.due(now) {
            write(p.seed, cpu + write_slot * p.cpus);
            write_slot = (write_slot + 1) % mine;
            WRITES[cpu as usize].0.fetch_add(1, Ordering::Relaxed);
            pace.wrote(now);
            for _ in 0..sweep_chunk {
                verify(p.seed, cpu + sweep_slot * p.cpus);
                sweep_slot = (sweep_slot + 1) % mine;
            }
            continue;
        }
        // Ahead of the budget: sleep instead of burning a host core.
        let mut deadline = pace.wake_at(now);
        if cpu == 0 && p.heartbeat {
            deadline = deadline.min(next_heartbeat);
        }
        sleep_until(deadline);
    }
}
