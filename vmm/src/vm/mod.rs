//! A VM: KVM objects, guest memory, devices and vCPUs, and running it.
//!
//! A plain or emulated_cvm VM is built here; an SEV-SNP VM through its
//! launch (`vm/snp.rs`); a TDX VM through its launch (`vm/tdx.rs`).

pub(crate) mod confidential;
pub(crate) mod kvm;
pub(crate) mod memory;
mod pagemap_scan;

mod private;
mod snp;
mod tdx;
#[cfg(test)]
pub(crate) use snp::tests as snp_tests;
#[cfg(test)]
pub(crate) use tdx::tests as tdx_tests;

use crate::dirty::DirtyTracker;
use crate::platform::Platform;
use crate::state::snapshot::{VmSnapshot, SNAPSHOT_VERSION};
use crate::state::{self, chips};
use crate::vcpu::control::{Desired, RunControl, THROTTLE_PERIOD};
use crate::vcpu::{Buses, ExitNotifier, Vcpu, VcpuCounters};
use confidential::vmsa_area::{self};
use confidential::{CvmRuntime, LaunchMode};
use covm_devices::power::PowerButton;
use covm_migration::vm::DirtyBitmap;
use kvm_ioctls::{VcpuFd, VmFd};
use memory::GuestMemory;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;
use vm_memory::GuestMemoryRegion;

mod build;
mod devices;
mod error;
pub(crate) mod pci;

use devices::SharedSerial;
pub use error::VmError;

/// Counters of a VM, by device, for `vm.counters`.
pub type Counters = BTreeMap<String, BTreeMap<String, u64>>;

/// A VM: built, then started, paused, resumed and stopped by the VMM.
pub struct Vm {
    // Dropped last (declaration order): vCPU fds and memory go first.
    memory: GuestMemory,
    vcpus: Vec<Vcpu>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    throttler: Option<JoinHandle<()>>,
    /// How dirty pages are tracked (dirty log, dirty rings, or not at all
    /// for an SEV-SNP VM's or a TD's guest_memfd-backed memory).
    dirty: DirtyTracker,
    buses: Buses,
    /// The PCI bus and its virtio devices (none on an SEV-SNP VM or a TD).
    pci: Option<pci::PciDevices>,
    control: Arc<RunControl>,
    notify: ExitNotifier,
    vcpu_counters: Vec<Arc<VcpuCounters>>,
    vcpu_fds: Vec<Arc<Mutex<VcpuFd>>>,
    serial: Option<SharedSerial>,
    /// Pressed by `vm.power-button`, read by the guest on the power port.
    power_button: PowerButton,
    msr_indices: Vec<u32>,
    platform: Arc<dyn Platform>,
    /// A confidential VM's shared runtime (ports, agent, park gate).
    cvm: Option<Arc<CvmRuntime>>,
    /// The agent's vCPUs (a confidential VM's last), run apart from the
    /// workload: pausing or throttling the guest never stops the agent.
    agent_vcpus: Vec<Vcpu>,
    agent_control: Arc<RunControl>,
    agent_threads: Vec<JoinHandle<()>>,
    // Kept open for the VM's lifetime: dropping it destroys the VM (the
    // vCPUs of a VM with private memory share it for their conversions).
    vm_fd: Arc<VmFd>,
    /// The guest_memfds backing an SEV-SNP VM's or a TD's private memory,
    /// kept open with the VM.
    _guest_memfds: Vec<OwnedFd>,
}

impl Vm {
    /// Why this VM cannot migrate, if it cannot (`vm.send-migration` and
    /// dirty logging are refused with it).
    pub fn migration_refusal(&self) -> Option<&'static str> {
        self.dirty.unsupported()
    }

    /// Presses the VM's power button (`vm.power-button`): the guest sees it
    /// on its next read of the power port (covm's built-in firmware then
    /// powers off).
    pub fn press_power_button(&self) {
        self.power_button.press();
    }

    /// The PCI devices: id and address, in bus order.
    pub fn pci_devices(&self) -> Vec<(String, String)> {
        self.pci
            .iter()
            .flat_map(|p| p.attached())
            .map(|a| (a.id.clone(), a.bdf.to_string()))
            .collect()
    }

    /// Releases (a source paused for its switch) or takes back (a
    /// destination at the commit, a source whose migration failed) what
    /// the devices hold exclusively: the disks' image locks.
    pub fn device_handover(&self, step: covm_devices::virtio::Handover) -> Result<(), VmError> {
        self.pci.as_ref().map_or(Ok(()), |p| p.handover(step))
    }

    /// The VM's platform, chosen at launch.
    pub fn platform(&self) -> &dyn Platform {
        &*self.platform
    }

    /// Every piece of state but memory, encoded; the vCPUs must be paused
    /// (or never started).
    ///
    /// On a confidential VM the vCPUs' states are private: the platform
    /// layer puts them in the agent's VMSA area (as SEV-SNP hardware keeps
    /// them in VMSA pages) and the returned state holds the host-owned
    /// devices only.
    pub fn save_state(&self) -> Result<Vec<u8>, VmError> {
        let chips = chips::save(&self.vm_fd)?;
        let mut vcpus = Vec::with_capacity(self.vcpu_fds.len());
        for (index, fd) in self.vcpu_fds.iter().enumerate() {
            let fd = fd.lock().unwrap_or_else(|p| p.into_inner());
            let state = state::vcpu::save(&fd, index as u8, &self.msr_indices)?;
            match &self.cvm {
                Some(_) => vmsa_area::put(&self.memory, index, &state)?,
                None => vcpus.push(state),
            }
        }
        let serial = self
            .serial
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).state());
        let devices = self.pci.as_ref().map(|p| p.save()).unwrap_or_default();
        let shared_window = self.pci.as_ref().and_then(|p| p.shared_window()).map(|w| w.save());
        Ok(VmSnapshot {
            version: SNAPSHOT_VERSION,
            chips,
            vcpus,
            serial,
            devices,
            shared_window,
        }
        .encode())
    }

    /// Loads state from [`Vm::save_state`] into a VM that has not started.
    ///
    /// On a confidential VM the vCPUs' states come from the agent's VMSA
    /// area, where the agent left the states it opened and checked.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<(), VmError> {
        let in_state = if self.cvm.is_some() { 0 } else { self.vcpu_fds.len() };
        let snapshot = VmSnapshot::decode(bytes, in_state, self.serial.is_some())?;
        chips::restore(&self.vm_fd, &snapshot.chips)?;
        for (index, fd) in self.vcpu_fds.iter().enumerate() {
            let fd = fd.lock().unwrap_or_else(|p| p.into_inner());
            match &self.cvm {
                Some(_) => state::vcpu::restore(&fd, index as u8, &vmsa_area::take(&self.memory, index)?)?,
                None => state::vcpu::restore(&fd, index as u8, &snapshot.vcpus[index])?,
            }
        }
        if let (Some(serial), Some(state)) = (&self.serial, &snapshot.serial) {
            serial.lock().unwrap_or_else(|p| p.into_inner()).restore(state)?;
        }
        let window = self.pci.as_ref().and_then(|p| p.shared_window());
        match (window, &snapshot.shared_window) {
            (Some(window), Some(state)) => window.restore(state).map_err(|reason| VmError::Device {
                id: "shared window".into(),
                reason,
            })?,
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                return Err(VmError::Device {
                    id: "shared window".into(),
                    reason: "the source's VM and this one disagree on having a shared window".into(),
                })
            }
        }
        match &self.pci {
            Some(pci) => pci.restore(&snapshot.devices)?,
            None if !snapshot.devices.is_empty() => {
                return Err(VmError::Device {
                    id: snapshot.devices[0].id.clone(),
                    reason: "this VM has no PCI bus".into(),
                })
            }
            None => {}
        }
        Ok(())
    }

    /// The guest's memory.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// Starts one thread per vCPU (the agent's too). On an incoming
    /// confidential VM, whose threads already run, releases the parked
    /// workload vCPUs instead: their imported state is loaded.
    pub fn start(&mut self) -> Result<(), VmError> {
        // Devices first: the guest may use them as soon as it runs.
        if let Some(pci) = &self.pci {
            pci.resume();
        }
        if let Some(cvm) = self.cvm.as_ref().filter(|c| c.mode() == LaunchMode::Incoming) {
            if self.vcpus.is_empty() {
                cvm.release_workload();
                return Ok(());
            }
        }
        for vcpu in self.vcpus.drain(..) {
            let thread = vcpu.spawn(self.buses.clone(), self.control.clone(), self.notify.clone())?;
            self.threads.lock().unwrap_or_else(|p| p.into_inner()).push(thread);
        }
        for agent in self.agent_vcpus.drain(..) {
            let thread = agent.spawn(self.buses.clone(), self.agent_control.clone(), self.notify.clone())?;
            self.agent_threads.push(thread);
        }
        Ok(())
    }

    /// Incoming confidential VM: starts its vCPUs and waits until the
    /// workload vCPUs parked and the agent announced itself, so nothing
    /// but the agent touches guest memory while it imports.
    pub fn start_incoming_agent(&mut self, timeout: std::time::Duration) -> Result<(), VmError> {
        let cvm = self.cvm.clone().expect("only for confidential VMs");
        let workload = self.vcpus.len();
        self.start()?;
        let deadline = Instant::now() + timeout;
        loop {
            let (parked, ready) = (cvm.parked(), cvm.agent_ready());
            if parked == workload && ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(VmError::AgentNotReady {
                    seconds: timeout.as_secs(),
                    what: format!(
                        "{parked} of {workload} workload vCPUs parked, agent {}",
                        if ready { "ready" } else { "not ready" }
                    ),
                });
            }
            // Short polls: the firmware parks within a few milliseconds,
            // and every migration's handshake waits for this.
            std::thread::sleep(std::time::Duration::from_micros(250));
        }
    }

    /// The confidential runtime (ports, agent mailbox), on a confidential VM.
    pub fn cvm(&self) -> Option<&Arc<CvmRuntime>> {
        self.cvm.as_ref()
    }

    /// Parks every workload vCPU outside `KVM_RUN`; returns once all are
    /// parked. The agent's vCPU keeps running.
    pub fn pause(&self) {
        self.control
            .pause(&self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        // Then the devices: the request each is serving finishes, its
        // result in guest memory, and no other starts until resume.
        if let Some(pci) = &self.pci {
            pci.pause();
        }
    }

    /// Lets the vCPUs run again; refused once the agent committed a
    /// migration away.
    pub fn resume(&self) -> Result<(), VmError> {
        if self.cvm.as_ref().is_some_and(|c| c.retired()) {
            return Err(VmError::Retired);
        }
        if let Some(pci) = &self.pci {
            pci.resume();
        }
        self.control.resume();
        Ok(())
    }

    /// Stops and joins the vCPU threads; dropping the VM then frees it.
    pub fn stop(mut self) {
        self.set_throttle(0);
        if let Some(cvm) = &self.cvm {
            cvm.close();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        self.control.stop(threads);
        let agents = std::mem::take(&mut self.agent_threads);
        if !agents.is_empty() {
            self.agent_control.stop(agents);
        }
        if let Some(pci) = &self.pci {
            pci.stop();
        }
    }

    /// Slows the vCPUs to run only `100 - percent` % of the time (0 = full
    /// speed), so that a migration's pre-copy can converge.
    pub fn set_throttle(&mut self, percent: u8) {
        self.control.set_throttle(percent);
        if percent > 0 && self.throttler.is_none() {
            let (control, threads) = (self.control.clone(), self.threads.clone());
            self.throttler = Some(std::thread::spawn(move || {
                while control.throttle() > 0 && control.desired() != Desired::Stop {
                    control.next_throttle_period(&threads.lock().unwrap_or_else(|p| p.into_inner()));
                    std::thread::sleep(THROTTLE_PERIOD);
                }
            }));
        } else if percent == 0 {
            if let Some(throttler) = self.throttler.take() {
                let _ = throttler.join();
            }
        }
    }

    /// Turns dirty-page tracking on or off for all of guest memory.
    pub fn set_dirty_logging(&self, on: bool) -> Result<(), VmError> {
        Ok(self.dirty.set_logging(&self.vm_fd, &self.memory, on)?)
    }

    /// Pages written since last cleared, one bitmap per memory region.
    pub fn dirty_bitmaps(&self) -> Result<Vec<DirtyBitmap>, VmError> {
        let mut bitmaps = self.dirty.dirty_bitmaps(&self.vm_fd, &self.memory)?;
        // Devices confined to a shared window write through a view of
        // their own, with its own write bitmap.
        if let Some(view) = self.pci.as_ref().and_then(|p| p.confined_view()) {
            confidential::shared_window::merge_view_writes(view, &mut bitmaps);
        }
        Ok(bitmaps)
    }

    /// For each of `pages` guest pages from `gpa` (inside one region):
    /// whether the host never populated it, so it is zero without reading.
    pub fn unpopulated_pages(&self, gpa: u64, pages: u64) -> Result<Vec<bool>, VmError> {
        let (_, region) = memory::region_of(&self.memory, gpa, pages * covm_guest_abi::layout::PAGE_SIZE)
            .ok_or(VmError::OutsideMemory { gpa, pages })?;
        let host = region.as_ptr() as u64 + (gpa - region.start_addr().0);
        memory::unpopulated_host_pages(host, pages).map_err(VmError::PageMap)
    }

    /// Whether covm wrote the page at `gpa` through vm-memory since the VM
    /// was created (the guest's own writes are not counted: this serves
    /// incoming VMs, which do not run while they are filled).
    pub fn written_since_creation(&self, gpa: u64) -> bool {
        memory::region_of(&self.memory, gpa, 1)
            .is_some_and(|(_, r)| memory::vmm_writes(r).is_addr_set((gpa - r.start_addr().0) as usize))
    }

    /// The memory the guest shares with its devices (a confidential VM's
    /// shared window, the pages it shared), as (address, bytes).
    pub fn shared_memory(&self) -> Vec<(u64, u64)> {
        self.pci
            .as_ref()
            .and_then(|p| p.shared_window())
            .map(|w| w.shared_ranges())
            .unwrap_or_default()
    }

    /// Where the guest may share memory at all (a confidential VM's
    /// window, whatever of it is shared now).
    pub fn shareable_memory(&self) -> Vec<(u64, u64)> {
        match self.pci.as_ref().and_then(|p| p.shared_window()) {
            Some(_) => vec![(
                covm_guest_abi::layout::SHARED_WINDOW,
                covm_guest_abi::layout::SHARED_WINDOW_SIZE,
            )],
            None => Vec::new(),
        }
    }

    /// Clears and re-arms dirty tracking of `pages` pages from `gpa`.
    pub fn clear_dirty(&self, gpa: u64, pages: u64) -> Result<(), VmError> {
        if let Some(view) = self.pci.as_ref().and_then(|p| p.confined_view()) {
            confidential::shared_window::forget_view_writes(view, gpa, pages);
        }
        Ok(self.dirty.clear(&self.vm_fd, &self.memory, gpa, pages)?)
    }

    /// Device and vCPU counters.
    pub fn counters(&self) -> Counters {
        let mut all = Counters::new();
        for (index, c) in self.vcpu_counters.iter().enumerate() {
            let vcpu = all.entry(format!("vcpu{index}")).or_default();
            vcpu.insert("io_exits".into(), c.io_exits.load(Ordering::Relaxed));
            vcpu.insert("mmio_exits".into(), c.mmio_exits.load(Ordering::Relaxed));
            vcpu.insert("interrupted".into(), c.interrupted.load(Ordering::Relaxed));
            if matches!(self.dirty, DirtyTracker::Ring(_)) {
                vcpu.insert("dirty_ring_full".into(), c.dirty_ring_full.load(Ordering::Relaxed));
            }
        }
        if let Some(c) = self
            .serial
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).counters())
        {
            let serial = all.entry("serial".into()).or_default();
            serial.insert("tx_bytes".into(), c.tx_bytes.load(Ordering::Relaxed));
            serial.insert("tx_lost".into(), c.tx_lost.load(Ordering::Relaxed));
        }
        for (id, counters) in self.pci.iter().flat_map(|p| p.counters()) {
            all.insert(id, counters.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
        }
        all
    }
}
