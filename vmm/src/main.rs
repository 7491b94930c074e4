//! The `covm` binary: parse, check, build the VM, run it, exit with a status
//! that says how it ended (see `covm::exit`).

use clap::Parser;
use covm::cli::measure::measure;
use covm::cli::run::{report, run};
use covm::cli::{Cli, Command};
use covm::exit::STATUS_USAGE;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let start = Instant::now();
    let mut cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // One line naming the problem; clap's usage block follows on
            // `--help`.
            let rendered = e.to_string();
            let first = rendered.lines().next().unwrap_or("invalid command line");
            eprintln!("covm: {} (see covm --help)", first.trim_start_matches("error: "));
            return ExitCode::from(STATUS_USAGE as u8);
        }
        Err(e) => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    if let Some(Command::Measure(args)) = &cli.command {
        return match measure(args) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(stop) => {
                eprintln!("covm measure: {}", stop.message);
                ExitCode::from(stop.status as u8)
            }
        };
    }
    let status = match run(&mut cli, start) {
        Ok(status) => status,
        Err(stop) => {
            report(&cli, &stop.message);
            // The control loop never ran, so it reported no shutdown.
            covm::event_monitor::emit("vmm", "shutdown", &[]);
            stop.status
        }
    };
    covm::event_monitor::flush();
    ExitCode::from(status as u8)
}
