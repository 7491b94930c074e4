//! The content of the `dirty` workload's pages and the `blk` workload's
//! disk blocks.
//!
//! A page is 512 little-endian `u64` words, a pure function of
//! `(seed, page index, generation)`:
//!
//! | word | value |
//! |------|-------|
//! | 0 | [`PAGE_MAGIC`] `^ seed` |
//! | 1 | page index |
//! | 2 | generation (1 for the first write) |
//! | 3..512 | `splitmix64(page_key(seed, page, generation) + i * GOLDEN)` |
//!
//! where `page_key(s, p, g) = splitmix64(s ^ splitmix64(p ^ (g << 40)))` and
//! `GOLDEN = 0x9e37_79b9_7f4a_7c15`. Words 3.. look random, so a 64-byte
//! window of them found anywhere identifies workload data; the header words
//! let the verifier name the generation a stale page came from.
//!
//! A disk block of the `blk` workload (4 KiB, the same 512 words, stored
//! little-endian from the block's first byte) is built the same way with
//! [`BLOCK_MAGIC`] for `PAGE_MAGIC` in word 0, the block index in word 1,
//! and `block_key(s, b, g) = page_key(s ^ BLOCK_MAGIC, b, g)` for the data
//! words, so no memory page ever reads as a disk block or back:
//! [`fill_block`], [`check_block`], and for a checker that only has the
//! disk, [`block_generation`] (which generation an intact block holds) and
//! [`generation_digest`] (what the workload prints of its generation
//! table when it stops).

/// The first word of every page, xored with the seed ("covmpage").
pub const PAGE_MAGIC: u64 = u64::from_le_bytes(*b"covmpage");

/// The golden-ratio increment of splitmix64.
pub const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// Number of `u64` words in a page.
pub const WORDS: usize = 512;

/// Index of the first pseudo-random word.
pub const FIRST_DATA_WORD: usize = 3;

/// The splitmix64 finaliser: a bijective 64-bit mix.
#[inline]
pub const fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The per-page key the data words derive from.
#[inline]
pub const fn page_key(seed: u64, page: u64, generation: u64) -> u64 {
    splitmix64(seed ^ splitmix64(page ^ (generation << 40)))
}

/// Word `i` of page `page` at `generation`.
#[inline]
pub fn page_word(seed: u64, page: u64, generation: u64, i: usize) -> u64 {
    match i {
        0 => PAGE_MAGIC ^ seed,
        1 => page,
        2 => generation,
        _ => splitmix64(page_key(seed, page, generation).wrapping_add((i as u64).wrapping_mul(GOLDEN))),
    }
}

/// Fills `words` with the content of `page` at `generation`.
pub fn fill_page(words: &mut [u64; WORDS], seed: u64, page: u64, generation: u64) {
    words[0] = PAGE_MAGIC ^ seed;
    words[1] = page;
    words[2] = generation;
    let key = page_key(seed, page, generation);
    let mut i = FIRST_DATA_WORD;
    while i < WORDS {
        words[i] = splitmix64(key.wrapping_add((i as u64).wrapping_mul(GOLDEN)));
        i += 1;
    }
}

/// What the verifier concluded about a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCheck {
    /// The page holds exactly the expected generation.
    Ok,
    /// The page is an intact copy of an older generation: someone put an
    /// old version back.
    RolledBack {
        /// The generation the page holds.
        found: u64,
    },
    /// The page holds something that is no generation of it.
    Wrong {
        /// First word that differs.
        word: usize,
        /// What that word holds.
        found: u64,
        /// What it should hold.
        expected: u64,
    },
}

/// Checks that `words` is page `page` at `expected` generation.
pub fn check_page(words: &[u64; WORDS], seed: u64, page: u64, expected: u64) -> PageCheck {
    let key = page_key(seed, page, expected);
    let mut mismatch = None;
    let mut i = 0;
    while i < WORDS {
        let want = if i < FIRST_DATA_WORD {
            page_word(seed, page, expected, i)
        } else {
            splitmix64(key.wrapping_add((i as u64).wrapping_mul(GOLDEN)))
        };
        if words[i] != want {
            mismatch = Some((i, words[i], want));
            break;
        }
        i += 1;
    }
    let Some((word, found, want)) = mismatch else {
        return PageCheck::Ok;
    };
    // An older but intact generation is a rollback, not random damage.
    let claimed = words[2];
    if claimed < expected && words[0] == PAGE_MAGIC ^ seed && words[1] == page && is_intact(words, seed, page, claimed)
    {
        return PageCheck::RolledBack { found: claimed };
    }
    PageCheck::Wrong {
        word,
        found,
        expected: want,
    }
}

/// Whether `words` is exactly page `page` at `generation`.
fn is_intact(words: &[u64; WORDS], seed: u64, page: u64, generation: u64) -> bool {
    let key = page_key(seed, page, generation);
    let mut i = FIRST_DATA_WORD;
    while i < WORDS {
        if words[i] != splitmix64(key.wrapping_add((i as u64).wrapping_mul(GOLDEN))) {
            return false;
        }
        i += 1;
    }
    true
}

/// The first word of every disk block, xored with the seed ("covmblok").
pub const BLOCK_MAGIC: u64 = u64::from_le_bytes(*b"covmblok");

/// The key disk block `block`'s data words derive from.
#[inline]
pub const fn block_key(seed: u64, block: u64, generation: u64) -> u64 {
    page_key(seed ^ BLOCK_MAGIC, block, generation)
}

/// Word `i` of disk block `block` at `generation`.
#[inline]
pub fn block_word(seed: u64, block: u64, generation: u64, i: usize) -> u64 {
    match i {
        0 => BLOCK_MAGIC ^ seed,
        1 => block,
        2 => generation,
        _ => splitmix64(block_key(seed, block, generation).wrapping_add((i as u64).wrapping_mul(GOLDEN))),
    }
}

/// Fills `words` with the content of disk block `block` at `generation`.
pub fn fill_block(words: &mut [u64; WORDS], seed: u64, block: u64, generation: u64) {
    words[0] = BLOCK_MAGIC ^ seed;
    words[1] = block;
    words[2] = generation;
    fill_data(words, block_key(seed, block, generation));
}

/// What the verifier concluded about a disk block (the same cases as a
/// page: [`PageCheck`]).
pub type BlockCheck = PageCheck;

/// Checks that `words` is disk block `block` at `expected` generation. An
/// intact older generation is [`PageCheck::RolledBack`].
pub fn check_block(words: &[u64; WORDS], seed: u64, block: u64, expected: u64) -> BlockCheck {
    let header = [BLOCK_MAGIC ^ seed, block, expected];
    if let Some((word, found, want)) = first_mismatch(words, &header, block_key(seed, block, expected)) {
        let claimed = words[2];
        if claimed < expected && block_generation(words, seed, block) == Some(claimed) {
            return PageCheck::RolledBack { found: claimed };
        }
        return PageCheck::Wrong {
            word,
            found,
            expected: want,
        };
    }
    PageCheck::Ok
}

/// The generation `words` holds if it is an intact disk block `block` of
/// `seed` at some generation (1 or more), else `None` (zeros, another
/// block, another seed, or damage).
pub fn block_generation(words: &[u64; WORDS], seed: u64, block: u64) -> Option<u64> {
    let generation = words[2];
    let header = [BLOCK_MAGIC ^ seed, block, generation];
    (generation != 0 && first_mismatch(words, &header, block_key(seed, block, generation)).is_none())
        .then_some(generation)
}

/// A digest of a generation table: `h = 0`, then for each entry `g` at
/// index `i`, `h = splitmix64(h ^ (i << 32 | g)) + GOLDEN` (wrapping).
/// The `blk` workload prints it over its table when it stops, so a
/// checker that reads each block's generation back from the disk can
/// tell whether the disk holds exactly what the guest last wrote.
pub fn generation_digest(generations: impl IntoIterator<Item = u32>) -> u64 {
    let mut h = 0u64;
    for (i, g) in generations.into_iter().enumerate() {
        h = splitmix64(h ^ ((i as u64) << 32 | g as u64)).wrapping_add(GOLDEN);
    }
    h
}

fn fill_data(words: &mut [u64; WORDS], key: u64) {
    let mut i = FIRST_DATA_WORD;
    while i < WORDS {
        words[i] = splitmix64(key.wrapping_add((i as u64).wrapping_mul(GOLDEN)));
        i += 1;
    }
}

/// The first word that differs from the header then the data of `key`:
/// `(index, found, expected)`.
fn first_mismatch(words: &[u64; WORDS], header: &[u64; 3], key: u64) -> Option<(usize, u64, u64)> {
    let mut i = 0;
    while i < WORDS {
        let want = if i < FIRST_DATA_WORD {
            header[i]
        } else {
            splitmix64(key.wrapping_add((i as u64).wrapping_mul(GOLDEN)))
        };
        if words[i] != want {
            return Some((i, words[i], want));
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(seed: u64, p: u64, g: u64) -> [u64; WORDS] {
        let mut w = [0u64; WORDS];
        fill_page(&mut w, seed, p, g);
        w
    }

    #[test]
    fn fill_matches_page_word() {
        let w = page(7, 3, 9);
        for (i, word) in w.iter().enumerate() {
            assert_eq!(*word, page_word(7, 3, 9, i), "word {i}");
        }
    }

    #[test]
    fn intact_page_checks_ok() {
        assert_eq!(check_page(&page(1, 2, 3), 1, 2, 3), PageCheck::Ok);
    }

    #[test]
    fn older_generation_is_rollback() {
        assert_eq!(check_page(&page(1, 2, 3), 1, 2, 5), PageCheck::RolledBack { found: 3 });
    }

    #[test]
    fn flipped_bit_is_wrong() {
        let mut w = page(1, 2, 3);
        w[100] ^= 1 << 17;
        match check_page(&w, 1, 2, 3) {
            PageCheck::Wrong { word, .. } => assert_eq!(word, 100),
            other => panic!("expected Wrong, got {other:?}"),
        }
    }

    #[test]
    fn damaged_old_page_is_wrong_not_rollback() {
        let mut w = page(1, 2, 3);
        w[200] ^= 1;
        assert!(matches!(check_page(&w, 1, 2, 5), PageCheck::Wrong { word: 2, .. }));
    }

    #[test]
    fn other_seed_or_page_is_wrong() {
        assert!(matches!(
            check_page(&page(2, 2, 3), 1, 2, 3),
            PageCheck::Wrong { word: 0, .. }
        ));
        assert!(matches!(
            check_page(&page(1, 4, 3), 1, 2, 3),
            PageCheck::Wrong { word: 1, .. }
        ));
    }

    #[test]
    fn newer_generation_is_wrong() {
        // A page can never be ahead of its table entry; that is damage too.
        assert!(matches!(
            check_page(&page(1, 2, 6), 1, 2, 5),
            PageCheck::Wrong { word: 2, .. }
        ));
    }

    #[test]
    fn data_words_differ_between_generations_pages_and_seeds() {
        let a = page(1, 2, 3);
        for other in [page(1, 2, 4), page(1, 3, 3), page(2, 2, 3)] {
            let same = a[FIRST_DATA_WORD..]
                .iter()
                .zip(&other[FIRST_DATA_WORD..])
                .filter(|(x, y)| x == y)
                .count();
            assert_eq!(same, 0);
        }
    }

    fn block(seed: u64, b: u64, g: u64) -> [u64; WORDS] {
        let mut w = [0u64; WORDS];
        fill_block(&mut w, seed, b, g);
        w
    }

    #[test]
    fn fill_block_matches_block_word() {
        let w = block(7, 3, 9);
        for (i, word) in w.iter().enumerate() {
            assert_eq!(*word, block_word(7, 3, 9, i), "word {i}");
        }
        // Stored little-endian from the block's first byte.
        assert_eq!(&w[0].to_le_bytes(), &(BLOCK_MAGIC ^ 7).to_le_bytes());
    }

    #[test]
    fn intact_block_checks_ok_and_older_is_rollback() {
        assert_eq!(check_block(&block(1, 2, 3), 1, 2, 3), PageCheck::Ok);
        assert_eq!(
            check_block(&block(1, 2, 3), 1, 2, 5),
            PageCheck::RolledBack { found: 3 }
        );
    }

    #[test]
    fn damaged_zero_or_foreign_blocks_are_wrong() {
        let mut w = block(1, 2, 3);
        w[300] ^= 1 << 5;
        assert!(matches!(check_block(&w, 1, 2, 3), PageCheck::Wrong { word: 300, .. }));
        // Damage in an old generation is no rollback.
        assert!(matches!(check_block(&w, 1, 2, 4), PageCheck::Wrong { word: 2, .. }));
        assert!(matches!(
            check_block(&[0; WORDS], 1, 2, 1),
            PageCheck::Wrong { word: 0, .. }
        ));
        assert!(matches!(
            check_block(&block(1, 4, 3), 1, 2, 3),
            PageCheck::Wrong { word: 1, .. }
        ));
        assert!(matches!(
            check_block(&block(2, 2, 3), 1, 2, 3),
            PageCheck::Wrong { word: 0, .. }
        ));
        // Ahead of the table is damage too.
        assert!(matches!(
            check_block(&block(1, 2, 6), 1, 2, 5),
            PageCheck::Wrong { word: 2, .. }
        ));
    }

    #[test]
    fn a_page_is_never_a_block() {
        let p = page(1, 2, 3);
        assert!(matches!(check_block(&p, 1, 2, 3), PageCheck::Wrong { word: 0, .. }));
        assert_eq!(block_generation(&p, 1, 2), None);
        let b = block(1, 2, 3);
        let same = b[FIRST_DATA_WORD..]
            .iter()
            .zip(&p[FIRST_DATA_WORD..])
            .filter(|(x, y)| x == y)
            .count();
        assert_eq!(same, 0);
    }

    #[test]
    fn block_generation_reads_intact_blocks_only() {
        assert_eq!(block_generation(&block(9, 5, 17), 9, 5), Some(17));
        assert_eq!(block_generation(&[0; WORDS], 9, 5), None);
        assert_eq!(block_generation(&block(9, 5, 17), 9, 6), None);
        assert_eq!(block_generation(&block(9, 5, 17), 8, 5), None);
        let mut torn = block(9, 5, 17);
        torn[WORDS / 2..].copy_from_slice(&block(9, 5, 16)[WORDS / 2..]);
        assert_eq!(block_generation(&torn, 9, 5), None);
    }

    #[test]
    fn digest_depends_on_every_generation_and_its_place() {
        let base = generation_digest([1, 2, 3, 0]);
        assert_eq!(base, generation_digest([1u32, 2, 3, 0].iter().copied()));
        assert_ne!(base, generation_digest([1, 2, 4, 0]));
        assert_ne!(base, generation_digest([2, 1, 3, 0]));
        assert_ne!(base, generation_digest([1, 2, 3]));
        assert_ne!(generation_digest([0]), generation_digest([0, 0]));
        assert_eq!(generation_digest([]), 0);
    }
}
