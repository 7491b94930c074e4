//! covm's built-in guest firmware.
//!
//! A PVH ELF: ring 0 is a few hundred lines of assembly (`ring0.s`) that
//! switch to long mode with prebuilt tables and drop every CPU to ring 3,
//! where this Rust code runs the workload natively. On the project's KVM,
//! ring 0 is interpreted instruction by instruction, ring 3 is not. See
//! docs/firmware.md.
//!
//! On a confidential VM (`ports::LAUNCH_MODE` says fresh or incoming) the
//! vCPU with the highest APIC ID runs the migration agent (`agent`)
//! instead of the workload, the agent's helpers the next ones below it
//! (`ports::AGENT_VCPUS` says how many vCPUs the agent has), and an
//! incoming VM's workload vCPUs park.
#![no_std]
#![no_main]

extern crate alloc;

mod agent;
mod blk;
mod blkbench;
mod dirty;
mod heap;
mod hw;
mod mem;
mod mmio;
mod net;
mod pace;
mod pci;
mod pvh;
mod rng;
mod serial;
mod shared;
mod smp;
mod time;
mod virtio;
mod vsock;

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};
use covm_guest_abi::mailbox::{launch_mode, MAX_AGENT_VCPUS};
use covm_guest_abi::ports::{self, markers, power};
use covm_guest_abi::workload::{self, DirtyArgs, Workload};

core::arch::global_asm!(include_str!("ring0.s"), options(att_syntax));

// The precompiled libcore refers to the unwinding personality routine; with
// panic=abort it is never called, but a non-LTO (dev) link still needs it.
core::arch::global_asm!(".globl rust_eh_personality", "rust_eh_personality:", "ud2");

/// Dirty-workload parameters, written by the BSP before it sets `GO`;
/// `None`: the other vCPUs have nothing to do and halt for good.
struct Shared(UnsafeCell<Option<dirty::Params>>);
// SAFETY: written once by the BSP before the Release store of GO; APs read
// it only after an Acquire load of GO saw true.
unsafe impl Sync for Shared {}
static PARAMS: Shared = Shared(UnsafeCell::new(None));
static GO: AtomicBool = AtomicBool::new(false);

/// The launch metadata (`covm_guest_abi::metadata`): the pages a
/// confidential launch adds for this firmware. In a section of its own that
/// link.ld keeps out of every segment: covm reads it from the ELF, nothing
/// loads it.
#[used]
#[link_section = ".covm_metadata"]
static METADATA: covm_guest_abi::metadata::Table<4> = covm_guest_abi::metadata::COVM_FIRMWARE;

/// How this VM was launched; every CPU asks the platform itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Launch {
    /// Not confidential: no agent, the workload runs on every vCPU.
    Plain,
    /// A confidential VM's first launch: the workload runs.
    Fresh,
    /// A confidential VM receiving a migration: only the agent runs.
    Incoming,
}

impl Launch {
    fn read() -> Launch {
        match hw::launch_mode() {
            launch_mode::FRESH => Launch::Fresh,
            launch_mode::INCOMING => Launch::Incoming,
            _ => Launch::Plain,
        }
    }
}

/// An incoming VM's workload vCPU waits here: the platform runs it again
/// only with the state the agent imported, so it never goes on by itself.
fn park() -> ! {
    loop {
        hw::outl(ports::PARK, 0);
    }
}

/// Ring-3 entry of every CPU (ring0.s irets here with IF = 0).
#[no_mangle]
extern "C" fn user_main(cpu: u32, start_info: u64) -> ! {
    let launch = Launch::read();
    if cpu == 0 {
        bsp_main(start_info, launch)
    }
    // CPU indices follow arrival order; the agent's vCPUs are told by
    // their APIC IDs (the BSP checked the count, and never is one).
    let mut index = cpu;
    if launch != Launch::Plain {
        let (cpus, agents) = (smp::vcpu_count(), hw::agent_vcpus());
        let apic = hw::apic_id();
        if apic == cpus - 1 {
            smp::check_in();
            agent::run(start_info, cpus, agents, launch == Launch::Incoming)
        }
        if agents <= cpus && apic >= cpus - agents {
            smp::check_in();
            agent::help(cpus - 1 - apic)
        }
        index = smp::take_workload_index();
    }
    smp::check_in();
    if launch == Launch::Incoming {
        park()
    }
    while !GO.load(Ordering::Acquire) {
        hw::sleep_until(hw::rdtsc() + 1_000_000);
    }
    // SAFETY: GO is set, so PARAMS is written and never written again.
    match unsafe { (*PARAMS.0.get()).as_ref() } {
        Some(params) => dirty::run(index, params),
        None => idle(),
    }
}

/// A vCPU without work: halted for good (no interrupt is aimed at it),
/// costing neither the host nor the emulated ring 0 anything.
pub(crate) fn idle() -> ! {
    loop {
        hw::sleep_until(u64::MAX);
    }
}

/// Releases the other vCPUs: into `dirty` with `params`, or idle.
fn publish(params: Option<dirty::Params>) {
    // SAFETY: the APs do not read PARAMS before GO is set below, and it is
    // written only here, once.
    unsafe { *PARAMS.0.get() = params };
    GO.store(true, Ordering::Release);
}

/// Scans PCI (assigning BARs); powers off with the reason if that fails.
fn devices(memmap: &'static [pvh::MemmapEntry]) -> virtio::Devices {
    virtio::Devices::probe(memmap).unwrap_or_else(|e| virtio::fail_device(format_args!("{e}")))
}

/// `hello`'s line on the first virtio console too, if there is one.
fn hello_console(line: &str, memmap: &'static [pvh::MemmapEntry]) {
    let Some(console) = devices(memmap).console() else {
        return;
    };
    let (mut console, df) = console.unwrap_or_else(|e| virtio::fail_device(format_args!("console: {e}")));
    for part in [line, "\n"] {
        if let Err(e) = console.send_bytes(part.as_bytes()) {
            virtio::fail_device(format_args!("console {df}: write failed: {e}"));
        }
    }
}

fn bsp_main(start_info: u64, launch: Launch) -> ! {
    hw::marker(markers::RING3);
    let info = pvh::read(start_info).unwrap_or_else(|e| fail_args(format_args!("{e}")));
    let workload = workload::parse(info.cmdline).unwrap_or_else(|e| fail_args(format_args!("{e}")));
    let tsc_khz = time::tsc_khz();
    let cpus = smp::vcpu_count();
    if cpus > hw::MAX_CPUS {
        println!("error: {cpus} vCPUs, the firmware supports at most {}", hw::MAX_CPUS);
        hw::power_off(power::FAIL_SMP);
    }
    // The agent's vCPUs are not the workload's.
    let agents = if launch == Launch::Plain { 0 } else { hw::agent_vcpus() };
    if launch != Launch::Plain && !(1..=MAX_AGENT_VCPUS).contains(&agents) {
        println!("error: the platform gives the migration agent {agents} vCPUs (1 to {MAX_AGENT_VCPUS})");
        hw::power_off(power::FAIL_SMP);
    }
    if launch != Launch::Plain && cpus <= agents {
        println!("error: a confidential VM needs a vCPU for its workload besides the migration agent's {agents}");
        hw::power_off(power::FAIL_SMP);
    }
    if let Err(ready) = smp::start_aps(cpus, tsc_khz) {
        println!(
            "error: only {ready} of {} secondary vCPUs checked in within 2 s",
            cpus - 1
        );
        hw::power_off(power::FAIL_SMP);
    }
    hw::marker(markers::ALL_CPUS);
    if launch == Launch::Incoming {
        park()
    }
    let cpus = cpus - agents;
    match workload {
        Workload::Hello => {
            hw::marker(markers::WORKLOAD_START);
            let plural = if cpus == 1 { "" } else { "s" };
            let mut line = serial::Text::<64>::new();
            line.push(format_args!("hello from covm firmware ({cpus} vCPU{plural})"));
            println!("{}", line.as_str());
            hello_console(line.as_str(), info.memmap);
            hw::power_off(power::OFF)
        }
        Workload::Dirty(args) => {
            publish(Some(dirty::prepare(&args, info.memmap, cpus, tsc_khz)));
            hw::marker(markers::WORKLOAD_START);
            // SAFETY: as in user_main.
            dirty::run(0, unsafe { (*PARAMS.0.get()).as_ref() }.expect("just set"))
        }
        Workload::Blk(args) => {
            if args.dirty_mib > 0 && cpus < 2 {
                fail_args(format_args!(
                    "blk dirty={} needs at least 2 vCPUs: vCPU 0 runs blk, the others dirty",
                    args.dirty_mib
                ));
            }
            let devices = devices(info.memmap);
            if args.dirty_mib > 0 {
                let dirty_args = DirtyArgs {
                    mib: args.dirty_mib,
                    rate_mib_s: args.dirty_rate_mib_s,
                    seed: args.seed,
                };
                let mut params = dirty::prepare(&dirty_args, info.memmap, cpus - 1, tsc_khz);
                params.first_cpu = 1;
                params.heartbeat = false;
                publish(Some(params));
            } else {
                publish(None);
            }
            hw::marker(markers::WORKLOAD_START);
            blk::run(&args, devices, tsc_khz, args.dirty_mib > 0)
        }
        Workload::BlkBench(args) => {
            publish(None);
            let devices = devices(info.memmap);
            hw::marker(markers::WORKLOAD_START);
            blkbench::run(&args, devices, tsc_khz)
        }
        Workload::Rng => {
            publish(None);
            let devices = devices(info.memmap);
            hw::marker(markers::WORKLOAD_START);
            rng::run(devices)
        }
        Workload::Net(args) => {
            publish(None);
            let devices = devices(info.memmap);
            hw::marker(markers::WORKLOAD_START);
            net::run(&args, devices, tsc_khz)
        }
        Workload::Vsock(args) => {
            publish(None);
            let devices = devices(info.memmap);
            hw::marker(markers::WORKLOAD_START);
            vsock::run(&args, devices, tsc_khz)
        }
    }
}

fn fail_args(why: core::fmt::Arguments) -> ! {
    println!("error: {why}");
    hw::power_off(power::FAIL_BAD_ARGS)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    match info.location() {
        Some(at) => serial::print_urgent(format_args!(
            "FAIL panic: {} at {}:{}\n",
            info.message(),
            at.file(),
            at.line()
        )),
        None => serial::print_urgent(format_args!("FAIL panic: {}\n", info.message())),
    }
    hw::power_off(power::FAIL_PANIC)
}
