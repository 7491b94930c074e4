//! virtio-blk tests: real images in a temporary directory, guest memory
//! with a dirty bitmap, and queues driven as a driver would.

use super::*;
use crate::virtio::test_support::{wait_for, Irqs};
use crate::virtio::worker::QueueHandler;
use crate::virtio::{ActiveQueue, GuestMemory};
use std::path::Path;
use std::time::Duration;
use virtio_bindings::bindings::virtio_blk::*;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest memory: room for a request past [`MAX_REQUEST`].
const MEM_SIZE: u64 = 8 << 20;
const HDR: u64 = 0x4000;
const DATA: u64 = 0x10000;
const STATUS: u64 = 0x8000;
/// The queue tests drive: descriptor table at 0, rings up to 0x1810.
const QUEUE: u16 = 256;
const SECTORS: u64 = 64;
const S: u32 = SECTOR_SIZE as u32;

/// An image in its own directory under the system's temporary one.
struct TempImage {
    dir: PathBuf,
    path: PathBuf,
}

impl TempImage {
    /// `len` bytes, byte `i` being `pattern(i)`.
    fn with_len(name: &str, len: u64) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("covm-blk-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, (0..len).map(pattern).collect::<Vec<u8>>()).unwrap();
        TempImage { dir, path }
    }

    fn new() -> Self {
        Self::with_len("disk.img", SECTORS * SECTOR_SIZE)
    }

    fn bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()[offset as usize..][..len].to_vec()
    }

    fn options(&self) -> BlockOptions {
        BlockOptions::new(&self.path)
    }

    fn block(&self) -> Block {
        self.open(|_| ()).unwrap()
    }

    /// A device on the image, its options changed by `f`.
    fn open(&self, f: impl FnOnce(&mut BlockOptions)) -> Result<Block, BlockError> {
        let mut options = self.options();
        f(&mut options);
        Block::new(options, LockTiming::Now)
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pattern(i: u64) -> u8 {
    (i / SECTOR_SIZE) as u8 ^ (i % 251) as u8
}

fn memory() -> GuestMemory {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// A buffer: address, length, device-writable.
type Buf = (u64, u32, bool);

fn r(addr: u64, len: u32) -> Buf {
    (addr, len, false)
}

fn w(addr: u64, len: u32) -> Buf {
    (addr, len, true)
}

fn raw(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
}

/// The driver's side of one queue.
struct Driver<'a> {
    mem: &'a GuestMemory,
    mock: MockSplitQueue<'a, GuestMemory>,
    queue: Queue,
    next_desc: u16,
    next_used: u16,
}

impl<'a> Driver<'a> {
    fn new(mem: &'a GuestMemory) -> Self {
        let mock = MockSplitQueue::create(mem, GuestAddress(0), QUEUE);
        let queue = mock.create_queue().unwrap();
        Driver {
            mem,
            mock,
            queue,
            next_desc: 0,
            next_used: 0,
        }
    }

    /// Makes a chain of `bufs` available.
    fn add(&mut self, bufs: &[Buf]) {
        let base = self.next_desc;
        let descs: Vec<_> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, writable))| {
                let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
                if i + 1 < bufs.len() {
                    flags |= VRING_DESC_F_NEXT;
                }
                raw(addr, len, flags, base + i as u16 + 1)
            })
            .collect();
        self.add_raw(&descs);
    }

    /// Makes `descs` available as one chain, their flags and links as given.
    fn add_raw(&mut self, descs: &[RawDescriptor]) {
        self.mock.add_desc_chains(&descs[..1], self.next_desc).unwrap();
        for (i, d) in descs.iter().enumerate().skip(1) {
            self.mock.desc_table().store(self.next_desc + i as u16, *d).unwrap();
        }
        self.next_desc += descs.len() as u16;
    }

    /// A request header in guest memory.
    fn header(&self, kind: u32, sector: u64) {
        self.mem.write_obj(kind.to_le(), GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        self.mem.write_obj(sector.to_le(), GuestAddress(HDR + 8)).unwrap();
    }

    fn serve(&mut self, block: &Block) {
        block.handler().process(self.mem, 0, &mut self.queue).unwrap();
    }

    /// The next used entry's length, checking it is there.
    fn used_len(&mut self) -> u32 {
        assert!(self.mock.used().idx().load() > self.next_used, "no used entry");
        let elem = self.mock.used().ring().ref_at(self.next_used as usize).unwrap().load();
        self.next_used += 1;
        elem.len()
    }

    /// Serves one request `bufs` and returns (used length, status byte).
    fn request(&mut self, block: &Block, kind: u32, sector: u64, bufs: &[Buf]) -> (u32, u8) {
        self.header(kind, sector);
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        self.add(bufs);
        self.serve(block);
        (self.used_len(), self.mem.read_obj(GuestAddress(STATUS)).unwrap())
    }
}

fn counter(block: &Block, name: &str) -> u64 {
    block.counters().into_iter().find(|(n, _)| *n == name).unwrap().1
}

fn guest_bytes(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

#[test]
fn read_fills_guest_memory_across_buffers() {
    let (img, mem) = (TempImage::new(), memory());
    let block = img.block();
    let mut d = Driver::new(&mem);
    let bufs = [r(HDR, 16), w(DATA, S), w(DATA + 0x3000, S), w(STATUS, 1)];
    assert_eq!(d.request(&block, VIRTIO_BLK_T_IN, 2, &bufs), (2 * S + 1, OK));
    assert_eq!(guest_bytes(&mem, DATA, 512), img.bytes(1024, 512));
    assert_eq!(guest_bytes(&mem, DATA + 0x3000, 512), img.bytes(1536, 512));
    assert_eq!(counter(&block, "read_ops"), 1);
    assert_eq!(counter(&block, "read_bytes"), 1024);
}

#[test]
fn write_reaches_the_file() {
    let (img, mem) = (TempImage::new(), memory());
    let block = img.block();
    let mut d = Driver::new(&mem);
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    let before = img.bytes(0, 5 * 512);
    let bufs = [r(HDR, 16), r(DATA, 2 * S), w(STATUS, 1)];
    assert_eq!(d.request(&block, VIRTIO_BLK_T_OUT, 3, &bufs), (1, OK));
    assert_eq!(img.bytes(3 * 512, 1024), data);
    assert_eq!(
        img.bytes(0, 3 * 512),
        before[..3 * 512],
        "only the sectors asked are written"
    );
    assert_eq!(counter(&block, "write_ops"), 1);
    assert_eq!(counter(&block, "write_bytes"), 1024);
}

#[test]
fn any_framing_is_accepted() {
    // The header split over two buffers; data and status in one buffer.
    let (img, mem) = (TempImage::new(), memory());
    let block = img.block();
    let mut d = Driver::new(&mem);
    d.header(VIRTIO_BLK_T_IN, 5);
    d.add(&[r(HDR, 6), r(HDR + 6, 10), w(DATA, S + 1)]);
    d.serve(&block);
    assert_eq!(d.used_len(), S + 1);
    assert_eq!(guest_bytes(&mem, DATA, 512), img.bytes(5 * 512, 512));
    assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA + 512)).unwrap(), OK);
}

#[test]
fn requests_larger_than_the_bounce_buffer_are_whole() {
    let (img, mem) = (TempImage::with_len("big.img", 8 << 20), memory());
    let block = img.block();
    let mut d = Driver::new(&mem);
    let len = (request::CHUNK * 2 + 512) as u32;
    assert_eq!(
        d.request(&block, VIRTIO_BLK_T_IN, 1, &[r(HDR, 16), w(DATA, len), w(STATUS, 1)]),
        (len + 1, OK)
    );
    assert_eq!(guest_bytes(&mem, DATA, len as usize), img.bytes(512, len as usize));
    let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
    mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    assert_eq!(
        d.request(&block, VIRTIO_BLK_T_OUT, 7, &[r(HDR, 16), r(DATA, len), w(STATUS, 1)]),
        (1, OK)
    );
    assert_eq!(img.bytes(7 * 512, len as usize), data);
}

#[test]
fn flush_and_get_id() {
    let img = TempImage::with_len("a-rather-long-disk-image-name.img", 4096);
    let mem = memory();
    let block = img.block();
    let mut d = Driver::new(&mem);
    assert_eq!(
        d.request(&block, VIRTIO_BLK_T_FLUSH, 0, &[r(HDR, 16), w(STATUS, 1)]),
        (1, OK)
    );
    assert_eq!(counter(&block, "flush_ops"), 1);
    let bufs = [r(HDR, 16), w(DATA, 20), w(STATUS, 1)];
    assert_eq!(d.request(&block, VIRTIO_BLK_T_GET_ID, 0, &bufs), (21, OK));
    assert_eq!(guest_bytes(&mem, DATA, 20), b"a-rather-long-disk-i");

    drop(block);
    let named = img.open(|o| o.id = "vol0".into()).unwrap();
    mem.write_slice(&[0xaa; 20], GuestAddress(DATA)).unwrap();
    assert_eq!(d.request(&named, VIRTIO_BLK_T_GET_ID, 0, &bufs), (21, OK));
    assert_eq!(guest_bytes(&mem, DATA, 20), b"vol0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
}

#[test]
fn unknown_types_are_unsupported() {
    let (img, mem) = (TempImage::new(), memory());
    let block = img.block();
    let mut d = Driver::new(&mem);
    for kind in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES, 0xdead_beef] {
        assert_eq!(
            d.request(&block, kind, 0, &[r(HDR, 16), w(DATA, S), w(STATUS, 1)]),
            (1, UNSUPP)
        );
    }
    assert_eq!(counter(&block, "malformed_requests"), 0);
}

#[test]
fn unanswerable_chains_are_used_with_length_zero() {
    let (img, mem) = (TempImage::new(), memory());
    let block = img.block();
    let mut d = Driver::new(&mem);
    let cases: [&[Buf]; 5] = [
        // Too short for a header.
        &[r(HDR, 8), w(STATUS, 1)],
        // No status byte.
        &[r(HDR, 16)],
        &[r(HDR, 16), r(DATA, S)],
        // The status descriptor is read-only.
        &[r(HDR, 16), w(DATA, S), r(STATUS, 1)],
        // The status byte is outside guest memory.
        &[r(HDR, 16), w(MEM_SIZE, 1)],
    ];
    for (i, bufs) in cases.iter().enumerate() {
        assert_eq!(d.request(&block, VIRTIO_BLK_T_IN, 0, bufs), (0, 0xff), "case {i}");
    }
    assert_eq!(counter(&block, "malformed_requests"), cases.len() as u64);
    assert_eq!(counter(&block, "read_ops"), 0);
}

#[test]
fn bad_requests_get_ioerr() {
    let (img, mem) = (TempImage::new(), memory());
    let block = img.block();
    let mut d = Driver::new(&mem);
    let before = std::fs::read(&img.path).unwrap();
    let (t_in, t_out) = (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT);
    let cases: [(u32, u64, &[Buf]); 11] = [
        // Data outside guest memory, either way.
        (t_in, 0, &[r(HDR, 16), w(MEM_SIZE - 512, 2 * S), w(STATUS, 1)]),
        (t_out, 0, &[r(HDR, 16), r(MEM_SIZE, S), w(STATUS, 1)]),
        // Past the capacity, and a sector that overflows.
        (t_in, SECTORS - 1, &[r(HDR, 16), w(DATA, 2 * S), w(STATUS, 1)]),
        (t_out, u64::MAX, &[r(HDR, 16), r(DATA, S), w(STATUS, 1)]),
        // Not a whole number of sectors.
        (t_out, 0, &[r(HDR, 16), r(DATA, S + 1), w(STATUS, 1)]),
        (t_in, 0, &[r(HDR, 16), w(DATA, 100), w(STATUS, 1)]),
        // Data the wrong way, and a readable buffer after a writable one.
        (t_in, 0, &[r(HDR, 16), r(DATA, S), w(STATUS, 1)]),
        (t_out, 0, &[r(HDR, 16), w(DATA, S), w(STATUS, 1)]),
        (t_out, 0, &[r(HDR, 16), w(DATA, S), r(DATA + 0x1000, S), w(STATUS, 1)]),
        (
            VIRTIO_BLK_T_FLUSH,
            0,
            &[r(HDR, 16), w(DATA, S), r(DATA + 0x1000, S), w(STATUS, 1)],
        ),
        // More than a request may carry.
        (t_out, 0, &[r(HDR, 16), r(DATA, MAX_REQUEST as u32 + S), w(STATUS, 1)]),
    ];
    for (i, (kind, sector, bufs)) in cases.iter().enumerate() {
        assert_eq!(d.request(&block, *kind, *sector, bufs), (1, IOERR), "case {i}");
    }
    assert_eq!(counter(&block, "malformed_requests"), cases.len() as u64);
    assert_eq!(std::fs::read(&img.path).unwrap(), before, "nothing was written");
    // The last sector is still in range.
    let bufs = [r(HDR, 16), w(DATA, S), w(STATUS, 1)];
    assert_eq!(d.request(&block, t_in, SECTORS - 1, &bufs), (S + 1, OK));
}

#[test]
fn readonly_disks_refuse_writes() {
    let (img, mem) = (TempImage::new(), memory());
    let block = img.open(|o| o.readonly = true).unwrap();
    assert_ne!(block.features() & (1 << VIRTIO_BLK_F_RO), 0);
    let mut d = Driver::new(&mem);
    let before = std::fs::read(&img.path).unwrap();
    mem.write_slice(&[0x55; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(
        d.request(&block, VIRTIO_BLK_T_OUT, 0, &[r(HDR, 16), r(DATA, S), w(STATUS, 1)]),
        (1, IOERR)
    );
    assert_eq!(std::fs::read(&img.path).unwrap(), before);
    assert_eq!(
        d.request(&block, VIRTIO_BLK_T_IN, 1, &[r(HDR, 16), w(DATA, S), w(STATUS, 1)]),
        (S + 1, OK)
    );
    assert_eq!(
        d.request(&block, VIRTIO_BLK_T_FLUSH, 0, &[r(HDR, 16), w(STATUS, 1)]),
        (1, OK)
    );
}

#[test]
fn zero_length_buffers() {
    let (img, mem) = (TempImage::new(), memory());
    let block = img.block();
    let mut d = Driver::new(&mem);
    let bufs = [
        r(HDR, 16),
        w(DATA, 0),
        w(DATA + 0x1000, S),
        w(STATUS, 1),
        w(STATUS + 0x100, 0),
    ];
    assert_eq!(d.request(&block, VIRTIO_BLK_T_IN, 4, &bufs), (S + 1, OK));
    assert_eq!(guest_bytes(&mem, DATA + 0x1000, 512), img.bytes(4 * 512, 512));
    // No data at all: nothing to do.
    assert_eq!(
        d.request(&block, VIRTIO_BLK_T_IN, 4, &[r(HDR, 16), w(DATA, 0), w(STATUS, 1)]),
        (1, OK)
    );
}

#[test]
fn looping_chains_end() {
    let (img, mem) = (TempImage::new(), memory());
    let (next, write) = (VRING_DESC_F_NEXT, VRING_DESC_F_WRITE);
    let mut d = Driver::new(&mem);
    d.header(VIRTIO_BLK_T_IN, 0);
    // A device whose queues may be as large as the driver's: virtio-queue
    // stops a loop after the queue's size in descriptors.
    let block = img.open(|o| o.queue_size = QUEUE).unwrap();
    // 0 -> 1 -> 0 -> ...
    d.add_raw(&[raw(HDR, 16, next, 1), raw(STATUS, 1, next | write, 0)]);
    d.serve(&block);
    assert_eq!(d.used_len(), 1, "IOERR: a readable buffer after a writable one");
    // 2 -> 3 -> 3 -> ...: 255 data buffers, the last byte the status.
    d.add_raw(&[raw(HDR, 16, next, 3), raw(DATA, S, next | write, 3)]);
    d.serve(&block);
    assert_eq!(d.used_len(), 1, "IOERR: not a whole number of sectors");
    assert_eq!(counter(&block, "malformed_requests"), 2);
    assert_eq!(counter(&block, "read_ops"), 0);
    drop(block);

    // A device with smaller queues than the loop's length refuses it
    // outright.
    let block = img.block();
    d.add_raw(&[raw(HDR, 16, next, 5), raw(STATUS, 1, next | write, 4)]);
    d.serve(&block);
    assert_eq!(d.used_len(), 0);
    assert_eq!(counter(&block, "malformed_requests"), 1);
}

#[test]
fn indirect_tables() {
    let (img, mem) = (TempImage::new(), memory());
    let block = img.open(|o| o.queue_size = 16).unwrap();
    let mut d = Driver::new(&mem);
    let table = GuestAddress(0x20000);
    let (next, write) = (VRING_DESC_F_NEXT, VRING_DESC_F_WRITE);
    let descs = [
        raw(HDR, 16, next, 1),
        raw(DATA, S, next | write, 2),
        raw(STATUS, 1, write, 0),
    ];
    for (i, desc) in descs.iter().enumerate() {
        mem.write_obj(*desc, table.unchecked_add(16 * i as u64)).unwrap();
    }
    d.header(VIRTIO_BLK_T_IN, 9);
    d.add_raw(&[raw(table.0, 48, VRING_DESC_F_INDIRECT, 0)]);
    d.serve(&block);
    assert_eq!(d.used_len(), S + 1);
    assert_eq!(guest_bytes(&mem, DATA, 512), img.bytes(9 * 512, 512));
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), OK);

    // A table longer than the queue: 17 descriptors for a queue of 16.
    for i in 0..17u16 {
        let desc = match i {
            0 => raw(HDR, 16, next, 1),
            16 => raw(STATUS, 1, write, 0),
            _ => raw(DATA + 512 * u64::from(i), S, next | write, i + 1),
        };
        mem.write_obj(desc, table.unchecked_add(16 * u64::from(i))).unwrap();
    }
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    d.add_raw(&[raw(table.0, 17 * 16, VRING_DESC_F_INDIRECT, 0)]);
    d.serve(&block);
    assert_eq!(d.used_len(), 0);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0xff);
    assert_eq!(counter(&block, "malformed_requests"), 1);
}

#[test]
fn reads_mark_guest_pages_dirty() {
    let (img, mem) = (TempImage::new(), memory());
    let block = img.block();
    let mut d = Driver::new(&mem);
    let dirty = |addr: u64| {
        mem.find_region(GuestAddress(addr))
            .unwrap()
            .bitmap()
            .dirty_at(addr as usize)
    };
    let data = 0x40000;
    let status = 0x50000;
    assert!(!dirty(data) && !dirty(data + 0x1000) && !dirty(status));
    d.header(VIRTIO_BLK_T_IN, 0);
    d.add(&[r(HDR, 16), w(data + 0x800, 2 * S + 100), w(status, 1)]);
    // Not a whole number of sectors: nothing but the status is written.
    d.serve(&block);
    assert_eq!(d.used_len(), 1);
    assert!(!dirty(data) && !dirty(data + 0x1000) && dirty(status));
    d.add(&[r(HDR, 16), w(data + 0x800, 8 * S), w(status, 1)]);
    d.serve(&block);
    assert_eq!(d.used_len(), 8 * S + 1);
    assert!(dirty(data) && dirty(data + 0x1000) && !dirty(data + 0x2000));
}

#[test]
fn host_errors_get_ioerr() {
    let (img, mem) = (TempImage::new(), memory());
    let block = img.block();
    let mut d = Driver::new(&mem);
    // The image shrinks under the device: its last sectors cannot be read.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img.path)
        .unwrap()
        .set_len(SECTOR_SIZE * 8)
        .unwrap();
    let bufs = [r(HDR, 16), w(DATA, 2 * S), w(STATUS, 1)];
    assert_eq!(d.request(&block, VIRTIO_BLK_T_IN, 20, &bufs).1, IOERR);
    assert_eq!(counter(&block, "malformed_requests"), 0);
}

#[test]
fn direct_io() {
    let img = TempImage::new();
    let block = match img.open(|o| o.direct = true) {
        Ok(b) => b,
        // Some file systems (tmpfs) refuse O_DIRECT: the error says so.
        Err(BlockError::Open { path, source }) if source.raw_os_error() == Some(libc::EINVAL) => {
            assert_eq!(path, img.path);
            eprintln!("{}: O_DIRECT not supported here, direct I/O untested", path.display());
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let mem = memory();
    let mut d = Driver::new(&mem);
    // Guest buffers are not 4096-aligned: the bounce buffer is.
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 3) as u8).collect();
    mem.write_slice(&data, GuestAddress(DATA + 8)).unwrap();
    assert_eq!(
        d.request(
            &block,
            VIRTIO_BLK_T_OUT,
            1,
            &[r(HDR, 16), r(DATA + 8, 2 * S), w(STATUS, 1)]
        ),
        (1, OK)
    );
    assert_eq!(
        d.request(
            &block,
            VIRTIO_BLK_T_IN,
            1,
            &[r(HDR, 16), w(DATA + 0x3004, 2 * S), w(STATUS, 1)]
        ),
        (1025, OK)
    );
    assert_eq!(guest_bytes(&mem, DATA + 0x3004, 1024), data);
    assert_eq!(img.bytes(512, 1024), data);
    // Page-aligned buffers are done in place, O_DIRECT straight into
    // guest memory.
    let page: Vec<u8> = (0..8192u32).map(|i| (i * 5 + 1) as u8).collect();
    mem.write_slice(&page, GuestAddress(DATA)).unwrap();
    let bufs = [r(HDR, 16), r(DATA, 8192), w(STATUS, 1)];
    assert_eq!(d.request(&block, VIRTIO_BLK_T_OUT, 16, &bufs), (1, OK));
    assert_eq!(img.bytes(16 * 512, 8192), page);
    let bufs = [r(HDR, 16), w(DATA + 0x4000, 4096), w(DATA + 0x6000, 4096), w(STATUS, 1)];
    assert_eq!(d.request(&block, VIRTIO_BLK_T_IN, 16, &bufs), (8193, OK));
    assert_eq!(guest_bytes(&mem, DATA + 0x4000, 4096), page[..4096]);
    assert_eq!(guest_bytes(&mem, DATA + 0x6000, 4096), page[4096..]);
}

#[test]
fn large_unaligned_direct_requests_go_in_pieces() {
    let img = TempImage::with_len("big-direct.img", 8 << 20);
    let Ok(block) = img.open(|o| o.direct = true) else {
        eprintln!("O_DIRECT not supported here, untested");
        return;
    };
    let mem = memory();
    let mut d = Driver::new(&mem);
    // Unaligned and larger than a bounce buffer: done a piece at a time.
    let len = (request::CHUNK * 2 + 512) as u32;
    let data: Vec<u8> = (0..len).map(|i| (i % 249) as u8).collect();
    mem.write_slice(&data, GuestAddress(DATA + 8)).unwrap();
    assert_eq!(
        d.request(
            &block,
            VIRTIO_BLK_T_OUT,
            3,
            &[r(HDR, 16), r(DATA + 8, len), w(STATUS, 1)]
        ),
        (1, OK)
    );
    assert_eq!(img.bytes(3 * 512, len as usize), data);
    mem.write_slice(&vec![0u8; len as usize], GuestAddress(DATA + 8))
        .unwrap();
    assert_eq!(
        d.request(
            &block,
            VIRTIO_BLK_T_IN,
            3,
            &[r(HDR, 16), w(DATA + 8, len), w(STATUS, 1)]
        ),
        (len + 1, OK)
    );
    assert_eq!(guest_bytes(&mem, DATA + 8, len as usize), data);
}

#[test]
fn config_space_and_features() {
    let img = TempImage::new();
    let block = img.open(|o| (o.num_queues, o.queue_size) = (4, 256)).unwrap();
    let read = |offset: u64, len: usize| {
        let mut v = vec![0xee; len];
        block.read_config(offset, &mut v);
        v
    };
    assert_eq!(read(0, 8), SECTORS.to_le_bytes());
    assert_eq!(read(12, 4), 254u32.to_le_bytes(), "seg_max");
    assert_eq!(read(20, 4), 512u32.to_le_bytes(), "blk_size");
    assert_eq!(read(34, 2), 4u16.to_le_bytes(), "num_queues");
    let size = std::mem::size_of::<virtio_blk_config>() as u64;
    assert_eq!(read(size - 2, 4), [0; 4], "0 past the end");
    assert_eq!(read(u64::MAX, 4), [0; 4]);
    assert_eq!(block.queue_max_sizes(), vec![256; 4]);
    assert_eq!(block.device_type(), 2);
    let f = block.features();
    for bit in [
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_MQ,
    ] {
        assert_ne!(f & (1 << bit), 0, "feature {bit}");
    }
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_ne!(f & features::VERSION_1, 0);
    drop(block);
    assert_eq!(img.block().features() & (1 << VIRTIO_BLK_F_MQ), 0);
}

fn error(result: Result<Block, BlockError>) -> String {
    result.err().expect("accepted").to_string()
}

#[test]
fn bad_options_are_named() {
    let img = TempImage::new();
    for n in [0, 17] {
        assert!(error(img.open(|o| o.num_queues = n)).contains(&format!("num_queues={n}")));
    }
    for n in [0, 1, 3, 100, 2048] {
        assert!(error(img.open(|o| o.queue_size = n)).contains(&format!("queue_size={n}")));
    }
    assert!(error(img.open(|o| o.id = "a\0b".into())).contains("id="));
    let other = |path: &Path, readonly| {
        error(Block::new(
            BlockOptions {
                readonly,
                ..BlockOptions::new(path)
            },
            LockTiming::Now,
        ))
    };
    let missing = img.dir.join("missing.img");
    let e = other(&missing, false);
    assert!(
        e.contains(&missing.display().to_string()) && e.contains("No such file"),
        "{e}"
    );
    let e = other(&img.dir, true);
    assert!(e.contains("neither a regular file nor a block device"), "{e}");
    let odd = TempImage::with_len("odd.img", 1000);
    let e = error(odd.open(|_| ()));
    assert!(
        e.contains(&odd.path.display().to_string()) && e.contains("1000 bytes"),
        "{e}"
    );
}

fn locked(r: Result<impl Sized, BlockError>) -> bool {
    match r {
        Err(e @ BlockError::Locked { .. }) => {
            assert!(e.to_string().contains("another process"), "{e}");
            true
        }
        Err(e) => panic!("{e}"),
        Ok(_) => false,
    }
}

#[test]
fn one_writer_or_many_readers() {
    let img = TempImage::new();
    let ro = || img.open(|o| o.readonly = true);
    let rw = || img.open(|_| ());
    let a = rw().unwrap();
    assert!(locked(rw()));
    assert!(locked(ro()));
    drop(a);
    let (b, c) = (ro().unwrap(), ro().unwrap());
    assert!(locked(rw()));
    drop((b, c));
    assert!(rw().is_ok());
}

#[test]
fn release_and_acquire_hand_the_lock_over() {
    let (img, mem) = (TempImage::new(), memory());
    let source = img.block();
    // The destination opens without the lock while the source holds it.
    let dest = Block::new(img.options(), LockTiming::Deferred).unwrap();
    assert!(locked(dest.acquire()));
    let mut d = Driver::new(&mem);
    mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
    let write = [r(HDR, 16), r(DATA, S), w(STATUS, 1)];
    // Until it acquires, the destination cannot write.
    assert_eq!(d.request(&dest, VIRTIO_BLK_T_OUT, 0, &write), (1, IOERR));
    source.release().unwrap();
    dest.acquire().unwrap();
    assert!(locked(img.open(|_| ())));
    assert!(locked(source.acquire()));
    assert_eq!(d.request(&dest, VIRTIO_BLK_T_OUT, 0, &write), (1, OK));
    assert_eq!(img.bytes(0, 512), [0x5a; 512]);
    // A failed migration: the destination lets go, the source resumes.
    dest.release().unwrap();
    source.acquire().unwrap();
    source.acquire().unwrap();
    assert!(locked(dest.acquire()));
}

#[test]
fn handover_through_the_trait() {
    let img = TempImage::new();
    let mut source: Box<dyn VirtioDevice> = Box::new(img.block());
    let mut dest: Box<dyn VirtioDevice> = Box::new(Block::new(img.options(), LockTiming::Deferred).unwrap());
    let e = dest.handover(Handover::Acquire).unwrap_err();
    assert!(
        e.contains("another process") && e.contains(&img.path.display().to_string()),
        "{e}"
    );
    source.handover(Handover::Release).unwrap();
    dest.handover(Handover::Acquire).unwrap();
    assert!(source.handover(Handover::Acquire).is_err());
}

#[test]
fn served_on_the_worker_after_a_notification() {
    let (img, mem) = (TempImage::new(), memory());
    let mut block = img.block();
    let mut d = Driver::new(&mem);
    let irqs = Arc::new(Irqs::default());
    let notify = EventFd::new(EFD_NONBLOCK).unwrap();
    let kick = notify.try_clone().unwrap();
    block
        .activate(Activation {
            memory: mem.clone(),
            acked_features: block.features(),
            queues: vec![ActiveQueue {
                index: 0,
                queue: d.mock.create_queue().unwrap(),
                notify,
            }],
            interrupt: irqs.clone(),
            failed: Arc::default(),
            paused: false,
        })
        .unwrap();
    d.header(VIRTIO_BLK_T_IN, 6);
    d.add(&[r(HDR, 16), w(DATA, S), w(STATUS, 1)]);
    kick.write(1).unwrap();
    wait_for("the interrupt", || !irqs.queues.lock().unwrap().is_empty());
    assert_eq!(*irqs.queues.lock().unwrap(), [0]);
    assert_eq!(d.used_len(), S + 1);
    assert_eq!(guest_bytes(&mem, DATA, 512), img.bytes(6 * 512, 512));

    // Paused: a request waits in the ring until resumed.
    block.pause();
    d.header(VIRTIO_BLK_T_FLUSH, 0);
    d.add(&[r(HDR, 16), w(STATUS, 1)]);
    kick.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(d.mock.used().idx().load(), 1);
    assert_eq!(block.queue_states().unwrap()[0].next_used, 1);
    block.resume();
    wait_for("the flush", || d.mock.used().idx().load() == 2);
    assert_eq!(counter(&block, "flush_ops"), 1);
    assert!(block
        .activate(Activation {
            memory: mem.clone(),
            acked_features: 0,
            queues: Vec::new(),
            interrupt: irqs.clone(),
            failed: Arc::default(),
            paused: false,
        })
        .is_err());
    assert_eq!(block.reset().unwrap().len(), 1);
    assert!(block.reset().is_none());
    assert_eq!(irqs.config.load(Ordering::SeqCst), 0);
}

/// Many requests made available together: reads and writes run as
/// parallel batches, a flush between them waits for the writes before it,
/// and every request is answered, each with its own status.
#[test]
fn requests_made_available_together_are_each_answered() {
    let (img, mem) = (TempImage::with_len("batch.img", 4 << 20), memory());
    let block = img.block();
    let mut d = Driver::new(&mem);
    // Request i: header at 0x2000 + 16i, status at 0x3000 + i, data in
    // its own 8 KiB at 0x20000 + 8 KiB * i, sectors 16i..16i+16.
    let hdr = |i: u64| 0x2000 + 16 * i;
    let status = |i: u64| 0x3000 + i;
    let data = |i: u64| 0x20000 + 0x2000 * i;
    let put_header = |i: u64, kind: u32, sector: u64| {
        mem.write_obj(kind.to_le(), GuestAddress(hdr(i))).unwrap();
        mem.write_obj(0u32, GuestAddress(hdr(i) + 4)).unwrap();
        mem.write_obj(sector.to_le(), GuestAddress(hdr(i) + 8)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(status(i))).unwrap();
    };
    let content = |i: u64| -> Vec<u8> { (0..0x2000u64).map(|b| (b * 13 + i * 101) as u8).collect() };
    // Eight writes, a flush, eight reads of the same sectors (each request
    // is its own chain; a read may not rely on a write beside it in flight,
    // so the reads come in a second round).
    for i in 0..8 {
        mem.write_slice(&content(i), GuestAddress(data(i))).unwrap();
        put_header(i, VIRTIO_BLK_T_OUT, 16 * i);
        d.add(&[r(hdr(i), 16), r(data(i), 0x2000), w(status(i), 1)]);
    }
    put_header(8, VIRTIO_BLK_T_FLUSH, 0);
    d.add(&[r(hdr(8), 16), w(status(8), 1)]);
    d.serve(&block);
    let mut lens: Vec<u32> = (0..9).map(|_| d.used_len()).collect();
    lens.sort_unstable();
    assert_eq!(lens, [1; 9]);
    for i in 0..9 {
        assert_eq!(mem.read_obj::<u8>(GuestAddress(status(i))).unwrap(), OK, "request {i}");
    }
    for i in 0..8 {
        assert_eq!(img.bytes(16 * 512 * i, 0x2000), content(i), "write {i}");
    }
    for i in 0..8 {
        mem.write_slice(&[0u8; 0x2000], GuestAddress(data(i))).unwrap();
        put_header(i, VIRTIO_BLK_T_IN, 16 * (7 - i));
        d.add(&[r(hdr(i), 16), w(data(i), 0x2000), w(status(i), 1)]);
    }
    // One past the end among them fails alone.
    put_header(8, VIRTIO_BLK_T_IN, (4 << 20) / 512);
    d.add(&[r(hdr(8), 16), w(0x40000, 512), w(status(8), 1)]);
    d.serve(&block);
    let mut lens: Vec<u32> = (0..9).map(|_| d.used_len()).collect();
    lens.sort_unstable();
    assert_eq!(
        lens,
        [1, 0x2001, 0x2001, 0x2001, 0x2001, 0x2001, 0x2001, 0x2001, 0x2001]
    );
    for i in 0..8 {
        assert_eq!(mem.read_obj::<u8>(GuestAddress(status(i))).unwrap(), OK, "read {i}");
        assert_eq!(guest_bytes(&mem, data(i), 0x2000), content(7 - i), "read {i}");
    }
    assert_eq!(mem.read_obj::<u8>(GuestAddress(status(8))).unwrap(), IOERR);
    assert_eq!(counter(&block, "write_ops"), 8);
    assert_eq!(counter(&block, "read_ops"), 8);
    assert_eq!(counter(&block, "flush_ops"), 1);
    assert_eq!(counter(&block, "read_bytes"), 8 * 0x2000);
}
