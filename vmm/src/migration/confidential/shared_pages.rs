//! The pages a confidential guest shares with the host (its devices'
//! window) move in the clear, beside the sealed rest: the host may read
//! and write them anyway, and the agents need not seal them. The source
//! splits what the engine asks for ([`split`]); the destination accepts
//! clear pages only where the guest can share memory and, once the state
//! says what it shares, only where it does ([`ClearPages`]). The guest's
//! own map, sealed, holds the host to it at the commit (the agent's
//! check).

use covm_guest_abi::layout::PAGE_SIZE;

/// Runs of pages, as (guest-physical address, pages).
pub type Runs = Vec<(u64, u64)>;

/// Splits runs `(gpa, pages)` by `shared` ranges `(address, bytes)`:
/// the parts inside them (to send in the clear) and the rest (for the
/// agent), each in address order.
pub fn split(runs: &[(u64, u64)], shared: &[(u64, u64)]) -> (Runs, Runs) {
    let (mut clear, mut sealed) = (Vec::new(), Vec::new());
    let push = |v: &mut Vec<(u64, u64)>, start: u64, end: u64| {
        if end > start {
            match v.last_mut() {
                Some((g, n)) if *g + *n * PAGE_SIZE == start => *n += (end - start) / PAGE_SIZE,
                _ => v.push((start, (end - start) / PAGE_SIZE)),
            }
        }
    };
    for &(gpa, pages) in runs {
        let end = gpa + pages * PAGE_SIZE;
        let mut at = gpa;
        for &(s, len) in shared {
            let (s, e) = (s.max(at), (s + len).min(end));
            if s >= e {
                continue;
            }
            push(&mut sealed, at, s);
            push(&mut clear, s, e);
            at = e;
        }
        push(&mut sealed, at, end);
    }
    (clear, sealed)
}

/// Whether `inner` (address, bytes) lies inside one of `ranges`.
fn covered(ranges: &[(u64, u64)], gpa: u64, bytes: u64) -> bool {
    ranges.iter().any(|&(s, len)| gpa >= s && gpa + bytes <= s + len)
}

/// The pages a destination received in the clear.
#[derive(Debug, Default)]
pub struct ClearPages {
    runs: Runs,
}

impl ClearPages {
    /// Takes `pages` pages from `gpa` in the clear, if they lie where the
    /// guest can share memory (`shareable`).
    pub fn accept(&mut self, shareable: &[(u64, u64)], gpa: u64, pages: u64) -> Result<(), String> {
        let bytes = pages.checked_mul(PAGE_SIZE).ok_or("a clear page run too long")?;
        if !covered(shareable, gpa, bytes) {
            return Err(format!(
                "{pages} pages at {gpa:#x} arrived in the clear outside the memory the guest can share: its \
                 private memory moves only sealed"
            ));
        }
        self.runs.push((gpa, pages));
        Ok(())
    }

    /// Checks every clear page against what the guest shares (`shared`,
    /// from the restored state).
    pub fn check(&self, shared: &[(u64, u64)]) -> Result<(), String> {
        for &(gpa, pages) in &self.runs {
            for page in 0..pages {
                let at = gpa + page * PAGE_SIZE;
                if !covered(shared, at, PAGE_SIZE) {
                    return Err(format!(
                        "the page at {at:#x} arrived in the clear, but the guest does not share it"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE_SIZE;

    #[test]
    fn runs_split_at_the_shared_ranges() {
        let shared = [(10 * P, 4 * P), (20 * P, 2 * P)];
        let (clear, sealed) = split(&[(0, 30)], &shared);
        assert_eq!(clear, [(10 * P, 4), (20 * P, 2)]);
        assert_eq!(sealed, [(0, 10), (14 * P, 6), (22 * P, 8)]);
        let (clear, sealed) = split(&[(11 * P, 2), (13 * P, 5)], &shared);
        assert_eq!(clear, [(11 * P, 3)]);
        assert_eq!(sealed, [(14 * P, 4)]);
        let (clear, sealed) = split(&[(0, 5)], &[]);
        assert!(clear.is_empty());
        assert_eq!(sealed, [(0, 5)]);
    }

    #[test]
    fn clear_pages_stay_where_the_guest_shares() {
        let window = [(0x40_0000, 0x40_0000)];
        let mut c = ClearPages::default();
        c.accept(&window, 0x40_0000, 4).unwrap();
        let e = c.accept(&window, 0x3f_f000, 2).unwrap_err();
        assert!(e.contains("only sealed"), "{e}");
        assert!(c.check(&window).is_ok());
        let e = c.check(&[(0x40_1000, 0x3f_f000)]).unwrap_err();
        assert!(e.contains("0x400000"), "{e}");
    }
}
