//! Loading what the guest boots and writing the structures it is handed.
//!
//! Three ways in:
//! - an ELF with a PVH note (the built-in firmware among them): 32-bit
//!   protected-mode entry with EBX pointing at an `hvm_start_info`;
//! - any other ELF: the 64-bit Linux entry, long mode, RSI at a zero page;
//! - a bzImage: the same 64-bit entry at `code32_start + 0x200`.

pub mod firmware;
pub mod image;
pub mod layout;
mod linux;
pub mod metadata;
mod pvh;

use crate::config::{Payload, VmConfig};
use crate::vm::memory::{low_ram_end, GuestMemory, HIMEM_START};
use image::ImageKind;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, BzImage, KernelLoader, KernelLoaderResult};
use std::borrow::Cow;
use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use vm_memory::{GuestAddress, GuestMemoryBackend, ReadVolatile};

/// How the bootstrap vCPU enters the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode, paging off, EBX = start info.
    Pvh,
    /// Linux 64-bit: long mode, identity-mapped, RSI = zero page.
    Linux64,
}

/// Where and how the bootstrap vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    /// Entry mode.
    pub mode: EntryMode,
    /// Entry point.
    pub entry: u64,
    /// Start info (PVH) or zero page (Linux64).
    pub boot_info: u64,
}

/// Errors loading a payload.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The image file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The image is no format covm boots.
    #[error("{} is neither an ELF nor a bzImage", path.display())]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// A firmware that is not an ELF.
    #[error("--firmware: {} is not an ELF image", path.display())]
    FirmwareNotElf {
        /// The file.
        path: PathBuf,
    },
    /// The loader refused the image.
    #[error("cannot load {what}: {source}")]
    Load {
        /// What was being loaded.
        what: String,
        /// The loader's reason.
        source: linux_loader::loader::Error,
    },
    /// The command line does not fit.
    #[error("--cmdline is too long or invalid ({len} bytes, at most {max}): {reason}")]
    Cmdline {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
        /// The loader's reason.
        reason: String,
    },
    /// The initramfs does not fit in low memory above the kernel.
    #[error("initramfs {} ({size} bytes) does not fit in guest memory below {limit:#x} above the kernel", path.display())]
    InitramfsTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Highest address it may reach.
        limit: u64,
    },
    /// The ELF's launch metadata is malformed or does not fit the VM.
    #[error("the launch metadata of {what} (section .covm_metadata) is refused: {reason}")]
    Metadata {
        /// The image.
        what: String,
        /// Why.
        reason: String,
    },
    /// Writing a boot structure into guest memory failed.
    #[error("cannot write the {what} into guest memory: {reason}")]
    Write {
        /// Which structure.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// An image to load, from a file or from covm itself (borrowed: copying
/// the built-in firmware cost a millisecond of every boot).
struct Image {
    name: PathBuf,
    bytes: Cow<'static, [u8]>,
}

impl Image {
    fn read(path: &Path) -> Result<Self, BootError> {
        let read_err = |source| BootError::Read {
            path: path.into(),
            source,
        };
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(read_err)?;
        Ok(Self {
            name: path.into(),
            bytes: Cow::Owned(bytes),
        })
    }

    fn kind(&self) -> Option<ImageKind> {
        image::detect(&self.bytes[..self.bytes.len().min(image::PROBE_LEN)])
    }

    fn load<L: KernelLoader>(&self, mem: &GuestMemory) -> Result<KernelLoaderResult, BootError> {
        let mut cursor = Cursor::new(&*self.bytes);
        load_with::<L, _>(mem, &mut cursor).map_err(|source| BootError::Load {
            what: self.name.display().to_string(),
            source,
        })
    }
}

fn load_with<L: KernelLoader, F: Read + ReadVolatile + Seek>(
    mem: &GuestMemory,
    image: &mut F,
) -> Result<KernelLoaderResult, linux_loader::loader::Error> {
    image
        .seek(SeekFrom::Start(0))
        .map_err(|_| linux_loader::loader::Error::Elf(linux_loader::loader::elf::Error::SeekElfStart))?;
    L::load(mem, None, image, Some(GuestAddress(HIMEM_START)))
}

/// Loads the configured payload and writes its boot structures; returns
/// the entry and the launch metadata the ELF carries ([`metadata`]; empty
/// for an ELF without it and for a bzImage).
pub fn load_with_metadata(
    mem: &GuestMemory,
    config: &VmConfig,
) -> Result<(BootEntry, Vec<metadata::FirmwareSection>), BootError> {
    let (image, initramfs) = match &config.payload {
        Payload::BuiltinFirmware => (
            Image {
                name: "the built-in firmware".into(),
                bytes: Cow::Borrowed(firmware::ELF),
            },
            None,
        ),
        Payload::Firmware(path) => {
            let image = Image::read(path)?;
            if image.kind() != Some(ImageKind::Elf) {
                return Err(BootError::FirmwareNotElf { path: path.clone() });
            }
            (image, None)
        }
        Payload::Kernel { kernel, initramfs } => (Image::read(kernel)?, initramfs.as_deref()),
    };
    let cmdline_len = write_cmdline(mem, &config.cmdline)?;
    let size = config.memory.size;
    match image.kind() {
        Some(ImageKind::Elf) => {
            let sections = metadata::read(&image.bytes, mem).map_err(|reason| BootError::Metadata {
                what: image.name.display().to_string(),
                reason,
            })?;
            let loaded = image.load::<Elf>(mem)?;
            if matches!(config.payload, Payload::BuiltinFirmware) {
                firmware::release_pages();
            }
            let initrd = initramfs
                .map(|p| load_initramfs(mem, p, loaded.kernel_end, low_ram_end(size)))
                .transpose()?;
            match loaded.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(entry) => {
                    pvh::write_start_info(mem, size, initrd)?;
                    Ok((
                        BootEntry {
                            mode: EntryMode::Pvh,
                            entry: entry.0,
                            boot_info: layout::PVH_START_INFO,
                        },
                        sections,
                    ))
                }
                _ => {
                    linux::write_zero_page(mem, size, None, cmdline_len, initrd)?;
                    Ok((
                        BootEntry {
                            mode: EntryMode::Linux64,
                            entry: loaded.kernel_load.0,
                            boot_info: layout::ZERO_PAGE,
                        },
                        sections,
                    ))
                }
            }
        }
        Some(ImageKind::BzImage) => {
            let loaded = image.load::<BzImage>(mem)?;
            let header = loaded.setup_header.unwrap_or_default();
            let limit = low_ram_end(size).min(u64::from(header.initrd_addr_max) + 1);
            let initrd = initramfs
                .map(|p| load_initramfs(mem, p, loaded.kernel_end, limit))
                .transpose()?;
            linux::write_zero_page(mem, size, Some(header), cmdline_len, initrd)?;
            // startup_64 sits 0x200 past the 32-bit entry (Linux boot protocol).
            Ok((
                BootEntry {
                    mode: EntryMode::Linux64,
                    entry: loaded.kernel_load.0 + 0x200,
                    boot_info: layout::ZERO_PAGE,
                },
                Vec::new(),
            ))
        }
        None => Err(BootError::UnknownFormat { path: image.name }),
    }
}

fn write_cmdline(mem: &GuestMemory, text: &str) -> Result<usize, BootError> {
    let err = |reason: String| BootError::Cmdline {
        len: text.len(),
        max: layout::CMDLINE_MAX - 1,
        reason,
    };
    let cmdline = Cmdline::try_from(text, layout::CMDLINE_MAX).map_err(|e| err(e.to_string()))?;
    load_cmdline(mem, GuestAddress(layout::CMDLINE), &cmdline).map_err(|e| err(e.to_string()))?;
    Ok(text.len())
}

/// A loaded initramfs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Initramfs {
    addr: u64,
    size: u64,
}

/// Places the initramfs at the top of low RAM (below `limit`), page
/// aligned, as bootloaders do, and refuses it if it would reach the kernel.
fn load_initramfs(mem: &GuestMemory, path: &Path, kernel_end: u64, limit: u64) -> Result<Initramfs, BootError> {
    let image = Image::read(path)?;
    let size = image.bytes.len() as u64;
    let too_large = || BootError::InitramfsTooLarge {
        path: path.into(),
        size,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < kernel_end.max(HIMEM_START) {
        return Err(too_large());
    }
    use vm_memory::Bytes;
    mem.write_slice(&image.bytes, GuestAddress(addr))
        .map_err(|e| BootError::Write {
            what: "initramfs",
            reason: e.to_string(),
        })?;
    Ok(Initramfs { addr, size })
}

/// Checks that `[addr, addr+len)` is guest RAM.
fn check_range(mem: &GuestMemory, what: &'static str, addr: u64, len: usize) -> Result<(), BootError> {
    mem.checked_offset(GuestAddress(addr), len)
        .map(|_| ())
        .ok_or(BootError::Write {
            what,
            reason: format!("{addr:#x}+{len:#x} is outside guest memory"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CpusConfig, MemoryConfig, SerialMode};
    use linux_loader::loader::bootparam::boot_params;
    use vm_memory::Bytes;

    fn load(mem: &GuestMemory, config: &VmConfig) -> Result<BootEntry, BootError> {
        load_with_metadata(mem, config).map(|(entry, _)| entry)
    }

    fn config(payload: Payload, cmdline: &str) -> VmConfig {
        VmConfig {
            cpus: CpusConfig::boot(1),
            memory: MemoryConfig { size: 256 << 20 },
            payload,
            cmdline: cmdline.into(),
            serial: SerialMode::Null,
            api_socket: None,
            dirty_tracking: Default::default(),
            devices: Default::default(),
            platform: Default::default(),
        }
    }

    /// A real Linux bzImage: `COVM_TEST_BZIMAGE` (set by .ci/run from
    /// Debian's linux-image-cloud-amd64), else one under /boot.
    fn real_bzimage() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("COVM_TEST_BZIMAGE") {
            return Some(path.into());
        }
        std::fs::read_dir("/boot").ok()?.flatten().map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz"))
        })
    }

    #[test]
    fn real_bzimage_loads_with_its_setup_header() {
        let Some(kernel) = real_bzimage() else {
            covm_test_support::skip("no real bzImage (set COVM_TEST_BZIMAGE or install linux-image-cloud-amd64)");
            return;
        };
        let mem = crate::vm::memory::allocate(256 << 20).unwrap();
        let cfg = config(
            Payload::Kernel {
                kernel: kernel.clone(),
                initramfs: None,
            },
            "console=ttyS0 quiet",
        );
        let entry = load(&mem, &cfg).unwrap_or_else(|e| panic!("{}: {e}", kernel.display()));
        assert_eq!(entry.mode, EntryMode::Linux64);
        let params: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.header }, 0x5372_6448, "HdrS");
        assert!({ hdr.version } >= 0x20c, "a 64-bit capable kernel");
        assert_eq!(entry.entry, u64::from(hdr.code32_start) + 0x200);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, layout::CMDLINE as u32);
        let mut cmdline = [0u8; 19];
        mem.read_slice(&mut cmdline, GuestAddress(layout::CMDLINE)).unwrap();
        assert_eq!(&cmdline, b"console=ttyS0 quiet");
        // The protected-mode kernel follows the setup sectors in the file.
        let file = std::fs::read(&kernel).unwrap();
        let setup = (usize::from(if file[0x1f1] == 0 { 4 } else { file[0x1f1] }) + 1) * 512;
        let mut loaded = [0u8; 64];
        mem.read_slice(&mut loaded, GuestAddress(u64::from(hdr.code32_start)))
            .unwrap();
        assert_eq!(&loaded[..], &file[setup..setup + 64]);
    }

    #[test]
    fn builtin_firmware_uses_the_pvh_entry() {
        let mem = crate::vm::memory::allocate(256 << 20).unwrap();
        let entry = load(&mem, &config(Payload::BuiltinFirmware, "workload=hello")).unwrap();
        assert_eq!(entry.mode, EntryMode::Pvh);
        assert_eq!(entry.boot_info, layout::PVH_START_INFO);
        assert!(entry.entry >= covm_guest_abi::layout::FIRMWARE_BASE);
        let mut cmdline = [0u8; 15];
        mem.read_slice(&mut cmdline, GuestAddress(layout::CMDLINE)).unwrap();
        assert_eq!(&cmdline, b"workload=hello\0");
    }

    #[test]
    fn overlong_cmdline_is_refused() {
        let mem = crate::vm::memory::allocate(256 << 20).unwrap();
        let long = "x".repeat(layout::CMDLINE_MAX);
        let err = load(&mem, &config(Payload::BuiltinFirmware, &long)).unwrap_err();
        assert!(err.to_string().starts_with("--cmdline is too long"), "{err}");
    }
}
