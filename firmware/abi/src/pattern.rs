//! The content of the `dirty` workload's pages.
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
}
