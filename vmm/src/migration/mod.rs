//! Running a migration beside the control loop: `vm.send-migration` moves
//! the VM into a thread that runs the engine; `vm.receive-migration` listens
//! on a thread that builds the incoming VM. Both report back to the control
//! loop with an [`Event`], which alone starts, resumes or releases VMs.

pub mod confidential;
pub mod engine_vm;
pub mod incoming_vm;
pub mod prefault;

use crate::api::vm_config;
use crate::config::{SerialMode, VmConfig};
use crate::control::messages::Event;
use crate::platform::PlatformConfig;
use crate::vcpu::ExitNotifier;
use crate::vm::Vm;
use confidential::{AgentMailbox, ConfidentialOpener, ConfidentialSealer, SessionInfo};
use covm_migration::engine::{
    self, MigrationError, Opener, PlainSealer, Progress, ReceiveOptions, Sealer, SendOptions,
};
use covm_migration::protocol::PROTOCOL_VERSION_CONFIDENTIAL;
use covm_migration::transport::{self, Endpoint, Listener};
use covm_migration::vm::VmOpError;
use incoming_vm::IncomingVm;
use std::sync::mpsc::Sender;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An outgoing migration.
pub struct Outgoing {
    /// The VM, handed to the migration thread.
    pub vm: Vm,
    /// Where to.
    pub endpoint: Endpoint,
    /// The engine's options.
    pub options: SendOptions,
    /// A confidential VM's session facts (for `vm.info`); `None` for a
    /// plain VM.
    pub session: Option<SessionInfo>,
    /// Verified mode (confidential only).
    pub verified: bool,
}

/// Sends the VM to its endpoint on a new thread: a confidential VM through
/// its agent's sealed session, a plain one with plain records. The thread
/// reports [`Event::MigrationSent`]: with the VM back on failure (running,
/// or paused when the outcome is undecided), without it on success (the
/// destination runs the guest; the source must not).
pub fn start_send(send: Outgoing, config: &VmConfig, progress: Progress, events: Sender<Event>) {
    let config_json = serde_json::to_vec(&vm_config::to_json(config)).expect("a VmConfig serialises");
    let workload_vcpus = u32::from(config.cpus.boot_vcpus);
    let Outgoing {
        mut vm,
        endpoint,
        options,
        session,
        verified,
    } = send;
    std::thread::Builder::new()
        .name("migration-send".into())
        .spawn(move || {
            let mut sealer: Box<dyn Sealer> = match (vm.cvm(), &session) {
                (Some(cvm), Some(info)) => Box::new(ConfidentialSealer::new(
                    AgentMailbox::new(cvm.clone()),
                    info.clone(),
                    workload_vcpus,
                    verified,
                )),
                _ => Box::new(PlainSealer::default()),
            };
            let result = transport::connect(&endpoint, options.connect_timeout)
                .map_err(|e| MigrationError::Vm {
                    op: "connect to the destination",
                    source: VmOpError::vmm(e),
                })
                .and_then(|stream| engine::send_with(stream, &mut vm, &config_json, &mut *sealer, &options, &progress));
            let event = match result {
                Ok(report) => {
                    // Committed: the guest lives on at the destination. Stop the
                    // (paused) vCPUs for good before anything else can run them.
                    vm.stop();
                    Event::MigrationSent {
                        result: Ok(report.to_json()),
                        vm: None,
                        undecided: false,
                    }
                }
                Err(error) => {
                    if let Some(info) = &session {
                        info.fail(error.to_string());
                    }
                    Event::MigrationSent {
                        undecided: matches!(error, MigrationError::Undecided { .. }),
                        result: Err(error.to_string()),
                        vm: Some(vm),
                    }
                }
            };
            let _ = events.send(event);
        })
        .expect("spawning the migration thread");
}

/// Longest an incoming confidential VM's firmware may take to boot, park
/// its workload vCPUs and start its agent (its ring 0 is emulated here).
const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the destination needs to build the incoming VM.
pub struct Incoming {
    /// Where to listen.
    pub listener: Listener,
    /// covm's start, for boot markers.
    pub start: Instant,
    /// This host's RAM, to check the incoming configuration.
    pub host_ram: u64,
    /// The destination's own serial settings, which win over the source's.
    pub serial: Option<SerialMode>,
    /// The destination's own platform for confidential VMs (its
    /// `--platform` / `--migration-policy`), which wins over the source's.
    pub platform: Option<PlatformConfig>,
    /// The confidential session's facts, for `vm.info`.
    pub session: SessionInfo,
    /// Where the incoming VM reports its end (tagged with its boot number).
    pub notify: ExitNotifier,
}

/// Receives a VM on a new thread, attempt after attempt, until one
/// commits; reports [`Event::MigrationReceived`] with the VM (restored, not
/// yet running) and its configuration.
pub fn start_receive(incoming: Incoming, progress: Progress, events: Sender<Event>) {
    std::thread::Builder::new()
        .name("migration-receive".into())
        .spawn(move || loop {
            let stream = match incoming.listener.accept(None) {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::error!("migration: cannot accept a connection: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let built: Mutex<Option<VmConfig>> = Mutex::new(None);
            let build = |version: u16, config_json: &[u8]| -> Result<(IncomingVm, Box<dyn Opener>), VmOpError> {
                let mut config = vm_config::parse(config_json, incoming.host_ram).map_err(VmOpError::Refused)?;
                let confidential = config.platform.is_confidential();
                // A confidential VM filled with plain memory from the host
                // would attest as its own launch while holding whatever the
                // host sent: only the migration agent may bring one in.
                if confidential && version != PROTOCOL_VERSION_CONFIDENTIAL {
                    return Err(VmOpError::Refused(format!(
                        "refusing a plain migration (protocol version {version}) of a {} VM: confidential VMs \
                         arrive only through the firmware migration agent (version {PROTOCOL_VERSION_CONFIDENTIAL})",
                        config.platform.name()
                    )));
                }
                if !confidential && version == PROTOCOL_VERSION_CONFIDENTIAL {
                    return Err(VmOpError::Refused(
                        "refusing a confidential session for a VM whose configuration is not confidential".into(),
                    ));
                }
                if let Some(serial) = &incoming.serial {
                    config.serial = serial.clone();
                }
                if let (true, Some(platform)) = (confidential, &incoming.platform) {
                    config.platform = platform.clone();
                }
                let (vm, opener): (IncomingVm, Box<dyn Opener>) = if confidential {
                    let mut vm =
                        Vm::new_incoming(&config, incoming.start, incoming.notify.clone()).map_err(VmOpError::vmm)?;
                    let cvm = vm.cvm().cloned().expect("a confidential VM has its runtime");
                    vm.start_incoming_agent(AGENT_READY_TIMEOUT).map_err(VmOpError::vmm)?;
                    let opener = ConfidentialOpener::new(AgentMailbox::new(cvm), incoming.session.clone());
                    (IncomingVm::ready(vm), Box::new(opener))
                } else {
                    // Pages may come before the VM around them is built.
                    let vm = IncomingVm::build_beside(config.clone(), incoming.start, incoming.notify.clone())
                        .map_err(VmOpError::vmm)?;
                    let opener = prefault::PrefaultingOpener::new(vm.memory().clone());
                    (vm, Box::new(opener))
                };
                *built.lock().unwrap_or_else(|p| p.into_inner()) = Some(config);
                Ok((vm, opener))
            };
            match engine::receive_with(stream, build, &ReceiveOptions::default(), &progress) {
                Ok(received) => {
                    let config = built
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take()
                        .expect("built on success");
                    // Restored, hence built: the join returns at once.
                    let vm = match received.vm.into_vm() {
                        Ok(vm) => vm,
                        Err(e) => {
                            tracing::error!("migration: the committed VM is missing: {e}");
                            crate::event_monitor::emit("vm", "migration-receive-failed", &[("error", e.to_string())]);
                            continue;
                        }
                    };
                    let _ = events.send(Event::MigrationReceived {
                        vm,
                        config: Box::new(config),
                        report: received.report,
                        committed: Instant::now(),
                    });
                    return;
                }
                Err(e) => {
                    tracing::warn!("migration: incoming attempt failed ({e}); ready for another");
                    crate::event_monitor::emit("vm", "migration-receive-failed", &[("error", e.to_string())]);
                }
            }
        })
        .expect("spawning the migration thread");
}
