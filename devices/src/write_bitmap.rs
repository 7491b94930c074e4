//! The bitmap of guest pages the VMM itself writes (devices, loaders, the
//! migration's own writes), which KVM's dirty log and rings never see.
//!
//! It plugs into vm-memory as the regions' `Bitmap`, like vm-memory's
//! `AtomicBitmap`, with one addition: a summary bit per 64-page word, set
//! whenever a bit of that word is. Migration reads the set words during
//! the guest's pause, and with only the dense bitmap it had to visit every
//! word (64 K of them for a 16 GiB guest, each swapped out and back,
//! because `AtomicBitmap` lends its words only by taking them). With the
//! summary it visits the 1 K summary words and then only the words that
//! hold a page.
//!
//! Ordering: [`WriteBitmap::mark_dirty`] sets the page's bit, then the
//! summary bit; [`WriteBitmap::dirty_words`] clears a summary bit whose
//! word it found empty and then reads the word again, setting the summary
//! bit back if a bit appeared. With sequentially consistent operations a
//! concurrent write is either seen by that second read or sets its summary
//! bit after the clear: a set page bit never stays hidden.

use std::sync::atomic::{AtomicU64, Ordering};
use vm_memory::bitmap::{Bitmap, NewBitmap, RefSlice, WithBitmapSlice};

/// Bytes of the pages tracked: the host's and the guest's page, 4 KiB.
const PAGE: usize = 4096;

/// Pages written by the VMM, one bit each, with a summary of the words in use.
#[derive(Debug)]
pub struct WriteBitmap {
    words: Vec<AtomicU64>,
    /// Bit `b` of summary word `s` is set when word `64 s + b` may hold a page.
    summary: Vec<AtomicU64>,
    pages: usize,
}

impl WriteBitmap {
    /// A clean bitmap for `bytes` bytes of memory.
    pub fn new(bytes: usize) -> Self {
        let pages = bytes.div_ceil(PAGE);
        let words = pages.div_ceil(64);
        WriteBitmap {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            summary: (0..words.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            pages,
        }
    }

    /// Pages tracked.
    pub fn len(&self) -> usize {
        self.pages
    }

    /// Whether no page is tracked at all (a zero-sized region).
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }

    /// Whether page `index` was written (and not reset since).
    pub fn is_bit_set(&self, index: usize) -> bool {
        index < self.pages && self.words[index / 64].load(Ordering::SeqCst) & (1 << (index % 64)) != 0
    }

    /// Whether the page holding byte `offset` was written.
    pub fn is_addr_set(&self, offset: usize) -> bool {
        self.is_bit_set(offset / PAGE)
    }

    /// Marks page `index` written.
    pub fn set_bit(&self, index: usize) {
        if index >= self.pages {
            return;
        }
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        // A load first: devices write the same pages over and over, and a
        // bit already set needs no locked operation.
        if self.words[word].load(Ordering::SeqCst) & bit == 0 {
            self.words[word].fetch_or(bit, Ordering::SeqCst);
        }
        let (s, sbit) = (word / 64, 1u64 << (word % 64));
        if self.summary[s].load(Ordering::SeqCst) & sbit == 0 {
            self.summary[s].fetch_or(sbit, Ordering::SeqCst);
        }
    }

    /// Forgets the pages of `[offset, offset + len)` (their content was
    /// sent). The summary bits stay; [`Self::dirty_words`] drops them once
    /// it finds their words empty.
    pub fn reset_addr_range(&self, offset: usize, len: usize) {
        let Some((first, last)) = self.page_span(offset, len) else {
            return;
        };
        let mut page = first;
        while page <= last {
            let word = page / 64;
            let lo = page % 64;
            let hi = (last - word * 64).min(63);
            let mask = if hi - lo == 63 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo + 1)) - 1) << lo
            };
            if self.words[word].load(Ordering::SeqCst) & mask != 0 {
                self.words[word].fetch_and(!mask, Ordering::SeqCst);
            }
            page = word * 64 + hi + 1;
        }
    }

    /// The pages of `[offset, offset + len)` that exist, first and last.
    fn page_span(&self, offset: usize, len: usize) -> Option<(usize, usize)> {
        if len == 0 || offset / PAGE >= self.pages {
            return None;
        }
        let last = (offset.saturating_add(len - 1) / PAGE).min(self.pages - 1);
        Some((offset / PAGE, last))
    }

    /// The words holding a written page, as (index, word), ascending: bit
    /// `b` of word `i` is page `64 i + b`. Reading clears nothing but
    /// summary bits of empty words.
    pub fn dirty_words(&self) -> Vec<(usize, u64)> {
        self.dirty_words_in(0, self.words.len())
    }

    /// [`Self::dirty_words`] among words `w0..w1`: through the summary, so
    /// a large clean range costs a word per 64 words.
    fn dirty_words_in(&self, w0: usize, w1: usize) -> Vec<(usize, u64)> {
        let mut found = Vec::new();
        if w0 >= w1 {
            return found;
        }
        for s in w0 / 64..=(w1 - 1) / 64 {
            let summary = &self.summary[s];
            let mut rest = summary.load(Ordering::SeqCst);
            while rest != 0 {
                let b = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                let index = s * 64 + b;
                if !(w0..w1).contains(&index) {
                    continue;
                }
                let mut word = self.words[index].load(Ordering::SeqCst);
                if word == 0 {
                    // Drop the stale summary bit, then look again (see
                    // the module doc for why no write can hide).
                    summary.fetch_and(!(1 << b), Ordering::SeqCst);
                    word = self.words[index].load(Ordering::SeqCst);
                    if word != 0 {
                        summary.fetch_or(1 << b, Ordering::SeqCst);
                    }
                }
                if word != 0 {
                    found.push((index, word));
                }
            }
        }
        found
    }

    /// The written pages among pages `first..end`, ascending (see
    /// [`Self::dirty_words`]).
    pub fn dirty_pages_in(&self, first: usize, end: usize) -> Vec<u64> {
        let end = end.min(self.pages);
        if first >= end {
            return Vec::new();
        }
        let words = self.dirty_words_in(first / 64, (end - 1) / 64 + 1);
        words
            .into_iter()
            .flat_map(|(i, word)| (0..64).filter(move |b| word & (1 << b) != 0).map(move |b| i * 64 + b))
            .filter(|page| (first..end).contains(page))
            .map(|page| page as u64)
            .collect()
    }

    /// The written pages, ascending.
    pub fn dirty_pages(&self) -> Vec<u64> {
        self.dirty_pages_in(0, self.pages)
    }
}

impl<'a> WithBitmapSlice<'a> for WriteBitmap {
    type S = RefSlice<'a, Self>;
}

impl Bitmap for WriteBitmap {
    fn mark_dirty(&self, offset: usize, len: usize) {
        if let Some((first, last)) = self.page_span(offset, len) {
            (first..=last).for_each(|page| self.set_bit(page));
        }
    }

    fn dirty_at(&self, offset: usize) -> bool {
        self.is_addr_set(offset)
    }

    fn slice_at(&self, offset: usize) -> <Self as WithBitmapSlice<'_>>::S {
        RefSlice::new(self, offset)
    }
}

impl Default for WriteBitmap {
    fn default() -> Self {
        WriteBitmap::new(0)
    }
}

impl NewBitmap for WriteBitmap {
    fn with_len(len: usize) -> Self {
        WriteBitmap::new(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_whole_pages_of_a_byte_range_and_reads_them_by_word() {
        let b = WriteBitmap::new(64 << 20);
        b.mark_dirty(PAGE - 1, 2);
        b.mark_dirty(100 * PAGE, 1);
        b.mark_dirty(8191 * PAGE, 1);
        assert_eq!(b.dirty_pages(), [0, 1, 100, 8191]);
        assert!(b.dirty_at(PAGE) && b.dirty_at(100 * PAGE + 17) && !b.dirty_at(2 * PAGE));
        // Reading clears nothing.
        assert_eq!(b.dirty_pages(), [0, 1, 100, 8191]);
    }

    #[test]
    fn reset_clears_exactly_the_range_and_the_empty_word_drops_from_the_summary() {
        let b = WriteBitmap::new(1 << 30);
        for page in [3usize, 63, 64, 127, 128, 200_000] {
            b.set_bit(page);
        }
        b.reset_addr_range(63 * PAGE, 66 * PAGE); // pages 63..=128
        assert_eq!(b.dirty_pages(), [3, 200_000]);
        b.reset_addr_range(0, 1 << 30);
        assert_eq!(b.dirty_pages(), Vec::<u64>::new());
        assert!(b.summary.iter().all(|s| s.load(Ordering::SeqCst) == 0));
        // A word cleared and written again is found again.
        b.set_bit(64);
        assert_eq!(b.dirty_pages(), [64]);
    }

    #[test]
    fn pages_in_a_range_come_from_the_summary() {
        let b = WriteBitmap::new(1 << 30);
        for page in [0usize, 63, 64, 4095, 4096, 100_000, 262_143] {
            b.set_bit(page);
        }
        assert_eq!(b.dirty_pages_in(0, 262_144), [0, 63, 64, 4095, 4096, 100_000, 262_143]);
        assert_eq!(b.dirty_pages_in(63, 4096), [63, 64, 4095]);
        assert_eq!(b.dirty_pages_in(64, 64), Vec::<u64>::new());
        assert_eq!(b.dirty_pages_in(100_000, 1 << 40), [100_000, 262_143]);
    }

    #[test]
    fn ranges_past_the_end_are_cut_and_an_empty_bitmap_is_harmless() {
        let b = WriteBitmap::new(10 * PAGE);
        b.mark_dirty(9 * PAGE, 5 * PAGE);
        b.set_bit(10);
        assert_eq!(b.dirty_pages(), [9]);
        b.reset_addr_range(9 * PAGE, usize::MAX);
        assert!(b.dirty_pages().is_empty());
        let empty = WriteBitmap::default();
        empty.mark_dirty(0, PAGE);
        assert!(empty.is_empty() && empty.dirty_pages().is_empty());
    }

    #[test]
    fn writers_racing_the_reader_are_never_lost() {
        let b = std::sync::Arc::new(WriteBitmap::new(256 << 20));
        let writer = {
            let b = b.clone();
            std::thread::spawn(move || {
                for round in 0..20_000usize {
                    b.set_bit((round * 4099) % 65536);
                }
            })
        };
        while !writer.is_finished() {
            for (i, word) in b.dirty_words() {
                b.reset_addr_range(i * 64 * PAGE, 64 * PAGE);
                assert_ne!(word, 0);
            }
        }
        writer.join().unwrap();
        // Whatever the reader cleared, every page set after its last
        // clear is still found through the summary.
        let all: usize = (0..b.words.len())
            .map(|i| b.words[i].load(Ordering::SeqCst).count_ones() as usize)
            .sum();
        assert_eq!(all, b.dirty_pages().len());
    }
}
