//! The disk's host I/O threads: reads and writes the driver made available
//! together run in parallel, so a queue depth in the guest becomes a queue
//! depth on the host (one thread doing them in turn gets only the host's
//! depth-1 speed: docs/devices.md has the measurements).
//!
//! A job reads or writes the request's buffers in guest memory in place
//! (`in_place`), or, where those do not suit the host (unaligned for
//! O_DIRECT), an aligned bounce buffer the worker copies through. The
//! worker answers each request once its job is back and returns only with
//! none in flight, which keeps its pause semantics.

use super::in_place::GuestBuffers;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// O_DIRECT needs memory aligned to the logical block size; 4096 covers it.
const ALIGN: usize = 4096;

/// A host buffer aligned for O_DIRECT, grown on demand.
#[derive(Default)]
pub(super) struct AlignedBuf {
    storage: Vec<u8>,
}

impl AlignedBuf {
    /// Its first `len` aligned bytes, growing it if needed.
    pub(super) fn get(&mut self, len: usize) -> &mut [u8] {
        if self.storage.len() < len + ALIGN {
            self.storage.resize(len + ALIGN, 0);
        }
        let addr = self.storage.as_ptr() as usize;
        let start = addr.next_multiple_of(ALIGN) - addr;
        &mut self.storage[start..start + len]
    }

    /// The bytes it holds (what it costs in memory).
    pub(super) fn capacity(&self) -> usize {
        self.storage.len()
    }
}

/// Where a job's data is.
pub(super) enum Target {
    /// An aligned host buffer the worker copies guest data through.
    Bounce(AlignedBuf),
    /// The request's own buffers in guest memory, done in place.
    Guest(GuestBuffers),
}

/// One positional read or write of `len` bytes at `offset`.
pub(super) struct Job {
    pub(super) write: bool,
    pub(super) offset: u64,
    pub(super) len: usize,
    pub(super) target: Target,
}

impl Job {
    /// Does it on `file`, on the calling thread.
    pub(super) fn run(&mut self, file: &File) -> io::Result<()> {
        match &mut self.target {
            Target::Bounce(buf) => {
                let buf = buf.get(self.len);
                if self.write {
                    file.write_all_at(buf, self.offset)
                } else {
                    file.read_exact_at(buf, self.offset)
                }
            }
            Target::Guest(buffers) => buffers.run(file, self.offset, self.write),
        }
    }

    /// The host memory it holds while in flight.
    pub(super) fn held(&self) -> usize {
        match &self.target {
            Target::Bounce(_) => self.len,
            Target::Guest(_) => 0,
        }
    }
}

struct Sent {
    index: usize,
    job: Job,
    file: Arc<File>,
}

/// A finished job: its number, itself (with its buffer), its result.
pub(super) type Done = (usize, Job, io::Result<()>);

/// A fixed set of threads doing [`Job`]s.
pub(super) struct IoPool {
    jobs: Option<Sender<Sent>>,
    done: Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
}

impl IoPool {
    /// Starts `threads` threads named after the device.
    pub(super) fn new(name: &str, threads: usize) -> io::Result<Self> {
        let (jobs, queue) = channel::<Sent>();
        let (finished, done) = channel::<Done>();
        let queue = Arc::new(Mutex::new(queue));
        let mut handles = Vec::with_capacity(threads);
        for n in 0..threads {
            let (queue, finished) = (queue.clone(), finished.clone());
            let handle = std::thread::Builder::new()
                .name(format!("{name}-io{n}"))
                .spawn(move || loop {
                    // The lock is held only to take a job, not to do it.
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok(Sent { index, mut job, file }) = next else {
                        return;
                    };
                    let result = job.run(&file);
                    if finished.send((index, job, result)).is_err() {
                        return;
                    }
                })?;
            handles.push(handle);
        }
        Ok(IoPool {
            jobs: Some(jobs),
            done,
            threads: handles,
        })
    }

    /// Hands `job` (number `index`) to a thread; the job back if no
    /// thread is left to take it.
    pub(super) fn submit(&self, index: usize, job: Job, file: &Arc<File>) -> Result<(), Job> {
        let message = Sent {
            index,
            job,
            file: file.clone(),
        };
        let refused = match &self.jobs {
            Some(jobs) => jobs.send(message).err().map(|e| e.0),
            None => Some(message),
        };
        refused.map_or(Ok(()), |m| Err(m.job))
    }

    /// The next finished job, waiting for one if `block`; `None` if none
    /// is finished (or, waiting, if every thread is gone).
    pub(super) fn finished(&self, block: bool) -> Option<Done> {
        if block {
            self.done.recv().ok()
        } else {
            self.done.try_recv().ok()
        }
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        // Closing the channel ends each thread's loop.
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
