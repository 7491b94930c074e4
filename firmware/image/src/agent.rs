//! The migration agent's vCPU (confidential VMs only): the bare-metal
//! half of `covm-agent`, which holds all the logic.
//!
//! Guest memory is identity-mapped, so the agent's memory is raw
//! addresses: private pages for sealing and importing, and the agent
//! window (`covm_guest_abi::mailbox`) for the mailbox, the VMSA area, its
//! stack, scratch, session objects and epoch table.
//!
//! At the destination, imported pages overwrite all of the firmware's own
//! memory (text, data, bss, the other CPUs' stacks) while the agent runs.
//! So once it has started the agent touches nothing of the firmware's
//! data: it runs on its private stack, keeps its `Agent` in `AGENT_DATA`,
//! never prints, never calls ring 0 (no syscall: its ring-0 stack is in
//! .bss) and waits only in port I/O, which exits straight to covm.

use crate::{hw, println, pvh, smp};

mod team;

use core::arch::{asm, global_asm};
use covm_agent::{
    request_report, Agent, Config, E820Entry, EpochTables, GuestMemory, MapError, MemoryMap, Platform, PlatformError,
    Team, E820_RAM, SCRATCH_LEN,
};
use covm_agent_protocol::{Evidence, PAGE_SIZE};
use covm_guest_abi::layout::WRITE_TRACKED_START;
use covm_guest_abi::mailbox::{
    AGENT_DATA, AGENT_DATA_SIZE, AGENT_EPOCHS, AGENT_EPOCH_FRAMES, AGENT_SCRATCH, AGENT_SCRATCH_SIZE, AGENT_STACK,
    AGENT_STACK_SIZE, AGENT_WINDOW_END, AGENT_WINDOW_START, DOORBELL_RETRY, MAX_AGENT_VCPUS,
};
use covm_guest_abi::ports::{self, power};
pub use team::help;

type FirmwareAgent = Agent<'static, RawMemory, FirmwarePlatform, EpochRegion>;

const _: () = assert!(core::mem::size_of::<FirmwareAgent>() as u64 <= AGENT_DATA_SIZE);
const _: () = assert!(core::mem::align_of::<FirmwareAgent>() as u64 <= 4096);
const _: () = assert!(SCRATCH_LEN as u64 <= AGENT_SCRATCH_SIZE);

// Moves to the agent's private stack and calls `entry(rdi, rsi)` there:
// rdi and rsi pass through, rdx is the new stack top (16-byte aligned, so
// the call leaves the alignment the ABI expects), rcx the entry.
global_asm!(
    ".globl agent_switch_stack",
    "agent_switch_stack:",
    "mov rsp, rdx",
    "xor ebp, ebp",
    "call rcx",
    "ud2",
);

extern "C" {
    /// The page of the image holding the crypto crates' CPU-feature caches
    /// (link.ld): agent-private, never migrated.
    /// The identity map's page directory (ring0.s): 2048 2 MiB entries.
    static boot_pd: [u64; 2048];
    static __agent_private_start: u8;
    static __agent_private_end: u8;
    fn agent_switch_stack(start_info: u64, launch: u64, stack_top: u64, entry: extern "C" fn(u64, u64) -> !) -> !;
}

/// Runs the agent on this CPU (the one with the highest APIC ID), which
/// has checked in. `cpus` is the number of vCPUs, the agent's `agents`
/// included; `incoming`: the VM was launched to receive a migration.
pub fn run(start_info: u64, cpus: u32, agents: u32, incoming: bool) -> ! {
    // The window must be RAM: it holds the stack we are about to use.
    // (Printing is still harmless here: nothing was imported yet.)
    let window_is_ram = pvh::read(start_info).is_ok_and(|info| {
        info.memmap
            .iter()
            .any(|e| e.kind == E820_RAM && e.addr <= AGENT_WINDOW_START && AGENT_WINDOW_END <= e.addr + e.size)
    });
    if !window_is_ram {
        println!(
            "error: no RAM for the migration agent at {AGENT_WINDOW_START:#x}-{AGENT_WINDOW_END:#x} \
             (a confidential VM needs at least {} MiB)",
            AGENT_WINDOW_END >> 20
        );
        hw::power_off(power::FAIL_NO_MEMORY);
    }
    if !(1..=MAX_AGENT_VCPUS).contains(&agents) || agents >= cpus {
        // The BSP says why and powers off.
        crate::idle()
    }
    let launch = u64::from(cpus) | u64::from(agents) << 32 | u64::from(incoming) << 63;
    // SAFETY: the stack is agent-private RAM (checked above) that nothing
    // else uses; agent_main never returns, so nothing on the old stack is
    // used again.
    unsafe { agent_switch_stack(start_info, launch, AGENT_STACK + AGENT_STACK_SIZE, agent_main) }
}

extern "C" fn agent_main(start_info: u64, launch: u64) -> ! {
    let (cpus, agents, incoming) = (launch as u32, (launch >> 32) as u32 & 0xff, launch >> 63 != 0);
    // Still before anything can be imported: the boot memory map (the
    // start info is guest-private memory an import overwrites) ...
    let map = match pvh::read(start_info) {
        Ok(info) if !info.memmap.is_empty() => MemoryMap::from_e820(info.memmap.iter().map(|e| E820Entry {
            addr: e.addr,
            size: e.size,
            kind: e.kind,
        })),
        _ => Err(MapError::NoMap),
    }
    .and_then(|mut map| {
        let start = (&raw const __agent_private_start) as u64;
        let end = (&raw const __agent_private_end) as u64;
        map.exclude(start, end).map(|()| map)
    });
    // ... and the other CPUs' check-ins, their last writes to the
    // firmware's data before they park (an incoming VM) or run.
    while smp::checked_in() < cpus - 1 {
        core::hint::spin_loop();
    }
    crate::heap::init();
    // SAFETY: AGENT_SCRATCH is agent-private RAM, used only through this
    // one reference.
    let scratch = unsafe { core::slice::from_raw_parts_mut(AGENT_SCRATCH as *mut u8, AGENT_SCRATCH_SIZE as usize) };
    let config = Config {
        workload_vcpus: cpus - agents,
        incoming,
    };
    let agent = Agent::new(
        RawMemory,
        FirmwarePlatform::new(agents),
        EpochRegion,
        scratch,
        map,
        config,
    );
    let slot = AGENT_DATA as *mut FirmwareAgent;
    // SAFETY: AGENT_DATA is agent-private RAM, large and aligned enough
    // (asserted above), used for nothing else; the agent lives there for
    // good and this is the only reference to it.
    let agent = unsafe {
        slot.write(agent);
        &mut *slot
    };
    agent.announce();
    loop {
        if hw::inl(ports::AGENT_DOORBELL) == DOORBELL_RETRY {
            continue;
        }
        let seq = agent.serve();
        hw::outl(ports::AGENT_DONE, seq as u32);
    }
}

/// `rep movsb` of `len` bytes from `src` to `dst`. Addresses are integers
/// here, so guest page 0 is no null pointer to the compiler.
fn copy(dst: u64, src: u64, len: usize) {
    // SAFETY: callers pass ranges of identity-mapped RAM that are theirs
    // to read and write (see RawMemory).
    unsafe {
        asm!("rep movsb", inout("rcx") len => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags))
    }
}

/// Guest memory through the identity map. covm-agent passes page
/// addresses of its private memory map only (RAM below 4 GiB, outside
/// the window) and window addresses inside the window only. Pages the
/// workload may be writing are copied, never borrowed.
struct RawMemory;

impl GuestMemory for RawMemory {
    fn read_page(&self, gpa: u64, out: &mut [u8; PAGE_SIZE]) {
        copy(out.as_mut_ptr() as u64, gpa, PAGE_SIZE);
    }

    fn write_page(&self, gpa: u64, data: &[u8; PAGE_SIZE]) {
        copy(gpa, data.as_ptr() as u64, PAGE_SIZE);
    }

    fn page_is_zero(&self, gpa: u64) -> bool {
        let acc: u64;
        // SAFETY: reads the page (see RawMemory), 64 bytes at a time,
        // stopping at the first non-zero line.
        unsafe {
            asm!(
                "2:",
                "mov {acc}, [{p}]",
                "or {acc}, [{p} + 8]",
                "or {acc}, [{p} + 16]",
                "or {acc}, [{p} + 24]",
                "or {acc}, [{p} + 32]",
                "or {acc}, [{p} + 40]",
                "or {acc}, [{p} + 48]",
                "or {acc}, [{p} + 56]",
                "jnz 3f",
                "add {p}, 64",
                "dec {n:e}",
                "jnz 2b",
                "3:",
                p = inout(reg) gpa => _,
                n = inout(reg) (PAGE_SIZE / 64) as u32 => _,
                acc = out(reg) acc,
                options(nostack, readonly),
            )
        }
        acc == 0
    }

    fn known_zero(&self, gpa: u64) -> bool {
        // The 2 MiB page's entry in the boot page directory (ring0.s):
        // dirty clear above WRITE_TRACKED_START means never written since
        // launch, and launch left it zero (covm loads nothing there).
        const DIRTY: u64 = 1 << 6;
        if !(WRITE_TRACKED_START..4 << 30).contains(&gpa) {
            return false;
        }
        // SAFETY: boot_pd is the page directory's 2048 entries, one per
        // 2 MiB below 4 GiB; the CPU sets dirty bits in it concurrently,
        // hence the volatile read of one aligned u64.
        let entry = unsafe {
            core::ptr::addr_of!(boot_pd)
                .cast::<u64>()
                .add((gpa >> 21) as usize)
                .read_volatile()
        };
        entry & DIRTY == 0
    }

    fn known_zero_block(&self) -> u64 {
        // known_zero reads one 2 MiB page directory entry.
        512
    }

    fn zero_page(&self, gpa: u64) {
        // SAFETY: writes the page (see RawMemory).
        unsafe {
            asm!("rep stosq", inout("rcx") PAGE_SIZE / 8 => _, inout("rdi") gpa => _, in("rax") 0u64,
                 options(nostack, preserves_flags))
        }
    }

    fn read_window(&self, gpa: u64, out: &mut [u8]) {
        copy(out.as_mut_ptr() as u64, gpa, out.len());
    }

    fn write_window(&self, gpa: u64, data: &[u8]) {
        copy(gpa, data.as_ptr() as u64, data.len());
    }
}

/// The confidential platform: reports through the mailbox header and
/// `ports::AGENT_REPORT`, RDRAND, `ports::AGENT_RETIRE`.
struct FirmwarePlatform {
    rdrand: bool,
    team: Option<team::FirmwareTeam>,
}

impl FirmwarePlatform {
    fn new(agents: u32) -> Self {
        // The instruction runs natively in ring 3: ask the CPU, not the
        // VMM's table (no syscall needed either).
        #[allow(unused_unsafe)]
        // SAFETY: CPUID has no side effects (older Rust marks it unsafe).
        let leaf1 = unsafe { core::arch::x86_64::__cpuid(1) };
        FirmwarePlatform {
            rdrand: leaf1.ecx & (1 << 30) != 0,
            team: (agents > 1).then(|| team::FirmwareTeam::new(agents)),
        }
    }
}

/// RDRAND with the customary 10 retries.
fn rdrand64() -> Option<u64> {
    for _ in 0..10 {
        let (value, ok): (u64, u8);
        // SAFETY: RDRAND exists (checked by the caller); it only writes
        // the two registers and the flags.
        unsafe { asm!("rdrand {v}", "setc {ok}", v = out(reg) value, ok = out(reg_byte) ok, options(nomem, nostack)) }
        if ok == 1 {
            return Some(value);
        }
    }
    None
}

impl Platform for FirmwarePlatform {
    fn report(&mut self, report_data: &[u8; 64]) -> Result<Evidence, PlatformError> {
        request_report(&mut RawMemory, report_data, |_| hw::outl(ports::AGENT_REPORT, 0))
    }

    fn fill_random(&mut self, out: &mut [u8]) -> Result<(), PlatformError> {
        if !self.rdrand {
            return Err(PlatformError::NoRandomness);
        }
        for chunk in out.chunks_mut(8) {
            let value = rdrand64().ok_or(PlatformError::NoRandomness)?;
            chunk.copy_from_slice(&value.to_le_bytes()[..chunk.len()]);
        }
        Ok(())
    }

    fn retire(&mut self) {
        hw::outl(ports::AGENT_RETIRE, 0);
    }

    fn ticks(&self) -> u64 {
        // Ring 3 reads the TSC natively: a few nanoseconds, no exit.
        hw::rdtsc()
    }

    fn team(&self) -> Option<&dyn Team> {
        self.team.as_ref().map(|t| t as &dyn Team)
    }

    fn page_state_query(&mut self, first: u64, pages: u64) -> u32 {
        match (u32::try_from(first), u32::try_from(pages)) {
            (Ok(first), Ok(pages)) => {
                hw::outl(ports::PAGE_STATE_FIRST, first);
                hw::outl(ports::PAGE_STATE_PAGES, pages);
                hw::outl(ports::PAGE_STATE_OP, ports::page_state::QUERY);
                hw::inl(ports::PAGE_STATE_OP)
            }
            _ => ports::page_state::REFUSED,
        }
    }
}

/// The epoch table: the `AGENT_EPOCHS` region.
struct EpochRegion;

impl EpochTables<'static> for EpochRegion {
    fn lend(&mut self) -> &'static mut [u32] {
        // SAFETY: AGENT_EPOCHS is agent-private RAM used for nothing else;
        // covm-agent asks again only once the checker holding the earlier
        // loan is dropped (the EpochTables contract), so this is the only
        // live reference to it.
        unsafe { core::slice::from_raw_parts_mut(AGENT_EPOCHS as *mut u32, AGENT_EPOCH_FRAMES as usize) }
    }
}
