//! The VMM's control loop: one thread owns the VM and its state, and
//! handles, one at a time, requests from the API and reports from the VM.
//!
//! Nothing else touches the VM: the API thread only forwards requests and
//! awaits replies, vCPU threads and devices only report why the VM ended.
//! A guest's own power-off, reset or crash ends covm with the status in
//! `crate::exit`, API or not; `vm.shutdown` stops the VM and covm stays.

use crate::api::server::ApiServer;
use crate::config::{SerialMode, VmConfig};
use crate::event_monitor::emit;
use crate::exit::VmExit;
use crate::migration;
use crate::migration::confidential::SessionInfo;
use crate::platform::PlatformConfig;
use crate::test_hooks::TestHook;
use crate::vcpu::ExitNotifier;
use crate::vm::{Counters, Vm};
use covm_migration::engine::{Milestone, Observer, Phase, Progress, ReceiveReport, SendOptions};
use covm_migration::transport::{Endpoint, Listener};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

/// The VM's lifecycle state, as Cloud Hypervisor names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Configured, never booted.
    Created,
    /// vCPUs running.
    Running,
    /// vCPUs parked.
    Paused,
    /// Booted once, now stopped; can boot again.
    Shutdown,
}

impl VmState {
    /// The name used by the API.
    pub fn name(self) -> &'static str {
        match self {
            Self::Created => "Created",
            Self::Running => "Running",
            Self::Paused => "Paused",
            Self::Shutdown => "Shutdown",
        }
    }
}

/// What the API asks of the VMM.
#[derive(Debug)]
pub enum Request {
    /// `vmm.ping`.
    Ping,
    /// `vmm.shutdown`.
    ShutdownVmm,
    /// `vm.create`.
    Create(Box<VmConfig>),
    /// `vm.boot`.
    Boot,
    /// `vm.info`.
    Info,
    /// `vm.counters`.
    Counters,
    /// `vm.pause`.
    Pause,
    /// `vm.resume`.
    Resume,
    /// `vm.shutdown`.
    ShutdownVm,
    /// `vm.reboot`.
    Reboot,
    /// `vm.power-button`.
    PowerButton,
    /// `vm.delete`.
    Delete,
    /// `vm.send-migration`.
    SendMigration {
        /// Where to.
        endpoint: Endpoint,
        /// Downtime target, timeout and strategy.
        options: Box<SendOptions>,
        /// covm extension: confidential verified mode (the destination
        /// proves its memory equals the source's final memory).
        verified: bool,
    },
    /// `vm.receive-migration`.
    ReceiveMigration {
        /// Where to listen.
        endpoint: Endpoint,
    },
}

/// What a request returns.
#[derive(Debug)]
pub enum Reply {
    /// Done, nothing to return.
    Done,
    /// `vmm.ping`.
    Ping {
        /// covm's process id.
        pid: u32,
    },
    /// `vm.info`.
    Info {
        /// The configuration.
        config: Box<VmConfig>,
        /// The state.
        state: VmState,
        /// Guest memory in bytes.
        memory_actual_size: u64,
        /// The current or last migration.
        migration: Option<serde_json::Value>,
        /// The platform: kind, protection, measurement, host data.
        platform: serde_json::Value,
    },
    /// `vm.counters`.
    Counters(Counters),
}

/// Why a request was refused, in the API's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The request itself is wrong (400).
    BadRequest(String),
    /// No VM is created (404).
    NotCreated(String),
    /// The action is invalid in the VM's state (405).
    InvalidState(String),
    /// covm failed to carry it out (500).
    Internal(String),
}

impl ApiError {
    /// The message.
    pub fn message(&self) -> &str {
        match self {
            Self::BadRequest(m) | Self::NotCreated(m) | Self::InvalidState(m) | Self::Internal(m) => m,
        }
    }
}

/// Where a reply goes.
pub type Responder = tokio::sync::oneshot::Sender<Result<Reply, ApiError>>;

/// Everything the control loop reacts to.
pub enum Event {
    /// An API request and where to answer it.
    Api(Request, Responder),
    /// An outgoing migration ended: `Ok(report)` means the destination
    /// committed and runs the guest; `Err` comes with the VM back.
    MigrationSent {
        /// The report (JSON) or the error.
        result: Result<String, String>,
        /// The VM, returned on failure.
        vm: Option<Vm>,
        /// The failure came after the agent sealed its Final record and
        /// neither a Commit nor a valid abort token was read: the VM stays
        /// paused (it may be running at the destination).
        undecided: bool,
    },
    /// An incoming migration committed: run this VM.
    MigrationReceived {
        /// The restored VM, not yet running.
        vm: Vm,
        /// Its configuration.
        config: Box<VmConfig>,
        /// The destination's report (its resume time still to fill in).
        report: ReceiveReport,
        /// When Commit was sent: the guest has been down since before.
        committed: Instant,
    },
    /// SIGINT or SIGTERM: stop the VM and end covm cleanly.
    Signal(i32),
    /// The VM of boot number `generation` ended.
    VmExit {
        /// Which boot of the VM reported it (late reports of a VM already
        /// stopped are ignored).
        generation: u64,
        /// Why.
        exit: VmExit,
    },
}

/// How long a source whose VM migrated away waits for the client that
/// followed the migration (read `vm.info` during it) to read the report
/// before it exits; with no such client it exits at once.
const FOLLOWER_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The current or last migration, for `vm.info`.
struct MigrationStatus {
    direction: &'static str,
    url: String,
    progress: Progress,
    outcome: Option<Result<String, String>>,
    /// The confidential session, when the VM is confidential.
    session: Option<SessionInfo>,
    /// A client read `vm.info` while the VM migrated out: it follows the
    /// migration and should read the report before the source exits.
    followed: bool,
}

/// Delivers SIGINT and SIGTERM to the control loop as
/// [`Event::Signal`], from a thread of their own (a signal handler may not
/// take locks or send on a channel).
pub fn forward_stop_signals(events: Sender<Event>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for signal in signals.forever() {
            if events.send(Event::Signal(signal)).is_err() {
                return;
            }
        }
    })?;
    Ok(())
}

/// Tells the event monitor a migration's phases and pre-copy rounds; the
/// control loop reports the start, the end and failures itself. `receive`
/// selects the destination's names (`migration-receive-...`).
fn migration_events(receive: bool) -> Observer {
    Arc::new(move |milestone| {
        let name = match (milestone, receive) {
            (Milestone::Phase(Phase::Handshake), false) => "migration-handshake",
            // The source connected: CH's name for the destination's start.
            (Milestone::Phase(Phase::Handshake), true) => "migration-receive-started",
            (Milestone::Phase(Phase::PreCopy), false) => "migration-precopy",
            (Milestone::Phase(Phase::PreCopy), true) => "migration-receive-precopy",
            (Milestone::Phase(Phase::StopAndCopy), false) => "migration-stop-and-copy",
            (Milestone::Phase(Phase::StopAndCopy), true) => "migration-receive-stop-and-copy",
            (Milestone::Phase(Phase::Completing), false) => "migration-completing",
            (Milestone::Phase(Phase::Completing), true) => "migration-receive-completing",
            (Milestone::Round(round), receive) => {
                let name = if receive {
                    "migration-receive-memory-iteration"
                } else {
                    "migration-memory-iteration"
                };
                emit("vm", name, &[("id", round.to_string())]);
                return;
            }
            // Connecting is the start, Completed and Failed the end: the
            // control loop reports those with what it knows of them.
            (Milestone::Phase(Phase::Connecting | Phase::Completed | Phase::Failed), _) => return,
        };
        emit("vm", name, &[]);
    })
}

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
    api: Option<ApiServer>,
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
            api: None,
        }
    }

    /// Hands over the API server, stopped (its replies written) before covm exits.
    pub fn set_api_server(&mut self, server: ApiServer) {
        self.api = Some(server);
    }

    /// Stops the VM and the API server: covm is about to exit. Reports, as
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
        if let Some(api) = self.api.take() {
            api.stop();
        }
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
                    let started = vm.start();
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

    /// Handles one request.
    pub fn handle(&mut self, request: Request) -> Result<Reply, ApiError> {
        tracing::debug!("API request {request:?} in state {:?}", self.state);
        if self.migrating_out()
            && !matches!(
                request,
                Request::Ping | Request::Info | Request::Counters | Request::ShutdownVmm
            )
        {
            return Err(ApiError::InvalidState(
                "the VM is migrating out; wait for the migration to end".into(),
            ));
        }
        match request {
            Request::Ping => Ok(Reply::Ping {
                pid: std::process::id(),
            }),
            Request::ShutdownVmm => Ok(Reply::Done),
            Request::Create(config) => self.create(*config).map(|()| Reply::Done),
            Request::Boot => self.boot().map(|()| Reply::Done),
            Request::Info => {
                if self.migrating_out() {
                    if let Some(m) = &mut self.migration {
                        m.followed = true;
                    }
                }
                let config = self.created()?;
                Ok(Reply::Info {
                    memory_actual_size: config.memory.size,
                    platform: self
                        .platform_info
                        .clone()
                        .unwrap_or_else(|| config.platform.info_before_launch()),
                    config: Box::new(config.clone()),
                    state: self.state,
                    migration: self.migration_info(),
                })
            }
            Request::Counters => {
                self.created()?;
                Ok(Reply::Counters(self.vm.as_ref().map(Vm::counters).unwrap_or_default()))
            }
            Request::Pause => {
                self.expect_state(VmState::Running, "pause")?;
                emit("vm", "pausing", &[]);
                self.vm.as_ref().expect("a running VM exists").pause();
                self.state = VmState::Paused;
                emit("vm", "paused", &[]);
                Ok(Reply::Done)
            }
            Request::Resume => {
                self.expect_state(VmState::Paused, "resume")?;
                if self.undecided {
                    return Err(ApiError::InvalidState(
                        "cannot resume the VM: its confidential migration sealed the final record and neither the \
                         destination's Commit nor a valid abort token arrived, so the guest may be running at the \
                         destination; it stays paused here"
                            .into(),
                    ));
                }
                emit("vm", "resuming", &[]);
                self.vm
                    .as_ref()
                    .expect("a paused VM exists")
                    .resume()
                    .map_err(|e| ApiError::InvalidState(format!("cannot resume the VM: {e}")))?;
                self.state = VmState::Running;
                emit("vm", "resumed", &[]);
                Ok(Reply::Done)
            }
            Request::ShutdownVm => {
                self.expect_booted("shut down")?;
                self.stop_vm();
                self.state = VmState::Shutdown;
                emit("vm", "shutdown", &[]);
                Ok(Reply::Done)
            }
            Request::Reboot => {
                self.expect_booted("reboot")?;
                emit("vm", "rebooting", &[]);
                self.stop_vm();
                self.state = VmState::Shutdown;
                self.start_vm()?;
                emit("vm", "rebooted", &[]);
                Ok(Reply::Done)
            }
            Request::PowerButton => {
                self.expect_booted("press the power button of")?;
                self.vm.as_ref().expect("a booted VM exists").press_power_button();
                Ok(Reply::Done)
            }
            Request::Delete => {
                if self.vm.is_some() {
                    self.stop_vm();
                    emit("vm", "shutdown", &[]);
                }
                if self.config.is_some() {
                    emit("vm", "deleted", &[]);
                }
                self.config = None;
                self.platform_info = None;
                self.state = VmState::Created;
                Ok(Reply::Done)
            }
            Request::SendMigration {
                endpoint,
                options,
                verified,
            } => self.send_migration(endpoint, *options, verified),
            Request::ReceiveMigration { endpoint } => self.receive_migration(endpoint),
        }
    }

    fn migrating_out(&self) -> bool {
        self.migration
            .as_ref()
            .is_some_and(|m| m.direction == "send" && m.outcome.is_none())
    }

    fn migration_info(&self) -> Option<serde_json::Value> {
        let m = self.migration.as_ref()?;
        let parse = |json: &str| serde_json::from_str::<serde_json::Value>(json).unwrap_or_default();
        Some(serde_json::json!({
            "direction": m.direction,
            "url": m.url,
            "progress": m.progress.snapshot(),
            "report": m.outcome.as_ref().and_then(|o| o.as_ref().ok()).map(|r| parse(r)),
            "error": m.outcome.as_ref().and_then(|o| o.as_ref().err()),
            "session": m.session.as_ref().map(SessionInfo::to_json),
        }))
    }

    fn send_migration(&mut self, endpoint: Endpoint, options: SendOptions, verified: bool) -> Result<Reply, ApiError> {
        self.expect_booted("migrate")?;
        if self.undecided {
            return Err(ApiError::InvalidState(
                "the last confidential migration's outcome is undecided (the guest may run at its destination): \
                 this VM cannot migrate again"
                    .into(),
            ));
        }
        if let Some(why) = self.vm.as_ref().and_then(Vm::migration_refusal) {
            return Err(ApiError::BadRequest(format!("cannot migrate the VM: {why}")));
        }
        // A confidential VM moves only through its agent's sealed session;
        // a plain one has nothing to verify.
        let confidential = self.vm.as_ref().is_some_and(|vm| vm.platform().confidential());
        if verified && !confidential {
            return Err(ApiError::BadRequest(
                "verified is a confidential migration mode: this VM is not confidential".into(),
            ));
        }
        let session = confidential.then(|| SessionInfo::new("source"));
        let config = self.created()?.clone();
        let vm = self.vm.take().expect("a booted VM exists");
        let url = endpoint.to_string();
        let progress = Progress::with_observer(migration_events(false));
        self.migration = Some(MigrationStatus {
            direction: "send",
            url: url.clone(),
            progress: progress.clone(),
            outcome: None,
            session: session.clone(),
            followed: false,
        });
        let send = migration::Outgoing {
            vm,
            endpoint,
            options,
            session,
            verified,
        };
        emit("vm", "migration-started", &[("destination_url", url)]);
        migration::start_send(send, &config, progress, self.events_tx.clone());
        Ok(Reply::Done)
    }

    fn receive_migration(&mut self, endpoint: Endpoint) -> Result<Reply, ApiError> {
        if self.config.is_some() {
            return Err(ApiError::InvalidState(
                "a VM already exists here; receive a migration in a covm started with only --api-socket".into(),
            ));
        }
        if self.migration.as_ref().is_some_and(|m| m.outcome.is_none()) {
            return Err(ApiError::InvalidState("already receiving a migration".into()));
        }
        let listener = Listener::bind(&endpoint).map_err(|e| ApiError::BadRequest(format!("receiver_url: {e}")))?;
        self.generation += 1;
        let progress = Progress::with_observer(migration_events(true));
        let session = SessionInfo::new("destination");
        self.migration = Some(MigrationStatus {
            direction: "receive",
            url: endpoint.to_string(),
            progress: progress.clone(),
            outcome: None,
            session: Some(session.clone()),
            followed: false,
        });
        let incoming = migration::Incoming {
            listener,
            start: self.start,
            host_ram: self.host_ram,
            serial: self.serial_override.clone(),
            platform: self.incoming_platform.clone(),
            notify: self.exit_notifier(),
            session,
        };
        emit(
            "vm",
            "migration-receive-ready",
            &[("receiver_url", endpoint.to_string())],
        );
        migration::start_receive(incoming, progress, self.events_tx.clone());
        Ok(Reply::Done)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::hardware::{SNP_NOT_MIGRATABLE, TDX_NOT_MIGRATABLE};
    use crate::vm::{snp_tests, tdx_tests};

    /// A running VMM holding `vm` (built from `config`) refuses
    /// `vm.send-migration` with `reason`, before anything is sent (the VM
    /// stays here); its `vm.info` platform block, then the VMM finished.
    fn refuses_to_migrate(config: VmConfig, vm: Vm, reason: &str) -> serde_json::Value {
        let mut vmm = Vmm::new(Instant::now(), vec![], false, 1 << 40, None);
        vmm.config = Some(config);
        vmm.vm = Some(vm);
        vmm.state = VmState::Running;
        let request = Request::SendMigration {
            endpoint: "tcp:127.0.0.1:9".parse().unwrap(),
            options: Box::default(),
            verified: false,
        };
        assert_eq!(
            vmm.handle(request).unwrap_err(),
            ApiError::BadRequest(format!("cannot migrate the VM: {reason}"))
        );
        assert!(vmm.migration.is_none(), "no migration started");
        assert!(vmm.vm.is_some(), "the VM stays");
        let Reply::Info { platform, .. } = vmm.handle(Request::Info).unwrap() else {
            panic!()
        };
        vmm.finish(None);
        platform
    }

    /// `vm.send-migration` of an SEV-SNP VM is refused with the reason,
    /// before anything is sent (the VM stays here, running).
    #[test]
    fn an_snp_vm_refuses_to_migrate() {
        let config = snp_tests::snp_config();
        let Some((vm, _)) = snp_tests::snp_vm(&config) else {
            return;
        };
        let platform = refuses_to_migrate(config, vm, SNP_NOT_MIGRATABLE);
        assert_eq!(platform["kind"], "sev_snp");
    }

    /// `vm.send-migration` of a TD is refused with the reason, before
    /// anything is sent; `vm.info` says it is a TD.
    #[test]
    fn a_td_refuses_to_migrate() {
        let config = tdx_tests::tdx_config();
        let Some((vm, _)) = tdx_tests::tdx_vm(&config) else {
            return;
        };
        let platform = refuses_to_migrate(config, vm, TDX_NOT_MIGRATABLE);
        assert_eq!(platform["kind"], "tdx");
        assert_eq!(platform["note"], crate::platform::tdx::GUEST_NOT_READY);
    }
}
