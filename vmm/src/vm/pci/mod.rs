//! The VM's PCI bus and its virtio devices: the host bridge at 00.0, then
//! the disks in order, the network interfaces in order, the virtio
//! console and the entropy device, each a
//! virtio-pci function whose BAR 0 covm places in the 32-bit MMIO window
//! (`covm_guest_abi::layout::PCI_MMIO32_BASE`, reserved out of RAM), with
//! configuration space through ports 0xCF8/0xCFC and ECAM
//! (`PCI_ECAM_BASE`), queue notifications as KVM ioeventfds and MSI-X
//! through KVM's GSI routes and irqfds (`interrupts.rs`).

pub(crate) mod interrupts;

use super::confidential::shared_window::SharedWindow;
use super::memory::GuestMemory;
use super::VmError;
use crate::config::{ConsoleMode, DevicesConfig, NetBackend};
use covm_devices::pci::bus::{CONFIG_ADDRESS_PORT, CONFIG_PORT_COUNT, ECAM_BUS_LEN};
use covm_devices::pci::host_bridge::HostBridge;
use covm_devices::pci::{BarWindow, Bdf, ConfigPorts, Ecam, PciBus};
use covm_devices::virtio::block::{Block, BlockOptions, LockTiming};
use covm_devices::virtio::console::Console;
use covm_devices::virtio::net::tap::Tap;
use covm_devices::virtio::net::{Net, Reattach};
use covm_devices::virtio::pci::state::VirtioPciState;
use covm_devices::virtio::pci::{VirtioPci, BAR_SIZE};
use covm_devices::virtio::rng::Rng;
use covm_devices::virtio::vsock::Vsock;
use covm_devices::virtio::{Handover, VirtioDevice};
use covm_devices::{MmioBus, PioBus};
use covm_guest_abi::layout::{PCI_ECAM_BASE, PCI_MMIO32_BASE, PCI_MMIO32_SIZE};
use interrupts::GsiRouter;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use serde::{Deserialize, Serialize};
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex, MutexGuard};

/// A device on the bus.
pub struct Attached {
    /// Its id (`_disk0`, `__console`, `__rng`, or the one given).
    pub id: String,
    /// Where it is.
    pub bdf: Bdf,
    transport: Arc<Mutex<VirtioPci>>,
}

impl Attached {
    fn lock(&self) -> MutexGuard<'_, VirtioPci> {
        self.transport.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One device's migration state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSnapshot {
    /// Its id (the destination's device of that id takes it).
    pub id: String,
    /// Where it was.
    pub bdf: String,
    /// The transport's state.
    pub state: VirtioPciState,
}

/// The bus and its devices.
pub struct PciDevices {
    attached: Vec<Attached>,
    vm_fd: Arc<VmFd>,
    _router: Arc<GsiRouter>,
    /// A confidential VM's: the memory its devices see (the shared window,
    /// whose own write bitmap holds what they wrote) and the window's state.
    confined: Option<(GuestMemory, Arc<SharedWindow>)>,
}

/// Why a device could not be placed.
fn device_error(id: &str, what: impl std::fmt::Display) -> VmError {
    VmError::Device {
        id: id.to_string(),
        reason: what.to_string(),
    }
}

/// A network device on its TAP: opened by name (created if missing, given
/// its host address and brought up, as CH does) or taken over from an
/// inherited descriptor.
fn open_net(net: &crate::config::NetConfig, incoming: bool) -> Result<Net, String> {
    match &net.backend {
        NetBackend::Tap(name) => {
            let reattach = Reattach {
                name: name.clone(),
                ip: net.ip,
                mask: net.mask,
            };
            // An incoming VM takes its TAP at the commit, once the source
            // let go of it (kept persistent, addressed and up, for this one).
            if incoming {
                if name.is_empty() {
                    return Err("an incoming interface needs the TAP's name".into());
                }
                return Ok(Net::detached(reattach, net.mac));
            }
            let tap = Tap::open(name).map_err(|e| e.to_string())?;
            tap.configure(net.ip, net.mask).map_err(|e| e.to_string())?;
            Net::new(tap, net.mac, Some(reattach)).map_err(|e| format!("cannot start its TAP reader: {e}"))
        }
        NetBackend::Fd(fd) => {
            if incoming {
                return Err(format!(
                    "fd={fd}: an incoming VM's TAP cannot be a descriptor of the source's"
                ));
            }
            // SAFETY: F_GETFD only asks whether `fd` is open.
            if unsafe { libc::fcntl(*fd, libc::F_GETFD) } < 0 {
                return Err(format!("fd={fd}: not an open descriptor"));
            }
            // SAFETY: an open descriptor the command line or the API hands
            // to this device alone; it is owned from here on.
            let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(*fd) };
            let tap = Tap::from_fd(owned).map_err(|e| e.to_string())?;
            Net::new(tap, net.mac, None).map_err(|e| format!("cannot start its TAP reader: {e}"))
        }
    }
}

/// A device model and its id.
type Named = (String, Box<dyn VirtioDevice>);

/// The devices `config` asks for, in bus order, with their ids.
fn devices_of(config: &DevicesConfig, incoming: bool) -> Result<Vec<Named>, VmError> {
    let mut out: Vec<Named> = Vec::new();
    for (index, disk) in config.disks.iter().enumerate() {
        let id = config.disk_id(index);
        let mut options = BlockOptions::new(&disk.path);
        options.readonly = disk.readonly;
        options.direct = disk.direct;
        options.num_queues = disk.num_queues;
        options.queue_size = disk.queue_size;
        if let Some(serial) = &disk.serial {
            options.id = serial.clone();
        }
        // An incoming VM opens its disks for writing only at the commit,
        // once the source has let go of them.
        let timing = if incoming {
            LockTiming::Deferred
        } else {
            LockTiming::Now
        };
        let block = Block::new(options, timing).map_err(|e| device_error(&id, e))?;
        out.push((id, Box::new(block)));
    }
    for (index, net) in config.nets.iter().enumerate() {
        let id = config.net_id(index);
        out.push((
            id.clone(),
            Box::new(open_net(net, incoming).map_err(|e| device_error(&id, e))?),
        ));
    }
    if let (Some(vsock), Some(id)) = (&config.vsock, config.vsock_id()) {
        // An incoming VM binds the host socket at the commit, once the
        // source has let go of the path.
        let device = Vsock::new(vsock.cid, vsock.socket.clone(), !incoming).map_err(|e| device_error(&id, e))?;
        out.push((id, Box::new(device)));
    }
    let output: Option<Box<dyn std::io::Write + Send>> = match &config.console {
        ConsoleMode::Off => None,
        ConsoleMode::Null => Some(Box::new(std::io::sink())),
        ConsoleMode::Tty => Some(Box::new(std::io::stdout())),
        ConsoleMode::File(path) => {
            Some(Box::new(std::fs::File::create(path).map_err(|e| {
                device_error("__console", format!("{}: {e}", path.display()))
            })?))
        }
    };
    if let Some(output) = output {
        let input: Option<Box<dyn std::io::Read + Send>> =
            (config.console == ConsoleMode::Tty).then(|| Box::new(std::io::stdin()) as _);
        let console = Console::new(output, input).map_err(|e| device_error("__console", e))?;
        out.push(("__console".into(), Box::new(console)));
    }
    if let Some(rng) = &config.rng {
        let source =
            std::fs::File::open(&rng.src).map_err(|e| device_error("__rng", format!("{}: {e}", rng.src.display())))?;
        out.push(("__rng".into(), Box::new(Rng::new(source))));
    }
    Ok(out)
}

impl PciDevices {
    /// Builds the bus with the devices `config` asks for and places it on
    /// `pio` (mechanism 1) and `mmio` (ECAM, the BAR window). An `incoming`
    /// VM's disks wait for [`PciDevices::handover`] to lock their images.
    pub fn build(
        vm_fd: &Arc<VmFd>,
        memory: &GuestMemory,
        config: &DevicesConfig,
        incoming: bool,
        pio: &mut PioBus,
        mmio: &mut MmioBus,
    ) -> Result<Self, VmError> {
        let router = Arc::new(GsiRouter::new(vm_fd.clone()));
        let mut bus = PciBus::new();
        bus.add_at(0, Arc::new(Mutex::new(HostBridge::new())))
            .map_err(|e| device_error("host bridge", e))?;
        let mut attached = Vec::new();
        let mut bar = PCI_MMIO32_BASE;
        for (id, device) in devices_of(config, incoming)? {
            if bar + BAR_SIZE > PCI_MMIO32_BASE + PCI_MMIO32_SIZE {
                return Err(device_error(&id, "no room left in the PCI MMIO window"));
            }
            let vectors = device.queue_max_sizes().len() as u16 + 1;
            let routes = router.device(vectors).map_err(|e| device_error(&id, e))?;
            let transport =
                VirtioPci::new(&id, device, bar, memory.clone(), Arc::new(routes)).map_err(|e| device_error(&id, e))?;
            for (addr, fd) in transport.notify_addresses() {
                vm_fd
                    .register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
                    .map_err(|e| device_error(&id, format!("KVM_IOEVENTFD at {addr:#x}: {e}")))?;
            }
            let transport = Arc::new(Mutex::new(transport));
            let bdf = bus.add(transport.clone()).map_err(|e| device_error(&id, e))?;
            tracing::debug!("PCI {bdf}: {id}, BAR 0 at {bar:#x}");
            attached.push(Attached { id, bdf, transport });
            bar += BAR_SIZE;
        }
        let bus = Arc::new(bus);
        pio.insert(
            CONFIG_ADDRESS_PORT,
            CONFIG_PORT_COUNT,
            Arc::new(Mutex::new(ConfigPorts::new(bus.clone()))),
        )?;
        let ecam = Arc::new(Mutex::new(Ecam::new(bus.clone())));
        mmio.insert(PCI_ECAM_BASE, ECAM_BUS_LEN, ecam)
            .map_err(|e| device_error("ECAM", e))?;
        let window = Arc::new(Mutex::new(BarWindow::new(bus, PCI_MMIO32_BASE)));
        mmio.insert(PCI_MMIO32_BASE, PCI_MMIO32_SIZE, window)
            .map_err(|e| device_error("PCI window", e))?;
        Ok(PciDevices {
            attached,
            vm_fd: vm_fd.clone(),
            _router: router,
            confined: None,
        })
    }

    /// The devices, in bus order.
    pub fn attached(&self) -> &[Attached] {
        &self.attached
    }

    /// [`PciDevices::build`] for a confidential VM: the page-state ports
    /// of its shared window on `pio` (on SEV-SNP and TDX, `hardware`, they
    /// only answer queries), and its devices built over the window alone,
    /// each starting only through the window's gate.
    pub fn build_confined(
        vm_fd: &Arc<VmFd>,
        memory: &GuestMemory,
        config: &DevicesConfig,
        (incoming, hardware): (bool, bool),
        pio: &mut PioBus,
        mmio: &mut MmioBus,
    ) -> Result<Self, VmError> {
        use super::confidential::shared_window::{window_view, PageStatePorts};
        use covm_guest_abi::ports;
        let window = Arc::new(if hardware {
            SharedWindow::for_hardware()
        } else {
            SharedWindow::default()
        });
        pio.insert(
            ports::PAGE_STATE_FIRST,
            ports::PAGE_STATE_OP - ports::PAGE_STATE_FIRST + 4,
            Arc::new(Mutex::new(PageStatePorts(window.clone()))),
        )?;
        let view = window_view(memory).ok_or(VmError::Unsupported(
            "the shared window is not inside one RAM region: a confidential VM with devices needs more memory",
        ))?;
        let mut pci = Self::build(vm_fd, &view, config, incoming, pio, mmio)?;
        pci.confine(window, view);
        Ok(pci)
    }

    /// Confines the devices (built over `view`, a confidential VM's shared
    /// window): each starts only through the window's gate.
    fn confine(&mut self, window: Arc<SharedWindow>, view: GuestMemory) {
        for a in &self.attached {
            a.lock().set_memory_gate(window.clone());
        }
        self.confined = Some((view, window));
    }

    /// The memory the devices see, when confined to a window.
    pub fn confined_view(&self) -> Option<&GuestMemory> {
        self.confined.as_ref().map(|(view, _)| view)
    }

    /// The shared window the devices are confined to.
    pub fn shared_window(&self) -> Option<&Arc<SharedWindow>> {
        self.confined.as_ref().map(|(_, window)| window)
    }

    /// Stops every device taking requests; those taken are finished.
    pub fn pause(&self) {
        for a in &self.attached {
            a.lock().pause();
        }
    }

    /// Lets every device take requests again.
    pub fn resume(&self) {
        for a in &self.attached {
            a.lock().resume();
        }
    }

    /// Releases or takes back every device's exclusive host resources.
    pub fn handover(&self, step: Handover) -> Result<(), VmError> {
        for a in &self.attached {
            a.lock()
                .device_mut()
                .handover(step)
                .map_err(|e| device_error(&a.id, e))?;
        }
        Ok(())
    }

    /// Stops every device's worker (the VM stops; guest memory goes next).
    pub fn stop(&self) {
        for a in &self.attached {
            a.lock().device_mut().reset();
        }
    }

    /// Counters by device id.
    pub fn counters(&self) -> Vec<(String, Vec<(&'static str, u64)>)> {
        self.attached
            .iter()
            .map(|a| (a.id.clone(), a.lock().counters()))
            .collect()
    }

    /// Every device's state (pause them first).
    pub fn save(&self) -> Vec<DeviceSnapshot> {
        self.attached
            .iter()
            .map(|a| DeviceSnapshot {
                id: a.id.clone(),
                bdf: a.bdf.to_string(),
                state: a.lock().save(),
            })
            .collect()
    }

    /// Loads `saved` into this VM's devices (same ids at the same places),
    /// each left paused; re-registers the notification ioeventfds where the
    /// guest had moved a BAR.
    pub fn restore(&self, saved: &[DeviceSnapshot]) -> Result<(), VmError> {
        let ours: Vec<&str> = self.attached.iter().map(|a| a.id.as_str()).collect();
        let theirs: Vec<&str> = saved.iter().map(|s| s.id.as_str()).collect();
        if ours != theirs {
            return Err(device_error(
                "devices",
                format!("the state has devices {theirs:?}, this VM has {ours:?}"),
            ));
        }
        for (a, s) in self.attached.iter().zip(saved) {
            if s.bdf != a.bdf.to_string() {
                return Err(device_error(
                    &a.id,
                    format!("saved at {}, placed at {} here", s.bdf, a.bdf),
                ));
            }
            let mut t = a.lock();
            let before = t.bar_address();
            t.restore(&s.state).map_err(|e| device_error(&a.id, e))?;
            if t.bar_address() != before {
                self.move_notifications(&a.id, &t, before)?;
            }
        }
        Ok(())
    }

    fn move_notifications(&self, id: &str, t: &VirtioPci, before: u64) -> Result<(), VmError> {
        let after = t.bar_address();
        let window = PCI_MMIO32_BASE..PCI_MMIO32_BASE + PCI_MMIO32_SIZE;
        if !window.contains(&after) || !window.contains(&(after + BAR_SIZE - 1)) {
            return Err(device_error(
                id,
                format!("BAR 0 at {after:#x} is outside the PCI MMIO window {window:#x?}"),
            ));
        }
        for (addr, fd) in t.notify_addresses() {
            let old = addr - after + before;
            let _ = self
                .vm_fd
                .unregister_ioevent(fd, &IoEventAddress::Mmio(old), NoDatamatch);
            self.vm_fd
                .register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
                .map_err(|e| device_error(id, format!("KVM_IOEVENTFD at {addr:#x}: {e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DiskConfig, RngConfig};
    use covm_devices::pci::bus::CONFIG_ADDRESS_PORT;

    fn config_read(pio: &PioBus, device: u32, register: u32) -> u32 {
        pio.write(
            CONFIG_ADDRESS_PORT,
            &(0x8000_0000 | device << 11 | register).to_le_bytes(),
        );
        let mut data = [0u8; 4];
        pio.read(CONFIG_ADDRESS_PORT + 4, &mut data);
        u32::from_le_bytes(data)
    }

    /// The bus as a guest's probe finds it, on this machine's KVM: the host
    /// bridge, a disk and the entropy device at their BDFs, by both
    /// configuration mechanisms, their BARs in the window, and the ids.
    #[test]
    fn a_guest_probe_finds_the_devices_where_vm_info_says() {
        let Some(kvm) = crate::platform::hardware::hybrid::kvm_or_skip() else {
            return;
        };
        let vm_fd = Arc::new(kvm.create_vm().unwrap());
        vm_fd.create_irq_chip().unwrap();
        let memory = crate::vm::memory::allocate(64 << 20).unwrap();
        let dir = std::env::temp_dir().join(format!("covm-pci-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("disk.img");
        std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
        let devices = DevicesConfig {
            disks: vec![DiskConfig {
                path: image.clone(),
                readonly: false,
                direct: false,
                id: Some("data".into()),
                num_queues: 1,
                queue_size: 128,
                serial: None,
            }],
            console: ConsoleMode::Off,
            rng: Some(RngConfig {
                src: "/dev/urandom".into(),
            }),
            nets: Vec::new(),
            vsock: None,
        };
        let (mut pio, mut mmio) = (PioBus::new(), MmioBus::new());
        let pci = PciDevices::build(&vm_fd, &memory, &devices, false, &mut pio, &mut mmio).unwrap();
        let ids: Vec<(String, String)> = pci
            .attached()
            .iter()
            .map(|a| (a.id.clone(), a.bdf.to_string()))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("data".to_string(), "0000:00:01.0".to_string()),
                ("__rng".to_string(), "0000:00:02.0".to_string())
            ]
        );
        assert_eq!(config_read(&pio, 0, 0), 0x0d57_8086, "host bridge");
        assert_eq!(config_read(&pio, 1, 0), 0x1042_1af4, "virtio-blk, modern");
        assert_eq!(config_read(&pio, 2, 0), 0x1044_1af4, "virtio-rng, modern");
        assert_eq!(config_read(&pio, 3, 0), 0xffff_ffff, "nothing more");
        assert_eq!(config_read(&pio, 1, 0x10), (PCI_MMIO32_BASE as u32) | 4);
        assert_eq!(config_read(&pio, 2, 0x10), (PCI_MMIO32_BASE + BAR_SIZE) as u32 | 4);
        let mut ecam = [0u8; 4];
        assert!(mmio.read(PCI_ECAM_BASE + (2 << 15), &mut ecam));
        assert_eq!(u32::from_le_bytes(ecam), 0x1044_1af4, "ECAM reads the same space");
        // The BAR decodes once memory decoding is on: the common
        // configuration's num_queues.
        pio.write(CONFIG_ADDRESS_PORT, &(0x8000_0000u32 | 2 << 11 | 4).to_le_bytes());
        pio.write(CONFIG_ADDRESS_PORT + 4, &2u16.to_le_bytes());
        let mut queues = [0u8; 2];
        assert!(mmio.read(PCI_MMIO32_BASE + BAR_SIZE + 0x12, &mut queues));
        assert_eq!(u16::from_le_bytes(queues), 1);
        // A second VM cannot take the same image for writing.
        let vm2 = Arc::new(kvm.create_vm().unwrap());
        vm2.create_irq_chip().unwrap();
        let err = PciDevices::build(&vm2, &memory, &devices, false, &mut PioBus::new(), &mut MmioBus::new())
            .err()
            .expect("the image is locked")
            .to_string();
        assert!(err.starts_with("device data: ") && err.contains("locked"), "{err}");
        // The state round-trips into an identical (incoming) bus.
        pci.pause();
        let saved = pci.save();
        pci.handover(Handover::Release).unwrap();
        let incoming =
            PciDevices::build(&vm2, &memory, &devices, true, &mut PioBus::new(), &mut MmioBus::new()).unwrap();
        incoming.restore(&saved).unwrap();
        incoming.handover(Handover::Acquire).unwrap();
        let mut fewer = saved.clone();
        fewer.pop();
        let e = incoming.restore(&fewer).unwrap_err().to_string();
        assert!(
            e.contains("the state has devices [\"data\"], this VM has [\"data\", \"__rng\"]"),
            "{e}"
        );
        incoming.stop();
        pci.stop();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
