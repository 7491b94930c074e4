//! Ring-3 access to the machine: ports (allowed by the TSS I/O bitmap),
//! the TSC, CPUID, and the int3 syscall gate into ring 0 (see ring0.s).

use core::arch::asm;
use covm_guest_abi::ports;

/// Most CPUs the firmware runs (also `MAX_CPUS` in ring0.s).
pub const MAX_CPUS: u32 = 32;

/// Syscall numbers, passed in rax to `int3` (also in ring0.s).
const SYS_SLEEP_UNTIL: u64 = 0;
const SYS_SEND_IPI: u64 = 1;
const SYS_CPUID: u64 = 2;
const SYS_SET_FS_BASE: u64 = 3;

pub fn outb(port: u16, value: u8) {
    // SAFETY: ring 3 only reaches the ports the TSS bitmap allows, none of
    // which touches memory the program relies on.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) }
}

pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags)) }
    value
}

/// 32-bit `out` (the confidential platform's ports are all 32 bits wide).
/// Not `nomem`: covm reads or writes guest memory while it handles some
/// of these (the agent's answer, the attestation report), so memory
/// accesses must not move across the instruction.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags)) }
}

/// 32-bit `in`; a compiler barrier like [`outl`] (the doorbell returns
/// once covm has written a command into guest memory).
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `outb`.
    unsafe { asm!("in eax, dx", in("dx") port, out("eax") value, options(nostack, preserves_flags)) }
    value
}

pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects; CR4.TSD is clear so ring 3 may use it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Writes a boot-progress marker (`ports::markers`) to the POST port.
pub fn marker(value: u8) {
    outb(ports::DEBUG_PORT, value);
}

/// Sleeps (in ring 0, halted) until the TSC reaches `deadline`, or spins
/// when the CPU has no TSC-deadline timer.
pub fn sleep_until(deadline: u64) {
    while rdtsc() < deadline {
        if !halt_until(deadline) {
            core::hint::spin_loop();
        }
    }
}

/// One sleep syscall: halts until the next interrupt, the timer's at
/// `deadline` or any other (the virtio MSI-X vector), and says whether it
/// halted at all (false without a TSC-deadline timer: the caller polls).
/// An interrupt that arrived while ring 3 ran (IF = 0) is pending and
/// ends the halt at once, so a completion is never slept through.
pub fn halt_until(deadline: u64) -> bool {
    let slept: u64;
    // SAFETY: the int3 gate returns with iretq to the next instruction;
    // it uses its own ring-0 stack and clobbers only rax, rcx, rdx. Not
    // `nomem`: the interrupt handlers it lets in write memory (the virtio
    // interrupt count) and devices complete requests meanwhile.
    unsafe {
        asm!("int3", inout("rax") SYS_SLEEP_UNTIL => slept, in("rdi") deadline,
             out("rcx") _, out("rdx") _, options(nostack))
    }
    slept != 0
}

/// The IDT vector of the virtio-blk request queue's MSI-X interrupt
/// (`VIRTIO_VECTOR` in ring0.s, where its handler counts it).
pub const VIRTIO_VECTOR: u8 = 0x41;

extern "C" {
    /// Incremented by ring 0 for each `VIRTIO_VECTOR` interrupt (ring0.s).
    static virtio_irqs: u64;
}

/// How many `VIRTIO_VECTOR` interrupts ring 0 took so far.
pub fn virtio_irqs_taken() -> u64 {
    // SAFETY: an aligned u64 in the image that only ring 0's handler
    // writes (with one locked increment); a volatile read sees its value.
    unsafe { (&raw const virtio_irqs).read_volatile() }
}

/// Writes the local APIC's interrupt command register (low word).
pub fn send_ipi(icr_low: u32) {
    // SAFETY: as for `sleep_until`; an IPI with a shorthand only starts or
    // resets other CPUs, which is what the caller asks for.
    unsafe {
        asm!("int3", inout("rax") SYS_SEND_IPI => _, in("rdi") icr_low as u64,
             out("rcx") _, out("rdx") _, options(nostack))
    }
}

/// Powers the machine off with `code` (`ports::power`).
pub fn power_off(code: u8) -> ! {
    outb(ports::POWER, code);
    // Only reached without a power device (e.g. QEMU without isa-debug-exit).
    loop {
        sleep_until(u64::MAX);
    }
}

/// The launch mode the confidential platform reports
/// (`mailbox::launch_mode`); anything else on a plain VM.
pub fn launch_mode() -> u32 {
    inl(ports::LAUNCH_MODE)
}

/// How many vCPUs the migration agent has (`ports::AGENT_VCPUS`), on a
/// confidential VM.
pub fn agent_vcpus() -> u32 {
    inl(ports::AGENT_VCPUS)
}

/// This CPU's initial APIC ID: CPUID.1:EBX\[31:24\] (covm: the vCPU index).
pub fn apic_id() -> u32 {
    cpuid(1).ebx >> 24
}

/// Sets this CPU's FS base (IA32_FS_BASE, a vCPU register that lives in
/// no memory page). `base` must be canonical.
pub fn set_fs_base(base: u64) {
    // SAFETY: as for `sleep_until`; the gate writes the MSR and clobbers
    // rax, rcx, rdx. Nothing in the firmware addresses through FS.
    unsafe {
        asm!("int3", inout("rax") SYS_SET_FS_BASE => _, in("rdi") base,
             out("rcx") _, out("rdx") _, options(nostack))
    }
}

/// CPUID as the VMM configured it. On this machine's KVM a CPUID executed
/// in ring 3 is not intercepted and reports the host CPU (its core count,
/// no hypervisor timing leaf), so it goes through the syscall gate and
/// runs in ring 0, where KVM's emulator answers from the VMM's table.
pub fn cpuid(leaf: u32) -> core::arch::x86_64::CpuidResult {
    let (eax, ebx, ecx, edx): (u64, u64, u64, u64);
    // SAFETY: as for `sleep_until`; the gate returns the four CPUID
    // registers. rbx is reserved by LLVM, hence the exchange.
    unsafe {
        asm!("xchg {b}, rbx", "int3", "xchg {b}, rbx", b = inout(reg) 0u64 => ebx,
             inout("rax") SYS_CPUID => eax, in("rdi") leaf as u64, in("rsi") 0u64,
             out("rcx") ecx, out("rdx") edx, options(nostack));
    }
    core::arch::x86_64::CpuidResult {
        eax: eax as u32,
        ebx: ebx as u32,
        ecx: ecx as u32,
        edx: edx as u32,
    }
}
