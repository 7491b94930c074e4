//! The built-in firmware, built from firmware/image by build.rs.

/// The firmware ELF.
pub static ELF: &[u8] = include_bytes!(env!("COVM_FIRMWARE_ELF"));

/// Gives back the memory [`ELF`]'s bytes occupy once they are loaded into
/// the guest (about 600 KiB of resident memory otherwise, the largest part
/// of covm's own footprint). They stay in the page cache; a later load
/// (a reboot) reads them in again.
pub fn release_pages() {
    let page = 4096usize;
    let start = (ELF.as_ptr() as usize).div_ceil(page) * page;
    let end = (ELF.as_ptr() as usize + ELF.len()) / page * page;
    if end > start {
        // SAFETY: [start, end) lies inside ELF, a static in the executable's
        // read-only, file-backed private mapping that nothing writes: dropping
        // its pages loses nothing, the next access faults the same bytes
        // back in from the file. No other data shares those pages.
        let status = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if status != 0 {
            tracing::debug!(
                "madvise(DONTNEED) on the firmware's bytes failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ELF;
    use covm_guest_abi::layout::WRITE_TRACKED_START;
    use object::{Object, ObjectSection, ObjectSymbol};

    /// The bytes of `words`.
    fn as_bytes_mut(words: &mut [u64]) -> &mut [u8] {
        // SAFETY: a u64 slice is valid as bytes (no padding, any value of
        // u8 is valid), the length covers exactly its memory, and the
        // returned borrow keeps `words` borrowed.
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8) }
    }

    /// The address of `name` in the firmware's symbol table.
    fn symbol(elf: &object::File<'_>, name: &str) -> u64 {
        elf.symbols()
            .find(|s| s.name() == Ok(name))
            .unwrap_or_else(|| panic!("the firmware ELF has no symbol {name}"))
            .address()
    }

    /// The migration agent takes a 2 MiB page whose dirty bit is clear for
    /// never-written zeros (docs/firmware.md, "Write tracking"). That is
    /// only safe if the firmware's page directory presets the bit over
    /// everything covm loads: exactly below `layout::WRITE_TRACKED_START`,
    /// which ring0.s repeats as an assembler constant, and the image must
    /// end below it. A mismatch would lose the image's pages in a
    /// confidential migration, so the built ELF itself is checked.
    #[test]
    fn the_page_directory_tracks_writes_exactly_above_the_image() {
        // `object` reads headers in place and wants them aligned, which
        // include_bytes! does not promise: an 8-aligned copy.
        let mut words = vec![0u64; ELF.len().div_ceil(8)];
        let aligned: &mut [u8] = as_bytes_mut(&mut words);
        aligned[..ELF.len()].copy_from_slice(ELF);
        let elf = object::File::parse(&aligned[..ELF.len()]).expect("the built-in firmware is an ELF");
        let image_end = symbol(&elf, "__image_end");
        assert!(
            image_end <= WRITE_TRACKED_START,
            "the image ends at {image_end:#x}, above WRITE_TRACKED_START {WRITE_TRACKED_START:#x}"
        );
        let pd = symbol(&elf, "boot_pd");
        let data = elf
            .sections()
            .find_map(|s| {
                let (start, size) = (s.address(), s.size());
                (start <= pd && pd + 2048 * 8 <= start + size)
                    .then(|| s.data().map(|d| d[(pd - start) as usize..].to_vec()))
            })
            .expect("boot_pd lies in a section")
            .expect("its bytes are in the file");
        const DIRTY: u64 = 1 << 6;
        const UNCACHED_TOP: usize = 16;
        for (i, entry) in data.chunks_exact(8).take(2048 - UNCACHED_TOP).enumerate() {
            let entry = u64::from_le_bytes(entry.try_into().unwrap());
            let gpa = (i as u64) << 21;
            assert_eq!(entry & !0xfff, gpa, "entry {i} maps {gpa:#x}");
            assert_eq!(
                entry & DIRTY != 0,
                gpa < WRITE_TRACKED_START,
                "entry {i} ({gpa:#x}): dirty bit preset must mean below WRITE_TRACKED_START"
            );
        }
    }
}
