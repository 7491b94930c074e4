//! MSI-X on KVM: each device vector gets a GSI whose route KVM keeps as
//! an MSI message, and an irqfd on that GSI, so a device's worker raises
//! an interrupt with one eventfd write and no VMM thread in between.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table, so the router keeps it:
//! the in-kernel irqchip's default routes (GSI 0-15 to the PICs and the
//! IOAPIC, 16-23 to the IOAPIC, as KVM sets them up itself) plus every
//! routed MSI.

use covm_devices::pci::msix::{InterruptError, MsiMessage, MsiRoutes};
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_irqchip, kvm_irq_routing_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// GSIs of the IOAPIC's pins; MSI GSIs follow.
const IRQCHIP_GSIS: u32 = 24;
/// KVM's limit on routing entries (KVM_MAX_IRQ_ROUTES).
const MAX_GSI: u32 = 4096;

#[derive(Default)]
struct Table {
    next_gsi: u32,
    msi: BTreeMap<u32, MsiMessage>,
}

/// The VM's GSI routing table.
pub struct GsiRouter {
    vm_fd: Arc<VmFd>,
    table: Mutex<Table>,
}

impl GsiRouter {
    /// A router for `vm_fd`, whose in-kernel irqchip exists.
    pub fn new(vm_fd: Arc<VmFd>) -> Self {
        GsiRouter {
            vm_fd,
            table: Mutex::new(Table {
                next_gsi: IRQCHIP_GSIS,
                msi: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `count` fresh GSIs.
    fn allocate(&self, count: u32) -> Result<Vec<u32>, String> {
        let mut t = self.lock();
        let first = t.next_gsi;
        if first + count > MAX_GSI {
            return Err(format!(
                "no GSIs left for {count} more vectors (KVM routes at most {MAX_GSI})"
            ));
        }
        t.next_gsi += count;
        Ok((first..first + count).collect())
    }

    /// Routes `gsi` to `message`, or removes its route, and hands KVM the
    /// whole table.
    fn set(&self, gsi: u32, message: Option<MsiMessage>) -> Result<(), String> {
        let mut t = self.lock();
        match message {
            Some(m) => t.msi.insert(gsi, m),
            None => t.msi.remove(&gsi),
        };
        let entries = default_routes().chain(t.msi.iter().map(|(&gsi, m)| msi_route(gsi, m)));
        let entries: Vec<kvm_irq_routing_entry> = entries.collect();
        let mut routing = KvmIrqRouting::new(entries.len()).map_err(|e| format!("routing table: {e:?}"))?;
        routing.as_mut_slice().copy_from_slice(&entries);
        self.vm_fd
            .set_gsi_routing(&routing)
            .map_err(|e| format!("KVM_SET_GSI_ROUTING: {e}"))
    }

    /// Routes for a device with `vectors` vectors: GSIs, and an irqfd on
    /// each.
    pub fn device(self: &Arc<Self>, vectors: u16) -> Result<DeviceRoutes, String> {
        let gsis = self.allocate(u32::from(vectors))?;
        let mut irqfds = Vec::with_capacity(gsis.len());
        for &gsi in &gsis {
            let fd = EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
            self.vm_fd
                .register_irqfd(&fd, gsi)
                .map_err(|e| format!("KVM_IRQFD on GSI {gsi}: {e}"))?;
            irqfds.push(fd);
        }
        Ok(DeviceRoutes {
            router: self.clone(),
            gsis,
            irqfds,
        })
    }
}

fn irqchip_route(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip = kvm_irq_routing_irqchip { irqchip, pin };
    e
}

/// KVM's own default table (`kvm_setup_default_irq_routing`).
fn default_routes() -> impl Iterator<Item = kvm_irq_routing_entry> {
    (0..IRQCHIP_GSIS).flat_map(|gsi| {
        let pic = (gsi < 16).then(|| {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            irqchip_route(gsi, chip, gsi % 8)
        });
        pic.into_iter().chain([irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi)])
    })
}

fn msi_route(gsi: u32, m: &MsiMessage) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi = kvm_irq_routing_msi {
        address_lo: m.address as u32,
        address_hi: (m.address >> 32) as u32,
        data: m.data,
        ..Default::default()
    };
    e
}

/// One device's vectors on KVM.
pub struct DeviceRoutes {
    router: Arc<GsiRouter>,
    gsis: Vec<u32>,
    irqfds: Vec<EventFd>,
}

impl DeviceRoutes {
    fn slot(&self, vector: u16) -> Result<usize, InterruptError> {
        let v = usize::from(vector);
        if v < self.gsis.len() {
            Ok(v)
        } else {
            Err(InterruptError {
                vector,
                reason: format!("the device has {} vectors", self.gsis.len()),
            })
        }
    }
}

impl MsiRoutes for DeviceRoutes {
    fn route(&self, vector: u16, message: Option<MsiMessage>) -> Result<(), InterruptError> {
        let slot = self.slot(vector)?;
        self.router
            .set(self.gsis[slot], message)
            .map_err(|reason| InterruptError { vector, reason })
    }

    fn trigger(&self, vector: u16) -> Result<(), InterruptError> {
        let slot = self.slot(vector)?;
        self.irqfds[slot].write(1).map_err(|e| InterruptError {
            vector,
            reason: format!("irqfd: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_table_is_kvms() {
        let routes: Vec<_> = default_routes().collect();
        // 16 GSIs on a PIC and the IOAPIC, 8 on the IOAPIC only.
        assert_eq!(routes.len(), 16 * 2 + 8);
        // SAFETY: reading the union member these entries were built with.
        let pin = |e: &kvm_irq_routing_entry| unsafe { (e.u.irqchip.irqchip, e.u.irqchip.pin) };
        assert_eq!((routes[0].gsi, pin(&routes[0])), (0, (KVM_IRQCHIP_PIC_MASTER, 0)));
        assert_eq!((routes[1].gsi, pin(&routes[1])), (0, (KVM_IRQCHIP_IOAPIC, 0)));
        assert_eq!((routes[20].gsi, pin(&routes[20])), (10, (KVM_IRQCHIP_PIC_SLAVE, 2)));
        assert_eq!((routes[39].gsi, pin(&routes[39])), (23, (KVM_IRQCHIP_IOAPIC, 23)));
    }

    /// On this machine's KVM: routes are set, vectors past the device
    /// refused, GSIs run out by name.
    #[test]
    fn routes_reach_kvm() {
        let Some(kvm) = crate::platform::hardware::hybrid::kvm_or_skip() else {
            return;
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let router = Arc::new(GsiRouter::new(vm));
        let device = router.device(3).unwrap();
        assert_eq!(device.gsis, vec![24, 25, 26]);
        let msg = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        device.route(1, Some(msg)).unwrap();
        device.trigger(1).unwrap();
        device.route(1, None).unwrap();
        assert!(device
            .route(3, Some(msg))
            .unwrap_err()
            .to_string()
            .contains("3 vectors"));
        let e = router.allocate(MAX_GSI).unwrap_err();
        assert!(e.contains("no GSIs left"), "{e}");
    }
}
