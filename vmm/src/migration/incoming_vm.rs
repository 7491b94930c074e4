//! The destination's VM while a plain migration's pages arrive: its guest
//! memory exists at once, and the KVM VM around it is built on a helper
//! thread, joined when the state is restored.
//!
//! Why: pages are written through covm's own mapping of guest memory, so
//! nothing but that mapping must exist before the source may send them.
//! Building the rest (KVM's VM, the memory slot, the chips, the vCPUs, the
//! devices) took 2.5-7.6 ms for 1-16 GiB idle guests on this project's
//! hosts before the first page could come (the memory slot alone about
//! 0.35 ms a GiB under shadow paging; docs/benchmarks.md, issue 18). A
//! build that fails fails the state's restore, before any Commit: the
//! source resumes, as after any other failure.
//!
//! A confidential VM is built whole before the handshake: its agent must
//! run to attest.

use super::engine_vm::zero_written;
use crate::config::VmConfig;
use crate::vcpu::ExitNotifier;
use crate::vm::memory::{self, GuestMemory};
use crate::vm::{Vm, VmError};
use covm_migration::vm::{DestinationVm, MemoryRange, VmOpError};
use std::thread::JoinHandle;
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress};

/// Why the VM built beside the migration is missing.
#[derive(Debug, thiserror::Error)]
pub enum IncomingVmError {
    /// The build thread could not start.
    #[error("cannot start the thread that builds the incoming VM: {0}")]
    Thread(std::io::Error),
    /// The build thread panicked.
    #[error("the thread that built the incoming VM panicked")]
    Panicked,
    /// Building failed.
    #[error("cannot build the incoming VM: {0}")]
    Build(#[from] VmError),
}

/// An incoming VM, built or being built.
pub struct IncomingVm {
    memory: GuestMemory,
    vm: Option<Vm>,
    building: Option<JoinHandle<Result<Vm, VmError>>>,
}

impl IncomingVm {
    /// A VM built already (a confidential one).
    pub fn ready(vm: Vm) -> Self {
        IncomingVm {
            memory: vm.memory().clone(),
            vm: Some(vm),
            building: None,
        }
    }

    /// Allocates `config`'s guest memory now and builds the plain VM
    /// around it on a helper thread.
    pub fn build_beside(config: VmConfig, start: Instant, notify: ExitNotifier) -> Result<Self, IncomingVmError> {
        let memory = memory::allocate(config.memory.size).map_err(|e| IncomingVmError::Build(e.into()))?;
        let for_vm = memory.clone();
        let building = std::thread::Builder::new()
            .name("migration-build".into())
            .spawn(move || Vm::new_incoming_on(&config, for_vm, start, notify))
            .map_err(IncomingVmError::Thread)?;
        Ok(IncomingVm {
            memory,
            vm: None,
            building: Some(building),
        })
    }

    /// The guest's memory (there from the start).
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// The VM, waiting for its build if it is still under way.
    fn built(&mut self) -> Result<&mut Vm, IncomingVmError> {
        if let Some(building) = self.building.take() {
            let vm = building.join().map_err(|_| IncomingVmError::Panicked)??;
            self.vm = Some(vm);
        }
        Ok(self.vm.as_mut().expect("built or ready"))
    }

    /// The finished VM.
    pub fn into_vm(mut self) -> Result<Vm, IncomingVmError> {
        self.built()?;
        Ok(self.vm.take().expect("built above"))
    }
}

impl DestinationVm for IncomingVm {
    fn write_memory(&mut self, gpa: u64, data: &[u8]) -> Result<(), VmOpError> {
        self.memory.write_slice(data, GuestAddress(gpa)).map_err(VmOpError::vmm)
    }

    fn zero_memory(&mut self, gpa: u64, pages: u64) -> Result<(), VmOpError> {
        zero_written(&self.memory, gpa, pages)
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), VmOpError> {
        self.built()
            .map_err(VmOpError::vmm)?
            .restore_state(state)
            .map_err(VmOpError::vmm)
    }

    // A plain VM shares nothing; a confidential one is always built.
    fn shareable_memory(&self) -> Vec<MemoryRange> {
        self.vm.as_ref().map(Vm::shareable_memory).unwrap_or_default()
    }

    fn shared_memory(&self) -> Vec<MemoryRange> {
        self.vm.as_ref().map(Vm::shared_memory).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::VmArgs;
    use std::sync::Arc;

    fn config(disks: Vec<String>) -> VmConfig {
        let args = VmArgs {
            cpus: Some("boot=1".into()),
            memory: Some("size=16M".into()),
            cmdline: Some("workload=hello".into()),
            ..Default::default()
        };
        let mut config = VmConfig::for_measure(&args, 1 << 40).unwrap().0;
        for disk in disks {
            config
                .devices
                .disks
                .push(crate::config::devices::parse_disk(&disk).unwrap());
        }
        config
    }

    fn build(config: VmConfig) -> IncomingVm {
        let notify: ExitNotifier = Arc::new(|_| {});
        IncomingVm::build_beside(config, Instant::now(), notify).unwrap()
    }

    /// Pages land in guest memory before the VM around it exists, and the
    /// VM built beside them holds them.
    #[test]
    fn pages_arrive_while_the_vm_is_built() {
        if crate::platform::hardware::hybrid::kvm_or_skip().is_none() {
            return;
        }
        let mut incoming = build(config(Vec::new()));
        incoming.write_memory(0x20_0000, &[0xa5; 4096]).unwrap();
        incoming.zero_memory(0x20_0000, 1).unwrap();
        incoming.write_memory(0x30_0000, &[0x5a; 4096]).unwrap();
        let vm = incoming.into_vm().expect("built");
        let mut page = [0u8; 4096];
        vm.memory().read_slice(&mut page, GuestAddress(0x30_0000)).unwrap();
        assert_eq!(page, [0x5a; 4096]);
        vm.memory().read_slice(&mut page, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(page, [0; 4096]);
    }

    /// A build that fails (here: the disk is gone) fails the restore of
    /// the state, naming why, so the migration fails before any Commit.
    #[test]
    fn a_failed_build_fails_the_restore_with_its_reason() {
        if crate::platform::hardware::hybrid::kvm_or_skip().is_none() {
            return;
        }
        let gone = std::env::temp_dir().join(format!("covm-incoming-gone-{}.raw", std::process::id()));
        let mut incoming = build(config(vec![format!("path={}", gone.display())]));
        incoming.write_memory(0x20_0000, &[1; 4096]).unwrap();
        let error = incoming.restore_state(b"never read").unwrap_err().to_string();
        assert!(error.contains("cannot build the incoming VM"), "{error}");
        assert!(error.contains(&gone.display().to_string()), "{error}");
    }
}
