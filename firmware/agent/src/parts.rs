//! The agent's fields that the session commands work with, borrowed
//! apart: a command needs the memory, the memory map, the session and
//! the run side by side, which one `&mut Agent` cannot lend at once.

use crate::env::{EpochTables, GuestMemory, Platform};
use crate::memmap::MemoryMap;
use crate::reply::{fail, Fail};
use crate::{Agent, Run, Session};
use covm_guest_abi::mailbox::status;

/// The agent's fields a session command uses, each borrowed on its own.
pub(crate) struct Parts<'x, 'a, M, P> {
    pub(crate) mem: &'x mut M,
    pub(crate) platform: &'x mut P,
    /// The private memory map (the agent started): a source session's
    /// own, while one is open.
    pub(crate) map: &'x MemoryMap,
    pub(crate) session: &'x mut Session<'a>,
    pub(crate) scratch: &'x mut [u8],
    pub(crate) run: &'x mut Run,
    pub(crate) imported: &'x mut bool,
}

impl<'a, M: GuestMemory, P: Platform, E: EpochTables<'a>> Agent<'a, M, P, E> {
    /// The agent's parts, once it started.
    pub(crate) fn parts(&mut self) -> Result<Parts<'_, 'a, M, P>, Fail> {
        let Agent {
            mem,
            platform,
            own,
            session_map,
            session,
            scratch,
            run,
            imported,
            ..
        } = self;
        let boot = &own.as_ref().map_err(|_| fail!(status::REFUSED, "not started"))?.map;
        // A source session walks its own map (the shared pages left out).
        let map = session_map.as_ref().map_or(boot, |(map, _)| map);
        Ok(Parts {
            mem,
            platform,
            map,
            session,
            scratch,
            run,
            imported,
        })
    }
}
