//! The header's argument and result words, typed: one arguments type and
//! one reply type per command, each converted to and from its raw words
//! here and nowhere else.
//!
//! covm writes a command's arguments with [`Words::to_words`] into
//! [`header::ARGS`](super::header::ARGS) and reads the agent's results
//! from [`header::RESULTS`](super::header::RESULTS) with
//! [`Words::from_words`]; the agent does the reverse. Each type's fields
//! say which word they are (word `i` is the little-endian `u64` at byte
//! `8 * i` of the field); words a command does not use are 0.
//!
//! [`Words::from_words`] reads words the other side wrote, so it refuses
//! what the ABI rules out instead of trusting it (a boolean other than 0
//! or 1, an unknown role, state or outcome, a count that cannot fit, an
//! unused word that is not 0, counts that contradict each other) with a
//! [`WordsError`] naming the field; it never panics.
//!
//! | command | arguments | reply |
//! |---|---|---|
//! | `BEGIN` | [`BeginArgs`] | [`BeginReply`] |
//! | `HANDSHAKE` | [`HandshakeArgs`] | [`HandshakeReply`] |
//! | `EXPORT_PAGES` | [`ExportPagesArgs`] | [`ExportPagesReply`] |
//! | `END_ROUND` | [`EndRoundArgs`] | [`EndRoundReply`] |
//! | `EXPORT_FINAL` | [`ExportFinalArgs`] | [`ExportFinalReply`] |
//! | `READ_CONTROL` | [`ReadControlArgs`] | [`ReadControlReply`] |
//! | `IMPORT` | [`ImportArgs`] | [`ImportReply`] |
//! | `COMMIT` | [`CommitArgs`] | [`CommitReply`] |
//! | `MINT_ABORT` | [`MintAbortArgs`] | [`MintAbortReply`] |
//! | `STATUS` | [`StatusArgs`] | [`StatusReply`] |
//! | `EXPORT_LIST` | [`ExportListArgs`] | [`ExportListReply`] |
//! | `COSTS` | [`CostsArgs`] | [`CostsReply`] |

use super::{command, state};
use core::fmt;

/// Words in the header's `ARGS` field, and in its `RESULTS` field.
pub const WORDS: usize = 8;

/// A command's arguments or reply as the header's raw words.
pub trait Words: Sized {
    /// The words, unused ones 0.
    fn to_words(&self) -> [u64; WORDS];
    /// The value the words hold, or why they hold none.
    fn from_words(words: &[u64; WORDS]) -> Result<Self, WordsError>;
}

/// A command's arguments: which command they are for and what it replies.
pub trait Args: Words {
    /// The command ([`command`]).
    const COMMAND: u32;
    /// Its name in the ABI (`"EXPORT_PAGES"`).
    const NAME: &'static str;
    /// What the agent answers.
    type Reply: Reply;
}

/// A command's results.
pub trait Reply: Words {
    /// The command ([`command`]) they answer.
    const COMMAND: u32;
}

/// Why words are not a valid value of their type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WordsError {
    /// A boolean word other than 0 or 1.
    NotBool {
        /// The field.
        field: &'static str,
        /// The word.
        value: u64,
    },
    /// A word holding a 32-bit value that does not fit 32 bits.
    NotU32 {
        /// The field.
        field: &'static str,
        /// The word.
        value: u64,
    },
    /// A code the ABI does not define.
    Unknown {
        /// The field.
        field: &'static str,
        /// The word.
        value: u64,
        /// The codes it defines.
        known: &'static str,
    },
    /// A word the command does not use, not 0.
    Unused {
        /// The word's index.
        index: usize,
        /// The word.
        value: u64,
    },
    /// A count larger than the count it is part of.
    Exceeds {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The field it is part of.
        whole: &'static str,
        /// That field's value.
        limit: u64,
    },
    /// A flag set without the flag it implies.
    Without {
        /// The flag set.
        field: &'static str,
        /// The flag it implies, clear.
        requires: &'static str,
    },
}

impl fmt::Display for WordsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WordsError::NotBool { field, value } => write!(f, "{field} is 0 or 1, not {value}"),
            WordsError::NotU32 { field, value } => write!(f, "{field} {value} is not a u32"),
            WordsError::Unknown { field, value, known } => write!(f, "{field} {value} ({known})"),
            WordsError::Unused { index, value } => write!(f, "word {index} is unused and must be 0, not {value:#x}"),
            WordsError::Exceeds {
                field,
                value,
                whole,
                limit,
            } => write!(f, "{field} {value} exceeds {whole} {limit}"),
            WordsError::Without { field, requires } => write!(f, "{field} is set without {requires}"),
        }
    }
}

impl core::error::Error for WordsError {}

/// Which end of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends the guest.
    Source,
    /// Receives it.
    Destination,
}

/// A session's state as `STATUS` reports it (the codes are [`state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// No session.
    Idle,
    /// Handshake under way.
    Handshake,
    /// Pages flowing.
    Streaming,
    /// Source: Final sealed, waiting for Commit or an abort token.
    FinalSent,
    /// Destination: everything arrived and checked, not yet committed.
    Complete,
    /// Committed (source: Commit read; destination: Commit sealed).
    Committed,
    /// Aborted (source: valid token read; destination: token minted).
    Aborted,
    /// A check failed; the session takes no more records.
    Failed,
}

impl SessionState {
    /// Every state with its code, the one table of both.
    const CODES: [(SessionState, u64); 8] = [
        (SessionState::Idle, state::IDLE),
        (SessionState::Handshake, state::HANDSHAKE),
        (SessionState::Streaming, state::STREAMING),
        (SessionState::FinalSent, state::FINAL_SENT),
        (SessionState::Complete, state::COMPLETE),
        (SessionState::Committed, state::COMMITTED),
        (SessionState::Aborted, state::ABORTED),
        (SessionState::Failed, state::FAILED),
    ];
}

/// One field's conversion to and from its word.
trait Word: Sized {
    fn to_word(self) -> u64;
    fn from_word(field: &'static str, word: u64) -> Result<Self, WordsError>;
}

impl Word for u64 {
    fn to_word(self) -> u64 {
        self
    }

    fn from_word(_: &'static str, word: u64) -> Result<Self, WordsError> {
        Ok(word)
    }
}

impl Word for u32 {
    fn to_word(self) -> u64 {
        u64::from(self)
    }

    fn from_word(field: &'static str, word: u64) -> Result<Self, WordsError> {
        u32::try_from(word).map_err(|_| WordsError::NotU32 { field, value: word })
    }
}

impl Word for bool {
    fn to_word(self) -> u64 {
        u64::from(self)
    }

    fn from_word(field: &'static str, word: u64) -> Result<Self, WordsError> {
        match word {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(WordsError::NotBool { field, value }),
        }
    }
}

/// `BEGIN`'s role: 0 source, 1 destination.
impl Word for Role {
    fn to_word(self) -> u64 {
        match self {
            Role::Source => 0,
            Role::Destination => 1,
        }
    }

    fn from_word(field: &'static str, word: u64) -> Result<Self, WordsError> {
        match word {
            0 => Ok(Role::Source),
            1 => Ok(Role::Destination),
            value => Err(WordsError::Unknown {
                field,
                value,
                known: "0 source, 1 destination",
            }),
        }
    }
}

/// `STATUS`'s role: 0 none, 1 source, 2 destination.
impl Word for Option<Role> {
    fn to_word(self) -> u64 {
        match self {
            None => 0,
            Some(role) => role.to_word() + 1,
        }
    }

    fn from_word(field: &'static str, word: u64) -> Result<Self, WordsError> {
        match word {
            0 => Ok(None),
            1 | 2 => Role::from_word(field, word - 1).map(Some),
            value => Err(WordsError::Unknown {
                field,
                value,
                known: "0 none, 1 source, 2 destination",
            }),
        }
    }
}

impl Word for SessionState {
    fn to_word(self) -> u64 {
        SessionState::CODES
            .iter()
            .find(|(s, _)| *s == self)
            .map_or(state::FAILED, |&(_, code)| code)
    }

    fn from_word(field: &'static str, word: u64) -> Result<Self, WordsError> {
        SessionState::CODES
            .iter()
            .find(|&&(_, code)| code == word)
            .map(|&(s, _)| s)
            .ok_or(WordsError::Unknown {
                field,
                value: word,
                known: "0 to 7",
            })
    }
}

/// Refuses a word outside `used` that is not 0.
fn unused(words: &[u64; WORDS], used: &[usize]) -> Result<(), WordsError> {
    match words
        .iter()
        .enumerate()
        .find(|&(index, &value)| value != 0 && !used.contains(&index))
    {
        Some((index, &value)) => Err(WordsError::Unused { index, value }),
        None => Ok(()),
    }
}

/// Checked when a type is defined: its fields' words exist and differ.
const fn distinct(used: &[usize]) {
    let mut i = 0;
    while i < used.len() {
        assert!(used[i] < WORDS, "a field past the header's words");
        let mut j = i + 1;
        while j < used.len() {
            assert!(used[i] != used[j], "two fields in one word");
            j += 1;
        }
        i += 1;
    }
}

/// `part` of `whole` must not exceed it.
fn within(part: (&'static str, u64), whole: (&'static str, u64)) -> Result<(), WordsError> {
    if part.1 > whole.1 {
        return Err(WordsError::Exceeds {
            field: part.0,
            value: part.1,
            whole: whole.0,
            limit: whole.1,
        });
    }
    Ok(())
}

/// A struct of words: each field names its word (`field: type = index`);
/// an optional `check` function refuses combinations no agent writes.
macro_rules! words {
    ($(#[$meta:meta])* $name:ident;) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct $name;

        impl Words for $name {
            fn to_words(&self) -> [u64; WORDS] {
                [0; WORDS]
            }

            fn from_words(words: &[u64; WORDS]) -> Result<Self, WordsError> {
                unused(words, &[])?;
                Ok($name)
            }
        }
    };
    (
        $(#[$meta:meta])*
        $name:ident {
            $($(#[$field_meta:meta])* $field:ident: $ty:ty = $index:literal,)+
        }
        $(check $check:path)?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name {
            $(
                $(#[$field_meta])*
                #[doc = ""]
                #[doc = concat!("Word ", $index, ".")]
                pub $field: $ty,
            )+
        }

        const _: () = distinct(&[$($index),+]);

        impl Words for $name {
            fn to_words(&self) -> [u64; WORDS] {
                let mut words = [0; WORDS];
                $(words[$index] = Word::to_word(self.$field);)+
                words
            }

            fn from_words(words: &[u64; WORDS]) -> Result<Self, WordsError> {
                unused(words, &[$($index),+])?;
                let value = $name {
                    $($field: Word::from_word(stringify!($field), words[$index])?,)+
                };
                $($check(&value)?;)?
                Ok(value)
            }
        }
    };
}

// The commands' types, defined with the macro above (so after it).
mod commands;
pub use commands::*;

#[cfg(test)]
mod tests;
