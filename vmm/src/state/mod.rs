//! Saved state: what a VM is besides its memory, as it travels in a
//! migration. Each piece keeps its serializable type and its save/restore
//! beside it; restore checks what it is given before loading it.

pub mod chips;
pub mod snapshot;
pub mod vcpu;
