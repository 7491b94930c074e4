//! The sealer seam: the one place where pages and state become wire
//! records (source) and records become memory and state (destination).
//!
//! The engine decides *which* pages move and *when* (dirty log, rounds,
//! convergence, pause); a [`Sealer`] decides *how* they are carried, and
//! an [`Opener`] undoes it. The plain pair here reads guest memory
//! directly and sends `Pages` / `ZeroPages` / `State`. The confidential
//! pair (a later issue) replaces exactly these two objects: its sealer
//! hands the addresses to the in-guest agent and forwards the sealed
//! records the agent produces (new message kinds in a new protocol
//! version); its opener hands records to the destination agent. Nothing
//! else in the engine changes: "one engine, two sealers".

use super::MigrationError;
use crate::protocol::{Message, ProtocolError, MAX_PAGES_PER_FRAME, PAGE_BYTES};
use crate::vm::{DestinationVm, SourceVm};
use std::mem;

/// Sends each record the sealer produces (the engine counts its bytes).
pub type RecordSink<'a> = dyn FnMut(&Message) -> Result<(), ProtocolError> + 'a;

/// Pages a record (or a batch of records) carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carried {
    /// Round the records belong to.
    pub round: u32,
    /// Pages carried, zero pages included.
    pub pages: u64,
    /// Of which as zero-page markers.
    pub zero_pages: u64,
}

/// Source side: turns pages and state into records.
pub trait Sealer: Send {
    /// Exports the `count` pages from `gpa` for `round` (their dirty bits
    /// already cleared, at most [`MAX_PAGES_PER_FRAME`] pages), passing
    /// every record to `out`.
    fn seal_pages(
        &mut self,
        vm: &dyn SourceVm,
        round: u32,
        gpa: u64,
        count: u64,
        out: &mut RecordSink<'_>,
    ) -> Result<Carried, MigrationError>;

    /// Wraps the paused VM's state into its record.
    fn seal_state(&mut self, state: Vec<u8>) -> Result<Message, MigrationError>;
}

/// Destination side: applies records.
pub trait Opener: Send {
    /// Whether `message` is a page record this opener applies.
    fn is_page_record(&self, message: &Message) -> bool;

    /// Applies a page record to the VM and says what it carried. The
    /// engine checks the round and the counts.
    fn open_pages(&mut self, vm: &mut dyn DestinationVm, message: Message) -> Result<Carried, MigrationError>;

    /// The VM state inside a state record, or `None` if `message` is not one.
    fn open_state(&mut self, message: Message) -> Result<Option<Vec<u8>>, MigrationError>;
}

/// Plain pages: the VMM reads guest memory, zero pages become markers.
#[derive(Debug, Default)]
pub struct PlainSealer {
    gpas: Vec<u64>,
    data: Vec<u8>,
}

fn is_zero(page: &[u8]) -> bool {
    // Or-folds of 64 bytes vectorise; the early exit keeps the usual
    // non-zero page cheap.
    page.chunks(64).all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}

impl PlainSealer {
    /// Sends the gathered non-zero pages as one `Pages` record.
    fn flush_pages(&mut self, round: u32, out: &mut RecordSink<'_>) -> Result<(), ProtocolError> {
        if self.gpas.is_empty() {
            return Ok(());
        }
        let message = Message::Pages {
            round,
            gpas: mem::take(&mut self.gpas),
            data: mem::take(&mut self.data),
        };
        let result = out(&message);
        if let Message::Pages { mut gpas, data, .. } = message {
            // The data buffer keeps its length: its bytes are overwritten
            // before they are sent again, and re-growing it would zero-fill.
            gpas.clear();
            (self.gpas, self.data) = (gpas, data);
        }
        result
    }
}

impl Sealer for PlainSealer {
    fn seal_pages(
        &mut self,
        vm: &dyn SourceVm,
        round: u32,
        gpa: u64,
        count: u64,
        out: &mut RecordSink<'_>,
    ) -> Result<Carried, MigrationError> {
        let n = count as usize;
        debug_assert!(n <= MAX_PAGES_PER_FRAME);
        self.gpas.clear();
        let unpopulated = vm
            .unpopulated_pages(gpa, count)
            .map_err(MigrationError::vm("query unpopulated guest pages"))?;
        // The buffer keeps its length between runs (Vec::resize zero-fills
        // only when it grows): filling 1 MiB per run showed in profiles.
        let all_populated = !unpopulated.iter().any(|&u| u);
        if all_populated {
            // One read of the whole run into the record's buffer; zero
            // pages are squeezed out in place below.
            if self.data.len() < n * PAGE_BYTES {
                self.data.resize(n * PAGE_BYTES, 0);
            }
            vm.read_memory(gpa, &mut self.data[..n * PAGE_BYTES])
                .map_err(MigrationError::vm("read guest memory"))?;
        }
        let mut carried = Carried {
            round,
            pages: count,
            zero_pages: 0,
        };
        let mut zero_run: Option<(u64, u64)> = None;
        let mut kept = 0;
        for (i, &never_populated) in unpopulated.iter().enumerate().take(n) {
            let page_gpa = gpa + (i * PAGE_BYTES) as u64;
            let slot = kept * PAGE_BYTES..(kept + 1) * PAGE_BYTES;
            let zero = if never_populated {
                // Never populated, so zero: not read (that would fault it
                // in), not scanned.
                true
            } else if all_populated {
                is_zero(&self.data[i * PAGE_BYTES..(i + 1) * PAGE_BYTES])
            } else {
                // Read straight into its place among the kept pages.
                if self.data.len() < slot.end {
                    self.data.resize(slot.end, 0);
                }
                vm.read_memory(page_gpa, &mut self.data[slot.clone()])
                    .map_err(MigrationError::vm("read guest memory"))?;
                is_zero(&self.data[slot.clone()])
            };
            if zero {
                carried.zero_pages += 1;
                zero_run = match zero_run {
                    Some((start, len)) => Some((start, len + 1)),
                    None => Some((page_gpa, 1)),
                };
                continue;
            }
            if let Some((start, len)) = zero_run.take() {
                out(&Message::ZeroPages {
                    round,
                    gpa: start,
                    count: len,
                })?;
            }
            if all_populated && kept != i {
                self.data.copy_within(i * PAGE_BYTES..(i + 1) * PAGE_BYTES, slot.start);
            }
            self.gpas.push(page_gpa);
            kept += 1;
        }
        if let Some((start, len)) = zero_run {
            out(&Message::ZeroPages {
                round,
                gpa: start,
                count: len,
            })?;
        }
        self.data.truncate(kept * PAGE_BYTES);
        self.flush_pages(round, out)?;
        Ok(carried)
    }

    fn seal_state(&mut self, state: Vec<u8>) -> Result<Message, MigrationError> {
        Ok(Message::State { state })
    }
}

/// Plain pages: writes them where their address says.
#[derive(Debug, Default)]
pub struct PlainOpener;

impl Opener for PlainOpener {
    fn is_page_record(&self, message: &Message) -> bool {
        matches!(message, Message::Pages { .. } | Message::ZeroPages { .. })
    }

    fn open_pages(&mut self, vm: &mut dyn DestinationVm, message: Message) -> Result<Carried, MigrationError> {
        let aligned = |gpa: u64| {
            if gpa % PAGE_BYTES as u64 != 0 {
                return Err(MigrationError::stream(format!(
                    "page address {gpa:#x} is not page-aligned"
                )));
            }
            Ok(())
        };
        match message {
            Message::Pages { round, gpas, data } => {
                // One write per run of consecutive addresses.
                let mut i = 0;
                while i < gpas.len() {
                    aligned(gpas[i])?;
                    let mut end = i + 1;
                    while end < gpas.len() && gpas[end] == gpas[end - 1].wrapping_add(PAGE_BYTES as u64) {
                        end += 1;
                    }
                    let bytes = &data[i * PAGE_BYTES..end * PAGE_BYTES];
                    vm.write_memory(gpas[i], bytes)
                        .map_err(MigrationError::vm("write guest memory"))?;
                    i = end;
                }
                Ok(Carried {
                    round,
                    pages: gpas.len() as u64,
                    zero_pages: 0,
                })
            }
            Message::ZeroPages { round, gpa, count } => {
                aligned(gpa)?;
                vm.zero_memory(gpa, count)
                    .map_err(MigrationError::vm("zero guest memory"))?;
                Ok(Carried {
                    round,
                    pages: count,
                    zero_pages: count,
                })
            }
            other => Err(MigrationError::Unexpected {
                got: other.kind(),
                during: "opening a page record",
            }),
        }
    }

    fn open_state(&mut self, message: Message) -> Result<Option<Vec<u8>>, MigrationError> {
        Ok(match message {
            Message::State { state } => Some(state),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::is_zero;

    #[test]
    fn zero_detection() {
        let mut page = vec![0u8; 4096];
        assert!(is_zero(&page));
        page[4095] = 1;
        assert!(!is_zero(&page));
    }
}
