//! Serving virtio-blk requests (virtio 1.2 §5.2.6) on the device's worker.
//!
//! A request is a header (type, reserved, sector) in device-readable
//! buffers, then its data, then one status byte: the chain's last byte,
//! device-writable. Any framing of those is allowed, so the chain is read
//! through virtio-queue's [`Reader`] and [`Writer`], which also bound it
//! to guest memory. What the driver gets back:
//! - a chain that cannot hold a header, or whose last byte the device may
//!   not write: used with length 0 (there is nowhere to say why);
//! - a request the driver got wrong (data the wrong way, a range past the
//!   end, a write to a read-only disk, buffers outside guest memory, more
//!   than [`MAX_REQUEST`]): IOERR, as for a host I/O error;
//! - a type the device does not know: UNSUPP.
//!
//! The used length is what the device wrote to the guest: the data read
//! (IN, GET_ID) and the status byte.

use super::in_place::{self, GuestBuffers};
use super::pool::{AlignedBuf, IoPool, Job, Target};

mod flight;
use super::{lock, Image, Stats, ID_BYTES, MAX_REQUEST, SECTOR_SIZE};
use crate::virtio::GuestMemory;
use crate::write_bitmap::WriteBitmap;
use std::io::{Read, Write};
use std::mem::{offset_of, size_of};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use virtio_bindings::bindings::virtio_blk::{
    virtio_blk_outhdr, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::bitmap::BS;
use vm_memory::{Bytes, GuestAddress, GuestMemory as _, Permissions};

pub(super) type Chain<'a> = DescriptorChain<&'a GuestMemory>;
type GuestReader<'a> = Reader<'a, BS<'a, WriteBitmap>>;
type GuestWriter<'a> = Writer<'a, BS<'a, WriteBitmap>>;

const HEADER_LEN: usize = size_of::<virtio_blk_outhdr>();
/// I/O goes through a host buffer this large at most, whatever the
/// request's size, so the device's memory does not grow with the guest's
/// requests.
pub(super) const CHUNK: usize = 1 << 20;
/// Reads and writes of up to [`CHUNK`] bytes run in parallel on the I/O
/// threads ([`IoPool`]) as long as their buffers add up to at most this:
/// what the device may hold in flight.
const BATCH_BYTES: usize = 2 << 20;
/// The disk's I/O threads: as many as 128 KiB requests fit in
/// [`BATCH_BYTES`], so a driver's sequential requests all reach the host at
/// once (8 gave 0.87x QEMU's 128 KiB writes, 16 gave 1.06x: docs/devices.md).
const IO_THREADS: usize = 16;

/// The longest chain the device serves: `seg_max` data buffers, the
/// header and the status (a longer one breaks the spec's rule that no
/// chain is longer than the queue, which indirect tables could bend).
pub(super) fn max_descriptors(queue_size: u16) -> usize {
    super::seg_max(queue_size) as usize + 2
}

/// Why a request did not succeed.
enum Failure {
    /// The driver broke the protocol: IOERR, counted as malformed.
    Guest(String),
    /// The host's I/O failed: IOERR.
    Host(std::io::Error),
    /// A request type the device does not implement: UNSUPP.
    Unsupported(u32),
}

/// A failure, and the bytes written to the guest before it.
struct Failed {
    failure: Failure,
    written: usize,
}

fn guest(why: impl Into<String>) -> Failed {
    Failed {
        failure: Failure::Guest(why.into()),
        written: 0,
    }
}

fn host(e: std::io::Error, written: usize) -> Failed {
    Failed {
        failure: Failure::Host(e),
        written,
    }
}

/// What the walk over a chain found.
struct Layout {
    /// The status byte: the last byte of the last non-empty descriptor.
    status: GuestAddress,
    /// No device-readable descriptor follows a device-writable one.
    ordered: bool,
}

/// Walks the chain's descriptors (at most `max`, so the walk and the
/// [`Reader`] and [`Writer`] built after it stay bounded) and finds the
/// status byte. `Err`: a chain the device cannot answer at all.
fn layout(memory: &GuestMemory, chain: &Chain<'_>, max: usize) -> Result<Layout, String> {
    let mut count = 0usize;
    let mut readable = 0u64;
    let mut seen_writable = false;
    let mut ordered = true;
    let mut last = None;
    for desc in chain.clone() {
        count += 1;
        if count > max {
            return Err(format!("a chain of more than {max} descriptors"));
        }
        if desc.is_write_only() {
            seen_writable = true;
        } else {
            ordered &= !seen_writable;
            readable += u64::from(desc.len());
        }
        if desc.len() > 0 {
            last = Some(desc);
        }
    }
    if readable < HEADER_LEN as u64 {
        return Err(format!(
            "{readable} device-readable bytes, too short for a request header"
        ));
    }
    let desc = last.ok_or("an empty chain")?;
    if !desc.is_write_only() {
        return Err("no device-writable status byte at the end of the chain".into());
    }
    let status = desc
        .addr()
        .0
        .checked_add(u64::from(desc.len()) - 1)
        .map(GuestAddress)
        .filter(|&a| memory.check_range(a, 1, Permissions::Write))
        .ok_or_else(|| {
            format!(
                "the status byte of a buffer at {:#x} is outside guest memory",
                desc.addr().0
            )
        })?;
    Ok(Layout { status, ordered })
}

/// What [`Handler::execute`] leaves to do.
enum Step<'a> {
    /// Finished: the bytes written to the guest, or why it failed.
    Done(Result<usize, Failed>),
    /// A read or write whose host I/O runs with its batch.
    Io(Deferred<'a>),
    /// A flush: it runs once the writes before it are done.
    Flush,
}

/// How far [`Handler::begin`] got with a chain.
enum Begun<'a> {
    /// Answered, with this used length.
    Answered(u32),
    /// A read or write for the batch; its status byte's address.
    Io(GuestAddress, Deferred<'a>),
    /// A flush; its status byte's address.
    Flush(GuestAddress),
}

/// A read or write waiting for its batch.
struct Deferred<'a> {
    job: Job,
    /// A read's data buffers, filled once the I/O is done.
    data: Option<GuestWriter<'a>>,
}

/// The block device's request handling, run by its worker.
pub(super) struct Handler {
    name: String,
    image: Arc<Mutex<Image>>,
    /// In sectors.
    capacity: u64,
    readonly: bool,
    /// The image is opened O_DIRECT: buffers done in place must be aligned.
    direct: bool,
    id: [u8; ID_BYTES],
    max_descriptors: usize,
    /// The buffer of requests larger than [`CHUNK`], done in pieces.
    buffer: AlignedBuf,
    /// Batch buffers kept for the next batch, at most [`BATCH_BYTES`] of them.
    spare: Vec<AlignedBuf>,
    /// Started with the first batch of more than one request.
    pool: Option<IoPool>,
    stats: Arc<Stats>,
}

impl Handler {
    pub(super) fn new(
        name: String,
        image: Arc<Mutex<Image>>,
        capacity: u64,
        readonly: bool,
        id: [u8; ID_BYTES],
        max_descriptors: usize,
        stats: Arc<Stats>,
    ) -> Self {
        let direct = lock(&image).direct();
        Handler {
            name,
            image,
            direct,
            capacity,
            readonly,
            id,
            max_descriptors,
            buffer: AlignedBuf::default(),
            spare: Vec::new(),
            pool: None,
            stats,
        }
    }

    /// Starts serving one chain: the used length if it is answered
    /// already, else what is left to do.
    fn begin<'a>(&mut self, memory: &'a GuestMemory, chain: Chain<'a>) -> Begun<'a> {
        let layout = match layout(memory, &chain, self.max_descriptors) {
            Ok(layout) => layout,
            Err(why) => {
                self.guest_fault(&why);
                return Begun::Answered(0);
            }
        };
        match self.execute(memory, chain, layout.ordered) {
            Step::Done(result) => Begun::Answered(self.complete(memory, layout.status, result)),
            Step::Io(io) => Begun::Io(layout.status, io),
            Step::Flush => Begun::Flush(layout.status),
        }
    }

    /// Answers a request: its status byte, and the used length.
    fn complete(&mut self, memory: &GuestMemory, status_at: GuestAddress, result: Result<usize, Failed>) -> u32 {
        let (status, written) = match result {
            Ok(written) => (VIRTIO_BLK_S_OK, written),
            Err(Failed { failure, written }) => {
                let status = match failure {
                    Failure::Guest(why) => {
                        self.guest_fault(&why);
                        VIRTIO_BLK_S_IOERR
                    }
                    Failure::Host(e) => {
                        self.host_error(&e);
                        VIRTIO_BLK_S_IOERR
                    }
                    Failure::Unsupported(kind) => {
                        tracing::debug!("{}: request type {kind} is not supported", self.name);
                        VIRTIO_BLK_S_UNSUPP
                    }
                };
                (status, written)
            }
        };
        // Written directly rather than through the Writer: it is the one
        // byte still writable when the data buffers are not.
        if memory.write_obj(status as u8, status_at).is_err() {
            return written as u32;
        }
        written as u32 + 1
    }

    /// Runs the request; `Ok` has the bytes written to the guest.
    fn execute<'a>(&mut self, memory: &'a GuestMemory, chain: Chain<'a>, ordered: bool) -> Step<'a> {
        match self.start(memory, chain, ordered) {
            Ok(step) => step,
            Err(failed) => Step::Done(Err(failed)),
        }
    }

    fn start<'a>(&mut self, memory: &'a GuestMemory, chain: Chain<'a>, ordered: bool) -> Result<Step<'a>, Failed> {
        if !ordered {
            return Err(guest("a device-readable buffer follows a device-writable one"));
        }
        let outside = |e: virtio_queue::Error| guest(format!("a data buffer is outside guest memory ({e})"));
        let buffers = chain.clone();
        let mut reader = Reader::new(memory, chain.clone()).map_err(outside)?;
        let mut writer = Writer::new(memory, chain).map_err(outside)?;
        // The layout found a writable last byte: keep it out of the data.
        let data_len = writer.available_bytes().saturating_sub(1);
        writer.split_at(data_len).map_err(outside)?;
        let mut header = [0u8; HEADER_LEN];
        reader
            .read_exact(&mut header)
            .map_err(|e| guest(format!("cannot read the header: {e}")))?;
        let field = |offset: usize, len: usize| &header[offset..offset + len];
        let kind = u32::from_le_bytes(
            field(offset_of!(virtio_blk_outhdr, type_), 4)
                .try_into()
                .unwrap_or_default(),
        );
        let sector = u64::from_le_bytes(
            field(offset_of!(virtio_blk_outhdr, sector), 8)
                .try_into()
                .unwrap_or_default(),
        );
        match kind {
            VIRTIO_BLK_T_IN => {
                let len = writer.available_bytes();
                let in_place = in_place::buffers(memory, &buffers, false, HEADER_LEN, len, self.direct);
                self.read(sector, &reader, writer, in_place)
            }
            VIRTIO_BLK_T_OUT => {
                let len = reader.available_bytes();
                let in_place = in_place::buffers(memory, &buffers, true, HEADER_LEN, len, self.direct);
                self.write(sector, &mut reader, &writer, in_place)
            }
            VIRTIO_BLK_T_FLUSH => Ok(Step::Flush),
            VIRTIO_BLK_T_GET_ID => Ok(Step::Done(self.get_id(&reader, &mut writer))),
            other => Err(Failed {
                failure: Failure::Unsupported(other),
                written: 0,
            }),
        }
    }

    /// The byte offset of `len` bytes from `sector`, if the request may
    /// touch them.
    fn range(&self, sector: u64, len: usize) -> Result<u64, Failed> {
        if len > MAX_REQUEST {
            return Err(guest(format!(
                "{len} bytes of data, more than the {MAX_REQUEST} a request may carry"
            )));
        }
        if !(len as u64).is_multiple_of(SECTOR_SIZE) {
            return Err(guest(format!("{len} bytes of data, not a whole number of sectors")));
        }
        let sectors = len as u64 / SECTOR_SIZE;
        match sector.checked_add(sectors) {
            // Cannot overflow: sector <= capacity = size / 512.
            Some(end) if end <= self.capacity => Ok(sector * SECTOR_SIZE),
            _ => Err(guest(format!(
                "{sectors} sectors from sector {sector}, past the disk's {} sectors",
                self.capacity
            ))),
        }
    }

    /// A batch buffer for `len` bytes.
    fn batch_buffer(&mut self, len: usize) -> AlignedBuf {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.get(len);
        buf
    }

    fn read<'a>(
        &mut self,
        sector: u64,
        rest: &GuestReader<'_>,
        data: GuestWriter<'a>,
        in_place: Option<GuestBuffers>,
    ) -> Result<Step<'a>, Failed> {
        if rest.available_bytes() != 0 {
            return Err(guest("a read (T_IN) with device-readable data buffers"));
        }
        let len = data.available_bytes();
        let offset = self.range(sector, len)?;
        let (target, data) = match in_place {
            Some(buffers) => (Target::Guest(buffers), None),
            None if len <= CHUNK => (Target::Bounce(self.batch_buffer(len)), Some(data)),
            None => return self.read_in_pieces(offset, len, data),
        };
        let job = Job {
            write: false,
            offset,
            len,
            target,
        };
        Ok(Step::Io(Deferred { job, data }))
    }

    /// A read too large for a bounce buffer, done here a [`CHUNK`] at a time.
    fn read_in_pieces<'a>(&mut self, offset: u64, len: usize, mut data: GuestWriter<'a>) -> Result<Step<'a>, Failed> {
        let image = lock(&self.image);
        let mut done = 0;
        while done < len {
            let buf = self.buffer.get((len - done).min(CHUNK));
            image
                .file()
                .read_exact_at(buf, offset + done as u64)
                .map_err(|e| host(e, data.bytes_written()))?;
            data.write_all(buf).map_err(|e| host(e, data.bytes_written()))?;
            done += buf.len();
        }
        self.stats.read_ops.fetch_add(1, Ordering::Relaxed);
        self.stats.read_bytes.fetch_add(len as u64, Ordering::Relaxed);
        Ok(Step::Done(Ok(len)))
    }

    fn write<'a>(
        &mut self,
        sector: u64,
        data: &mut GuestReader<'_>,
        rest: &GuestWriter<'_>,
        in_place: Option<GuestBuffers>,
    ) -> Result<Step<'a>, Failed> {
        if self.readonly {
            return Err(guest("a write (T_OUT) to a read-only disk"));
        }
        if rest.available_bytes() != 0 {
            return Err(guest("a write (T_OUT) with device-writable data buffers"));
        }
        let len = data.available_bytes();
        let offset = self.range(sector, len)?;
        let target = match in_place {
            Some(buffers) => Target::Guest(buffers),
            None if len <= CHUNK => {
                let mut buf = self.batch_buffer(len);
                if let Err(e) = data.read_exact(buf.get(len)) {
                    self.spare.push(buf);
                    return Err(host(e, 0));
                }
                Target::Bounce(buf)
            }
            None => return self.write_in_pieces(offset, len, data),
        };
        let job = Job {
            write: true,
            offset,
            len,
            target,
        };
        Ok(Step::Io(Deferred { job, data: None }))
    }

    /// A write too large for a bounce buffer, done here a [`CHUNK`] at a time.
    fn write_in_pieces<'a>(&mut self, offset: u64, len: usize, data: &mut GuestReader<'_>) -> Result<Step<'a>, Failed> {
        let image = lock(&self.image);
        let mut done = 0;
        while done < len {
            let buf = self.buffer.get((len - done).min(CHUNK));
            data.read_exact(buf).map_err(|e| host(e, 0))?;
            image
                .file()
                .write_all_at(buf, offset + done as u64)
                .map_err(|e| host(e, 0))?;
            done += buf.len();
        }
        self.stats.write_ops.fetch_add(1, Ordering::Relaxed);
        self.stats.write_bytes.fetch_add(len as u64, Ordering::Relaxed);
        Ok(Step::Done(Ok(0)))
    }

    /// A batch job's outcome for the guest: a read's data copied in.
    fn finish(
        &mut self,
        job: &mut Job,
        data: Option<GuestWriter<'_>>,
        result: std::io::Result<()>,
    ) -> Result<usize, Failed> {
        result.map_err(|e| host(e, 0))?;
        let len = job.len;
        if job.write {
            self.stats.write_ops.fetch_add(1, Ordering::Relaxed);
            self.stats.write_bytes.fetch_add(len as u64, Ordering::Relaxed);
            return Ok(0);
        }
        // A bounced read: its data into the guest's buffers.
        if let (Some(mut data), Target::Bounce(buf)) = (data, &mut job.target) {
            data.write_all(buf.get(len))
                .map_err(|e| host(e, data.bytes_written()))?;
        }
        self.stats.read_ops.fetch_add(1, Ordering::Relaxed);
        self.stats.read_bytes.fetch_add(len as u64, Ordering::Relaxed);
        Ok(len)
    }

    fn flush(&mut self) -> Result<usize, Failed> {
        // A read-only disk has nothing of the guest's to write back.
        if !self.readonly {
            lock(&self.image).file().sync_data().map_err(|e| host(e, 0))?;
        }
        self.stats.flush_ops.fetch_add(1, Ordering::Relaxed);
        Ok(0)
    }

    fn get_id(&mut self, rest: &GuestReader<'_>, data: &mut GuestWriter<'_>) -> Result<usize, Failed> {
        if rest.available_bytes() != 0 {
            return Err(guest("GET_ID with device-readable data buffers"));
        }
        // 20 bytes, NUL-padded; a shorter buffer gets the id's start.
        let n = data.available_bytes().min(ID_BYTES);
        data.write_all(&self.id[..n])
            .map_err(|e| host(e, data.bytes_written()))?;
        Ok(n)
    }

    fn guest_fault(&self, why: &str) {
        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
        if !self.stats.warned_guest.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "{}: malformed request: {why} (further ones are counted in malformed_requests)",
                self.name
            );
        }
    }

    fn host_error(&self, e: &std::io::Error) {
        if !self.stats.warned_host.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "{}: I/O error on the image: {e} (the guest gets IOERR; further errors are not logged)",
                self.name
            );
        }
    }
}
