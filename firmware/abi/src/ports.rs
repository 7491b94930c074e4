//! I/O ports the firmware uses and the values it writes to them.

/// COM1, a 16550 UART. The firmware writes bytes to its transmit register.
pub const SERIAL_COM1: u16 = 0x3f8;

/// The POST/debug port. Each byte written is a boot-progress marker that
/// covm logs with the time since covm started (see [`markers`]).
pub const DEBUG_PORT: u16 = 0x80;

/// covm's power device: one byte, see [`power`].
///
/// Under QEMU the same port can be backed by `isa-debug-exit,iobase=0x600`,
/// which ends QEMU on any write.
pub const POWER: u16 = 0x600;

/// Confidential platforms only (absent on a plain VM): the migration
/// agent's and the emulated platform's ports, all accessed 32 bits wide.
/// See [`crate::mailbox`].
///
/// `in`: blocks until covm posts a mailbox command; the value is the low
/// 32 bits of its sequence number, or `mailbox::DOORBELL_RETRY`.
pub const AGENT_DOORBELL: u16 = 0x610;
/// `out` (the sequence's low 32 bits): the agent completed a command.
pub const AGENT_DONE: u16 = 0x614;
/// `out` 0: the agent asks the platform for an attestation report.
pub const AGENT_REPORT: u16 = 0x618;
/// `in`: `mailbox::launch_mode`: fresh launch, incoming migration, or
/// (any other value) not confidential.
pub const LAUNCH_MODE: u16 = 0x61c;
/// `out` 0: a workload vCPU of an incoming confidential VM parks; the
/// platform runs it again only with the state the agent imported.
pub const PARK: u16 = 0x620;
/// `out` 0: the source's agent read the destination's Commit; the platform
/// must never run this VM's workload vCPUs again.
pub const AGENT_RETIRE: u16 = 0x624;
/// The emulated platform's page-state request (its equivalent of SEV-SNP's
/// page-state change and `KVM_HC_MAP_GPA_RANGE`): `out` the first page
/// number (guest-physical address / 4096) here, the page count at
/// [`PAGE_STATE_PAGES`], then a [`page_state`] operation at
/// [`PAGE_STATE_OP`]; `in` from [`PAGE_STATE_OP`] gives its result. Only
/// pages of the shared window (`layout::SHARED_WINDOW`) can be shared.
pub const PAGE_STATE_FIRST: u16 = 0x628;
/// See [`PAGE_STATE_FIRST`].
pub const PAGE_STATE_PAGES: u16 = 0x62c;
/// See [`PAGE_STATE_FIRST`].
pub const PAGE_STATE_OP: u16 = 0x630;

/// `in`: how many vCPUs the migration agent has (1 to
/// `mailbox::MAX_AGENT_VCPUS`): the VM's last ones, by APIC ID. The one
/// with the highest APIC ID serves the mailbox (agent 0); the others are
/// its helpers, which seal and open lanes with it (`mailbox`, "Team").
pub const AGENT_VCPUS: u16 = 0x634;
/// `out`, by a helper: it finished the work posted.
pub const TEAM_DONE: u16 = 0x638;
/// `out`, by agent 0: work is posted; wakes every helper's wait
/// ([`team_wait`]).
pub const TEAM_START: u16 = 0x63c;
/// `in`, by agent 0: blocks until every helper reported [`TEAM_DONE`] for
/// the work posted last, or covm needs the vCPU out; any value.
pub const TEAM_JOIN: u16 = 0x640;
/// Helper 1's wait port, the first of the helpers' ([`team_wait`]).
pub const TEAM_WAIT_BASE: u16 = 0x644;

/// `in`, by helper `index` (1 to `mailbox::MAX_AGENT_VCPUS - 1`): blocks
/// until agent 0 posts work this helper was not woken for yet
/// ([`TEAM_START`]), or covm needs the vCPU out of the read; any value.
/// One port per helper, as a port's reads are served one at a time.
pub const fn team_wait(index: u32) -> u16 {
    TEAM_WAIT_BASE + 4 * (index as u16 - 1)
}

/// The last port of the confidential platform's (the firmware's I/O
/// bitmap allows ring 3 every port up to it from `AGENT_DOORBELL`).
pub const LAST_CONFIDENTIAL_PORT: u16 = team_wait(crate::mailbox::MAX_AGENT_VCPUS - 1) + 3;

const _: () = assert!(LAST_CONFIDENTIAL_PORT == 0x69f);

/// Operations and results of the page-state request ([`PAGE_STATE_FIRST`]).
pub mod page_state {
    /// Operation: the pages become shared with the host.
    pub const TO_SHARED: u32 = 1;
    /// Operation: the pages become private again.
    pub const TO_PRIVATE: u32 = 2;
    /// Operation: what the host holds the pages to be (the result is
    /// [`SHARED`], [`PRIVATE`] or [`MIXED`]); changes nothing.
    pub const QUERY: u32 = 3;
    /// Query result: every page is shared.
    pub const SHARED: u32 = 0x10;
    /// Query result: every page is private.
    pub const PRIVATE: u32 = 0x11;
    /// Query result: some pages are shared, some private.
    pub const MIXED: u32 = 0x12;
    /// Result: done.
    pub const OK: u32 = 0;
    /// Result: refused (covm logs why): outside the window, an unknown
    /// operation, or pages devices still use.
    pub const REFUSED: u32 = 1;
    /// Result: no request made yet.
    pub const NONE: u32 = 0xffff_ffff;
}

/// Values written to and read from [`POWER`].
pub mod power {
    /// Read: nothing to report.
    pub const READ_NOTHING: u8 = 0x00;
    /// Read: the VM's power button was pressed (`vm.power-button`) since
    /// the last read, which clears it. The built-in firmware then powers
    /// off. (Under QEMU's isa-debug-exit a read gives another value, so the
    /// firmware compares with this one exactly.)
    pub const READ_BUTTON_PRESSED: u8 = 0x01;

    /// Power off: the guest finished successfully. covm exits 0.
    pub const OFF: u8 = 0x00;
    /// Reset the machine. covm exits with its "guest reset" status.
    pub const RESET: u8 = 0x01;
    /// Power off reporting a failure: any value from here to 0xff is a
    /// failure code chosen by the guest (see the `fail` codes below).
    pub const FAIL_FIRST: u8 = 0x02;
    /// The firmware's command line was not understood.
    pub const FAIL_BAD_ARGS: u8 = 0x02;
    /// The `dirty` workload's verifier found a corrupted or stale page.
    pub const FAIL_VERIFY: u8 = 0x03;
    /// A CPU exception reached the firmware's ring-0 handler.
    pub const FAIL_EXCEPTION: u8 = 0x04;
    /// Not enough guest memory for what was asked.
    pub const FAIL_NO_MEMORY: u8 = 0x05;
    /// Secondary vCPUs did not come up.
    pub const FAIL_SMP: u8 = 0x06;
    /// The firmware's ring-3 Rust code panicked.
    pub const FAIL_PANIC: u8 = 0x07;
    /// The vCPU lacks XSAVE, AVX or AVX2, which the firmware is compiled
    /// for (its ring 0 checks before any Rust code runs).
    pub const FAIL_CPU: u8 = 0x09;
}

/// Debug-port markers written by the built-in firmware, in boot order.
///
/// Cloud Hypervisor reserves 0x00..=0x1f of the POST code space for firmware;
/// covm's firmware uses that range.
pub mod markers {
    /// The very first instruction of the firmware (PVH entry).
    pub const FIRMWARE_ENTRY: u8 = 0x01;
    /// Long mode is on and the ring-0 tables (GDT, IDT, TSS) are loaded.
    pub const LONG_MODE: u8 = 0x02;
    /// The bootstrap processor is running Rust in ring 3.
    pub const RING3: u8 = 0x03;
    /// Every vCPU has checked in.
    pub const ALL_CPUS: u8 = 0x04;
    /// The workload starts.
    pub const WORKLOAD_START: u8 = 0x05;
}
