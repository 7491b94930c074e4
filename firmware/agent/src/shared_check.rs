//! The destination's check of the shared window before it commits: the
//! guest's own map (`covm_guest_abi::shared_map`, a private page that
//! arrived sealed) against what the host holds each run of the window to
//! be (`ports::page_state::QUERY`). A host that flipped a page's kind
//! during the migration, or restored another map than the source's, is
//! refused here, and the source resumes.

use crate::memmap::{MapError, MemoryMap};
use covm_guest_abi::layout::PAGE_SIZE;
use covm_guest_abi::ports::page_state;
use covm_guest_abi::shared_map;

fn kind(answer: u32) -> &'static str {
    match answer {
        page_state::SHARED => "shared",
        page_state::PRIVATE => "private",
        page_state::MIXED => "partly shared",
        _ => "unknown",
    }
}

/// Private memory as the guest's shared map (`page`) leaves it: `boot`
/// less the window pages the guest shares.
pub(crate) fn private_map(boot: &MemoryMap, page: &[u8]) -> Result<MemoryMap, MapError> {
    let mut map = boot.clone();
    for (gpa, pages, shared) in shared_map::runs(page) {
        if shared {
            map.exclude(gpa, gpa + pages * PAGE_SIZE)?;
        }
    }
    Ok(map)
}

/// Checks `map` (the shared-map page) against `query(first page, pages)`,
/// the host's answer for a run. A host that cannot answer (a platform
/// without the query) is accepted only where the guest shares nothing.
pub(crate) fn check(map: &[u8], mut query: impl FnMut(u64, u64) -> u32) -> Result<(), (u64, u64, &'static str, bool)> {
    for (gpa, pages, shared) in shared_map::runs(map) {
        let expected = if shared {
            page_state::SHARED
        } else {
            page_state::PRIVATE
        };
        let answer = query(gpa / PAGE_SIZE, pages);
        let known = matches!(answer, page_state::SHARED | page_state::PRIVATE | page_state::MIXED);
        if answer == expected || (!known && !shared) {
            continue;
        }
        return Err((gpa, pages, kind(answer), shared));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use covm_guest_abi::layout::SHARED_WINDOW;

    #[test]
    fn the_host_must_hold_the_guests_map() {
        let mut map = [0u8; 4096];
        // Nothing shared: a host that agrees, or cannot say, passes.
        assert!(check(&map, |_, _| page_state::PRIVATE).is_ok());
        assert!(check(&map, |_, _| 0xffff_ffff).is_ok());
        assert_eq!(
            check(&map, |_, _| page_state::MIXED),
            Err((SHARED_WINDOW, shared_map::WINDOW_PAGES as u64, "partly shared", false))
        );
        // All shared: the host must say so for the whole window.
        shared_map::mark(&mut map, 0, shared_map::WINDOW_PAGES, true);
        assert!(check(&map, |_, _| page_state::SHARED).is_ok());
        assert!(check(&map, |_, _| page_state::REFUSED).is_err());
        // One page the guest made private again, which the host holds
        // shared (flipped).
        shared_map::mark(&mut map, 5, 1, false);
        assert_eq!(
            check(&map, |_, _| page_state::SHARED),
            Err((SHARED_WINDOW + 5 * PAGE_SIZE, 1, "shared", false))
        );
    }
}
