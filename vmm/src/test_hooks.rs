//! Test-only hooks that alter guest memory from the VMM while it runs.
//!
//! They exist to prove that the built-in firmware's `dirty` workload catches
//! corruption; they are hidden from `--help` and documented in
//! docs/testing.md. Syntax (`--test-hook`, repeatable):
//! - `flip,gpa=ADDR,at_ms=T`: at T ms after start, invert one byte of the
//!   page at ADDR (offset 64, inside the data words);
//! - `rollback,gpa=ADDR,save_ms=T1,restore_ms=T2`: copy the page at T1 and
//!   write the copy back at T2, putting an older version in place.

use crate::config::options::{OptionError, OptionMap};
use crate::vm::memory::GuestMemory;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

/// A scheduled alteration of guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestHook {
    /// Invert a byte.
    Flip {
        /// Page address.
        gpa: u64,
        /// When.
        at: Duration,
    },
    /// Put an old copy of a page back.
    Rollback {
        /// Page address.
        gpa: u64,
        /// When to copy.
        save: Duration,
        /// When to restore.
        restore: Duration,
    },
}

fn number(v: &str) -> Result<u64, String> {
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    parsed.map_err(|_| "not a number".to_string())
}

impl TestHook {
    /// Parses one `--test-hook` value.
    pub fn parse(text: &str) -> Result<Self, OptionError> {
        let m = OptionMap::parse(
            "test-hook",
            text,
            &["flip", "rollback", "gpa", "at_ms", "save_ms", "restore_ms"],
        )?;
        let need = |key: &'static str| -> Result<u64, OptionError> {
            m.get_with(key, number)?.ok_or(OptionError::Missing {
                option: "test-hook",
                key,
            })
        };
        let gpa = need("gpa")? & !0xfff;
        if m.has("flip") {
            Ok(Self::Flip {
                gpa,
                at: Duration::from_millis(need("at_ms")?),
            })
        } else if m.has("rollback") {
            let (save, restore) = (need("save_ms")?, need("restore_ms")?);
            if restore <= save {
                return Err(m.invalid("restore_ms", &restore.to_string(), "must come after save_ms"));
            }
            Ok(Self::Rollback {
                gpa,
                save: Duration::from_millis(save),
                restore: Duration::from_millis(restore),
            })
        } else {
            Err(m.invalid("kind", text, "give flip or rollback"))
        }
    }

    /// Runs the hook on its own thread against `memory`.
    pub fn spawn(self, memory: GuestMemory, start: Instant) {
        std::thread::spawn(move || {
            let wait_until = |t: Duration| std::thread::sleep(t.saturating_sub(start.elapsed()));
            let result = match self {
                Self::Flip { gpa, at } => {
                    wait_until(at);
                    let addr = GuestAddress(gpa + 64);
                    memory.read_obj::<u8>(addr).and_then(|b| memory.write_obj(!b, addr))
                }
                Self::Rollback { gpa, save, restore } => {
                    let mut page = vec![0u8; 4096];
                    wait_until(save);
                    let saved = memory.read_slice(&mut page, GuestAddress(gpa));
                    wait_until(restore);
                    saved.and_then(|_| memory.write_slice(&page, GuestAddress(gpa)))
                }
            };
            match result {
                Ok(()) => tracing::warn!("test hook applied: {self:?}"),
                Err(e) => tracing::error!("test hook {self:?} failed: {e}"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds() {
        assert_eq!(
            TestHook::parse("flip,gpa=0x4001000,at_ms=500").unwrap(),
            TestHook::Flip {
                gpa: 0x400_1000,
                at: Duration::from_millis(500)
            }
        );
        assert_eq!(
            TestHook::parse("rollback,gpa=0x4000000,save_ms=1,restore_ms=2").unwrap(),
            TestHook::Rollback {
                gpa: 0x400_0000,
                save: Duration::from_millis(1),
                restore: Duration::from_millis(2)
            }
        );
        assert!(TestHook::parse("flip,at_ms=1")
            .unwrap_err()
            .to_string()
            .contains("missing gpa="));
        assert!(TestHook::parse("rollback,gpa=0,save_ms=5,restore_ms=5").is_err());
        assert!(TestHook::parse("gpa=0,at_ms=1").is_err());
    }

    #[test]
    fn flip_and_rollback_change_memory() {
        let mem = crate::vm::memory::allocate(16 << 20).unwrap();
        mem.write_slice(&[7u8; 4096], GuestAddress(0x10_0000)).unwrap();
        let start = Instant::now();
        TestHook::Rollback {
            gpa: 0x10_0000,
            save: Duration::ZERO,
            restore: Duration::from_millis(200),
        }
        .spawn(mem.clone(), start);
        std::thread::sleep(Duration::from_millis(100));
        mem.write_slice(&[9u8; 4096], GuestAddress(0x10_0000)).unwrap();
        TestHook::Flip {
            gpa: 0x20_0000,
            at: Duration::ZERO,
        }
        .spawn(mem.clone(), start);
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10_0000)).unwrap(), 7);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x20_0040)).unwrap(), 0xff);
    }
}
