//! The `covm` binary: parse, check, build the VM, run it, exit with a status
//! that says how it ended (see `covm::exit`).

use clap::Parser;
use covm::cli::{Cli, Command, MeasureArgs};
use covm::config::{self, VmConfig};
use covm::control::Vmm;
use covm::exit::{STATUS_ERROR, STATUS_USAGE};
use covm::test_hooks::TestHook;
use covm::vcpu::control::install_kick_handler;
use std::io::Write;
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

/// Why covm stops before running a VM: its exit status (`covm::exit`) and
/// the one line that says why.
struct Stop {
    status: i32,
    message: String,
}

/// The command line asks for something covm refuses; nothing was created.
fn refused(message: impl std::fmt::Display) -> Stop {
    Stop {
        status: STATUS_USAGE,
        message: message.to_string(),
    }
}

/// covm failed while starting.
fn failed(message: impl std::fmt::Display) -> Stop {
    Stop {
        status: STATUS_ERROR,
        message: message.to_string(),
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

/// `covm measure`: the launch measurement the VM options would give, as
/// JSON, computed as a launch computes it but in scratch memory (no KVM, no
/// SEV-SNP or TDX hardware).
fn measure(args: &MeasureArgs) -> Result<String, Stop> {
    use covm::platform::measure::{self, HardwarePlatform};
    use covm::platform::{self, hex, root_key, PlatformConfig};
    use covm_measure::kernel_hashes::{KernelHashes, SEV_HASHES_GPA};
    use covm_measure::mrtd::TD_HOB_GPA;
    use covm_measure::snp::SnpLaunch;
    use covm_measure::vmsa;
    let host_ram = config::host_ram().map_err(|e| failed(format!("cannot read this host's memory size: {e}")))?;
    let (config, hardware, no_policy) = VmConfig::for_measure(&args.vm, host_ram).map_err(refused)?;
    if hardware != Some(HardwarePlatform::SevSnp) {
        if args.vcpu_type.is_some() {
            return Err(refused("--vcpu-type is for --platform sev_snp=on"));
        }
        if args.kernel_hashes {
            return Err(refused("--kernel-hashes is for --platform sev_snp=on"));
        }
    }
    // Without --migration-policy the measurement is the same (the policy
    // page is an UNMEASURED entry) but there is no HOST_DATA to show.
    let host_data = config.platform.host_data().filter(|_| !no_policy).map(|h| hex(&h));
    let policy_version = config
        .platform
        .migration_policy()
        .filter(|_| !no_policy)
        .map(|p| p.version());
    let out = match hardware {
        Some(HardwarePlatform::SevSnp) => {
            // --vcpu-type, or vcpu_type= in --platform as a launch takes it.
            let (launch_type, guest_policy) = match &config.platform {
                PlatformConfig::SevSnp(snp) => (snp.vcpu_type.clone(), snp.guest_policy),
                _ => (None, platform::hardware::DEFAULT_GUEST_POLICY),
            };
            let vcpu_type = match (args.vcpu_type.clone(), launch_type) {
                (Some(given), Some(launch)) if given != launch => {
                    return Err(refused(format!(
                        "--vcpu-type {given} and --platform vcpu_type={launch} differ: give one"
                    )))
                }
                (given, launch) => given.or(launch),
            };
            let signature = vcpu_type
                .as_deref()
                .map(vmsa::vcpu_type_signature)
                .transpose()
                .map_err(refused)?;
            let kernel_hashes = match (&config.payload, args.kernel_hashes) {
                (_, false) => None,
                (covm::config::Payload::Kernel { kernel, initramfs }, true) => Some(
                    KernelHashes::from_files(kernel, initramfs.as_deref(), &config.cmdline)
                        .map_err(|e| refused(format!("--kernel-hashes: cannot read the kernel or initramfs: {e}")))?,
                ),
                (_, true) => {
                    return Err(refused(
                        "--kernel-hashes needs --kernel (it hashes the kernel, initramfs and command line)",
                    ))
                }
            };
            let launch = SnpLaunch {
                vcpu_signature: signature.unwrap_or(0),
                kernel_hashes,
                cpuid_page: None,
            };
            let measurement = measure::measure_sev_snp(&config, &launch).map_err(failed)?;
            let mut out = serde_json::json!({
                "platform": "sev_snp",
                "measurement": hex(&measurement.digest),
                "host_data": host_data,
                "policy_version": policy_version,
                "vcpus": config.cpus.boot_vcpus,
                "guest_policy": format!("{guest_policy:#x}"),
                "vcpu_type": vcpu_type,
                "vcpu_signature": signature.map(|s| format!("{s:#x}")),
                "kernel_hashes": launch.kernel_hashes.map(|h| serde_json::json!({
                    "gpa": format!("{SEV_HASHES_GPA:#x}"),
                    "kernel": hex(&h.kernel),
                    "initrd": hex(&h.initrd),
                    "cmdline": hex(&h.cmdline),
                })),
                "entries": measurement.pages.len(),
            });
            if args.pages {
                out["pages"] = measured_pages(&measurement.pages);
            }
            out
        }
        Some(HardwarePlatform::Tdx) => {
            let td = measure::measure_tdx(&config).map_err(failed)?;
            let mut out = serde_json::json!({
                "platform": "tdx",
                "mrtd": hex(&td.mrtd),
                "host_data": host_data,
                "policy_version": policy_version,
                "vcpus": config.cpus.boot_vcpus,
                "td_hob": format!("{TD_HOB_GPA:#x}"),
                "entries": td.pages.len(),
            });
            if args.pages {
                out["pages"] = td
                    .pages
                    .iter()
                    .map(|p| {
                        let op = if p.extended { "add+extend" } else { "add" };
                        serde_json::json!({"gpa": format!("{:#x}", p.gpa), "op": op, "what": p.what})
                    })
                    .collect();
            }
            out
        }
        None => {
            let PlatformConfig::EmulatedCvm(emulated) = &config.platform else {
                return Err(refused(
                    "give a confidential platform (--platform emulated_cvm=on), or sev_snp=on or tdx=on: a plain VM is \
                     not measured",
                ));
            };
            // The root key only when a file is named: a key for one VM is of no use here.
            let root_public_key = match &emulated.root_key {
                Some(path) => {
                    let key = root_key::load_or_create(Some(path)).map_err(failed)?;
                    if let Some(line) = key.announcement() {
                        eprintln!("covm: {line}");
                    }
                    Some(hex(&key.public_key))
                }
                None => None,
            };
            let measurement = platform::measure(&config).map_err(failed)?;
            let mut out = serde_json::json!({
                "platform": config.platform.name(),
                "measurement": hex(&measurement.digest),
                "host_data": host_data,
                "policy_version": policy_version,
                "root_public_key": root_public_key,
                "vcpus": config.cpus.boot_vcpus,
                "entries": measurement.pages.len(),
            });
            if args.pages {
                out["pages"] = measured_pages(&measurement.pages);
            }
            out
        }
    };
    Ok(serde_json::to_string_pretty(&out).expect("JSON serialises"))
}

/// `--pages`: each entry's address, page type and contents.
fn measured_pages(pages: &[covm_measure::snp::MeasuredPage]) -> serde_json::Value {
    pages
        .iter()
        .map(|p| serde_json::json!({"gpa": format!("{:#x}", p.gpa), "type": p.page_type.name(), "what": p.what}))
        .collect()
}

fn run(cli: &mut Cli, start: Instant) -> Result<i32, Stop> {
    covm::logging::init(cli.verbose, cli.log_file.as_deref()).map_err(|e| {
        refused(format!(
            "--log-file: cannot open {}: {e}",
            cli.log_file.as_deref().unwrap_or("".as_ref()).display()
        ))
    })?;
    if let Some(text) = &cli.event_monitor {
        let sink = covm::event_monitor::parse(text).map_err(refused)?;
        covm::event_monitor::start(&sink, start).map_err(refused)?;
    }
    covm::event_monitor::emit("vmm", "starting", &[]);
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
            let listener = covm::api::socket::open(socket).map_err(refused)?;
            let created = match socket {
                covm::config::ApiSocket::Path(path) => Some(path.clone()),
                covm::config::ApiSocket::Fd(_) => None,
            };
            let server = covm::api::server::spawn(listener, created, vmm.sender(), host_ram)
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
    covm::control::forward_stop_signals(vmm.sender())
        .map_err(|e| failed(format!("cannot install the SIGINT/SIGTERM handlers: {e}")))?;
    let status = vmm.run();
    let _ = std::io::stdout().flush();
    Ok(status)
}
