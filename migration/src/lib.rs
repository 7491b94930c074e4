//! covm's live-migration engine.
//!
//! Three layers, each usable and testable alone:
//!
//! - [`protocol`]: the framed, versioned wire protocol (its module doc is
//!   the specification: message table, sequence diagram, versioning rules).
//! - [`transport`]: Cloud Hypervisor's `tcp:HOST:PORT` and `unix:PATH`
//!   URLs, connect and listen/accept, with I/O timeouts so a stalled peer is
//!   detected; [`paced`] caps a stream's bandwidth.
//! - [`engine`]: pre-copy rounds, convergence and auto-converge throttling,
//!   stop-and-copy, the one-way commit, progress and the final report.
//!
//! The engine reaches the VM only through the traits of [`vm`], so it never
//! opens `/dev/kvm` and is tested against a fake VM.
//!
//! # Wiring (what the VMM calls)
//!
//! Source (`vm.send-migration`), on a background thread:
//!
//! ```no_run
//! # use covm_migration::{engine::{self, Progress, SendOptions}, transport, vm::SourceVm};
//! # fn f(vm: &mut dyn SourceVm, config_json: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! let progress = Progress::new(); // keep a clone for vm.info
//! let options = SendOptions::default(); // downtime_ms, timeout, strategy...
//! let endpoint: transport::Endpoint = "tcp:192.0.2.1:6000".parse()?;
//! let stream = transport::connect(&endpoint, options.connect_timeout)?;
//! match engine::send(stream, vm, config_json, &options, &progress) {
//!     Ok(report) => { /* the destination runs the VM: exit 0, never resume */ }
//!     Err(e) => { /* the engine already resumed the VM: report `e` in vm.info */ }
//! }
//! # Ok(()) }
//! ```
//!
//! Destination (`vm.receive-migration`):
//!
//! ```no_run
//! # use covm_migration::{engine::{self, Progress, ReceiveOptions}, transport, vm::{DestinationVm, VmOpError}};
//! # fn build(config: &[u8]) -> Result<Box<dyn DestinationVm>, VmOpError> { unimplemented!() }
//! # fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = transport::Listener::bind(&"unix:/run/covm-mig.sock".parse()?)?;
//! let stream = listener.accept(None)?;
//! let incoming = engine::receive(stream, build, &ReceiveOptions::default(), &Progress::new())?;
//! // incoming.vm is restored and committed: resume its vCPUs now.
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod engine;
pub mod paced;
pub mod protocol;
pub mod transport;
pub mod vm;
