//! The plain pair of the sealer seam: the VMM reads guest memory and
//! sends `Pages` and `ZeroPages` (never-populated pages are not read),
//! and writes them where their addresses say at the destination.

use super::sealer::{Carried, Opener, RecordSink, Sealer};
use super::MigrationError;
use crate::protocol::{Message, ProtocolError, MAX_PAGES_PER_FRAME, PAGE_BYTES};
use crate::vm::{DestinationVm, SourceVm};
use std::mem;

/// Pages round 0 clears and carries at a time (8 MiB): one question about
/// never-populated pages per window, where a frame's worth (256 pages)
/// made 16 K of them for an idle 16 GiB guest.
const ROUND0_WINDOW: u64 = 2048;

/// Sends the pending zero run, if any.
fn send_zero_run(round: u32, zero_run: &mut Option<(u64, u64)>, out: &mut RecordSink<'_>) -> Result<(), ProtocolError> {
    match zero_run.take() {
        Some((gpa, count)) => out(&Message::ZeroPages { round, gpa, count }),
        None => Ok(()),
    }
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

    /// One frame's worth of pages from `gpa` (at most
    /// [`MAX_PAGES_PER_FRAME`]; `unpopulated` says which were never
    /// populated): the non-zero ones as one `Pages` message, the zero ones
    /// into `zero_run`, which the caller sends once a non-zero page or the
    /// end of its run ends it, so a zero run may span frames.
    fn seal_frame(
        &mut self,
        vm: &dyn SourceVm,
        round: u32,
        gpa: u64,
        unpopulated: &[bool],
        zero_run: &mut Option<(u64, u64)>,
        out: &mut RecordSink<'_>,
    ) -> Result<Carried, MigrationError> {
        let n = unpopulated.len();
        let count = n as u64;
        debug_assert!(n <= MAX_PAGES_PER_FRAME);
        self.gpas.clear();
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
        let mut kept = 0;
        for (i, &never_populated) in unpopulated.iter().enumerate() {
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
                *zero_run = match *zero_run {
                    Some((start, len)) => Some((start, len + 1)),
                    None => Some((page_gpa, 1)),
                };
                continue;
            }
            send_zero_run(round, zero_run, out)?;
            if all_populated && kept != i {
                self.data.copy_within(i * PAGE_BYTES..(i + 1) * PAGE_BYTES, slot.start);
            }
            self.gpas.push(page_gpa);
            kept += 1;
        }
        self.data.truncate(kept * PAGE_BYTES);
        self.flush_pages(round, out)?;
        Ok(carried)
    }
}

impl Sealer for PlainSealer {
    fn full_round_chunk(&self) -> u64 {
        ROUND0_WINDOW
    }

    /// Asks the VM once per run which pages were never populated (the
    /// run's dirty bits are already cleared, so a page populated after the
    /// answer is dirty again and goes in the next round), then carries the
    /// run a frame at a time, zero runs spanning frames: an idle 16 GiB
    /// guest's round 0 is 2 K questions and a few zero runs, not 16 K of
    /// each.
    fn seal_runs(
        &mut self,
        vm: &dyn SourceVm,
        round: u32,
        runs: &[(u64, u64)],
        out: &mut RecordSink<'_>,
    ) -> Result<Carried, MigrationError> {
        let mut carried = Carried::empty(round);
        for &(gpa, count) in runs {
            let unpopulated = vm
                .unpopulated_pages(gpa, count)
                .map_err(MigrationError::vm("query unpopulated guest pages"))?;
            let mut zero_run = None;
            for (f, frame) in unpopulated.chunks(MAX_PAGES_PER_FRAME).enumerate() {
                let frame_gpa = gpa + (f * MAX_PAGES_PER_FRAME * PAGE_BYTES) as u64;
                let c = if frame.iter().all(|&u| u) {
                    // Never populated: zero, not read; the run grows.
                    let n = frame.len() as u64;
                    zero_run = Some(match zero_run {
                        Some((start, len)) => (start, len + n),
                        None => (frame_gpa, n),
                    });
                    Carried {
                        round,
                        pages: n,
                        zero_pages: n,
                    }
                } else {
                    self.seal_frame(vm, round, frame_gpa, frame, &mut zero_run, out)?
                };
                carried.add(c);
            }
            send_zero_run(round, &mut zero_run, out)?;
        }
        Ok(carried)
    }

    fn seal_state(&mut self, state: Vec<u8>, out: &mut RecordSink<'_>) -> Result<(), MigrationError> {
        Ok(out(&Message::State { state })?)
    }

    fn read_decision(&mut self, message: Message) -> Result<(), MigrationError> {
        match message {
            Message::Commit => Ok(()),
            Message::Abort { reason } => Err(MigrationError::PeerAborted { reason }),
            other => Err(MigrationError::Unexpected {
                got: other.kind(),
                during: "waiting for Commit",
            }),
        }
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
    use super::*;
    use crate::vm::{DirtyBitmap, MemoryRange, VmOpError};

    /// Guest memory of `pages` pages from 0: which are populated, and
    /// their bytes (a page's first byte, the rest zero).
    struct Memory {
        populated: Vec<bool>,
        first_byte: Vec<u8>,
    }

    impl SourceVm for Memory {
        fn memory_ranges(&self) -> Vec<MemoryRange> {
            vec![(0, self.populated.len() as u64 * PAGE_BYTES as u64)]
        }
        fn start_dirty_tracking(&mut self) -> Result<(), VmOpError> {
            Ok(())
        }
        fn stop_dirty_tracking(&mut self) -> Result<(), VmOpError> {
            Ok(())
        }
        fn dirty_pages(&mut self) -> Result<Vec<DirtyBitmap>, VmOpError> {
            Ok(Vec::new())
        }
        fn clear_dirty(&mut self, _: u64, _: u64) -> Result<(), VmOpError> {
            Ok(())
        }
        fn read_memory(&self, gpa: u64, buf: &mut [u8]) -> Result<(), VmOpError> {
            let first = gpa as usize / PAGE_BYTES;
            for (i, page) in buf.chunks_mut(PAGE_BYTES).enumerate() {
                assert!(
                    self.populated[first + i],
                    "page {} read though never populated",
                    first + i
                );
                page.fill(0);
                page[0] = self.first_byte[first + i];
            }
            Ok(())
        }
        fn unpopulated_pages(&self, gpa: u64, pages: u64) -> Result<Vec<bool>, VmOpError> {
            let first = gpa as usize / PAGE_BYTES;
            Ok(self.populated[first..first + pages as usize]
                .iter()
                .map(|p| !p)
                .collect())
        }
        fn set_throttle(&mut self, _: u8) -> Result<(), VmOpError> {
            Ok(())
        }
        fn pause(&mut self) -> Result<(), VmOpError> {
            Ok(())
        }
        fn resume(&mut self) -> Result<(), VmOpError> {
            Ok(())
        }
        fn save_state(&mut self) -> Result<Vec<u8>, VmOpError> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn round_zero_windows_send_zero_runs_across_frames_and_read_only_populated_pages() {
        // 0..600 never populated, 600..700 populated zeros, 700 holds a
        // byte, 701..2048 never populated.
        let mut vm = Memory {
            populated: (0..2048).map(|p| (600..=700).contains(&p)).collect(),
            first_byte: vec![0; 2048],
        };
        vm.first_byte[700] = 7;
        let mut sent = Vec::new();
        let carried = PlainSealer::default()
            .seal_runs(&vm, 0, &[(0, 2048)], &mut |m: &Message| {
                sent.push(m.clone());
                Ok(())
            })
            .unwrap();
        assert_eq!((carried.pages, carried.zero_pages), (2048, 2047));
        let page = PAGE_BYTES as u64;
        assert_eq!(sent.len(), 3, "{sent:?}");
        assert!(matches!(
            sent[0],
            Message::ZeroPages {
                round: 0,
                gpa: 0,
                count: 700
            }
        ));
        match &sent[1] {
            Message::Pages { gpas, data, .. } => {
                assert_eq!(gpas, &[700 * page]);
                assert_eq!((data[0], data.len()), (7, PAGE_BYTES));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(sent[2], Message::ZeroPages { gpa, count: 1347, .. } if gpa == 701 * page));

        // A dirty round's short run: the same, within one frame.
        let mut sent = Vec::new();
        PlainSealer::default()
            .seal_runs(&vm, 3, &[(690 * page, 20)], &mut |m: &Message| {
                sent.push(m.clone());
                Ok(())
            })
            .unwrap();
        assert!(matches!(
            sent[0],
            Message::ZeroPages {
                round: 3,
                count: 10,
                ..
            }
        ));
        assert!(matches!(&sent[1], Message::Pages { gpas, .. } if gpas == &[700 * page]));
        assert!(matches!(sent[2], Message::ZeroPages { count: 9, .. }));
    }

    #[test]
    fn zero_detection() {
        let mut page = vec![0u8; 4096];
        assert!(is_zero(&page));
        page[4095] = 1;
        assert!(!is_zero(&page));
    }
}
