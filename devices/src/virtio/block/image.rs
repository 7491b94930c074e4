//! The raw image behind a virtio-blk device: opening it, its size, and the
//! OFD lock that keeps two covm processes (or a covm and a QEMU or Cloud
//! Hypervisor, which lock the same way) from writing one disk.
//!
//! Live migration moves the lock: the destination opens the image
//! read-only and unlocked ([`LockTiming::Deferred`]), the source
//! [`Image::release`]s it once paused and drained, and the destination
//! [`Image::acquire`]s it before it starts writing.

use super::{BlockError, LockTiming, SECTOR_SIZE};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// An open image.
pub(super) struct Image {
    path: PathBuf,
    readonly: bool,
    direct: bool,
    file: File,
    /// The file is open as the options say (false while deferred: it is
    /// then open read-only, without O_DIRECT).
    reopened: bool,
    /// This open file description holds the OFD lock.
    locked: bool,
    size: u64,
}

impl Image {
    /// Opens `path` and, with [`LockTiming::Now`], locks it.
    pub(super) fn open(path: &Path, readonly: bool, direct: bool, timing: LockTiming) -> Result<Self, BlockError> {
        let deferred = matches!(timing, LockTiming::Deferred);
        let (file, size) = if deferred {
            // Read-only and without O_DIRECT: nothing is written before
            // `acquire`, and the source may still be writing.
            open_checked(path, true, false)?
        } else {
            open_checked(path, readonly, direct)?
        };
        let mut image = Image {
            path: path.to_path_buf(),
            readonly,
            direct,
            file,
            reopened: !deferred,
            locked: false,
            size,
        };
        if !deferred {
            image.lock()?;
        }
        Ok(image)
    }

    /// The file, for positional I/O.
    pub(super) fn file(&self) -> &File {
        &self.file
    }

    /// The image's size in bytes, as found when it was opened.
    /// Whether it is (or, once reopened, will be) opened O_DIRECT.
    pub(super) fn direct(&self) -> bool {
        self.direct
    }

    pub(super) fn size(&self) -> u64 {
        self.size
    }

    /// Opens the image as the options say (if it was deferred) and takes
    /// the lock; does nothing if this device already holds it.
    pub(super) fn acquire(&mut self) -> Result<(), BlockError> {
        if self.locked {
            return Ok(());
        }
        if self.reopened {
            return self.lock();
        }
        // The new file description takes the lock before it replaces the
        // read-only one, so a refused acquire leaves the device as it was.
        let (file, size) = open_checked(&self.path, self.readonly, self.direct)?;
        if size != self.size {
            return Err(BlockError::Resized {
                path: self.path.clone(),
                was: self.size,
                now: size,
            });
        }
        set_lock(&file, &self.path, lock_type(self.readonly))?;
        self.file = file;
        self.reopened = true;
        self.locked = true;
        Ok(())
    }

    /// Writes back what this device wrote (another host may open the
    /// image next, through shared storage), then drops the lock; the file
    /// stays open.
    pub(super) fn release(&mut self) -> Result<(), BlockError> {
        if !self.locked {
            return Ok(());
        }
        if !self.readonly && self.reopened {
            self.file.sync_data().map_err(|source| BlockError::Sync {
                path: self.path.clone(),
                source,
            })?;
        }
        set_lock(&self.file, &self.path, libc::F_UNLCK)?;
        self.locked = false;
        Ok(())
    }

    fn lock(&mut self) -> Result<(), BlockError> {
        set_lock(&self.file, &self.path, lock_type(self.readonly))?;
        self.locked = true;
        Ok(())
    }
}

/// Shared for readers, exclusive for a writer: any number of read-only
/// users, or one read-write user.
fn lock_type(readonly: bool) -> libc::c_int {
    if readonly {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    }
}

/// Opens `path`, checks it is a disk and returns it with its size.
fn open_checked(path: &Path, readonly: bool, direct: bool) -> Result<(File, u64), BlockError> {
    let mut options = OpenOptions::new();
    options.read(true).write(!readonly);
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    let mut file = options.open(path).map_err(|source| BlockError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| BlockError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let kind = meta.file_type();
    if !kind.is_file() && !kind.is_block_device() {
        return Err(BlockError::NotADisk {
            path: path.to_path_buf(),
        });
    }
    // A block device's metadata says 0 bytes: its end says its size.
    let size = file.seek(SeekFrom::End(0)).map_err(|source| BlockError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if !size.is_multiple_of(SECTOR_SIZE) {
        return Err(BlockError::UnalignedSize {
            path: path.to_path_buf(),
            size,
        });
    }
    Ok((file, size))
}

/// Sets (or with `F_UNLCK` drops) an OFD lock on the whole file. OFD
/// locks belong to the open file description, not the process: they
/// survive no close, are not shared with other opens in this process, and
/// are what QEMU and Cloud Hypervisor take on their images too.
fn set_lock(file: &File, path: &Path, kind: libc::c_int) -> Result<(), BlockError> {
    let lock = libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        // 0: to the end of the file, however large it grows.
        l_len: 0,
        // OFD locks require 0 here.
        l_pid: 0,
    };
    // SAFETY: F_OFD_SETLK only reads the `flock` passed by pointer, which
    // lives on this stack frame for the whole call; the descriptor is
    // `file`'s, open for the call's duration.
    let ret = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
    if ret == 0 {
        return Ok(());
    }
    let source = std::io::Error::last_os_error();
    match source.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Err(BlockError::Locked {
            path: path.to_path_buf(),
        }),
        _ => Err(BlockError::Lock {
            path: path.to_path_buf(),
            source,
        }),
    }
}
