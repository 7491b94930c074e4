//! vCPUs: creation, boot state, and the thread that runs each one.

use crate::arch::{cpuid, regs};
use crate::cvm::CvmRuntime;
use crate::dirty_ring::DirtyRings;
use crate::exit::VmExit;
use crate::vcpu_control::RunControl;
use covm_devices::{PioBus, PowerAction};
use covm_guest_abi::ports;
use kvm_bindings::{CpuId, KVM_EXIT_DIRTY_RING_FULL};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Called with the reason when a vCPU can no longer run the guest.
pub type ExitNotifier = Arc<dyn Fn(VmExit) + Send + Sync>;

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
}

impl Vcpu {
    /// Creates vCPU `index` (its APIC ID too).
    pub fn create(vm: &VmFd, index: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        Ok(Self {
            index,
            fd: Arc::new(Mutex::new(fd)),
            counters: Arc::default(),
            dirty_rings: None,
            runtime: None,
        })
    }

    /// Sets CPUID, MSRs, FPU and LAPIC to their reset values. The bootstrap
    /// vCPU's entry registers are set separately.
    pub fn configure(&mut self, supported: &CpuId, topo: cpuid::Topology) -> Result<(), VcpuError> {
        let index = self.index;
        let cpuid = cpuid::for_vcpu(supported, topo, index);
        let fd = self.fd();
        fd.set_cpuid2(&cpuid)
            .map_err(|source| VcpuError::Cpuid { index, source })?;
        regs::setup_msrs(&fd, index)?;
        regs::setup_fpu(&fd, index)?;
        regs::setup_lapic(&fd, index)?;
        Ok(())
    }

    /// Gives the vCPU the VM's dirty rings (ring mode), to harvest when
    /// its own ring fills up.
    pub fn set_dirty_rings(&mut self, rings: Arc<DirtyRings>) {
        self.dirty_rings = Some(rings);
    }

    /// Gives the vCPU its confidential VM's runtime, so that it can park.
    pub fn set_runtime(&mut self, runtime: Arc<CvmRuntime>) {
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
        bus: Arc<PioBus>,
        control: Arc<RunControl>,
        notify: ExitNotifier,
    ) -> Result<JoinHandle<()>, VcpuError> {
        let index = self.index;
        std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                if let Some(exit) = self.run(&bus, &control) {
                    tracing::debug!("vCPU {index} stopped: {exit:?}");
                    notify(exit);
                }
            })
            .map_err(|source| VcpuError::Thread { index, source })
    }

    /// The run loop; `None` when stopped by the controller.
    fn run(self, bus: &PioBus, control: &RunControl) -> Option<VmExit> {
        let mut throttle_period = 0;
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
                    tracing::debug!("vCPU {}: read of unassigned MMIO {addr:#x}", self.index);
                    data.fill(0xff);
                    continue;
                }
                Ok(VcpuExit::MmioWrite(addr, _)) => {
                    self.counters.mmio_exits.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("vCPU {}: write to unassigned MMIO {addr:#x}", self.index);
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
                Ok(VcpuExit::SystemEvent(SYSTEM_EVENT_SHUTDOWN, _)) => return Some(VmExit::Power(PowerAction::Off)),
                Ok(VcpuExit::SystemEvent(SYSTEM_EVENT_RESET, _)) => return Some(VmExit::Power(PowerAction::Reset)),
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
