//! Bringing up the other vCPUs (from ring 3, through the IPI syscall).

use crate::hw::{self, rdtsc, sleep_until};
use core::sync::atomic::{AtomicU32, Ordering};

/// Application processors that reached ring 3.
static CHECKED_IN: AtomicU32 = AtomicU32::new(0);
/// Next workload CPU index for an AP of a confidential VM (the BSP is 0).
/// The agent's vCPU takes none, so the workload's CPUs are numbered
/// 0..n-1 whichever order the APs arrive in.
static NEXT_WORKLOAD_INDEX: AtomicU32 = AtomicU32::new(1);

/// ICR: destination shorthand "all excluding self", level assert.
const ICR_ALL_BUT_SELF: u32 = (3 << 18) | (1 << 14);
const ICR_INIT: u32 = ICR_ALL_BUT_SELF | (5 << 8);
/// SIPI to the trampoline at 0x8000 (vector 0x08).
const ICR_SIPI: u32 = ICR_ALL_BUT_SELF | (6 << 8) | 0x08;

/// Where the APs start (SIPI vector 0x08), and the code to put there.
const TRAMPOLINE: usize = 0x8000;
extern "C" {
    static ap_trampoline: u8;
    static ap_trampoline_end: u8;
}

/// Number of vCPUs: CPUID.1:EBX\[23:16\] (covm and QEMU set it to exactly N).
pub fn vcpu_count() -> u32 {
    ((hw::cpuid(1).ebx >> 16) & 0xff).max(1)
}

/// Called by each AP once it runs in ring 3.
pub fn check_in() {
    CHECKED_IN.fetch_add(1, Ordering::AcqRel);
}

/// APs checked in so far.
pub fn checked_in() -> u32 {
    CHECKED_IN.load(Ordering::Acquire)
}

/// A workload CPU index for an AP of a confidential VM.
pub fn take_workload_index() -> u32 {
    NEXT_WORKLOAD_INDEX.fetch_add(1, Ordering::AcqRel)
}

/// INIT, SIPI, SIPI (200 µs apart) to all other CPUs, then waits up to 2 s for `n - 1`
/// check-ins. Returns how many checked in when that falls short.
pub fn start_aps(n: u32, tsc_khz: u64) -> Result<(), u32> {
    if n <= 1 {
        return Ok(());
    }
    let ms = tsc_khz;
    // SAFETY: copies the trampoline (ring0.s, assembled for TRAMPOLINE) to
    // low RAM that nothing else uses once the loader is done.
    unsafe {
        let start = &raw const ap_trampoline;
        let len = (&raw const ap_trampoline_end).offset_from(start) as usize;
        core::ptr::copy_nonoverlapping(start, TRAMPOLINE as *mut u8, len);
    }
    // No 10 ms wait after INIT: the MP specification's wait covers a
    // physical CPU's self-test, and KVM applies a pending INIT before a
    // SIPI sent after it. Linux skips it too on every processor it calls
    // modern (smp_quirk_init_udelay). Every launch, and every migration's
    // destination, would otherwise wait those 10 ms.
    hw::send_ipi(ICR_INIT);
    hw::send_ipi(ICR_SIPI);
    sleep_until(rdtsc() + ms / 5);
    hw::send_ipi(ICR_SIPI);
    let timeout = rdtsc() + 2000 * ms;
    loop {
        let ready = CHECKED_IN.load(Ordering::Acquire);
        if ready >= n - 1 {
            return Ok(());
        }
        if rdtsc() >= timeout {
            return Err(ready);
        }
        // Sleep rather than spin: the APs' ring 0 is emulated on the same
        // few host cores.
        sleep_until(rdtsc() + ms);
    }
}
