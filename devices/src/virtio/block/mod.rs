//! virtio-blk (block device, type 2) over a raw image, for Cloud
//! Hypervisor's `--disk path=FILE[,readonly=on][,direct=on][,id=ID]
//! [,num_queues=N][,queue_size=N]`.
//!
//! The device offers flush, a 512-byte block size and, with several
//! queues, multiqueue; one worker thread takes the requests of every queue
//! (`request`) and hands reads and writes to the disk's I/O threads
//! (`pool`), which do positional I/O through bounce buffers, so queues
//! share no file offset and no thread but the worker touches guest memory.
//! The image is OFD-locked so no two VMMs write it (`image`); live
//! migration hands the lock over with [`Block::release`] on the source and
//! [`Block::acquire`] on the destination.

mod image;
mod in_place;
mod pool;
mod request;
#[cfg(test)]
mod tests;

use super::worker::Worker;
use super::{features, ActivateError, Activation, Handover, VirtioDevice};
use image::Image;
use std::mem::offset_of;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use virtio_bindings::bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::Queue;

/// The sector size requests count in (virtio 1.2 §5.2.6), and the block
/// size the device reports.
pub const SECTOR_SIZE: u64 = 512;
/// The most data one request may carry: a request beyond it fails with
/// IOERR (Linux's default `max_sectors_kb` is well below it).
pub const MAX_REQUEST: usize = 4 << 20;
/// The most queues `num_queues` may ask for.
pub const MAX_QUEUES: u16 = 16;
/// The largest queue `queue_size` may ask for.
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// The length of the GET_ID string.
const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

/// A disk as `--disk` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockOptions {
    /// The raw image: a regular file or a block device.
    pub path: PathBuf,
    /// The guest may not write it (the image is opened read-only).
    pub readonly: bool,
    /// Bypass the host's page cache (O_DIRECT).
    pub direct: bool,
    /// The device's name, and what GET_ID answers (its first 20 bytes);
    /// empty: the image file's name.
    pub id: String,
    /// Request queues (1 to [`MAX_QUEUES`]).
    pub num_queues: u16,
    /// Each queue's maximum size (a power of two, 2 to [`MAX_QUEUE_SIZE`]).
    pub queue_size: u16,
}

impl BlockOptions {
    /// Cloud Hypervisor's defaults for `path`: read-write, cached, one
    /// queue of 128.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        BlockOptions {
            path: path.into(),
            readonly: false,
            direct: false,
            id: String::new(),
            num_queues: 1,
            queue_size: 128,
        }
    }

    /// The device's name: `id`, or else the image file's name.
    pub fn name(&self) -> String {
        if !self.id.is_empty() {
            return self.id.clone();
        }
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// When the device takes the image's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockTiming {
    /// At [`Block::new`]: a VM that starts here.
    Now,
    /// At [`Block::acquire`]: an incoming VM during live migration, whose
    /// source still holds the lock; until then the image is open read-only.
    Deferred,
}

/// Why a disk cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// `num_queues` out of range.
    #[error("num_queues={0}: must be 1 to {MAX_QUEUES}")]
    NumQueues(u16),
    /// `queue_size` out of range or not a power of two.
    #[error("queue_size={0}: must be a power of two from 2 to {MAX_QUEUE_SIZE}")]
    QueueSize(u16),
    /// `id` cannot name a thread.
    #[error("id={0:?}: must not contain a NUL byte")]
    Id(String),
    /// The image cannot be opened (or examined).
    #[error("cannot open disk image {}: {source}", path.display())]
    Open {
        /// The image.
        path: PathBuf,
        /// The OS's reason.
        source: std::io::Error,
    },
    /// The path is neither a regular file nor a block device.
    #[error("disk image {} is neither a regular file nor a block device", path.display())]
    NotADisk {
        /// The image.
        path: PathBuf,
    },
    /// The image's size is not a whole number of sectors.
    #[error("disk image {} is {size} bytes, not a multiple of {SECTOR_SIZE}", path.display())]
    UnalignedSize {
        /// The image.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// Another open of the image holds a conflicting lock.
    #[error(
        "disk image {} is locked by another process (for example another covm using it); \
         a disk may have one writer or any number of read-only users",
        path.display()
    )]
    Locked {
        /// The image.
        path: PathBuf,
    },
    /// Locking failed for another reason.
    #[error("cannot lock disk image {}: {source}", path.display())]
    Lock {
        /// The image.
        path: PathBuf,
        /// The OS's reason.
        source: std::io::Error,
    },
    /// The image changed size between the deferred open and the acquire.
    #[error("disk image {} changed size from {was} to {now} bytes while the VM was migrating", path.display())]
    Resized {
        /// The image.
        path: PathBuf,
        /// Its size when the device was created.
        was: u64,
        /// Its size now.
        now: u64,
    },
    /// Writing back before releasing the lock failed.
    #[error("cannot write back disk image {}: {source}", path.display())]
    Sync {
        /// The image.
        path: PathBuf,
        /// The OS's reason.
        source: std::io::Error,
    },
}

/// The device's counters, shared with its worker.
#[derive(Default)]
struct Stats {
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
    read_ops: AtomicU64,
    write_ops: AtomicU64,
    flush_ops: AtomicU64,
    malformed: AtomicU64,
    /// The guest's misbehaviour was logged once; later cases are counted.
    warned_guest: AtomicBool,
    /// A host I/O error was logged once.
    warned_host: AtomicBool,
}

/// The block device.
pub struct Block {
    options: BlockOptions,
    image: Arc<Mutex<Image>>,
    /// In sectors.
    capacity: u64,
    id: [u8; ID_BYTES],
    config: Vec<u8>,
    worker: Option<Worker>,
    stats: Arc<Stats>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Block {
    /// Checks `options`, opens the image and (with [`LockTiming::Now`])
    /// locks it.
    pub fn new(options: BlockOptions, timing: LockTiming) -> Result<Self, BlockError> {
        if !(1..=MAX_QUEUES).contains(&options.num_queues) {
            return Err(BlockError::NumQueues(options.num_queues));
        }
        if !(2..=MAX_QUEUE_SIZE).contains(&options.queue_size) || !options.queue_size.is_power_of_two() {
            return Err(BlockError::QueueSize(options.queue_size));
        }
        if options.id.contains('\0') {
            return Err(BlockError::Id(options.id));
        }
        let image = Image::open(&options.path, options.readonly, options.direct, timing)?;
        let capacity = image.size() / SECTOR_SIZE;
        let mut id = [0u8; ID_BYTES];
        let name = options.name();
        let n = name.len().min(ID_BYTES);
        id[..n].copy_from_slice(&name.as_bytes()[..n]);
        let config = config_space(capacity, &options);
        Ok(Block {
            options,
            image: Arc::new(Mutex::new(image)),
            capacity,
            id,
            config,
            worker: None,
            stats: Arc::default(),
        })
    }

    /// The options it was made with.
    pub fn options(&self) -> &BlockOptions {
        &self.options
    }

    /// Its capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Takes the image's lock, reopening the image as the options say if
    /// its lock was deferred: the destination of a live migration, once
    /// the source let go; or the source resuming after a failed
    /// migration. Waits for the request being served, if any.
    pub fn acquire(&self) -> Result<(), BlockError> {
        lock(&self.image).acquire()
    }

    /// Writes the image back and drops its lock, keeping it open: the
    /// source of a live migration, paused and drained, so the destination
    /// can take it.
    pub fn release(&self) -> Result<(), BlockError> {
        lock(&self.image).release()
    }

    fn handler(&self) -> request::Handler {
        request::Handler::new(
            format!("virtio-blk {}", self.options.name()),
            self.image.clone(),
            self.capacity,
            self.options.readonly,
            self.id,
            request::max_descriptors(self.options.queue_size),
            self.stats.clone(),
        )
    }
}

/// `seg_max`: a chain holds the header and the status besides the data,
/// and may be no longer than the queue (virtio 1.2 §2.7.5.3.1).
fn seg_max(queue_size: u16) -> u32 {
    u32::from(queue_size.saturating_sub(2).max(1))
}

/// `struct virtio_blk_config`, little-endian (virtio 1.2 §5.2.4); fields
/// for features not offered stay 0.
fn config_space(capacity: u64, options: &BlockOptions) -> Vec<u8> {
    type Config = virtio_blk_config;
    let mut c = vec![0u8; std::mem::size_of::<Config>()];
    let mut put = |offset: usize, bytes: &[u8]| c[offset..offset + bytes.len()].copy_from_slice(bytes);
    put(offset_of!(Config, capacity), &capacity.to_le_bytes());
    put(offset_of!(Config, seg_max), &seg_max(options.queue_size).to_le_bytes());
    put(offset_of!(Config, blk_size), &(SECTOR_SIZE as u32).to_le_bytes());
    // Writes stay in the host's cache until a flush: a write-back cache,
    // which FLUSH already tells the driver.
    put(offset_of!(Config, wce), &[1]);
    put(offset_of!(Config, num_queues), &options.num_queues.to_le_bytes());
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![self.options.queue_size; usize::from(self.options.num_queues)]
    }

    fn features(&self) -> u64 {
        let bit = |b: u32| 1u64 << b;
        let mut f = features::VERSION_1
            | features::RING_INDIRECT_DESC
            | features::RING_EVENT_IDX
            | bit(VIRTIO_BLK_F_FLUSH)
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE);
        if self.options.readonly {
            f |= bit(VIRTIO_BLK_F_RO);
        }
        if self.options.num_queues > 1 {
            f |= bit(VIRTIO_BLK_F_MQ);
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::Queues("the device is already active".into()));
        }
        if let Some(q) = activation.queues.iter().find(|q| q.index >= self.options.num_queues) {
            return Err(ActivateError::Queues(format!(
                "queue {} enabled, the device has {}",
                q.index, self.options.num_queues
            )));
        }
        let name = format!("virtio-blk-{}", self.options.name());
        self.worker = Some(Worker::start(&name, self.handler(), activation.into_worker_start())?);
        Ok(())
    }

    fn reset(&mut self) -> Option<Vec<Queue>> {
        self.worker.take().map(Worker::stop)
    }

    fn worker(&self) -> Option<&Worker> {
        self.worker.as_ref()
    }

    /// The image's lock: [`Block::release`] and [`Block::acquire`].
    fn handover(&mut self, step: Handover) -> Result<(), String> {
        match step {
            Handover::Release => self.release(),
            Handover::Acquire => self.acquire(),
        }
        .map_err(|e| e.to_string())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("read_bytes", get(&s.read_bytes)),
            ("write_bytes", get(&s.write_bytes)),
            ("read_ops", get(&s.read_ops)),
            ("write_ops", get(&s.write_ops)),
            ("flush_ops", get(&s.flush_ops)),
            ("malformed_requests", get(&s.malformed)),
        ]
    }
}
