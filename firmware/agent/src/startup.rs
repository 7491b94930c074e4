//! Start-up: who am I, and under which policy?
//!
//! The agent asks the platform for its own report (report data zero): the
//! launch measurement and HOST_DATA. It reads the guest owner's policy from
//! `layout::MIGRATION_POLICY` (its length follows from the encoding's own
//! header) and works only if SHA-256 of the encoding equals HOST_DATA: the
//! host writes that page, and HOST_DATA is what binds it (the page is not
//! measured, as on SEV-SNP).

use crate::env::{GuestMemory, Platform};
use crate::memmap::{MapError, MemoryMap};
use crate::reply::{ErrorText, Hex};
use crate::{Own, SCRATCH_LEN};
use covm_agent_protocol::policy::{MAX_POLICY_LEN, MEASUREMENT_LEN, POLICY_HEADER_LEN, ROOT_KEY_LEN};
use covm_agent_protocol::{Policy, PAGE_SIZE};
use covm_guest_abi::layout::MIGRATION_POLICY;

macro_rules! text {
    ($($arg:tt)*) => { ErrorText::format(format_args!($($arg)*)) };
}

pub(crate) fn start(
    mem: &impl GuestMemory,
    platform: &mut impl Platform,
    scratch_len: usize,
    map: Result<MemoryMap, MapError>,
) -> Result<Own, ErrorText> {
    if scratch_len < SCRATCH_LEN {
        return Err(text!("{scratch_len} bytes of scratch memory, {SCRATCH_LEN} needed"));
    }
    let map = map.map_err(|e| text!("no private memory map: {e}"))?;
    let own = platform
        .report(&[0; 64])
        .map_err(|e| text!("no attestation report of its own: {e}"))?
        .report();
    if !map.is_private(MIGRATION_POLICY) {
        return Err(text!(
            "the migration policy page {MIGRATION_POLICY:#x} is not in private RAM"
        ));
    }
    let mut page = [0u8; PAGE_SIZE];
    mem.read_page(MIGRATION_POLICY, &mut page);
    // The encoding's length from its own header: 32 + 48 m + 49 k.
    let len = POLICY_HEADER_LEN + MEASUREMENT_LEN * usize::from(page[28]) + ROOT_KEY_LEN * usize::from(page[29]);
    if len > MAX_POLICY_LEN {
        return Err(text!(
            "the migration policy page holds no policy (its header announces {len} bytes, at most {MAX_POLICY_LEN})"
        ));
    }
    let policy = Policy::decode(&page[..len]).map_err(|e| text!("the migration policy page holds no policy: {e}"))?;
    let hash = policy.host_data();
    if hash != own.host_data {
        return Err(text!(
            "the migration policy (SHA-256 {}) is not the one this VM was launched with (HOST_DATA {})",
            Hex(&hash),
            Hex(&own.host_data)
        ));
    }
    Ok(Own {
        policy,
        measurement: own.measurement,
        map,
    })
}
