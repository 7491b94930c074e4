//! How a VM ends, and covm's exit status for each ending.
//!
//! | status | meaning |
//! |---|---|
//! | 0 | the guest powered off (power port 0x600 value 0), or `vmm.shutdown` |
//! | 1 | covm failed while running: KVM, the host, guest memory |
//! | 2 | covm refused its command line and created nothing: an unknown option, a value it cannot use (size, count, key, missing file, a platform this host lacks) |
//! | 3 | the guest reset the machine (i8042 0xfe, or power port value 1) |
//! | 4 | the guest powered off reporting a failure (power port value 2..=255) |
//! | 5 | the guest crashed (triple fault, emulation failure, bad exit) |
//! | 130, 143 | SIGINT (Ctrl-C) or SIGTERM: covm stopped the VM and exited cleanly (128 + the signal) |

use covm_devices::PowerAction;

/// covm failed while running.
pub const STATUS_ERROR: i32 = 1;
/// covm refused its command line (nothing was created).
pub const STATUS_USAGE: i32 = 2;
/// The guest reset the machine.
pub const STATUS_RESET: i32 = 3;
/// The guest reported a failure.
pub const STATUS_GUEST_FAILED: i32 = 4;
/// The guest crashed.
pub const STATUS_CRASHED: i32 = 5;

/// covm's status after `signal` stopped it: the shell's convention, 128 +
/// the signal's number (130 for SIGINT, 143 for SIGTERM).
pub fn signal_status(signal: i32) -> i32 {
    128 + signal
}

/// Why a VM stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// A power request from the guest.
    Power(PowerAction),
    /// The guest did something covm cannot continue from.
    Crashed(String),
}

impl VmExit {
    /// How the event monitor names this ending (`reason` of `vm` `shutdown`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Power(PowerAction::Off) => "guest-power-off",
            Self::Power(PowerAction::Reset) => "guest-reset",
            Self::Power(PowerAction::Fail(_)) => "guest-failure",
            Self::Crashed(_) => "guest-crashed",
        }
    }

    /// The process exit status for this ending.
    pub fn status(&self) -> i32 {
        match self {
            Self::Power(PowerAction::Off) => 0,
            Self::Power(PowerAction::Reset) => STATUS_RESET,
            Self::Power(PowerAction::Fail(_)) => STATUS_GUEST_FAILED,
            Self::Crashed(_) => STATUS_CRASHED,
        }
    }
}

/// Tells the operator, in one line on standard error, how a VM ended when
/// the exit status alone does not say enough.
pub fn announce(exit: &VmExit) {
    match exit {
        VmExit::Crashed(why) => eprintln!("covm: guest crashed: {why}"),
        VmExit::Power(PowerAction::Fail(code)) => {
            eprintln!("covm: guest powered off reporting failure code {code:#04x}")
        }
        VmExit::Power(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_distinct() {
        let all = [
            VmExit::Power(PowerAction::Off).status(),
            STATUS_ERROR,
            STATUS_USAGE,
            VmExit::Power(PowerAction::Reset).status(),
            VmExit::Power(PowerAction::Fail(3)).status(),
            VmExit::Crashed("x".into()).status(),
        ];
        assert_eq!(all, [0, 1, 2, 3, 4, 5]);
    }
}
