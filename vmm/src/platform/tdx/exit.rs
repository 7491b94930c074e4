//! `KVM_EXIT_TDX`: the TDG.VP.VMCALLs KVM forwards to userspace
//! (`Documentation/virt/kvm/api.rst`, "KVM_EXIT_TDX"; Linux 6.16+
//! `arch/x86/kvm/vmx/tdx.c`, `handle_tdvmcall`).
//!
//! KVM handles the GHCI's base calls itself (port I/O and MMIO come back
//! as ordinary `KVM_EXIT_IO`/`KVM_EXIT_MMIO`, MapGPA as
//! `KVM_EXIT_HYPERCALL` with `KVM_HC_MAP_GPA_RANGE`, ReportFatalError as a
//! `KVM_SYSTEM_EVENT_TDX_FATAL` system event) and answers the others it
//! does not know with `TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED`. It forwards
//! `GetTdVmCallInfo` leaf 1 (which calls userspace supports),
//! `GetQuote` and `SetupEventNotifyInterrupt` as `KVM_EXIT_TDX`, whose
//! `kvm_run` member is (little-endian u64s):
//!
//! ```text
//!   0 flags (0)   8 nr (the TDVMCALL leaf, the guest's R11)
//!  16 ret: the status the guest gets in R10 (KVM pre-sets it)
//!  24.. the leaf's operands: GetQuote gpa, size;
//!       GetTdVmCallInfo leaf, r11, r12, r13, r14 (outputs);
//!       SetupEventNotifyInterrupt vector
//! ```
//!
//! covm implements none of them: no quote generation service, no event
//! notification. Each is answered so that the guest sees a clean failure
//! (`TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED`), and logged; GetTdVmCallInfo
//! leaf 1 succeeds with no call bits set, which is the truth (covm
//! supports no TDVMCALL beyond KVM's). Nothing is answered as success that
//! was not done.

/// `KVM_EXIT_TDX` (`include/uapi/linux/kvm.h`), which kvm-bindings 0.14
/// does not name.
pub const KVM_EXIT_TDX: u32 = 40;
/// `KVM_SYSTEM_EVENT_TDX_FATAL`: the TD's TDG.VP.VMCALL ReportFatalError.
pub const KVM_SYSTEM_EVENT_TDX_FATAL: u32 = 7;

/// `TDG.VP.VMCALL<GetTdVmCallInfo>`.
pub const TDVMCALL_GET_TD_VM_CALL_INFO: u64 = 0x10000;
/// `TDG.VP.VMCALL<MapGPA>` (arrives as `KVM_HC_MAP_GPA_RANGE`).
pub const TDVMCALL_MAP_GPA: u64 = 0x10001;
/// `TDG.VP.VMCALL<GetQuote>`.
pub const TDVMCALL_GET_QUOTE: u64 = 0x10002;
/// `TDG.VP.VMCALL<ReportFatalError>` (arrives as a system event).
pub const TDVMCALL_REPORT_FATAL_ERROR: u64 = 0x10003;
/// `TDG.VP.VMCALL<SetupEventNotifyInterrupt>`.
pub const TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT: u64 = 0x10004;

/// TDVMCALL status: done.
pub const TDVMCALL_STATUS_SUCCESS: u64 = 0;
/// TDVMCALL status: the leaf is not supported (GHCI 1.5).
pub const TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED: u64 = 0x8000_0000_0000_0003;

/// Bytes of the `tdx` member of `kvm_run`'s exit union.
pub const TDX_EXIT_LEN: usize = 64;

/// The `tdx` member of `kvm_run`'s exit union, as words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TdxExit {
    /// `flags` (0 today).
    pub flags: u64,
    /// `nr`: the TDVMCALL leaf.
    pub nr: u64,
    /// `ret` then the leaf's five operand words.
    pub words: [u64; 6],
}

impl TdxExit {
    /// Reads it from the union's first [`TDX_EXIT_LEN`] bytes.
    pub fn read(bytes: &[u8; TDX_EXIT_LEN]) -> Self {
        let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        TdxExit {
            flags: word(0),
            nr: word(1),
            words: std::array::from_fn(|i| word(2 + i)),
        }
    }

    /// Writes it back where it was read.
    pub fn write(&self, bytes: &mut [u8; TDX_EXIT_LEN]) {
        let all = [self.flags, self.nr].into_iter().chain(self.words);
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(all) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
    }

    /// The status the guest gets.
    #[cfg(test)]
    pub fn ret(&self) -> u64 {
        self.words[0]
    }
}

/// What covm did with a TDVMCALL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TdvmcallAnswer {
    /// Answered as supported (GetTdVmCallInfo): what was said.
    Answered(String),
    /// Refused as unsupported: the leaf and why covm does not do it.
    Unsupported(String),
}

/// The TDVMCALL's name.
pub fn leaf_name(nr: u64) -> &'static str {
    match nr {
        TDVMCALL_GET_TD_VM_CALL_INFO => "GetTdVmCallInfo",
        TDVMCALL_MAP_GPA => "MapGPA",
        TDVMCALL_GET_QUOTE => "GetQuote",
        TDVMCALL_REPORT_FATAL_ERROR => "ReportFatalError",
        TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT => "SetupEventNotifyInterrupt",
        _ => "an unknown TDVMCALL",
    }
}

/// Answers the TDVMCALL in `exit` (sets its `ret`, and for
/// GetTdVmCallInfo its outputs) and says what was done.
pub fn handle_tdx_exit(exit: &mut TdxExit) -> TdvmcallAnswer {
    let [_, a, b, ..] = exit.words;
    match exit.nr {
        TDVMCALL_GET_TD_VM_CALL_INFO => {
            // Leaf 1: which TDVMCALLs userspace supports (R11, R12 bits,
            // OR-ed by KVM with its own). covm supports none.
            exit.words = [TDVMCALL_STATUS_SUCCESS, a, 0, 0, 0, 0];
            TdvmcallAnswer::Answered(format!(
                "GetTdVmCallInfo leaf {a}: covm supports no TDVMCALL beyond KVM's (R11..R14 = 0)"
            ))
        }
        nr => {
            exit.words[0] = TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED;
            let why = match nr {
                TDVMCALL_GET_QUOTE => format!(
                    "GetQuote (shared buffer at {a:#x}, {b} bytes): covm has no quote generation service, so a \
                     TD's quote is not available"
                ),
                TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT => format!(
                    "SetupEventNotifyInterrupt (vector {a}): covm has no event to notify (it generates no quotes)"
                ),
                nr => format!(
                    "TDVMCALL leaf {nr:#x} (flags {:#x}): covm does not implement it",
                    exit.flags
                ),
            };
            TdvmcallAnswer::Unsupported(why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(nr: u64, words: [u64; 6]) -> TdxExit {
        TdxExit { flags: 0, nr, words }
    }

    #[test]
    fn layout_round_trips() {
        let mut bytes = [0u8; TDX_EXIT_LEN];
        bytes[8..16].copy_from_slice(&TDVMCALL_GET_QUOTE.to_le_bytes());
        bytes[16..24].copy_from_slice(&TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED.to_le_bytes());
        bytes[24..32].copy_from_slice(&0x7000u64.to_le_bytes());
        bytes[32..40].copy_from_slice(&0x2000u64.to_le_bytes());
        let read = TdxExit::read(&bytes);
        assert_eq!((read.flags, read.nr), (0, 0x10002));
        assert_eq!(read.words, [0x8000_0000_0000_0003, 0x7000, 0x2000, 0, 0, 0]);
        let mut back = [0xaa; TDX_EXIT_LEN];
        read.write(&mut back);
        assert_eq!(back, bytes);
    }

    /// Every TDVMCALL covm does not implement gets
    /// TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED, even when KVM pre-set another
    /// status; its operands stay.
    #[test]
    fn unsupported_leaves_get_the_error_status() {
        for (nr, operands) in [
            (TDVMCALL_GET_QUOTE, [0, 0x7000, 0x2000, 0, 0, 0]),
            (TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT, [0, 0x40, 0, 0, 0, 0]),
            (0x1_0005, [0, 1, 2, 3, 4, 5]),
            (0x30, [0, 0, 0, 0, 0, 0]),
        ] {
            let mut e = exit(nr, operands);
            let answer = handle_tdx_exit(&mut e);
            assert_eq!(e.ret(), TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED, "{nr:#x}");
            assert_eq!(&e.words[1..], &operands[1..]);
            assert!(matches!(answer, TdvmcallAnswer::Unsupported(_)), "{answer:?}");
        }
        let TdvmcallAnswer::Unsupported(why) =
            handle_tdx_exit(&mut exit(TDVMCALL_GET_QUOTE, [0, 0x7000, 4096, 0, 0, 0]))
        else {
            panic!()
        };
        assert_eq!(
            why,
            "GetQuote (shared buffer at 0x7000, 4096 bytes): covm has no quote generation service, so a TD's \
             quote is not available"
        );
        assert_eq!(
            leaf_name(TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT),
            "SetupEventNotifyInterrupt"
        );
    }

    /// GetTdVmCallInfo leaf 1 succeeds saying covm supports nothing more.
    #[test]
    fn tdvmcall_info_says_nothing_more_is_supported() {
        let mut e = exit(TDVMCALL_GET_TD_VM_CALL_INFO, [0, 1, 0xff, 0xff, 0xff, 0xff]);
        let answer = handle_tdx_exit(&mut e);
        assert_eq!(e.words, [TDVMCALL_STATUS_SUCCESS, 1, 0, 0, 0, 0]);
        assert!(matches!(answer, TdvmcallAnswer::Answered(_)));
    }
}
