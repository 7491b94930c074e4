//! covm-remote: controls a running covm through its HTTP API on a UNIX
//! socket, with Cloud Hypervisor's `ch-remote` syntax
//! (`covm-remote --api-socket PATH <command>`). See docs/api.md.

use covm_remote::client;
use covm_remote::follow;

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hyper::Method;

use client::{ApiRequest, ClientError};

#[derive(Debug, Parser)]
#[command(
    name = "covm-remote",
    version,
    about = "Remotely control a covm VMM through its HTTP API"
)]
struct Cli {
    /// HTTP API socket path (UNIX domain socket)
    #[arg(long = "api-socket", value_name = "PATH")]
    api_socket: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
enum Command {
    /// Ping the VMM to check for API server availability
    Ping,
    /// Info on the VM
    Info,
    /// Counters from the VM
    Counters,
    /// Create a VM from a JSON configuration file
    Create {
        /// Path to the VM configuration file (JSON VmConfig), `-` for standard input
        path: PathBuf,
    },
    /// Boot a previously created VM
    Boot,
    /// Pause the VM
    Pause,
    /// Resume the VM
    Resume,
    /// Shut the VM down
    Shutdown,
    /// Reboot the VM
    Reboot,
    /// Trigger a power button in the VM
    PowerButton,
    /// Delete the VM
    Delete,
    /// Shut the VMM down (covm exits)
    ShutdownVmm,
    /// Live-migrate the VM to a covm waiting in receive-migration; follows
    /// the progress until it ends and prints the report
    SendMigration {
        /// Migrate on the same host by sharing memory (refused by covm)
        #[arg(long)]
        local: bool,
        /// Downtime target in milliseconds (covm's default: 300)
        #[arg(long, value_name = "MS")]
        downtime_ms: Option<u64>,
        /// Longest pre-copy in seconds (covm's default: 3600)
        #[arg(long, value_name = "S")]
        timeout_s: Option<u64>,
        /// What to do at the timeout: Cancel (keep the VM here) or Ignore (finish anyway)
        #[arg(long, value_parser = ["Cancel", "Ignore"])]
        timeout_strategy: Option<String>,
        /// Cap the migration's bandwidth at this many bytes per second (covm extension; at least 1048576)
        #[arg(long, value_name = "BYTES_PER_S")]
        max_bandwidth: Option<u64>,
        /// Start it and return without following the progress
        #[arg(long)]
        no_wait: bool,
        /// tcp:HOST:PORT or unix:PATH
        destination_url: String,
    },
    /// Wait for an incoming migration at URL (in a covm with no VM)
    ReceiveMigration {
        /// tcp:HOST:PORT or unix:PATH
        receiver_url: String,
    },
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("VM configuration file {0} does not exist")]
    ConfigMissing(PathBuf),
    #[error("cannot read VM configuration file {path}: {source}")]
    ConfigRead { path: PathBuf, source: io::Error },
    #[error("VM configuration file {path} is not valid JSON: {source}")]
    ConfigNotJson { path: PathBuf, source: serde_json::Error },
    #[error("VM configuration file {0} is not a JSON object")]
    ConfigNotObject(PathBuf),
    #[error(transparent)]
    Migration(#[from] follow::FollowError),
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl Command {
    /// The HTTP method and endpoint (under /api/v1) this command uses.
    fn endpoint(&self) -> (Method, &'static str) {
        match self {
            Command::Ping => (Method::GET, "/vmm.ping"),
            Command::Info => (Method::GET, "/vm.info"),
            Command::Counters => (Method::GET, "/vm.counters"),
            Command::Create { .. } => (Method::PUT, "/vm.create"),
            Command::Boot => (Method::PUT, "/vm.boot"),
            Command::Pause => (Method::PUT, "/vm.pause"),
            Command::Resume => (Method::PUT, "/vm.resume"),
            Command::Shutdown => (Method::PUT, "/vm.shutdown"),
            Command::Reboot => (Method::PUT, "/vm.reboot"),
            Command::PowerButton => (Method::PUT, "/vm.power-button"),
            Command::Delete => (Method::PUT, "/vm.delete"),
            Command::ShutdownVmm => (Method::PUT, "/vmm.shutdown"),
            Command::SendMigration { .. } => (Method::PUT, "/vm.send-migration"),
            Command::ReceiveMigration { .. } => (Method::PUT, "/vm.receive-migration"),
        }
    }

    /// The full request, reading the configuration file for `create`.
    fn request(&self) -> Result<ApiRequest, Error> {
        let (method, endpoint) = self.endpoint();
        let body = match self {
            Command::Create { path } => Some(read_config(path)?),
            Command::SendMigration {
                local,
                downtime_ms,
                timeout_s,
                timeout_strategy,
                max_bandwidth,
                destination_url,
                ..
            } => {
                let mut body = serde_json::json!({ "destination_url": destination_url, "local": local });
                if let Some(ms) = downtime_ms {
                    body["downtime_ms"] = (*ms).into();
                }
                if let Some(s) = timeout_s {
                    body["timeout_s"] = (*s).into();
                }
                if let Some(strategy) = timeout_strategy {
                    body["timeout_strategy"] = strategy.as_str().into();
                }
                if let Some(cap) = max_bandwidth {
                    body["max_bandwidth"] = (*cap).into();
                }
                Some(body.to_string().into_bytes())
            }
            Command::ReceiveMigration { receiver_url } => Some(
                serde_json::json!({ "receiver_url": receiver_url })
                    .to_string()
                    .into_bytes(),
            ),
            _ => None,
        };
        Ok(ApiRequest { method, endpoint, body })
    }
}

/// Reads a JSON VmConfig from `path` (`-` = standard input) and checks that
/// it is a JSON object; the server checks the fields themselves.
fn read_config(path: &Path) -> Result<Vec<u8>, Error> {
    let read_error = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => Error::ConfigMissing(path.to_path_buf()),
        _ => Error::ConfigRead {
            path: path.to_path_buf(),
            source,
        },
    };
    let bytes = if path == Path::new("-") {
        let mut bytes = Vec::new();
        io::stdin().read_to_end(&mut bytes).map_err(read_error)?;
        bytes
    } else {
        std::fs::read(path).map_err(read_error)?
    };
    check_config(path, &bytes)?;
    Ok(bytes)
}

fn check_config(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|source| Error::ConfigNotJson {
        path: path.to_path_buf(),
        source,
    })?;
    if value.is_object() {
        Ok(())
    } else {
        Err(Error::ConfigNotObject(path.to_path_buf()))
    }
}

/// Pretty-prints a JSON body; a body that is not JSON is printed as is.
fn render(body: &[u8]) -> Option<String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some(match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string()),
        Err(_) => String::from_utf8_lossy(body).trim_end().to_owned(),
    })
}

fn run(cli: &Cli) -> Result<(), Error> {
    let request = cli.command.request()?;
    match client::send(&cli.api_socket, &request) {
        Ok(response) => {
            // 204 No Content: the action was done, nothing to print.
            if response.status != hyper::StatusCode::NO_CONTENT {
                if let Some(text) = render(&response.body) {
                    println!("{text}");
                }
            }
            if let Command::SendMigration { no_wait: false, .. } = cli.command {
                let report = follow::follow_migration(&cli.api_socket)?;
                println!("{}", render(report.to_string().as_bytes()).unwrap_or_default());
            }
            Ok(())
        }
        // covm may exit before its answer to vmm.shutdown is read.
        Err(e) if cli.command == Command::ShutdownVmm && client::is_closed_before_answer(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("covm-remote: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("covm-remote").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_maps_to_its_endpoint() {
        let cases = [
            ("ping", Method::GET, "/vmm.ping"),
            ("info", Method::GET, "/vm.info"),
            ("counters", Method::GET, "/vm.counters"),
            ("boot", Method::PUT, "/vm.boot"),
            ("pause", Method::PUT, "/vm.pause"),
            ("resume", Method::PUT, "/vm.resume"),
            ("shutdown", Method::PUT, "/vm.shutdown"),
            ("reboot", Method::PUT, "/vm.reboot"),
            ("power-button", Method::PUT, "/vm.power-button"),
            ("delete", Method::PUT, "/vm.delete"),
            ("shutdown-vmm", Method::PUT, "/vmm.shutdown"),
            ("create", Method::PUT, "/vm.create"),
        ];
        for (name, method, endpoint) in cases {
            let mut args = vec!["--api-socket", "/run/covm.sock", name];
            if name == "create" {
                args.push("vm.json");
            }
            let cli = parse(&args).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(cli.api_socket, PathBuf::from("/run/covm.sock"));
            assert_eq!(cli.command.endpoint(), (method, endpoint), "{name}");
        }
    }

    #[test]
    fn bodiless_commands_send_no_body() {
        let cli = parse(&["--api-socket", "s", "pause"]).expect("parse");
        let request = cli.command.request().expect("request");
        assert_eq!(request.body, None);
    }

    #[test]
    fn api_socket_is_required() {
        let err = parse(&["ping"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn api_socket_takes_equals_form() {
        let cli = parse(&["--api-socket=/tmp/a.sock", "info"]).expect("parse");
        assert_eq!(cli.api_socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(cli.command, Command::Info);
    }

    #[test]
    fn a_subcommand_is_required() {
        let err = parse(&["--api-socket", "s"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingSubcommand);
    }

    #[test]
    fn unknown_subcommand_is_refused() {
        let err = parse(&["--api-socket", "s", "resize"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidSubcommand);
    }

    #[test]
    fn create_needs_a_path() {
        let err = parse(&["--api-socket", "s", "create"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let cli = parse(&["--api-socket", "s", "create", "-"]).expect("stdin form");
        assert_eq!(
            cli.command,
            Command::Create {
                path: PathBuf::from("-")
            }
        );
    }

    #[test]
    fn bodiless_commands_take_no_argument() {
        let err = parse(&["--api-socket", "s", "boot", "extra"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn create_reads_and_checks_the_file() {
        let scratch = tempfile::Builder::new()
            .prefix("covm-remote-cfg-")
            .tempdir()
            .expect("dir");
        let dir = scratch.path();

        let good = dir.join("good.json");
        std::fs::write(&good, br#"{"payload": {"cmdline": "workload=hello"}}"#).expect("write");
        let request = Command::Create { path: good.clone() }.request().expect("good config");
        assert_eq!(request.body.as_deref(), Some(&std::fs::read(&good).expect("read")[..]));

        let missing = dir.join("missing.json");
        let err = Command::Create { path: missing.clone() }.request().unwrap_err();
        assert!(matches!(err, Error::ConfigMissing(_)));
        assert!(err.to_string().contains(&missing.display().to_string()));

        let bad = dir.join("bad.json");
        std::fs::write(&bad, b"payload: {}").expect("write");
        let err = Command::Create { path: bad.clone() }.request().unwrap_err();
        assert!(matches!(err, Error::ConfigNotJson { .. }));
        assert!(err.to_string().contains(&bad.display().to_string()));

        let array = dir.join("array.json");
        std::fs::write(&array, b"[1, 2]").expect("write");
        let err = Command::Create { path: array }.request().unwrap_err();
        assert!(matches!(err, Error::ConfigNotObject(_)));
    }

    #[test]
    fn render_pretty_prints_json_and_skips_empty() {
        assert_eq!(render(b""), None);
        assert_eq!(render(b" \n"), None);
        assert_eq!(render(br#"{"a":1}"#).as_deref(), Some("{\n  \"a\": 1\n}"));
        assert_eq!(render(b"not json\n").as_deref(), Some("not json"));
    }

    #[test]
    fn errors_are_one_line() {
        let err = Error::Client(ClientError::Server {
            status: hyper::StatusCode::NOT_FOUND,
            message: client::error_message(b"[\"VM is not\\ncreated\"]"),
        });
        let text = err.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert_eq!(text, "server answered 404 Not Found: VM is not created");
    }
}
