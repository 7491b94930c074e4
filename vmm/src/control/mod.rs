//! The VMM's control loop: one thread owns the VM and its state, and
//! handles, one at a time, requests from the API and reports from the VM.
//!
//! Nothing else touches the VM: the API thread only forwards requests and
//! awaits replies, vCPU threads and devices only report why the VM ended.
//! A guest's own power-off, reset or crash ends covm with the status in
//! `crate::exit`, API or not; `vm.shutdown` stops the VM and covm stays.

use crate::config::{SerialMode, VmConfig};
use crate::event_monitor::emit;
use crate::exit::VmExit;
use crate::platform::PlatformConfig;
use crate::test_hooks::TestHook;
use crate::vcpu::ExitNotifier;
use crate::vm::Vm;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

mod live_migration;
pub mod messages;
mod requests;
mod signals;

use live_migration::MigrationStatus;
use messages::{ApiError, Event, Request, VmState};
pub use signals::forward_stop_signals;

/// How long a source whose VM migrated away waits for the client that
/// followed the migration (read `vm.info` during it) to read the report
/// before it exits; with no such client it exits at once.
const FOLLOWER_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The VMM: at most one VM, its configuration and its state.
pub struct Vmm {
    start: Instant,
    log_is_file: bool,
    host_ram: u64,
    serial_override: Option<SerialMode>,
    incoming_platform: Option<PlatformConfig>,
    migration: Option<MigrationStatus>,
    pending_exit: Option<VmExit>,
    /// A confidential migration's outcome is unknown here: the VM stays
    /// paused and `vm.resume` is refused.
    undecided: bool,
    /// Set once the VM has migrated away: covm exits at this instant, or as
    /// soon as a client has read the final report.
    exit_deadline: Option<Instant>,
    hooks: Vec<TestHook>,
    config: Option<VmConfig>,
    vm: Option<Vm>,
    /// `vm.info`'s platform block of the VM last launched or received
    /// (kept while the VM is away migrating or shut down).
    platform_info: Option<serde_json::Value>,
    state: VmState,
    generation: u64,
    events_tx: Sender<Event>,
    events_rx: Receiver<Event>,
}

impl Vmm {
    /// A VMM with no VM; `start` is covm's start, `hooks` apply to every
    /// boot, `log_is_file` says whether the log is separate from stderr,
    /// `host_ram` bounds incoming VMs, `serial_override` (the command
    /// line's `--serial`) replaces the serial settings of incoming VMs.
    pub fn new(
        start: Instant,
        hooks: Vec<TestHook>,
        log_is_file: bool,
        host_ram: u64,
        serial_override: Option<SerialMode>,
    ) -> Self {
        let (events_tx, events_rx) = channel();
        Self {
            start,
            log_is_file,
            host_ram,
            serial_override,
            incoming_platform: None,
            migration: None,
            pending_exit: None,
            undecided: false,
            exit_deadline: None,
            hooks,
            config: None,
            vm: None,
            platform_info: None,
            state: VmState::Created,
            generation: 0,
            events_tx,
            events_rx,
        }
    }

    /// Stops the VM: covm is about to exit (its caller then stops the API
    /// server, once the last replies are written). Reports, as
    /// CH does when its VMM shuts down, the VM's shutdown (with `reason` when
    /// the guest ended it), its deletion and the VMM's shutdown.
    fn finish(&mut self, reason: Option<&str>) {
        if self.vm.is_some() {
            let properties: Vec<(&str, String)> = reason.map(|r| ("reason", r.to_owned())).into_iter().collect();
            self.stop_vm();
            emit("vm", "shutdown", &properties);
        }
        if self.config.is_some() {
            emit("vm", "deleted", &[]);
        }
        emit("vmm", "shutdown", &[]);
    }

    /// The platform this host launches incoming confidential VMs with
    /// (its own `--platform` / `--migration-policy`), instead of the one
    /// their configuration names.
    pub fn set_incoming_platform(&mut self, platform: Option<PlatformConfig>) {
        self.incoming_platform = platform;
    }

    /// Where to send events.
    pub fn sender(&self) -> Sender<Event> {
        self.events_tx.clone()
    }

    /// Runs the control loop until covm should exit; returns the exit status.
    pub fn run(mut self) -> i32 {
        loop {
            let event = match self.exit_deadline {
                None => self
                    .events_rx
                    .recv()
                    .expect("the VMM holds a sender, so the channel stays open"),
                Some(deadline) => match self
                    .events_rx
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                {
                    Ok(event) => event,
                    Err(_) => {
                        self.finish(None);
                        return 0;
                    }
                },
            };
            match event {
                Event::Api(request, responder) => {
                    let exit_after = matches!(request, Request::ShutdownVmm)
                        || (self.exit_deadline.is_some() && matches!(request, Request::Info));
                    let reply = self.handle(request);
                    // A client that hung up does not care about the answer.
                    let _ = responder.send(reply);
                    if exit_after {
                        self.finish(None);
                        return 0;
                    }
                }
                Event::Signal(signal) => {
                    tracing::info!("signal {signal}: stopping the VM and exiting");
                    eprintln!("covm: stopped by signal {signal}");
                    self.finish(Some("signal"));
                    return crate::exit::signal_status(signal);
                }
                Event::VmExit { generation, exit } if generation == self.generation && self.migrating_out() => {
                    // The guest ended while leaving: stop the migration; the
                    // VM comes back with MigrationSent.
                    if let Some(m) = &self.migration {
                        m.progress.cancel();
                    }
                    self.pending_exit = Some(exit);
                }
                Event::VmExit { generation, exit } if generation == self.generation && self.vm.is_some() => {
                    let ended = self.start.elapsed();
                    self.finish(Some(exit.reason()));
                    return self.report_exit(exit, ended);
                }
                Event::MigrationSent { result: Ok(report), .. } => {
                    emit("vm", "migration-finished", &[]);
                    // The guest runs at the destination now, not here.
                    emit("vm", "shutdown", &[("reason", "migrated".to_owned())]);
                    tracing::info!("migration completed; the destination runs the guest: {report}");
                    eprintln!("covm: migration completed: {report}");
                    self.state = VmState::Shutdown;
                    if let Some(m) = &mut self.migration {
                        m.outcome = Some(Ok(report));
                    }
                    // A client following the migration reads the report
                    // first (its next vm.info ends the wait); otherwise
                    // nothing is left to do here, and whoever waits on this
                    // process sees it end now.
                    if self.migration.as_ref().is_some_and(|m| m.followed) {
                        self.exit_deadline = Some(Instant::now() + FOLLOWER_GRACE);
                    } else {
                        self.finish(None);
                        return 0;
                    }
                }
                Event::MigrationSent {
                    result: Err(error),
                    vm,
                    undecided,
                } => {
                    emit(
                        "vm",
                        "migration-failed",
                        &[("error", error.clone()), ("undecided", undecided.to_string())],
                    );
                    if undecided {
                        tracing::error!("migration undecided, the guest stays paused here: {error}");
                        self.state = VmState::Paused;
                        self.undecided = true;
                    } else {
                        tracing::warn!("migration failed, the guest keeps running here: {error}");
                    }
                    self.vm = vm;
                    if let Some(m) = &mut self.migration {
                        m.outcome = Some(Err(error));
                    }
                    if let Some(exit) = self.pending_exit.take() {
                        let ended = self.start.elapsed();
                        self.finish(Some(exit.reason()));
                        return self.report_exit(exit, ended);
                    }
                }
                Event::MigrationReceived {
                    mut vm,
                    config,
                    mut report,
                    committed,
                } => {
                    emit("vm", "resuming", &[]);
                    // The source let go of its disks when it paused: the
                    // destination takes them now, before the guest runs.
                    let started = vm
                        .device_handover(covm_devices::virtio::Handover::Acquire)
                        .and_then(|()| vm.start());
                    report.resume_ms = committed.elapsed().as_secs_f64() * 1e3;
                    let report = report.to_json();
                    tracing::info!("incoming migration committed and running: {report}");
                    if let Err(e) = started {
                        // The source has released the guest: nothing to go back to.
                        tracing::error!("cannot run the received VM: {e}");
                        eprintln!("covm: cannot run the received VM: {e}");
                        emit("vm", "migration-receive-failed", &[("error", e.to_string())]);
                        self.finish(None);
                        return crate::exit::STATUS_ERROR;
                    }
                    emit("vm", "resumed", &[]);
                    emit("vm", "migration-receive-finished", &[]);
                    self.config = Some(*config);
                    self.platform_info = Some(vm.platform().info());
                    self.vm = Some(vm);
                    self.state = VmState::Running;
                    if let Some(m) = &mut self.migration {
                        m.outcome = Some(Ok(report));
                    }
                }
                Event::VmExit { generation, exit } => {
                    tracing::debug!("ignoring a late exit of VM boot {generation}: {exit:?}");
                }
            }
        }
    }

    /// Logs and announces how the VM ended, `ended` after covm started.
    fn report_exit(&self, exit: VmExit, ended: std::time::Duration) -> i32 {
        let elapsed = ended.as_secs_f64() * 1e3;
        match &exit {
            // On standard error the announcement says it; a log file gets it too.
            VmExit::Crashed(why) if self.log_is_file => tracing::error!("guest crashed at {elapsed:.3} ms: {why}"),
            _ => tracing::info!("guest ended at {elapsed:.3} ms: {exit:?}"),
        }
        crate::exit::announce(&exit);
        exit.status()
    }

    /// Reports a VM's end as boot number `self.generation`.
    fn exit_notifier(&self) -> ExitNotifier {
        let generation = self.generation;
        let events = std::sync::Mutex::new(self.events_tx.clone());
        Arc::new(move |exit| {
            let _ = events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .send(Event::VmExit { generation, exit });
        })
    }

    /// Stores a configuration (`vm.create`).
    pub fn create(&mut self, config: VmConfig) -> Result<(), ApiError> {
        if self.config.is_some() {
            return Err(ApiError::InvalidState(
                "a VM is already created (vm.delete it first)".into(),
            ));
        }
        self.config = Some(config);
        self.state = VmState::Created;
        Ok(())
    }

    /// Builds and starts the VM (`vm.boot`).
    pub fn boot(&mut self) -> Result<(), ApiError> {
        self.created()?;
        if matches!(self.state, VmState::Running | VmState::Paused) {
            return Err(ApiError::InvalidState(format!(
                "the VM is already booted ({})",
                self.state.name()
            )));
        }
        emit("vm", "booting", &[]);
        self.start_vm()?;
        emit("vm", "booted", &[]);
        Ok(())
    }

    /// Builds the VM from its configuration and starts its vCPUs.
    fn start_vm(&mut self) -> Result<(), ApiError> {
        let config = self.created()?.clone();
        self.generation += 1;
        let generation = self.generation;
        let events = std::sync::Mutex::new(self.events_tx.clone());
        let notify = Arc::new(move |exit| {
            let _ = events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .send(Event::VmExit { generation, exit });
        });
        let mut vm = Vm::new(&config, self.start, notify).map_err(|e| ApiError::Internal(e.to_string()))?;
        for hook in &self.hooks {
            hook.spawn(vm.memory().clone(), self.start);
        }
        vm.start().map_err(|e| ApiError::Internal(e.to_string()))?;
        self.platform_info = Some(vm.platform().info());
        self.vm = Some(vm);
        self.state = VmState::Running;
        Ok(())
    }

    fn stop_vm(&mut self) {
        if let Some(vm) = self.vm.take() {
            vm.stop();
        }
    }

    fn created(&self) -> Result<&VmConfig, ApiError> {
        self.config
            .as_ref()
            .ok_or_else(|| ApiError::NotCreated("no VM is created (vm.create first)".into()))
    }

    fn expect_state(&self, wanted: VmState, action: &str) -> Result<(), ApiError> {
        self.created()?;
        if self.state != wanted {
            return Err(ApiError::InvalidState(format!(
                "cannot {action} the VM: it is {}, not {}",
                self.state.name(),
                wanted.name()
            )));
        }
        Ok(())
    }

    fn expect_booted(&self, action: &str) -> Result<(), ApiError> {
        self.created()?;
        if !matches!(self.state, VmState::Running | VmState::Paused) {
            return Err(ApiError::InvalidState(format!(
                "cannot {action} the VM: it is {}",
                self.state.name()
            )));
        }
        Ok(())
    }
}
