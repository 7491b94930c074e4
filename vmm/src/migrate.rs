//! Running a migration beside the control loop: `vm.send-migration` moves
//! the VM into a thread that runs the engine; `vm.receive-migration` listens
//! on a thread that builds the incoming VM. Both report back to the control
//! loop with an [`Event`], which alone starts, resumes or releases VMs.

use crate::api::vm_config;
use crate::config::{SerialMode, VmConfig};
use crate::vcpu::ExitNotifier;
use crate::vm::Vm;
use crate::vmm::Event;
use covm_migration::engine::{self, Progress, ReceiveOptions, SendOptions, TimeoutStrategy};
use covm_migration::transport::{self, Endpoint, Listener};
use covm_migration::vm::VmError as EngineVmError;
use serde::Deserialize;
use std::sync::mpsc::Sender;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// CH's `SendMigrationData`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendMigrationData {
    /// `tcp:HOST:PORT` or `unix:PATH`.
    pub destination_url: String,
    /// Same-host migration by sharing memory (not supported).
    #[serde(default)]
    pub local: bool,
    /// Downtime target in ms (default 300).
    #[serde(default)]
    pub downtime_ms: Option<u64>,
    /// Longest pre-copy in s (default 3600).
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// `Cancel` (default) or `Ignore`.
    #[serde(default)]
    pub timeout_strategy: Option<TimeoutStrategy>,
}

/// CH's `ReceiveMigrationData`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveMigrationData {
    /// `tcp:HOST:PORT` or `unix:PATH`.
    pub receiver_url: String,
}

/// Parses a `vm.send-migration` body into the endpoint and engine options.
pub fn send_options(body: &[u8]) -> Result<(Endpoint, SendOptions), String> {
    let data: SendMigrationData =
        serde_json::from_slice(body).map_err(|e| format!("invalid SendMigrationData: {e}"))?;
    if data.local {
        return Err("local migration (sharing memory on one host) is not supported: set local to false".into());
    }
    let endpoint: Endpoint = data
        .destination_url
        .parse()
        .map_err(|e| format!("destination_url: {e}"))?;
    let mut options = SendOptions::default();
    if let Some(ms) = data.downtime_ms {
        options.downtime = Duration::from_millis(ms);
    }
    if let Some(s) = data.timeout_s {
        options.timeout = Duration::from_secs(s);
    }
    if let Some(strategy) = data.timeout_strategy {
        options.timeout_strategy = strategy;
    }
    Ok((endpoint, options))
}

/// Parses a `vm.receive-migration` body.
pub fn receive_endpoint(body: &[u8]) -> Result<Endpoint, String> {
    let data: ReceiveMigrationData =
        serde_json::from_slice(body).map_err(|e| format!("invalid ReceiveMigrationData: {e}"))?;
    data.receiver_url.parse().map_err(|e| format!("receiver_url: {e}"))
}

/// Sends `vm` to `endpoint` on a new thread. The thread reports
/// [`Event::MigrationSent`]: with the VM back (running) on failure, without
/// it on success (the destination runs the guest; the source must not).
pub fn start_send(
    mut vm: Vm,
    config: &VmConfig,
    endpoint: Endpoint,
    options: SendOptions,
    progress: Progress,
    events: Sender<Event>,
) {
    let config_json = serde_json::to_vec(&vm_config::to_json(config)).expect("a VmConfig serialises");
    std::thread::Builder::new()
        .name("migration-send".into())
        .spawn(move || {
            let result = transport::connect(&endpoint, options.connect_timeout)
                .map_err(|e| e.to_string())
                .and_then(|stream| {
                    engine::send(stream, &mut vm, &config_json, &options, &progress).map_err(|e| e.to_string())
                });
            let event = match result {
                Ok(report) => {
                    // Committed: the guest lives on at the destination. Stop the
                    // (paused) vCPUs for good before anything else can run them.
                    vm.stop();
                    Event::MigrationSent {
                        result: Ok(report.to_json()),
                        vm: None,
                    }
                }
                Err(error) => Event::MigrationSent {
                    result: Err(error),
                    vm: Some(vm),
                },
            };
            let _ = events.send(event);
        })
        .expect("spawning the migration thread");
}

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
            let build = |config_json: &[u8]| -> Result<Vm, EngineVmError> {
                let mut config = vm_config::parse(config_json, incoming.host_ram).map_err(EngineVmError)?;
                // A confidential VM filled with plain memory from the host
                // would attest as its own launch while holding whatever the
                // host sent: only the migration agent may bring one in.
                if config.platform.is_confidential() {
                    return Err(EngineVmError(format!(
                        "refusing a plain migration of a {} VM: confidential VMs arrive only through \
                         the firmware migration agent (not built yet)",
                        config.platform.name()
                    )));
                }
                if let Some(serial) = &incoming.serial {
                    config.serial = serial.clone();
                }
                let vm = Vm::new_incoming(&config, incoming.start, incoming.notify.clone())
                    .map_err(|e| EngineVmError(e.to_string()))?;
                *built.lock().unwrap_or_else(|p| p.into_inner()) = Some(config);
                Ok(vm)
            };
            match engine::receive(stream, build, &ReceiveOptions::default(), &progress) {
                Ok(received) => {
                    let config = built
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take()
                        .expect("built on success");
                    let _ = events.send(Event::MigrationReceived {
                        vm: received.vm,
                        config: Box::new(config),
                        report: received.report,
                        committed: Instant::now(),
                    });
                    return;
                }
                Err(e) => tracing::warn!("migration: incoming attempt failed ({e}); ready for another"),
            }
        })
        .expect("spawning the migration thread");
}
