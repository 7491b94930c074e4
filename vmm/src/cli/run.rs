//! Running covm from its command line: the configuration checked, the
//! event monitor and the API socket opened, the VM built and booted (or
//! awaited), then the control loop until covm exits.

use super::{failed, refused, Cli, Stop};
use crate::config::{self, VmConfig};
use crate::control::Vmm;
use crate::test_hooks::TestHook;
use crate::vcpu::control::install_kick_handler;
use std::io::Write;
use std::time::Instant;

/// One line on standard error; also in the log when the log is a file
/// (when it is standard error, the line alone says it).
pub fn report(cli: &Cli, message: &str) {
    if cli.log_file.is_some() {
        tracing::error!("{message}");
    }
    eprintln!("covm: {message}");
}

/// Runs covm as `cli` asks, from `start` (covm's start, the zero of its
/// timings); the exit status once the control loop ends, or why covm
/// stopped before it ran.
pub fn run(cli: &mut Cli, start: Instant) -> Result<i32, Stop> {
    crate::logging::init(cli.verbose, cli.log_file.as_deref()).map_err(|e| {
        refused(format!(
            "--log-file: cannot open {}: {e}",
            cli.log_file.as_deref().unwrap_or("".as_ref()).display()
        ))
    })?;
    if let Some(text) = &cli.event_monitor {
        let sink = crate::event_monitor::parse(text).map_err(refused)?;
        crate::event_monitor::start(&sink, start).map_err(refused)?;
    }
    crate::event_monitor::emit("vmm", "starting", &[]);
    let host_ram = config::host_ram().map_err(|e| failed(format!("cannot read this host's memory size: {e}")))?;
    // A destination's own platform for incoming confidential VMs.
    let incoming_platform = (cli.api_socket.is_some() && cli.only_incoming_platform())
        .then(|| config::incoming_platform(&cli.vm))
        .transpose()
        .map_err(refused)?;
    if incoming_platform.is_some() {
        cli.vm.platform = None;
        cli.vm.migration_policy = None;
    }
    let config = VmConfig::from_cli(cli, host_ram).map_err(refused)?;
    let hooks = cli
        .test_hooks
        .iter()
        .map(|h| TestHook::parse(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(refused)?;
    install_kick_handler().map_err(|e| failed(format!("cannot install the vCPU kick signal handler: {e}")))?;
    let serial_override = cli.serial.is_some().then(|| config.serial.clone());
    let mut vmm = Vmm::new(start, hooks, cli.log_file.is_some(), host_ram, serial_override);
    vmm.set_incoming_platform(incoming_platform.clone());
    // Stopped when dropped, whichever way this function returns: after
    // the control loop, the replies it sent last are written.
    let _api = match &config.api_socket {
        Some(socket) => {
            let listener = crate::api::socket::open(socket).map_err(refused)?;
            let created = match socket {
                crate::config::ApiSocket::Path(path) => Some(path.clone()),
                crate::config::ApiSocket::Fd(_) => None,
            };
            let server = crate::api::server::spawn(listener, created, vmm.sender(), host_ram)
                .map_err(|e| failed(format!("cannot start the API server: {e}")))?;
            Some(server)
        }
        None => None,
    };
    // With an API socket and no VM options covm waits for vm.create, as
    // Cloud Hypervisor does; otherwise the VM is created and booted now.
    if config.api_socket.is_none() || (cli.has_vm_options() && incoming_platform.is_none()) {
        vmm.create(config).map_err(|e| failed(e.message()))?;
        vmm.boot().map_err(|e| failed(e.message()))?;
    }
    // SIGINT and SIGTERM stop the VM and end covm cleanly (socket removed,
    // events written), with status 128 + the signal.
    crate::control::forward_stop_signals(vmm.sender())
        .map_err(|e| failed(format!("cannot install the SIGINT/SIGTERM handlers: {e}")))?;
    let status = vmm.run();
    let _ = std::io::stdout().flush();
    Ok(status)
}
