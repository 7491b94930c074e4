//! What tells the two sides' handshake messages apart.
//!
//! The source and the destination take mirror-image steps (send evidence
//! and check the peer's, send a Finished and check the peer's), but the
//! two directions must never be confused: each side's evidence binds its
//! own label, its messages carry their own type bytes and transcript
//! role, and each direction's Finished has its own key. [`Side`] maps a
//! side to those, so the steps in [`super::exchange`] are written once
//! and take the side as a parameter.

use super::messages::kind;
use crate::keys::{KeySchedule, KEY_LEN};
use crate::transcript::{Role, DST_EVIDENCE_LABEL, SRC_EVIDENCE_LABEL};

/// One end of the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// The initiator.
    Source,
    /// The responder.
    Destination,
}

impl Side {
    /// The other end.
    pub(super) fn peer(self) -> Side {
        match self {
            Side::Source => Side::Destination,
            Side::Destination => Side::Source,
        }
    }

    /// The role its messages enter the transcript under.
    pub(super) fn role(self) -> Role {
        match self {
            Side::Source => Role::Source,
            Side::Destination => Role::Destination,
        }
    }

    /// The label its evidence's report_data binds.
    pub(super) fn evidence_label(self) -> &'static [u8] {
        match self {
            Side::Source => SRC_EVIDENCE_LABEL,
            Side::Destination => DST_EVIDENCE_LABEL,
        }
    }

    /// Type byte of its evidence message.
    pub(super) fn evidence_kind(self) -> u8 {
        match self {
            Side::Source => kind::SRC_EVIDENCE,
            Side::Destination => kind::DST_EVIDENCE,
        }
    }

    /// Type byte of its Finished message.
    pub(super) fn finished_kind(self) -> u8 {
        match self {
            Side::Source => kind::SRC_FINISHED,
            Side::Destination => kind::DST_FINISHED,
        }
    }

    /// The key of its Finished MAC (one per direction).
    pub(super) fn finished_key(self, keys: &KeySchedule) -> &[u8; KEY_LEN] {
        match self {
            Side::Source => &keys.s2d_finished,
            Side::Destination => &keys.d2s_finished,
        }
    }
}
