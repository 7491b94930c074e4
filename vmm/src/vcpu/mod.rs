//! vCPUs: creation, boot state, and the thread that runs each one.

pub mod control;
mod private_exits;
pub mod role;

use private_exits::answer_tdvmcall;
pub use private_exits::PrivateMemoryExits;

use crate::arch::{cpuid, regs};
use crate::dirty::ring::DirtyRings;
use crate::exit::VmExit;
use crate::platform::tdx::exit::{KVM_EXIT_TDX, KVM_SYSTEM_EVENT_TDX_FATAL};
use crate::vcpu::control::RunControl;
use crate::vm::confidential::CvmRuntime;
use covm_devices::{MmioBus, PioBus, PowerAction};
use covm_guest_abi::ports;
use kvm_bindings::{CpuId, KVM_EXIT_DIRTY_RING_FULL};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Called with the reason when a vCPU can no longer run the guest.
pub type ExitNotifier = Arc<dyn Fn(VmExit) + Send + Sync>;

/// What a vCPU's port and MMIO exits reach.
#[derive(Clone, Default)]
pub struct Buses {
    /// Port I/O.
    pub pio: Arc<PioBus>,
    /// MMIO outside RAM (PCI configuration space and BARs).
    pub mmio: Arc<MmioBus>,
}

/// Exits a vCPU has taken, for `vm.counters`.
#[derive(Debug, Default)]
pub struct VcpuCounters {
    /// Port I/O exits.
    pub io_exits: AtomicU64,
    /// MMIO exits.
    pub mmio_exits: AtomicU64,
    /// Returns from `KVM_RUN` caused by a kick or another signal.
    pub interrupted: AtomicU64,
    /// Exits because this vCPU's dirty ring was full (ring mode only).
    pub dirty_ring_full: AtomicU64,
}

/// KVM_SYSTEM_EVENT_* types.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
/// An SEV-ES/SNP guest's GHCB termination request (`data[0]`: the GHCB MSR).
const SYSTEM_EVENT_SEV_TERM: u32 = 6;

/// Errors creating a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM refused.
    #[error("cannot create vCPU {index}: {source}")]
    Create {
        /// Which vCPU.
        index: u8,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
    /// KVM refused the CPUID.
    #[error("cannot set the CPUID of vCPU {index}: {source}")]
    Cpuid {
        /// Which vCPU.
        index: u8,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
    /// Boot registers could not be set.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// The thread could not be started.
    #[error("cannot start the thread of vCPU {index}: {source}")]
    Thread {
        /// Which vCPU.
        index: u8,
        /// Why.
        source: std::io::Error,
    },
}

/// A vCPU, configured and ready to run.
pub struct Vcpu {
    index: u8,
    // Shared with the VM so its state can be saved and restored while the
    // vCPU is parked; the vCPU thread holds the lock only inside KVM_RUN.
    fd: Arc<Mutex<VcpuFd>>,
    counters: Arc<VcpuCounters>,
    /// The VM's dirty rings, harvested here when this vCPU's ring is full.
    dirty_rings: Option<Arc<DirtyRings>>,
    /// A confidential VM's runtime: where a parking vCPU waits.
    runtime: Option<Arc<CvmRuntime>>,
    /// A VM with private memory: where `KVM_HC_MAP_GPA_RANGE` exits go.
    private_memory: Option<Arc<PrivateMemoryExits>>,
    /// One of the migration agent's vCPUs (see [`role`]).
    agent: bool,
}

impl Vcpu {
    /// Creates vCPU `index` (its APIC ID too).
    pub fn create(vm: &VmFd, index: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        Ok(Self::from_fd(fd, index))
    }

    /// vCPU `index` from a KVM vCPU created elsewhere (a confidential
    /// launch creates its vCPUs itself).
    pub fn from_fd(fd: VcpuFd, index: u8) -> Self {
        Self {
            index,
            fd: Arc::new(Mutex::new(fd)),
            counters: Arc::default(),
            dirty_rings: None,
            runtime: None,
            private_memory: None,
            agent: false,
        }
    }

    /// This vCPU runs the migration agent: its thread says so to the
    /// agent's ports ([`role::on_agent_vcpu`]).
    pub fn into_agent(mut self) -> Self {
        self.agent = true;
        self
    }

    /// Sets CPUID, MSRs, FPU and LAPIC to their reset values. The bootstrap
    /// vCPU's entry registers are set separately.
    pub fn configure(&mut self, supported: &CpuId, topo: cpuid::Topology) -> Result<(), VcpuError> {
        configure_fd(&self.fd(), self.index, supported, topo)
    }

    /// Sends the guest's `KVM_HC_MAP_GPA_RANGE` exits to `exits`.
    pub fn set_private_memory(&mut self, exits: Arc<PrivateMemoryExits>) {
        self.private_memory = Some(exits);
    }

    /// Gives the vCPU the VM's dirty rings (ring mode), to harvest when
    /// its own ring fills up.
    pub fn set_dirty_rings(&mut self, rings: Arc<DirtyRings>) {
        self.dirty_rings = Some(rings);
    }

    /// Gives the vCPU its confidential VM's runtime, so that it can park.
    pub fn set_runtime(&mut self, runtime: Arc<CvmRuntime>) {
        // The guest's clock rate, for the agent's accounting (`COSTS`
        // counts its time-stamp counter's ticks).
        if let Ok(khz) = self.fd().get_tsc_khz() {
            runtime.set_tsc_khz(khz);
        }
        self.runtime = Some(runtime);
    }

    /// The KVM vCPU (not while its thread runs it).
    pub fn fd(&self) -> MutexGuard<'_, VcpuFd> {
        self.fd.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A handle on the KVM vCPU for state save and restore while parked.
    pub fn shared_fd(&self) -> Arc<Mutex<VcpuFd>> {
        self.fd.clone()
    }

    /// Its exit counters.
    pub fn counters(&self) -> Arc<VcpuCounters> {
        self.counters.clone()
    }

    /// Runs the vCPU on its own thread as `control` says, until the guest
    /// asks to stop, something fails (both reported to `notify`), or
    /// `control` says stop.
    pub fn spawn(
        self,
        buses: Buses,
        control: Arc<RunControl>,
        notify: ExitNotifier,
    ) -> Result<JoinHandle<()>, VcpuError> {
        let index = self.index;
        std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                if self.agent {
                    role::enter_agent_vcpu();
                }
                if let Some(exit) = self.run(&buses, &control) {
                    tracing::debug!("vCPU {index} stopped: {exit:?}");
                    notify(exit);
                }
            })
            .map_err(|source| VcpuError::Thread { index, source })
    }

    /// The run loop; `None` when stopped by the controller.
    fn run(self, buses: &Buses, control: &RunControl) -> Option<VmExit> {
        let bus = &*buses.pio;
        let mut throttle_period = 0;
        // Dropped before `self`, which holds the fd and its run mapping.
        let _kick = control::KickExit::arm(self.fd.lock().unwrap_or_else(|p| p.into_inner()).get_kvm_run());
        while control.wait_to_run(&mut throttle_period) {
            // Held through KVM_RUN and the exit's handling only: a parked
            // vCPU leaves its fd to the VM for state save and restore.
            let mut fd = self.fd.lock().unwrap_or_else(|p| p.into_inner());
            let crash = match fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    self.counters.io_exits.fetch_add(1, Ordering::Relaxed);
                    if !bus.read(port, data) {
                        tracing::trace!("vCPU {}: read of unassigned port {port:#x}", self.index);
                    }
                    continue;
                }
                Ok(VcpuExit::IoOut(ports::PARK, _)) if self.runtime.is_some() => {
                    self.counters.io_exits.fetch_add(1, Ordering::Relaxed);
                    // An incoming confidential VM's workload vCPU: wait,
                    // without holding the fd, until the platform has loaded
                    // the imported state into it and released it.
                    drop(fd);
                    let runtime = self.runtime.as_ref().expect("checked");
                    tracing::debug!("vCPU {} parked for the incoming migration", self.index);
                    if !runtime.park_workload_vcpu() {
                        return None;
                    }
                    continue;
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    self.counters.io_exits.fetch_add(1, Ordering::Relaxed);
                    if !bus.write(port, data) {
                        tracing::trace!("vCPU {}: write to unassigned port {port:#x}", self.index);
                    }
                    continue;
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    self.counters.mmio_exits.fetch_add(1, Ordering::Relaxed);
                    if !buses.mmio.read(addr, data) {
                        tracing::debug!("vCPU {}: read of unassigned MMIO {addr:#x}", self.index);
                    }
                    continue;
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.counters.mmio_exits.fetch_add(1, Ordering::Relaxed);
                    if !buses.mmio.write(addr, data) {
                        tracing::debug!("vCPU {}: write to unassigned MMIO {addr:#x}", self.index);
                    }
                    continue;
                }
                Ok(VcpuExit::Intr) => continue,
                Ok(VcpuExit::Unsupported(KVM_EXIT_DIRTY_RING_FULL)) => {
                    self.counters.dirty_ring_full.fetch_add(1, Ordering::Relaxed);
                    // KVM will not enter the guest again until the ring has
                    // room: harvest it (and the others) here.
                    match self.dirty_rings.as_ref().map(|rings| rings.harvest()) {
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => format!("dirty ring full and cannot be harvested: {e}"),
                        None => "dirty ring full but the VM has no dirty rings".to_string(),
                    }
                }
                Ok(VcpuExit::Unsupported(KVM_EXIT_TDX)) => {
                    // A TD's TDVMCALL that KVM forwards (GetQuote,
                    // SetupEventNotifyInterrupt, GetTdVmCallInfo leaf 1):
                    // answered, and the TD resumes.
                    answer_tdvmcall(self.index, fd.get_kvm_run());
                    continue;
                }
                Ok(VcpuExit::Hypercall(exit)) => match &self.private_memory {
                    Some(exits) => match exits.handle(self.index, exit.nr, &exit.args) {
                        Ok(ret) => {
                            *exit.ret = ret;
                            continue;
                        }
                        Err(why) => why,
                    },
                    None => format!("hypercall {} exit on a VM without private memory", exit.nr),
                },
                Ok(VcpuExit::SystemEvent(SYSTEM_EVENT_SHUTDOWN, _)) => return Some(VmExit::Power(PowerAction::Off)),
                Ok(VcpuExit::SystemEvent(SYSTEM_EVENT_RESET, _)) => return Some(VmExit::Power(PowerAction::Reset)),
                Ok(VcpuExit::SystemEvent(SYSTEM_EVENT_SEV_TERM, data)) => format!(
                    "the guest asked to terminate (GHCB termination request, GHCB MSR {:#x})",
                    data.first().copied().unwrap_or_default()
                ),
                Ok(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_TDX_FATAL, data)) => format!(
                    "the TD reported a fatal error (TDG.VP.VMCALL ReportFatalError: error code R12 {:#x}, \
                     additional information GPA R13 {:#x})",
                    data.get(12).copied().unwrap_or_default(),
                    data.get(13).copied().unwrap_or_default()
                ),
                Ok(VcpuExit::Shutdown) => "triple fault".to_string(),
                Ok(VcpuExit::InternalError) => {
                    let run = fd.get_kvm_run();
                    // SAFETY: KVM filled the `internal` member of the union for KVM_EXIT_INTERNAL_ERROR.
                    let internal = unsafe { run.__bindgen_anon_1.internal };
                    let suberror = internal.suberror;
                    let what = if suberror == 1 {
                        "instruction emulation failed"
                    } else {
                        "KVM internal error"
                    };
                    format!("{what} (suberror {suberror})")
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => format!("VM entry failed (reason {reason:#x}, cpu {cpu})"),
                Ok(VcpuExit::Hlt) => "halted with no in-kernel LAPIC to wake it".to_string(),
                Ok(other) => format!("unexpected exit {other:?}"),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.counters.interrupted.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(e) => format!("KVM_RUN failed: {e}"),
            };
            let rip = fd
                .get_regs()
                .map(|r| format!("{:#x}", r.rip))
                .unwrap_or_else(|_| "unknown".into());
            return Some(VmExit::Crashed(format!("vCPU {}: {crash} at rip {rip}", self.index)));
        }
        None
    }
}

/// Sets vCPU `index`'s CPUID (from `supported` and `topo`), MSRs, FPU and
/// LAPIC to their reset values.
pub fn configure_fd(fd: &VcpuFd, index: u8, supported: &CpuId, topo: cpuid::Topology) -> Result<(), VcpuError> {
    let cpuid = cpuid::for_vcpu(supported, topo, index);
    fd.set_cpuid2(&cpuid)
        .map_err(|source| VcpuError::Cpuid { index, source })?;
    regs::setup_msrs(fd, index)?;
    regs::setup_fpu(fd, index)?;
    regs::setup_lapic(fd, index)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::hardware::error::CallError;
    use crate::platform::hardware::fake::split_ram;
    use crate::platform::hardware::private_memory::PrivateMemoryOps;
    use crate::platform::snp::fake::{SnpCall, SnpFake};
    use crate::platform::tdx::exit::TdvmcallAnswer;
    use covm_devices::power::PowerDevice;
    use covm_devices::PowerSink;
    use kvm_bindings::kvm_run;
    use kvm_bindings::{
        kvm_create_guest_memfd, kvm_enable_cap, kvm_memory_attributes, kvm_userspace_memory_region,
        kvm_userspace_memory_region2, KVM_CAP_EXIT_HYPERCALL,
    };
    use std::sync::mpsc::{channel, Sender};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

    /// The recording fake, shared with the test while a vCPU thread uses it.
    struct Shared(Arc<Mutex<SnpFake>>);

    impl PrivateMemoryOps for Shared {
        fn create_guest_memfd(&mut self, g: &kvm_create_guest_memfd) -> Result<u32, CallError> {
            self.0.lock().unwrap().create_guest_memfd(g)
        }
        fn set_user_memory_region2(&mut self, r: &kvm_userspace_memory_region2) -> Result<(), CallError> {
            self.0.lock().unwrap().set_user_memory_region2(r)
        }
        fn set_memory_attributes(&mut self, a: &kvm_memory_attributes) -> Result<(), CallError> {
            self.0.lock().unwrap().set_memory_attributes(a)
        }
        fn enable_exit_hypercall(&mut self, h: u64) -> Result<(), CallError> {
            self.0.lock().unwrap().enable_exit_hypercall(h)
        }
    }

    fn exits(fake: &Arc<Mutex<SnpFake>>) -> PrivateMemoryExits {
        PrivateMemoryExits::new(Box::new(Shared(fake.clone())), split_ram())
    }

    /// What the exit handler answers: 0 done, -EINVAL refused, stop when
    /// KVM fails.
    #[test]
    fn map_gpa_range_exits_are_handled() {
        let fake = Arc::new(Mutex::new(SnpFake::default()));
        let handler = exits(&fake);
        assert_eq!(handler.handle(0, 12, &[0x10_0000, 2, 0x10, 0, 0, 0]), Ok(0));
        assert_eq!(
            handler.handle(0, 12, &[0xd000_0000, 1, 0, 0, 0, 0]),
            Ok(22u64.wrapping_neg())
        );
        let calls = fake.lock().unwrap().calls.clone();
        assert!(matches!(
            calls.as_slice(),
            [SnpCall::SetMemoryAttributes(a)] if (a.address, a.size, a.attributes) == (0x10_0000, 0x2000, 8)
        ));
        assert!(handler
            .handle(0, 11, &[0; 6])
            .unwrap_err()
            .contains("is not KVM_HC_MAP_GPA_RANGE"));
        let failing = Arc::new(Mutex::new(SnpFake::failing("KVM_SET_MEMORY_ATTRIBUTES", 0)));
        let err = exits(&failing).handle(0, 12, &[0x2000, 1, 0, 0, 0, 0]).unwrap_err();
        assert!(
            err.contains("KVM_SET_MEMORY_ATTRIBUTES over 0x2000..0x3000 failed"),
            "{err}"
        );
    }

    /// A `KVM_EXIT_TDX` in a `kvm_run` as KVM leaves it is answered in
    /// place: GetQuote and SetupEventNotifyInterrupt get
    /// TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED in `ret`, their operands and the
    /// rest of the union untouched.
    #[test]
    fn tdvmcall_exits_are_answered_in_kvm_run() {
        use crate::platform::tdx::exit::{
            TDVMCALL_GET_QUOTE, TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT, TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED,
        };
        for (nr, operand) in [
            (TDVMCALL_GET_QUOTE, 0x7000u64),
            (TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT, 0x40),
        ] {
            let mut run = kvm_run::default();
            let mut bytes = [0u8; 256];
            bytes[8..16].copy_from_slice(&nr.to_le_bytes());
            bytes[16..24].copy_from_slice(&0u64.to_le_bytes()); // a status covm must overwrite
            bytes[24..32].copy_from_slice(&operand.to_le_bytes());
            bytes[100] = 0x5a;
            let mut padding = [0 as std::os::raw::c_char; 256];
            for (raw, byte) in padding.iter_mut().zip(bytes) {
                *raw = byte as std::os::raw::c_char;
            }
            run.__bindgen_anon_1.padding = padding;
            let answer = answer_tdvmcall(0, &mut run);
            assert!(matches!(answer, TdvmcallAnswer::Unsupported(_)), "{answer:?}");
            // SAFETY: the test wrote the union through `padding`.
            let after: Vec<u8> = unsafe { run.__bindgen_anon_1.padding }
                .iter()
                .map(|b| *b as u8)
                .collect();
            assert_eq!(
                u64::from_le_bytes(after[16..24].try_into().unwrap()),
                TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED
            );
            assert_eq!(&after[..16], &bytes[..16]);
            assert_eq!(&after[24..], &bytes[24..]);
        }
    }

    struct Channel(Mutex<Sender<PowerAction>>);

    impl PowerSink for Channel {
        fn request(&self, action: PowerAction) {
            let _ = self.0.lock().unwrap().send(action);
        }
    }

    /// A real guest's `KVM_HC_MAP_GPA_RANGE` reaches the handler through
    /// the vCPU loop, and the handler's answer reaches the guest's RAX: a
    /// real-mode guest makes the hypercall, then writes AL to the power
    /// port. On a default VM with the hypercall exit enabled, the
    /// recording fake standing in for the attribute change.
    #[test]
    fn hypercall_exits_reach_the_handler() {
        let Ok(kvm) = crate::vm::kvm::open() else {
            return covm_test_support::skip_without_kvm("no KVM");
        };
        if std::path::Path::new("/sys/module/kvm_pvm").exists() {
            // Measured on this project's hosts: under kvm_pvm a guest's
            // VMCALL or VMMCALL never completes (KVM_RUN re-enters it at
            // the same RIP, in real, protected and long mode alike, with or
            // without the exit enabled), so no hypercall exit can arrive.
            return covm_test_support::skip("this host's KVM (kvm_pvm) never completes a guest's VMCALL/VMMCALL");
        }
        if kvm.check_extension_raw(u64::from(KVM_CAP_EXIT_HYPERCALL)) & (1 << 12) == 0 {
            return covm_test_support::skip("KVM cannot exit on KVM_HC_MAP_GPA_RANGE here");
        }
        let amd = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains("AuthenticAMD"));
        let call: [u8; 3] = if amd { [0x0f, 0x01, 0xd9] } else { [0x0f, 0x01, 0xc1] };
        crate::vcpu::control::install_kick_handler().unwrap();
        let run = |gpa: u64, attributes: u64| -> (Option<PowerAction>, Vec<SnpCall>) {
            let vm = kvm.create_vm().unwrap();
            let mut cap = kvm_enable_cap {
                cap: KVM_CAP_EXIT_HYPERCALL,
                ..Default::default()
            };
            cap.args[0] = 1 << 12;
            vm.enable_cap(&cap).unwrap();
            let memory = crate::vm::memory::allocate(16 << 20).unwrap();
            let region = memory.iter().next().unwrap();
            let slot = kvm_userspace_memory_region {
                slot: 0,
                flags: 0,
                guest_phys_addr: 0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: `memory` maps the slot whole and outlives the VM (both
            // dropped at the end of this closure, the VM and vCPU first: the
            // vCPU thread has ended when `rx` reports).
            unsafe { vm.set_user_memory_region(slot) }.unwrap();
            let mut code = call.to_vec();
            code.extend([0xba, 0x00, 0x06, 0xee, 0xf4]); // mov dx, 0x600; out dx, al; hlt
            memory.write_slice(&code, GuestAddress(0x1000)).unwrap();
            let fd = vm.create_vcpu(0).unwrap();
            let mut sregs = fd.get_sregs().unwrap();
            sregs.cs.base = 0;
            sregs.cs.selector = 0;
            fd.set_sregs(&sregs).unwrap();
            let mut regs = fd.get_regs().unwrap();
            regs.rip = 0x1000;
            regs.rax = 12;
            (regs.rbx, regs.rcx, regs.rdx) = (gpa, 1, attributes);
            fd.set_regs(&regs).unwrap();
            let fake = Arc::new(Mutex::new(SnpFake::default()));
            let mut vcpu = Vcpu::from_fd(fd, 0);
            vcpu.set_private_memory(Arc::new(exits(&fake)));
            let (tx, rx) = channel();
            let mut bus = PioBus::new();
            let sink: Arc<dyn PowerSink> = Arc::new(Channel(Mutex::new(tx)));
            bus.insert(
                ports::POWER,
                1,
                Arc::new(Mutex::new(PowerDevice::new(sink, Default::default()))),
            )
            .unwrap();
            let control = Arc::new(RunControl::default());
            let ended = Arc::new(Mutex::new(None));
            let seen = ended.clone();
            let notify: ExitNotifier = Arc::new(move |exit| *seen.lock().unwrap() = Some(exit));
            let buses = Buses {
                pio: Arc::new(bus),
                mmio: Arc::default(),
            };
            let thread = vcpu.spawn(buses, control.clone(), notify).unwrap();
            let action = rx.recv_timeout(std::time::Duration::from_secs(5)).ok();
            control.stop(vec![thread]);
            if action.is_none() {
                eprintln!("the vCPU ended with {:?}", ended.lock().unwrap());
            }
            let calls = fake.lock().unwrap().calls.clone();
            (action, calls)
        };
        // Made shared: the fake records it, the guest reads 0.
        let (action, calls) = run(0x10_0000, 0);
        assert_eq!(action, Some(PowerAction::Off), "RAX 0 back in the guest");
        assert!(matches!(
            calls.as_slice(),
            [SnpCall::SetMemoryAttributes(a)] if (a.address, a.size, a.attributes) == (0x10_0000, 0x1000, 0)
        ));
        // Outside RAM: refused, the guest reads -EINVAL (AL 0xea).
        let (action, calls) = run(0xd000_0000, 0x10);
        assert_eq!(action, Some(PowerAction::Fail(0xea)));
        assert!(calls.is_empty());
    }
}
