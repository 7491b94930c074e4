//! Requests in flight: reads and writes run on the disk's I/O threads
//! ([`IoPool`]) and are answered as each finishes, so the driver can keep
//! the host's device busy; a request alone runs on the worker, sparing the
//! hand-over. A flush waits for the requests before it, and `process`
//! returns only when every request it took is answered: a paused worker
//! has nothing in flight.

use super::*;
use crate::virtio::block::pool::Target;
use crate::virtio::worker::{QueueFailure, QueueHandler};
use std::fs::File;
use virtio_queue::{Queue, QueueOwnedT, QueueT};

/// A request whose host I/O is on an I/O thread.
struct InFlight<'a> {
    head: u16,
    status: GuestAddress,
    /// A read's data buffers, filled once the I/O is done.
    data: Option<GuestWriter<'a>>,
    /// Bounce-buffer bytes it holds.
    held: usize,
}

/// The requests of one `process` call that are on the I/O threads.
#[derive(Default)]
struct Flight<'a> {
    requests: std::collections::HashMap<usize, InFlight<'a>>,
    bytes: usize,
    next: usize,
}

impl Handler {
    /// The I/O threads, started on first use; `None` (requests then run in
    /// turn on the worker) if the host will not start threads.
    fn pool(&mut self) -> Option<&IoPool> {
        if self.pool.is_none() {
            match IoPool::new(&self.name.replace(' ', "-"), IO_THREADS) {
                Ok(pool) => self.pool = Some(pool),
                Err(e) => {
                    tracing::warn!(
                        "{}: cannot start I/O threads ({e}); requests run one at a time",
                        self.name
                    );
                    return None;
                }
            }
        }
        self.pool.as_ref()
    }

    /// Keeps a finished job's buffer for the next one, within [`BATCH_BYTES`].
    fn recycle(&mut self, job: Job) {
        if let Target::Bounce(buf) = job.target {
            if self.spare.iter().map(AlignedBuf::capacity).sum::<usize>() + buf.capacity() <= BATCH_BYTES {
                self.spare.push(buf);
            }
        }
    }

    /// Runs a read or write: on an I/O thread while others are in flight
    /// or more requests wait (`alone` false), else right here, sparing the
    /// hand-over. Requests answered here go to `answered`.
    fn dispatch<'a>(
        &mut self,
        memory: &GuestMemory,
        file: &Arc<File>,
        (head, status, io): (u16, GuestAddress, Deferred<'a>),
        alone: bool,
        flight: &mut Flight<'a>,
        answered: &mut Vec<(u16, u32)>,
    ) {
        let Deferred { mut job, data } = io;
        if !alone {
            // Room in the budget first: wait for requests in flight.
            // (Only bounce buffers count: a request done in place holds none.)
            let held = job.held();
            while flight.bytes + held > BATCH_BYTES && !flight.requests.is_empty() {
                self.reap(memory, flight, true, answered);
            }
            let index = flight.next;
            let submitted = match self.pool() {
                Some(pool) => pool.submit(index, job, file),
                None => Err(job),
            };
            match submitted {
                Ok(()) => {
                    flight.next += 1;
                    flight.bytes += held;
                    flight.requests.insert(
                        index,
                        InFlight {
                            head,
                            status,
                            data,
                            held,
                        },
                    );
                    return;
                }
                // No thread to take it: done here.
                Err(back) => job = back,
            }
        }
        self.dispatch_inline(memory, file, head, status, job, data, answered)
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch_inline(
        &mut self,
        memory: &GuestMemory,
        file: &File,
        head: u16,
        status: GuestAddress,
        mut job: Job,
        data: Option<GuestWriter<'_>>,
        answered: &mut Vec<(u16, u32)>,
    ) {
        let result = job.run(file);
        let answer = self.finish(&mut job, data, result);
        answered.push((head, self.complete(memory, status, answer)));
        self.recycle(job);
    }

    /// Answers requests whose I/O finished: at least one if `block` (and
    /// any are in flight), then whichever others are done.
    fn reap(&mut self, memory: &GuestMemory, flight: &mut Flight<'_>, block: bool, answered: &mut Vec<(u16, u32)>) {
        let mut wait = block && !flight.requests.is_empty();
        loop {
            let done = match self.pool.as_ref() {
                Some(pool) => pool.finished(wait),
                None => None,
            };
            let Some((index, mut job, result)) = done else {
                if wait {
                    // Every I/O thread is gone: what they held fails.
                    for (_, lost) in flight.requests.drain() {
                        let e = std::io::Error::other("the disk's I/O threads stopped");
                        answered.push((lost.head, self.complete(memory, lost.status, Err(host(e, 0)))));
                    }
                    flight.bytes = 0;
                }
                return;
            };
            wait = false;
            let Some(request) = flight.requests.remove(&index) else {
                continue;
            };
            flight.bytes -= request.held;
            let answer = self.finish(&mut job, request.data, result);
            answered.push((request.head, self.complete(memory, request.status, answer)));
            self.recycle(job);
        }
    }
}

impl QueueHandler for Handler {
    fn process(&mut self, memory: &GuestMemory, index: u16, queue: &mut Queue) -> Result<bool, QueueFailure> {
        let mut used = false;
        self.process_notifying(memory, index, queue, &mut |_| {
            used = true;
            Ok(())
        })?;
        Ok(used)
    }

    fn process_notifying(
        &mut self,
        memory: &GuestMemory,
        index: u16,
        queue: &mut Queue,
        notify: &mut dyn FnMut(&mut Queue) -> Result<(), QueueFailure>,
    ) -> Result<bool, QueueFailure> {
        let fail = |e: virtio_queue::Error| QueueFailure::new(index, e);
        // Requests are taken as the driver makes them available and
        // answered as their I/O finishes, so the driver can keep the host's
        // device busy; a flush waits for the requests before it. This
        // returns only when every request it took is answered, so a paused
        // worker has nothing in flight.
        let file = match lock(&self.image).file().try_clone() {
            Ok(file) => Arc::new(file),
            Err(e) => {
                return Err(QueueFailure::new(
                    index,
                    format!("cannot share the image with the I/O threads: {e}"),
                ))
            }
        };
        let mut flight = Flight::default();
        loop {
            // At most the queue's size (virtio-queue checks the available index).
            let chains: Vec<_> = queue.iter(memory).map_err(fail)?.collect();
            if chains.is_empty() && flight.requests.is_empty() {
                return Ok(false);
            }
            let alone = chains.len() == 1 && flight.requests.is_empty();
            let mut answered = Vec::with_capacity(chains.len());
            for chain in chains {
                let head = chain.head_index();
                match self.begin(memory, chain) {
                    Begun::Answered(len) => answered.push((head, len)),
                    Begun::Io(status, io) => {
                        self.dispatch(memory, &file, (head, status, io), alone, &mut flight, &mut answered)
                    }
                    Begun::Flush(status) => {
                        while !flight.requests.is_empty() {
                            self.reap(memory, &mut flight, true, &mut answered);
                        }
                        let result = self.flush();
                        answered.push((head, self.complete(memory, status, result)));
                    }
                }
            }
            // Wait for I/O only when there is nothing else to tell the driver.
            self.reap(memory, &mut flight, answered.is_empty(), &mut answered);
            for &(head, len) in &answered {
                queue.add_used(memory, head, len).map_err(fail)?;
            }
            if !answered.is_empty() {
                notify(queue)?;
            }
        }
    }
}
