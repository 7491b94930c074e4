//! Dirty-page tracking for live migration, through KVM: its dirty log
//! (a bitmap per memory slot, with manual protection) or its per-vCPU dirty
//! ring, merged with the pages covm itself wrote.

pub mod log;
pub mod ring;
