//! covm's command line, in Cloud Hypervisor's syntax.

use clap::{ArgAction, Parser};
use std::path::PathBuf;

/// covm: a KVM virtual machine monitor for confidential VMs that must still move.
///
/// With neither --kernel nor --firmware, covm boots its built-in firmware and
/// passes --cmdline to it (for example `--cmdline "workload=dirty mib=64"`).
/// The emulated confidential platform, when it comes, provides no hardware
/// protection.
#[derive(Debug, Parser)]
#[command(name = "covm", version, about, long_about = None)]
pub struct Cli {
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

    /// Serial port (COM1) output: tty | file=PATH | off | null (default tty).
    #[arg(long, value_name = "MODE")]
    pub serial: Option<String>,

    /// virtio console: off | null (covm has no virtio console yet).
    #[arg(long, value_name = "MODE")]
    pub console: Option<String>,

    /// HTTP API socket: path=PATH | fd=N | PATH.
    #[arg(long = "api-socket", value_name = "path=PATH")]
    pub api_socket: Option<String>,

    /// Platform options (Cloud Hypervisor's keys; confidential platforms come later).
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub platform: Option<String>,

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
}

impl Cli {
    /// Whether the command line describes a VM (rather than only an API
    /// socket to wait on).
    pub fn has_vm_options(&self) -> bool {
        self.cpus.is_some()
            || self.memory.is_some()
            || self.kernel.is_some()
            || self.initramfs.is_some()
            || self.cmdline.is_some()
            || self.firmware.is_some()
            || self.dirty_tracking.is_some()
    }
}
