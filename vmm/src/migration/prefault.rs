//! The destination's first touch, off the critical path: a helper thread
//! faults in the host memory behind the pages an incoming batch carries
//! ([`crate::vm::memory::populate`]) while the batch is being applied.
//!
//! Why: a page's first write at the destination costs a host page fault
//! and, in the guest, a shadow-paging fault; on this project's nested
//! hosts the host fault taken from inside the guest cost about 13 µs a
//! page, taken by covm with `MADV_POPULATE_WRITE` about 2.5 µs
//! (docs/benchmarks.md, issue 18). The helper runs on another CPU, ahead
//! of whoever writes the pages; where it falls behind the writer simply
//! takes the fault itself. Only pages the stream names are populated, so
//! a sparse guest costs no more memory here than at the source.

use crate::vm::memory::{self, GuestMemory};
use covm_migration::engine::{Carried, MigrationError, Opener, PlainOpener};
use covm_migration::protocol::Message;
use covm_migration::vm::DestinationVm;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Batches the helper may hold before new ones are dropped (each is a
/// hint; a dropped one only means the writer faults those pages itself).
const QUEUE: usize = 4;

/// Pages populated per call, between checks of the stop flag: a helper
/// told to stop ends within about 64 × 2.5 µs on this project's hosts.
const STEP_PAGES: u64 = 64;

/// A helper thread populating guest memory ahead of its writer.
///
/// Dropping it stops the helper without waiting for it (it may be
/// behind, and whoever drops it is about to resume the guest); the
/// helper's handle on guest memory keeps the mapping alive until it ends.
pub struct Prefaulter {
    queue: Option<SyncSender<Vec<(u64, u64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    dropped: u64,
}

/// The helper's loop: populates each batch's runs until told to stop or
/// the queue closes, then logs what it did.
fn help(memory: GuestMemory, batches: Receiver<Vec<(u64, u64)>>, stop: Arc<AtomicBool>) {
    let (mut pages, mut busy, mut failed) = (0u64, Duration::ZERO, None);
    'batches: for runs in batches {
        let started = Instant::now();
        for (gpa, count) in runs {
            for first in (0..count).step_by(STEP_PAGES as usize) {
                if stop.load(Ordering::Relaxed) {
                    break 'batches;
                }
                let n = (count - first).min(STEP_PAGES);
                if let Err(e) = memory::populate(&memory, gpa + first * 4096, n * 4096) {
                    // An old kernel (EINVAL) or an address outside RAM
                    // (the stream is untrusted; the agent refuses such a
                    // page): stop helping.
                    failed = Some(e);
                    break 'batches;
                }
                pages += n;
            }
        }
        busy += started.elapsed();
    }
    tracing::debug!(
        pages,
        busy_ms = busy.as_secs_f64() * 1e3,
        error = failed.map(|e| e.to_string()),
        "migration prefault helper done"
    );
}

impl Prefaulter {
    /// Starts the helper over `memory`. `None` (logged) when no thread
    /// can be started: the writer then takes every fault, as before.
    pub fn start(memory: GuestMemory) -> Option<Self> {
        let (queue, batches) = mpsc::sync_channel::<Vec<(u64, u64)>>(QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("migration-prefault".into())
            .spawn(move || help(memory, batches, flag));
        match thread {
            Ok(thread) => Some(Prefaulter {
                queue: Some(queue),
                stop,
                thread: Some(thread),
                dropped: 0,
            }),
            Err(e) => {
                tracing::warn!("no prefault helper thread ({e}): pages fault in as they are written");
                None
            }
        }
    }

    /// Asks the helper to populate `runs` (first gpa, pages) now. Never
    /// blocks: when the helper is behind, the batch is left to the writer.
    pub fn ahead(&mut self, runs: Vec<(u64, u64)>) {
        if runs.is_empty() {
            return;
        }
        if let Some(queue) = &self.queue {
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = queue.try_send(runs) {
                self.dropped += 1;
            }
        }
    }

    /// Closes the queue and waits until the helper has done what it was
    /// given (tests: a dropped helper stops instead).
    #[cfg(test)]
    fn finish(mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the helper does not panic");
        }
    }
}

impl Drop for Prefaulter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.queue.take();
        if self.dropped > 0 {
            tracing::debug!(batches = self.dropped, "prefault: batches left to the writer");
        }
        // Not joined: see the type's doc.
        self.thread.take();
    }
}

/// Appends the runs of pages in `gpas` (ascending runs merge) to `runs`.
pub fn runs_of(gpas: impl IntoIterator<Item = u64>, runs: &mut Vec<(u64, u64)>) {
    for gpa in gpas {
        match runs.last_mut() {
            Some((first, n)) if *first + *n * 4096 == gpa => *n += 1,
            _ => runs.push((gpa, 1)),
        }
    }
}

/// Pages per piece of a plain frame handed to the helper last first.
const PIECE_PAGES: u64 = 16;

/// `runs` cut into pieces of at most [`PIECE_PAGES`], last piece first:
/// covm writes a frame from its start, the helper populates from its end,
/// and they meet in the middle instead of faulting the same pages.
fn from_the_end(runs: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut pieces: Vec<(u64, u64)> = runs
        .iter()
        .flat_map(|&(gpa, pages)| {
            (0..pages.div_ceil(PIECE_PAGES))
                .map(move |i| (gpa + i * PIECE_PAGES * 4096, (pages - i * PIECE_PAGES).min(PIECE_PAGES)))
        })
        .collect();
    pieces.reverse();
    pieces
}

/// A plain migration's opener with the helper beside it: each frame's
/// pages are populated from the end while covm writes them from the
/// start (docs/benchmarks.md, issue 18).
pub struct PrefaultingOpener {
    plain: PlainOpener,
    prefault: Option<Prefaulter>,
}

impl PrefaultingOpener {
    /// A plain opener whose helper populates `memory`.
    pub fn new(memory: GuestMemory) -> Self {
        PrefaultingOpener {
            plain: PlainOpener,
            prefault: Prefaulter::start(memory),
        }
    }
}

impl Opener for PrefaultingOpener {
    fn is_page_record(&self, message: &Message) -> bool {
        self.plain.is_page_record(message)
    }

    fn open_pages(&mut self, vm: &mut dyn DestinationVm, message: Message) -> Result<Carried, MigrationError> {
        if let (Message::Pages { gpas, .. }, Some(prefault)) = (&message, &mut self.prefault) {
            let mut runs = Vec::new();
            runs_of(gpas.iter().copied(), &mut runs);
            prefault.ahead(from_the_end(&runs));
        }
        self.plain.open_pages(vm, message)
    }

    fn open_state(&mut self, message: Message) -> Result<Option<Vec<u8>>, MigrationError> {
        // No page follows the state: the helper's work is done.
        self.prefault = None;
        self.plain.open_state(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryBackend};

    #[test]
    fn consecutive_pages_merge_into_runs() {
        let mut runs = Vec::new();
        runs_of([0x1000, 0x2000, 0x3000, 0x8000, 0x9000, 0x5000], &mut runs);
        assert_eq!(runs, [(0x1000, 3), (0x8000, 2), (0x5000, 1)]);
    }

    #[test]
    fn a_frame_is_handed_over_last_piece_first() {
        let pieces = from_the_end(&[(0x10_0000, 40), (0x80_0000, 3)]);
        assert_eq!(
            pieces,
            [
                (0x80_0000, 3),
                (0x10_0000 + 32 * 4096, 8),
                (0x10_0000 + 16 * 4096, 16),
                (0x10_0000, 16)
            ]
        );
    }

    #[test]
    fn the_helper_populates_what_it_is_given_and_nothing_else() {
        let memory = memory::allocate(8 << 20).unwrap();
        let base = memory.find_region(GuestAddress(0)).unwrap().as_ptr() as u64;
        let mut helper = Prefaulter::start(memory.clone()).unwrap();
        helper.ahead(vec![(0x10_0000, 4), (0x40_0000, 1)]);
        helper.finish();
        let unpopulated = memory::unpopulated_host_pages(base, 2048).unwrap();
        let populated: Vec<u64> = (0..2048u64).filter(|&p| !unpopulated[p as usize]).collect();
        assert_eq!(populated, [0x100, 0x101, 0x102, 0x103, 0x400]);
    }
}
