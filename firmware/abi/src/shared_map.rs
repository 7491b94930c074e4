//! The guest's own record of which pages of its shared window it shares
//! with the host: one private page at [`SHARED_MAP`], written by the
//! firmware before each page-state request. Being private, it migrates
//! sealed with the rest of guest memory; the destination's agent compares
//! it with what the host says is shared (`ports::page_state::QUERY`)
//! before it commits, so a host that flips a page's kind during a
//! migration is caught.
//!
//! Layout: [`MAGIC`] (8 bytes, little-endian), then one bit per page of
//! `layout::SHARED_WINDOW` (bit `i % 8` of byte `8 + i / 8` set: page `i`
//! is shared). A page without the magic (never written) shares nothing.

use crate::layout::{PAGE_SIZE, SHARED_WINDOW, SHARED_WINDOW_SIZE};

/// Where the map lives: a private page of its own.
pub const SHARED_MAP: u64 = 0x00D0_0000;
/// The map's first 8 bytes once written.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHAREMAP");
/// Pages in the window.
pub const WINDOW_PAGES: usize = (SHARED_WINDOW_SIZE / PAGE_SIZE) as usize;
/// Bytes the map uses.
pub const MAP_LEN: usize = 8 + WINDOW_PAGES / 8;

/// Writes into `page` a map with window pages `first..first + count`
/// (indices in the window) marked `shared`, keeping the others.
pub fn mark(page: &mut [u8], first: usize, count: usize, shared: bool) {
    if u64::from_le_bytes(page[..8].try_into().expect("8 bytes")) != MAGIC {
        page[..MAP_LEN].fill(0);
        page[..8].copy_from_slice(&MAGIC.to_le_bytes());
    }
    for i in first..(first + count).min(WINDOW_PAGES) {
        let (byte, bit) = (8 + i / 8, 1u8 << (i % 8));
        if shared {
            page[byte] |= bit;
        } else {
            page[byte] &= !bit;
        }
    }
}

/// Whether window page `i` is shared according to `page`.
pub fn is_shared(page: &[u8], i: usize) -> bool {
    u64::from_le_bytes(page[..8].try_into().expect("8 bytes")) == MAGIC
        && i < WINDOW_PAGES
        && page[8 + i / 8] & (1 << (i % 8)) != 0
}

/// The map as runs of pages of one kind: (guest-physical address, pages,
/// shared), covering the whole window in order.
pub fn runs(page: &[u8]) -> impl Iterator<Item = (u64, u64, bool)> + '_ {
    let mut i = 0;
    core::iter::from_fn(move || {
        if i >= WINDOW_PAGES {
            return None;
        }
        let kind = is_shared(page, i);
        let start = i;
        while i < WINDOW_PAGES && is_shared(page, i) == kind {
            i += 1;
        }
        Some((SHARED_WINDOW + start as u64 * PAGE_SIZE, (i - start) as u64, kind))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_read_back_as_runs() {
        let mut page = [0u8; 4096];
        assert_eq!(
            runs(&page).collect::<Vec<_>>(),
            [(SHARED_WINDOW, WINDOW_PAGES as u64, false)]
        );
        mark(&mut page, 0, WINDOW_PAGES, true);
        assert_eq!(
            runs(&page).collect::<Vec<_>>(),
            [(SHARED_WINDOW, WINDOW_PAGES as u64, true)]
        );
        mark(&mut page, 10, 2, false);
        assert_eq!(
            runs(&page).collect::<Vec<_>>(),
            [
                (SHARED_WINDOW, 10, true),
                (SHARED_WINDOW + 10 * PAGE_SIZE, 2, false),
                (SHARED_WINDOW + 12 * PAGE_SIZE, WINDOW_PAGES as u64 - 12, true)
            ]
        );
        assert!(!is_shared(&page, 11) && is_shared(&page, 12));
        // Without the magic nothing is shared, whatever the bits say.
        page[0] ^= 1;
        assert!(!is_shared(&page, 0));
    }
}
