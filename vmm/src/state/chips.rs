//! The VM-level state KVM emulates in the kernel: both 8259 PICs, the
//! IOAPIC, the PIT, and the kvmclock base.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

/// In-kernel chips and clock.
#[derive(Clone, Serialize, Deserialize)]
pub struct ChipsState {
    /// PIC master, PIC slave, IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
    /// The i8254 PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock.
    pub clock: kvm_clock_data,
}

/// Errors reading or writing the chips.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what}: {source}")]
pub struct ChipsError {
    what: &'static str,
    source: kvm_ioctls::Error,
}

const CHIPS: [u32; 3] = [KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC];

/// Saves the chips of a paused VM.
pub fn save(vm: &VmFd) -> Result<ChipsState, ChipsError> {
    let mut irqchips = Vec::with_capacity(CHIPS.len());
    for chip_id in CHIPS {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        vm.get_irqchip(&mut chip).map_err(|source| ChipsError {
            what: "read an interrupt controller",
            source,
        })?;
        irqchips.push(chip);
    }
    let pit = vm.get_pit2().map_err(|source| ChipsError {
        what: "read the PIT",
        source,
    })?;
    let mut clock = vm.get_clock().map_err(|source| ChipsError {
        what: "read the kvmclock",
        source,
    })?;
    // Only the clock value travels: flags such as "stable TSC" describe the
    // source host and KVM_SET_CLOCK refuses most of them.
    clock.flags = 0;
    Ok(ChipsState { irqchips, pit, clock })
}

/// Loads the chips into a VM whose vCPUs have not run.
pub fn restore(vm: &VmFd, state: &ChipsState) -> Result<(), ChipsError> {
    for chip in &state.irqchips {
        vm.set_irqchip(chip).map_err(|source| ChipsError {
            what: "set an interrupt controller",
            source,
        })?;
    }
    vm.set_pit2(&state.pit).map_err(|source| ChipsError {
        what: "set the PIT",
        source,
    })?;
    vm.set_clock(&state.clock).map_err(|source| ChipsError {
        what: "set the kvmclock",
        source,
    })
}
