//! Why a migration failed, on either side.

use crate::protocol::{MessageKind, ProtocolError};
use crate::vm::VmOpError;
use std::time::Duration;

/// A failed migration. On the source every variant but
/// [`MigrationError::Undecided`] means the guest was handed back (throttle
/// 0, tracking off, resumed if the engine paused it); on the destination,
/// that the incoming VM must be discarded.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// Talking to the peer failed (closed, stalled, malformed frame...).
    #[error("migration connection: {0}")]
    Protocol(#[from] ProtocolError),
    /// Setting the connection's timeouts failed.
    #[error("cannot set the migration connection's I/O timeout: {0}")]
    Timeouts(std::io::Error),
    /// The destination refused the Hello.
    #[error("the destination refused the migration: {reason}")]
    Refused {
        /// The destination's words.
        reason: String,
    },
    /// The peer sent Abort.
    #[error("the peer aborted the migration: {reason}")]
    PeerAborted {
        /// The peer's words.
        reason: String,
    },
    /// A valid message arrived where the protocol does not allow it.
    #[error("unexpected {got} message while {during}")]
    Unexpected {
        /// What arrived.
        got: MessageKind,
        /// What this side was doing.
        during: &'static str,
    },
    /// The source's Hello names a protocol version this destination
    /// does not accept.
    #[error(
        "the source speaks migration protocol version {found}, this destination accepts {}",
        versions(accepted)
    )]
    Version {
        /// Version in the Hello.
        found: u16,
        /// Versions this destination accepts.
        accepted: &'static [u16],
    },
    /// A VM operation failed.
    #[error("cannot {op}: {source}")]
    Vm {
        /// What the engine asked of the VM.
        op: &'static str,
        /// The VMM's words.
        source: VmOpError,
    },
    /// `timeout_s` passed with strategy `Cancel`.
    #[error("the migration did not converge within its timeout of {0:?} (strategy Cancel: the VM keeps running here)")]
    TimedOut(Duration),
    /// Someone cancelled through [`super::Progress::cancel`].
    #[error("the migration was cancelled")]
    Cancelled,
    /// No Commit arrived in time after Complete.
    #[error("no Commit from the destination within {0:?} after the last state was sent")]
    CommitTimeout(Duration),
    /// Page records or state broke the rules of the stream.
    #[error("invalid migration stream: {0}")]
    Stream(String),
    /// Source only: the migration failed after the session sealed its
    /// final record (confidential), and neither a Commit nor a valid abort
    /// token was read. The guest may be running at the destination, so the
    /// engine left it paused here (throttle 0, tracking off): only an
    /// operator who knows the destination's fate may resume or drop it.
    #[error(
        "the guest stays paused: the migration session sealed its final record and neither a Commit nor \
         a valid abort token was read, so it may be running at the destination (after: {error})"
    )]
    Undecided {
        /// What failed.
        error: Box<MigrationError>,
    },
}

fn versions(accepted: &[u16]) -> String {
    match accepted {
        [one] => format!("version {one}"),
        [rest @ .., last] => {
            let rest: Vec<String> = rest.iter().map(u16::to_string).collect();
            format!("versions {} and {last}", rest.join(", "))
        }
        [] => "no version".into(),
    }
}

impl MigrationError {
    /// Whether the peer already knows the migration is over (so sending
    /// it an Abort is pointless).
    pub(crate) fn peer_knows(&self) -> bool {
        matches!(
            self,
            MigrationError::Refused { .. }
                | MigrationError::PeerAborted { .. }
                | MigrationError::Protocol(ProtocolError::Closed)
        )
    }

    pub(crate) fn vm(op: &'static str) -> impl FnOnce(VmOpError) -> MigrationError {
        move |source| MigrationError::Vm { op, source }
    }

    /// A [`MigrationError::Stream`] saying `what`.
    pub fn stream(what: impl Into<String>) -> Self {
        MigrationError::Stream(what.into())
    }
}
