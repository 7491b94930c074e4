//! TSC frequency.

use crate::hw::{cpuid, inb, outb, rdtsc};

const PIT_HZ: u64 = 1_193_182;
/// 50 ms of PIT ticks.
const COUNT: u64 = PIT_HZ / 20;
/// Bound on polling a PIT that is not there; each poll is a VM exit.
const MAX_POLLS: u32 = 5_000_000;

/// TSC frequency in kHz: from the hypervisor's timing leaf 0x40000010 when
/// there is one (covm sets it; QEMU with invtsc), else measured against the
/// PIT.
pub fn tsc_khz() -> u64 {
    if cpuid(0x4000_0000).eax >= 0x4000_0010 {
        let khz = cpuid(0x4000_0010).eax as u64;
        if khz != 0 {
            return khz;
        }
    }
    // Port 0x61 (channel 2 gate and output) is missing on some machines,
    // e.g. QEMU microvm: then read channel 0's count back instead.
    if inb(0x61) != 0xff {
        pit_channel2()
    } else {
        pit_channel0()
    }
}

/// Counts TSC ticks over 50 ms of PIT channel 2 in mode 0 (one-shot).
fn pit_channel2() -> u64 {
    // Gate channel 2 on, speaker off.
    outb(0x61, (inb(0x61) & !0x02) | 0x01);
    outb(0x43, 0xb0); // channel 2, lobyte/hibyte, mode 0, binary
    outb(0x42, COUNT as u8);
    outb(0x42, (COUNT >> 8) as u8);
    let start = rdtsc();
    // OUT2 (port 0x61 bit 5) rises at terminal count.
    let mut polls = 0;
    while inb(0x61) & 0x20 == 0 {
        polls += 1;
        assert!(polls < MAX_POLLS, "no TSC frequency: PIT channel 2 does not count");
    }
    (rdtsc() - start) * PIT_HZ / COUNT / 1000
}

/// Counts TSC ticks while PIT channel 0 counts down 50 ms, reading its
/// count back with latch commands (its IRQ0 is masked). The 16-bit counter
/// wraps every 55 ms, so progress is accumulated poll by poll: a poll
/// delayed by a preempted vCPU thread does not lose a lap.
fn pit_channel0() -> u64 {
    outb(0x43, 0x30); // channel 0, lobyte/hibyte, mode 0, binary
    outb(0x40, 0xff);
    outb(0x40, 0xff);
    let read = || {
        outb(0x43, 0x00); // latch channel 0
        let lo = inb(0x40) as u64;
        lo | (inb(0x40) as u64) << 8
    };
    // Start at the first observed tick so a slow first load does not count.
    let mut polls = 0;
    let initial = read();
    let mut last = loop {
        let now = read();
        if now != initial {
            break now;
        }
        polls += 1;
        assert!(
            polls < MAX_POLLS,
            "no TSC frequency: no CPUID leaf 0x40000010 and no PIT"
        );
    };
    let start = rdtsc();
    let mut elapsed = 0;
    while elapsed < COUNT {
        let now = read();
        elapsed += last.wrapping_sub(now) & 0xffff; // counts down
        last = now;
        polls += 1;
        assert!(polls < MAX_POLLS, "no TSC frequency: PIT channel 0 does not count");
    }
    (rdtsc() - start) * PIT_HZ / elapsed / 1000
}
