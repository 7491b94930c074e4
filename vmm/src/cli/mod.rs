//! covm's command line, in Cloud Hypervisor's syntax.

pub mod measure;
pub mod run;

use crate::exit::{STATUS_ERROR, STATUS_USAGE};
use clap::{ArgAction, Args, Parser, Subcommand};
use std::path::PathBuf;

/// covm: a KVM virtual machine monitor for confidential VMs that must still move.
///
/// With neither --kernel nor --firmware, covm boots its built-in firmware and
/// passes --cmdline to it (for example `--cmdline "workload=dirty mib=64"`).
/// `--platform emulated_cvm=on` runs the VM on covm's emulated confidential
/// platform (measured launch, migration policy, attestation evidence as on
/// SEV-SNP), which provides NO hardware protection: covm, the host, can read
/// and change all guest memory. `--platform sev_snp=on` launches on AMD
/// SEV-SNP hardware, `--platform tdx=on` on Intel TDX. `covm measure` prints the launch measurement the same
/// options would give, without the hardware.
#[derive(Debug, Parser)]
#[command(
    name = "covm",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// What the VM is made of.
    #[command(flatten)]
    pub vm: VmArgs,

    /// Serial port (COM1) output: tty | file=PATH | off | null (default tty).
    #[arg(long, value_name = "MODE")]
    pub serial: Option<String>,

    /// virtio console output: off | null | tty | file=PATH (default off:
    /// the serial port is the console).
    #[arg(long, value_name = "MODE")]
    pub console: Option<String>,

    /// Disks (virtio-blk), one value each: path=FILE[,readonly=on]
    /// [,direct=on][,id=ID][,num_queues=N][,queue_size=N][,serial=S].
    /// Raw images; each is locked while covm uses it.
    // clap's --help text: the brackets are the syntax, not rustdoc links.
    #[allow(rustdoc::broken_intra_doc_links)]
    #[arg(long, value_name = "path=FILE,...", num_args = 1..)]
    pub disk: Vec<String>,

    /// Network interfaces (virtio-net over TAP), one value each:
    /// tap=NAME|fd=N[,mac=MAC][,ip=IP,mask=MASK][,id=ID][,queue_size=N].
    /// A TAP given by name is created if missing, given ip/mask (default
    /// 192.168.249.1/24) and brought up, as Cloud Hypervisor does.
    // clap's --help text: the brackets are the syntax, not rustdoc links.
    #[allow(rustdoc::broken_intra_doc_links)]
    #[arg(long, value_name = "tap=NAME,...", num_args = 1..)]
    pub net: Vec<String>,

    /// A socket device (virtio-vsock, hybrid over a UNIX socket):
    /// cid=N,socket=PATH[,id=ID]. Host processes connect to PATH and
    /// write the line "CONNECT P" to reach the guest's port P; the guest's
    /// connections to host port P go to PATH_P.
    // clap's --help text: the brackets are the syntax, not rustdoc links.
    #[allow(rustdoc::broken_intra_doc_links)]
    #[arg(long, value_name = "cid=N,socket=PATH")]
    pub vsock: Option<String>,

    /// An entropy device (virtio-rng): src=PATH (default /dev/urandom).
    #[arg(long, value_name = "src=PATH", num_args = 0..=1, default_missing_value = "")]
    pub rng: Option<String>,

    /// HTTP API socket: path=PATH | fd=N | PATH.
    #[arg(long = "api-socket", value_name = "path=PATH")]
    pub api_socket: Option<String>,

    /// Report lifecycle and migration events as JSON, one object a line
    /// (Cloud Hypervisor's events): path=FILE | fd=N. See docs/api.md.
    #[arg(long = "event-monitor", value_name = "path=FILE|fd=N")]
    pub event_monitor: Option<String>,

    /// How a migration tracks dirty pages: mode=log (KVM's dirty bitmap,
    /// default) or mode=ring[,ring_entries=N] (KVM's per-vCPU dirty ring,
    /// N a power of two, default 4096). See docs/migration.md.
    #[arg(long = "dirty-tracking", value_name = "mode=log|ring")]
    pub dirty_tracking: Option<String>,

    /// Write covm's log here instead of standard error.
    #[arg(long = "log-file", value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// More logging: -v info (boot markers), -vv debug, -vvv trace.
    #[arg(short = 'v', action = ArgAction::Count)]
    pub verbose: u8,

    /// Test-only hooks that alter guest memory from the VMM (see docs/testing.md).
    #[arg(long = "test-hook", value_name = "HOOK", hide = true)]
    pub test_hooks: Vec<String>,

    /// Instead of running a VM.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The VM options: what is loaded into the guest and on which platform.
#[derive(Debug, Args, Default)]
pub struct VmArgs {
    /// vCPUs: boot=N (1 to 32), max=N (must equal boot).
    #[arg(long, value_name = "boot=N")]
    pub cpus: Option<String>,

    /// Guest memory: size=SIZE with K, M or G suffix (default 512M).
    #[arg(long, value_name = "size=SIZE")]
    pub memory: Option<String>,

    /// A Linux bzImage or an ELF kernel (PVH entry used when present).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// An initramfs, loaded for --kernel.
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,

    /// Command line for the kernel or firmware.
    #[arg(long, value_name = "STRING")]
    pub cmdline: Option<String>,

    /// A firmware ELF to boot instead of the built-in firmware.
    #[arg(long, value_name = "PATH")]
    pub firmware: Option<PathBuf>,

    /// Platform: emulated_cvm=on[,root_key=PATH] | sev_snp=on[,...] | tdx=on (docs/platforms.md)
    ///
    /// emulated_cvm=on[,root_key=PATH]: covm's emulated confidential
    /// platform, with NO hardware protection. root_key is the attestation
    /// root's key file (loaded, or created with mode 0600); without it the
    /// key is this VM's alone.
    ///
    /// sev_snp=on[,policy=P][,vcpu_type=MODEL][,id_block=PATH,id_auth=PATH[,author_key=on]]:
    /// an AMD SEV-SNP VM (guest policy P, default 0x30000; the vCPU model
    /// as `covm measure --vcpu-type`; the guest owner's ID block and ID
    /// authentication structure, as QEMU's id-block/id-auth); it needs
    /// SEV-SNP hardware and --migration-policy.
    ///
    /// tdx=on: an Intel TDX VM (a TD); it needs TDX hardware and
    /// --migration-policy.
    ///
    /// The host is probed first and every missing piece named. Neither
    /// hardware VM migrates yet, and the built-in firmware cannot run as
    /// either guest yet. `covm measure` gives their launch measurements
    /// without the hardware. Cloud Hypervisor's other keys are recognised.
    // This text is clap's --help, where the brackets are the syntax, not
    // rustdoc links.
    #[allow(rustdoc::broken_intra_doc_links)]
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub platform: Option<String>,

    /// The guest owner's migration policy (JSON; see resources/policies/),
    /// required with --platform emulated_cvm=on, sev_snp=on or tdx=on. Bound at
    /// launch through HOST_DATA and placed in guest memory for the
    /// migration agent.
    #[arg(long = "migration-policy", value_name = "PATH")]
    pub migration_policy: Option<PathBuf>,
}

/// covm's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the launch measurement the VM options would give (JSON), without creating a VM.
    ///
    /// --platform emulated_cvm=on: the SEV-SNP-style launch digest, equal
    /// to the one vm.info reports for a VM launched with the same options
    /// (docs/platforms.md lists what it covers). With root_key=PATH in
    /// --platform the root key is loaded, or created, and its public key
    /// shown.
    ///
    /// --platform sev_snp=on: the SEV-SNP launch digest (MEASUREMENT) of
    /// covm's SNP launch of the same image, with every VMSA's RDX set to the
    /// --vcpu-type's (or vcpu_type=) CPUID signature and, with
    /// --kernel-hashes, QEMU's SEV kernel hashes table measured at 0x5000.
    /// A VM launched with the same options (no --kernel-hashes) reports it
    /// in vm.info as its expected measurement.
    ///
    /// --platform tdx=on: MRTD of covm's TDX launch of the same image
    /// (NORMAL pages added and extended, the others and the TD HOB at 0x4000
    /// added only).
    ///
    /// sev_snp and tdx are computed here without the hardware (nothing is
    /// probed). --migration-policy is optional: no measurement depends on
    /// the policy's contents; given, its HOST_DATA is shown too.
    Measure(MeasureArgs),
}

/// `covm measure`.
#[derive(Debug, Args)]
pub struct MeasureArgs {
    /// The VM options, as for a launch.
    #[command(flatten)]
    pub vm: VmArgs,

    /// Also list every measured entry (address, page type, what it holds).
    #[arg(long)]
    pub pages: bool,

    /// With --platform sev_snp=on: the vCPU model (QEMU's -cpu name, as
    /// sev-snp-measure's --vcpu-type takes it: EPYC, EPYC-v1 to -v4,
    /// EPYC-IBPB, EPYC-Rome[-v1..-v3], EPYC-Milan[-v1, -v2],
    /// EPYC-Genoa[-v1], EPYC-Turin) whose CPUID family/model/stepping
    /// signature is in every VMSA's RDX. Without it RDX is 0.
    #[arg(long = "vcpu-type", value_name = "MODEL")]
    pub vcpu_type: Option<String>,

    /// With --platform sev_snp=on and --kernel: measure QEMU's SEV kernel
    /// hashes table (SHA-256 of the --kernel file, the --initramfs file and
    /// the --cmdline with its NUL) as a NORMAL page at 0x5000, after the
    /// image and before the VMSAs, as kernel-hashes=on does.
    #[arg(long = "kernel-hashes")]
    pub kernel_hashes: bool,
}

impl Cli {
    /// Whether the only VM options are `--platform` / `--migration-policy`:
    /// with `--api-socket` they then say how this host launches incoming
    /// confidential VMs (a destination's own platform and policy) and no
    /// VM is created.
    pub fn only_incoming_platform(&self) -> bool {
        let vm = &self.vm;
        (vm.platform.is_some() || vm.migration_policy.is_some())
            && vm.cpus.is_none()
            && vm.memory.is_none()
            && vm.kernel.is_none()
            && vm.initramfs.is_none()
            && vm.cmdline.is_none()
            && vm.firmware.is_none()
            && self.dirty_tracking.is_none()
    }

    /// Whether the command line describes a VM (rather than only an API
    /// socket to wait on).
    pub fn has_vm_options(&self) -> bool {
        let vm = &self.vm;
        vm.cpus.is_some()
            || vm.memory.is_some()
            || vm.kernel.is_some()
            || vm.initramfs.is_some()
            || vm.cmdline.is_some()
            || vm.firmware.is_some()
            || vm.platform.is_some()
            || vm.migration_policy.is_some()
            || self.dirty_tracking.is_some()
            || !self.disk.is_empty()
            || !self.net.is_empty()
            || self.rng.is_some()
            || self.vsock.is_some()
    }
}

/// Why covm stops before running a VM: its exit status (`covm::exit`) and
/// the one line that says why.
pub struct Stop {
    /// The exit status.
    pub status: i32,
    /// What went wrong, one line.
    pub message: String,
}

/// The command line asks for something covm refuses; nothing was created.
pub fn refused(message: impl std::fmt::Display) -> Stop {
    Stop {
        status: STATUS_USAGE,
        message: message.to_string(),
    }
}

/// covm failed while starting.
pub fn failed(message: impl std::fmt::Display) -> Stop {
    Stop {
        status: STATUS_ERROR,
        message: message.to_string(),
    }
}
