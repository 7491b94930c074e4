//! virtio-rng (entropy device, type 4): one queue whose device-writable
//! buffers are filled from a host source (`--rng src=PATH`, default
//! `/dev/urandom`).

use super::worker::{QueueFailure, QueueHandler, Worker};
use super::{features, ActivateError, Activation, GuestMemory, VirtioDevice};
use std::fs::File;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// The request queue's size.
pub const QUEUE_SIZE: u16 = 256;
/// The most bytes one request gets (a driver asking more gets less, as
/// the spec allows).
pub const MAX_REQUEST: usize = 64 << 10;

/// The entropy device.
pub struct Rng {
    source: Option<File>,
    worker: Option<Worker>,
    bytes: Arc<AtomicU64>,
}

impl Rng {
    /// A device reading from `source`.
    pub fn new(source: File) -> Self {
        Rng {
            source: Some(source),
            worker: None,
            bytes: Arc::default(),
        }
    }
}

struct Handler {
    source: File,
    buffer: Vec<u8>,
    bytes: Arc<AtomicU64>,
}

impl QueueHandler for Handler {
    fn process(&mut self, memory: &GuestMemory, index: u16, queue: &mut Queue) -> Result<bool, QueueFailure> {
        let mut used = false;
        let chains: Vec<_> = queue.iter(memory).map_err(|e| QueueFailure::new(index, e))?.collect();
        for chain in chains {
            let head = chain.head_index();
            let mut written = 0u32;
            for desc in chain.clone() {
                if !desc.is_write_only() {
                    continue;
                }
                let want = (desc.len() as usize).min(MAX_REQUEST - written as usize);
                if want == 0 {
                    break;
                }
                self.buffer.resize(want, 0);
                if self.source.read_exact(&mut self.buffer).is_err() {
                    break;
                }
                if memory.write_slice(&self.buffer, GuestAddress(desc.addr().0)).is_err() {
                    // A buffer outside guest memory: give the driver what
                    // was written so far.
                    break;
                }
                written += want as u32;
            }
            self.bytes.fetch_add(u64::from(written), Ordering::Relaxed);
            queue
                .add_used(memory, head, written)
                .map_err(|e| QueueFailure::new(index, e))?;
            used = true;
        }
        Ok(used)
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        4
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_INDIRECT_DESC | features::RING_EVENT_IDX
    }

    fn read_config(&self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let source = match &self.source {
            Some(f) => f.try_clone()?,
            None => return Err(ActivateError::Queues("the entropy source is closed".into())),
        };
        let handler = Handler {
            source,
            buffer: Vec::new(),
            bytes: self.bytes.clone(),
        };
        self.worker = Some(Worker::start("virtio-rng", handler, activation.into_worker_start())?);
        Ok(())
    }

    fn reset(&mut self) -> Option<Vec<Queue>> {
        self.worker.take().map(Worker::stop)
    }

    fn worker(&self) -> Option<&Worker> {
        self.worker.as_ref()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("read_bytes", self.bytes.load(Ordering::Relaxed))]
    }
}
