//! Each agent command's arguments and reply types, over the word
//! conversions of the parent module, and the table binding each command
//! code to its types ([`COMMANDS`]).

// The conversions, checks and the `words!` helpers the macro names.
use super::*;

words! {
    /// `BEGIN`: start a session.
    BeginArgs {
        /// Which end this VM is (0 source, 1 destination).
        role: Role = 0,
        /// Lanes of the session's record stream (1 to the protocol's 64,
        /// the same at both ends): with more than one, the agent's helper
        /// vCPUs seal or open lane by lane at once.
        lanes: u32 = 1,
    }
}

words! {
    /// `BEGIN`'s reply: no results (the source's output is its first
    /// handshake message).
    BeginReply;
}

words! {
    /// `HANDSHAKE`: the peer's next handshake message is in `TO_AGENT`.
    HandshakeArgs {
        /// Its bytes.
        len: u64 = 0,
    }
}

words! {
    /// `HANDSHAKE`'s reply (output: the agent's next messages).
    HandshakeReply {
        /// The handshake is complete: the peer identity is in
        /// [`header::PEER`](crate::mailbox::header::PEER).
        complete: bool = 0,
    }
}

words! {
    /// `EXPORT_PAGES`: seal a range of pages.
    ExportPagesArgs {
        /// The open round.
        round: u32 = 0,
        /// The range's first gpa.
        first: u64 = 1,
        /// Its 4 KiB frames.
        count: u64 = 2,
    }
}

words! {
    /// `EXPORT_PAGES`' reply (output: the records).
    ExportPagesReply {
        /// Pages sealed.
        pages: u64 = 0,
        /// Of which zero.
        zero_pages: u64 = 1,
        /// The range's frames walked (`count` when done; else ask again
        /// for the rest).
        walked_frames: u64 = 2,
    }
    check ExportPagesReply::check
}

impl ExportPagesReply {
    fn check(&self) -> Result<(), WordsError> {
        within(("zero_pages", self.zero_pages), ("pages", self.pages))?;
        within(("pages", self.pages), ("walked_frames", self.walked_frames))
    }
}

words! {
    /// `END_ROUND`: seal the open round's RoundEnd.
    EndRoundArgs;
}

words! {
    /// `END_ROUND`'s reply (output: the record).
    EndRoundReply {
        /// Pages of the round.
        pages: u64 = 0,
    }
}

words! {
    /// `EXPORT_FINAL`: seal the workload vCPUs' states, then Final.
    ExportFinalArgs {
        /// Workload vCPUs (their states are slots `0..vcpus`).
        vcpus: u32 = 0,
        /// Verified mode: Final carries the memory digest.
        verified: bool = 1,
    }
}

words! {
    /// `EXPORT_FINAL`'s reply: no results (output: the records).
    ExportFinalReply;
}

words! {
    /// `READ_CONTROL`: the destination's control record is in `TO_AGENT`.
    ReadControlArgs {
        /// Its bytes.
        len: u64 = 0,
    }
}

/// `READ_CONTROL`'s reply: what the control record said. Word 0: 1
/// committed, 2 aborted; word 1: the abort's reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadControlReply {
    /// A valid Commit: the guest runs at the destination.
    Committed,
    /// A valid abort token: the destination never commits.
    Aborted {
        /// The destination's reason code.
        reason: u32,
    },
}

impl Words for ReadControlReply {
    fn to_words(&self) -> [u64; WORDS] {
        let mut words = [0; WORDS];
        match *self {
            ReadControlReply::Committed => words[0] = 1,
            ReadControlReply::Aborted { reason } => {
                words[0] = 2;
                words[1] = reason.to_word();
            }
        }
        words
    }

    fn from_words(words: &[u64; WORDS]) -> Result<Self, WordsError> {
        match words[0] {
            1 => unused(words, &[0]).map(|()| ReadControlReply::Committed),
            2 => {
                unused(words, &[0, 1])?;
                let reason = u32::from_word("reason", words[1])?;
                Ok(ReadControlReply::Aborted { reason })
            }
            value => Err(WordsError::Unknown {
                field: "outcome",
                value,
                known: "1 committed, 2 aborted",
            }),
        }
    }
}

words! {
    /// `IMPORT`: open and apply the records in `TO_AGENT`.
    ImportArgs {
        /// Their bytes.
        len: u64 = 0,
    }
}

words! {
    /// `IMPORT`'s reply. A refused record ends the command with the counts
    /// of the records applied before it.
    ImportReply {
        /// Pages applied.
        pages: u64 = 0,
        /// Of which zero.
        zero_pages: u64 = 1,
        /// The Final record was accepted.
        complete: bool = 2,
        /// vCPU states applied.
        vcpu_states: u64 = 3,
        /// The accepted Final carries a memory digest: the commit must be
        /// in verified mode ([`CommitArgs::verified`]).
        verified: bool = 4,
    }
    check ImportReply::check
}

impl ImportReply {
    fn check(&self) -> Result<(), WordsError> {
        within(("zero_pages", self.zero_pages), ("pages", self.pages))?;
        if self.verified && !self.complete {
            return Err(WordsError::Without {
                field: "verified",
                requires: "complete",
            });
        }
        Ok(())
    }
}

words! {
    /// `COMMIT`: commit the imported guest.
    CommitArgs {
        /// Verified mode: recompute the memory digest first.
        verified: bool = 0,
    }
}

words! {
    /// `COMMIT`'s reply: no results (output: the Commit record).
    CommitReply;
}

words! {
    /// `MINT_ABORT`: give up.
    MintAbortArgs {
        /// The reason code the token carries.
        reason: u32 = 0,
    }
}

words! {
    /// `MINT_ABORT`'s reply: no results (output: the abort token).
    MintAbortReply;
}

words! {
    /// `STATUS`: where the session stands.
    StatusArgs;
}

words! {
    /// `STATUS`' reply.
    StatusReply {
        /// The session's role (0 none, 1 source, 2 destination).
        role: Option<Role> = 0,
        /// Its state ([`state`]).
        state: SessionState = 1,
        /// The source may resume its guest (no Final may exist, or a
        /// valid abort token was read).
        may_resume: bool = 2,
        /// The open epoch.
        epoch: u32 = 3,
        /// Records sealed or opened.
        records: u64 = 4,
        /// Pages sealed or imported.
        pages: u64 = 5,
    }
}

words! {
    /// `EXPORT_LIST`: seal the ranges listed in `TO_AGENT`.
    ExportListArgs {
        /// The open round.
        round: u32 = 0,
        /// Entries in the list.
        entries: u64 = 1,
    }
}

words! {
    /// `EXPORT_LIST`'s reply (output: the records).
    ExportListReply {
        /// Pages sealed.
        pages: u64 = 0,
        /// Of which zero.
        zero_pages: u64 = 1,
        /// Entries walked to their end.
        entries_done: u64 = 2,
        /// Frames walked of the next entry (ask again from there).
        next_entry_frames: u64 = 3,
    }
    check ExportListReply::check
}

impl ExportListReply {
    fn check(&self) -> Result<(), WordsError> {
        within(("zero_pages", self.zero_pages), ("pages", self.pages))
    }
}

words! {
    /// `COSTS`: where the agent's time went.
    CostsArgs;
}

words! {
    /// `COSTS`' reply: the session's counts since `BEGIN`, times in ticks
    /// of the guest's time-stamp counter (the host converts them).
    CostsReply {
        /// Commands served.
        commands: u64 = 0,
        /// Ticks inside them, from reading the command to writing the
        /// reply: the rest of a command's wall time is the host's (the
        /// exits, the doorbell, scheduling).
        busy_ticks: u64 = 1,
        /// Copying into private memory: a page into its record (source),
        /// a record out of `TO_AGENT` (destination).
        copy_in_ticks: u64 = 2,
        /// Sealing (source) or opening and checking (destination).
        crypto_ticks: u64 = 3,
        /// Copying out: a sealed record to `FROM_AGENT` (source), an
        /// opened page into guest memory (destination).
        copy_out_ticks: u64 = 4,
        /// Zero pages: checking them (source), clearing them (destination).
        zero_ticks: u64 = 5,
    }
    check CostsReply::check
}

impl CostsReply {
    /// The stages' ticks together (saturating): at most `busy_ticks`.
    pub fn stage_ticks(&self) -> u64 {
        [
            self.copy_in_ticks,
            self.crypto_ticks,
            self.copy_out_ticks,
            self.zero_ticks,
        ]
        .iter()
        .fold(0u64, |sum, t| sum.saturating_add(*t))
    }

    fn check(&self) -> Result<(), WordsError> {
        within(
            ("the stages' ticks", self.stage_ticks()),
            ("busy_ticks", self.busy_ticks),
        )
    }
}

/// Ties each command to its arguments and reply types.
macro_rules! commands {
    ($($command:ident: $args:ident => $reply:ident,)+) => {
        $(
            impl Args for $args {
                const COMMAND: u32 = command::$command;
                const NAME: &'static str = stringify!($command);
                type Reply = $reply;
            }

            impl Reply for $reply {
                const COMMAND: u32 = command::$command;
            }
        )+

        /// Every command's code and name.
        pub const COMMANDS: &[(u32, &str)] = &[$((command::$command, stringify!($command)),)+];
    };
}

commands! {
    BEGIN: BeginArgs => BeginReply,
    HANDSHAKE: HandshakeArgs => HandshakeReply,
    EXPORT_PAGES: ExportPagesArgs => ExportPagesReply,
    END_ROUND: EndRoundArgs => EndRoundReply,
    EXPORT_FINAL: ExportFinalArgs => ExportFinalReply,
    READ_CONTROL: ReadControlArgs => ReadControlReply,
    IMPORT: ImportArgs => ImportReply,
    COMMIT: CommitArgs => CommitReply,
    MINT_ABORT: MintAbortArgs => MintAbortReply,
    STATUS: StatusArgs => StatusReply,
    EXPORT_LIST: ExportListArgs => ExportListReply,
    COSTS: CostsArgs => CostsReply,
}
