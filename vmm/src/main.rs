//! The `covm` binary: parse, check, build the VM, run it, exit with a status
//! that says how it ended (see `covm::exit`).

use clap::Parser;
use covm::cli::Cli;
use covm::config::{self, VmConfig};
use covm::exit::{STATUS_ERROR, STATUS_USAGE};
use covm::test_hooks::TestHook;
use covm::vm::Vm;
use covm_devices::PowerAction;
use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let start = Instant::now();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // One line naming the problem; clap's usage block follows on
            // `--help`.
            let rendered = e.to_string();
            let first = rendered.lines().next().unwrap_or("invalid command line");
            eprintln!("covm: {}", first.trim_start_matches("error: "));
            return ExitCode::from(STATUS_USAGE as u8);
        }
        Err(e) => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    match run(&cli, start) {
        Ok(status) => ExitCode::from(status as u8),
        Err(message) => {
            report(&cli, &message);
            ExitCode::from(STATUS_ERROR as u8)
        }
    }
}

/// One line on standard error; also in the log when the log is a file
/// (when it is standard error, the line alone says it).
fn report(cli: &Cli, message: &str) {
    if cli.log_file.is_some() {
        tracing::error!("{message}");
    }
    eprintln!("covm: {message}");
}

fn run(cli: &Cli, start: Instant) -> Result<i32, String> {
    covm::logging::init(cli.verbose, cli.log_file.as_deref()).map_err(|e| {
        format!(
            "--log-file: cannot open {}: {e}",
            cli.log_file.as_deref().unwrap_or("".as_ref()).display()
        )
    })?;
    let host_ram = config::host_ram().map_err(|e| format!("cannot read this host's memory size: {e}"))?;
    let config = VmConfig::from_cli(cli, host_ram).map_err(|e| e.to_string())?;
    let hooks = cli
        .test_hooks
        .iter()
        .map(|h| TestHook::parse(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if config.api_socket.is_some() {
        tracing::warn!("--api-socket is accepted but the API server is not part of this covm yet");
    }
    let vm = Vm::new(&config, start).map_err(|e| e.to_string())?;
    for hook in hooks {
        hook.spawn(vm.memory().clone(), start);
    }
    let exit = vm.run().map_err(|e| e.to_string())?;
    let _ = std::io::stdout().flush();
    match &exit {
        covm::exit::VmExit::Crashed(why) => report(cli, &format!("guest crashed: {why}")),
        covm::exit::VmExit::Power(PowerAction::Fail(code)) => {
            report(cli, &format!("guest powered off reporting failure code {code:#04x}"))
        }
        covm::exit::VmExit::Power(action) => tracing::info!(
            "guest ended at {:.3} ms: {action:?}",
            start.elapsed().as_secs_f64() * 1e3
        ),
    }
    Ok(exit.status())
}
