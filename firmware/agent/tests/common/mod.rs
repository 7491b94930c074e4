//! Test fixtures: guest memory in a vector, a platform that signs with an
//! emulated root, epoch tables from the heap, and a "host" that drives an
//! agent through the mailbox bytes exactly as covm does.
#![allow(dead_code)]

use covm_agent::{
    Agent, Config, E820Entry, EpochTables, GuestMemory, MemoryMap, Platform, PlatformError, Team, SCRATCH_LEN,
};
use covm_agent_protocol::{AttestationReport, EmulatedRoot, Evidence, Platform as Code, Policy, TcbVersion, PAGE_SIZE};
use covm_guest_abi::layout::{MIGRATION_POLICY, WRITE_TRACKED_START};
use covm_guest_abi::mailbox::words::{
    Args, BeginArgs, EndRoundArgs, ExportPagesArgs, HandshakeArgs, HandshakeReply, ImportArgs, ImportReply,
    ReadControlArgs, ReadControlReply, Reply, Role, SessionState, StatusArgs, StatusReply, WORDS,
};
use covm_guest_abi::mailbox::{
    self, header, in_agent_window, AGENT_VCPU_STATES, AGENT_WINDOW_END, FROM_AGENT, FROM_AGENT_SIZE, HELPER_STACK_SIZE,
    TO_AGENT, VCPU_STATE_SLOT,
};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Guest memory of the test VMs: 40 MiB (the agent window is 16-32 MiB).
pub const MEMORY: u64 = 40 << 20;
pub const PAGE: u64 = PAGE_SIZE as u64;
/// The measurement the policy allows.
pub const MEASUREMENT: [u8; 48] = [0x4D; 48];
/// A measurement it does not.
pub const OTHER_MEASUREMENT: [u8; 48] = [0x6D; 48];
/// Workload vCPUs of the test VMs.
pub const VCPUS: u32 = 2;

pub fn root() -> EmulatedRoot {
    EmulatedRoot::from_secret(&[0x11; 48]).unwrap()
}

/// The guest owner's policy: the emulated platform, [`MEASUREMENT`], the
/// test root, minimum TCB 1/0/8/100, guest SVN 1.
pub fn policy() -> Policy {
    let mut p = Policy::new(1);
    p.allow_platform(Code::EmulatedCvm)
        .allow_measurement(&MEASUREMENT)
        .unwrap()
        .trust_root(&root().public_key())
        .unwrap()
        .set_min_tcb(TcbVersion::new(1, 0, 8, 100))
        .set_min_guest_svn(1);
    p
}

/// covm's E820 map for [`MEMORY`].
pub fn e820() -> [E820Entry; 3] {
    [
        E820Entry {
            addr: 0,
            size: 0x9fc00,
            kind: 1,
        },
        E820Entry {
            addr: 0x9fc00,
            size: 0x100000 - 0x9fc00,
            kind: 2,
        },
        E820Entry {
            addr: 0x100000,
            size: MEMORY - 0x100000,
            kind: 1,
        },
    ]
}

pub fn map() -> MemoryMap {
    MemoryMap::from_e820(e820()).unwrap()
}

/// Flat guest memory, shared by the agent's workers as guest memory is
/// (behind a lock here). It also checks the agent's discipline: page
/// functions only outside the agent window, window functions only inside.
pub struct VecMemory {
    inner: Mutex<Bytes>,
    page_writes: AtomicU64,
    /// Zero checks that had to read the page.
    zero_reads: AtomicU64,
}

struct Bytes {
    bytes: Vec<u8>,
    /// Which 2 MiB pages were written since "launch", as the firmware's
    /// dirty bits record it; only those at or above
    /// `WRITE_TRACKED_START` are tracked.
    written: Vec<bool>,
}

impl Bytes {
    fn put(&mut self, gpa: u64, data: &[u8]) {
        if !data.is_empty() {
            for big in (gpa >> 21)..=((gpa + data.len() as u64 - 1) >> 21) {
                self.written[big as usize] = true;
            }
        }
        self.bytes[gpa as usize..gpa as usize + data.len()].copy_from_slice(data);
    }
}

impl VecMemory {
    pub fn new() -> Self {
        VecMemory {
            inner: Mutex::new(Bytes {
                bytes: vec![0; MEMORY as usize],
                written: vec![false; (MEMORY >> 21) as usize],
            }),
            page_writes: AtomicU64::new(0),
            zero_reads: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bytes> {
        self.inner.lock().unwrap()
    }

    /// A copy of the page at `gpa`.
    pub fn page(&self, gpa: u64) -> Vec<u8> {
        self.slice(gpa, PAGE as usize)
    }

    /// Whether the 2 MiB page holding `gpa` was written since launch.
    pub fn written(&self, gpa: u64) -> bool {
        self.lock().written[(gpa >> 21) as usize]
    }

    /// A copy of `len` bytes at `gpa`.
    pub fn slice(&self, gpa: u64, len: usize) -> Vec<u8> {
        self.lock().bytes[gpa as usize..gpa as usize + len].to_vec()
    }

    pub fn put(&self, gpa: u64, data: &[u8]) {
        self.lock().put(gpa, data);
    }

    /// Page writes and clears by the agent so far.
    pub fn page_writes(&self) -> u64 {
        self.page_writes.load(Ordering::Relaxed)
    }

    /// Zero checks by the agent that read the page, so far.
    pub fn zero_reads(&self) -> u64 {
        self.zero_reads.load(Ordering::Relaxed)
    }

    fn check_page(gpa: u64) {
        assert!(gpa % PAGE == 0, "unaligned page {gpa:#x}");
        assert!(!in_agent_window(gpa), "page function on the agent window at {gpa:#x}");
        assert!(gpa + PAGE <= MEMORY, "page {gpa:#x} beyond memory");
    }

    fn check_window(gpa: u64, len: usize) {
        assert!(
            in_agent_window(gpa) && gpa + len as u64 <= AGENT_WINDOW_END,
            "window function outside the window at {gpa:#x}+{len}"
        );
    }
}

impl GuestMemory for VecMemory {
    fn read_page(&self, gpa: u64, out: &mut [u8; PAGE_SIZE]) {
        Self::check_page(gpa);
        out.copy_from_slice(&self.lock().bytes[gpa as usize..(gpa + PAGE) as usize]);
    }

    fn write_page(&self, gpa: u64, data: &[u8; PAGE_SIZE]) {
        Self::check_page(gpa);
        self.page_writes.fetch_add(1, Ordering::Relaxed);
        self.put(gpa, data);
    }

    fn page_is_zero(&self, gpa: u64) -> bool {
        Self::check_page(gpa);
        self.zero_reads.fetch_add(1, Ordering::Relaxed);
        self.lock().bytes[gpa as usize..(gpa + PAGE) as usize]
            .iter()
            .all(|&b| b == 0)
    }

    fn known_zero(&self, gpa: u64) -> bool {
        Self::check_page(gpa);
        gpa >= WRITE_TRACKED_START && !self.written(gpa)
    }

    fn known_zero_block(&self) -> u64 {
        // known_zero answers per 2 MiB page, as the firmware's does.
        512
    }

    fn zero_page(&self, gpa: u64) {
        Self::check_page(gpa);
        self.page_writes.fetch_add(1, Ordering::Relaxed);
        self.put(gpa, &[0; PAGE_SIZE]);
    }

    fn read_window(&self, gpa: u64, out: &mut [u8]) {
        Self::check_window(gpa, out.len());
        out.copy_from_slice(&self.lock().bytes[gpa as usize..gpa as usize + out.len()]);
    }

    fn write_window(&self, gpa: u64, data: &[u8]) {
        Self::check_window(gpa, data.len());
        self.put(gpa, data);
    }
}

/// The agent's vCPUs as threads: worker 0 on the caller, the others each
/// on a thread of its own, all at once.
pub struct ThreadTeam {
    pub workers: usize,
}

impl Team for ThreadTeam {
    fn workers(&self) -> usize {
        self.workers
    }

    fn join(&self, work: &(dyn Fn(usize) + Sync)) {
        // The helpers' stacks are as small as the firmware's: a worker
        // that needs more overflows into the guard page and fails the test.
        std::thread::scope(|scope| {
            for w in 1..self.workers {
                std::thread::Builder::new()
                    .stack_size(HELPER_STACK_SIZE as usize)
                    .spawn_scoped(scope, move || work(w))
                    .expect("a worker thread");
            }
            work(0);
        });
    }
}

/// covm's emulated platform as the agent sees it.
pub struct FakePlatform {
    pub root: EmulatedRoot,
    pub measurement: [u8; 48],
    pub host_data: [u8; 32],
    pub counter: u64,
    pub seed: u64,
    pub retired: u32,
    pub no_randomness: bool,
    /// Reports to refuse before giving one (a platform not ready yet).
    pub report_failures: u32,
    /// A clock that advances 7 ticks each time it is read.
    pub clock: std::cell::Cell<u64>,
    /// The agent's helper vCPUs (`None`: its own vCPU only).
    pub team: Option<ThreadTeam>,
}

impl FakePlatform {
    pub fn new(measurement: [u8; 48], host_data: [u8; 32], seed: u64) -> Self {
        FakePlatform {
            root: root(),
            measurement,
            host_data,
            counter: 0,
            seed,
            retired: 0,
            no_randomness: false,
            report_failures: 0,
            clock: std::cell::Cell::new(0),
            team: None,
        }
    }
}

pub fn report(root: &EmulatedRoot, measurement: [u8; 48], host_data: [u8; 32], report_data: [u8; 64]) -> Evidence {
    let mut r = AttestationReport::zeroed();
    r.version = 2;
    r.guest_svn = 1;
    r.policy = 1 << 16;
    r.measurement = measurement;
    r.host_data = host_data;
    r.report_data = report_data;
    r.reported_tcb = TcbVersion::new(1, 0, 8, 100);
    r.current_tcb = r.reported_tcb;
    root.sign(&mut r);
    Evidence::new(Code::EmulatedCvm, &r)
}

impl Platform for FakePlatform {
    fn team(&self) -> Option<&dyn Team> {
        self.team.as_ref().map(|t| t as &dyn Team)
    }

    fn ticks(&self) -> u64 {
        self.clock.set(self.clock.get() + 7);
        self.clock.get()
    }

    /// A host that holds the whole window private (as for a guest that
    /// shared nothing).
    fn page_state_query(&mut self, _first: u64, _pages: u64) -> u32 {
        covm_guest_abi::ports::page_state::PRIVATE
    }

    fn report(&mut self, report_data: &[u8; 64]) -> Result<Evidence, PlatformError> {
        if self.report_failures > 0 {
            self.report_failures -= 1;
            return Err(PlatformError::NoReport(1));
        }
        Ok(report(&self.root, self.measurement, self.host_data, *report_data))
    }

    fn fill_random(&mut self, out: &mut [u8]) -> Result<(), PlatformError> {
        if self.no_randomness {
            return Err(PlatformError::NoRandomness);
        }
        // splitmix64: deterministic, for tests only.
        for chunk in out.chunks_mut(8) {
            self.counter = self.counter.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.counter ^ self.seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
        Ok(())
    }

    fn retire(&mut self) {
        self.retired += 1;
    }
}

/// A fresh epoch table per destination session, from the heap.
pub struct HeapTables {
    pub lent: u32,
}

impl EpochTables<'static> for HeapTables {
    fn lend(&mut self) -> &'static mut [u32] {
        self.lent += 1;
        Box::leak(vec![0xFFFF_FFFF; (MEMORY / PAGE) as usize].into_boxed_slice())
    }
}

pub type TestAgent = Agent<'static, VecMemory, FakePlatform, HeapTables>;

/// What a VM's launch looks like to its agent.
pub struct Launch {
    /// Launched to receive a migration.
    pub incoming: bool,
    pub measurement: [u8; 48],
    pub host_data: [u8; 32],
    pub policy_page: Vec<u8>,
    pub seed: u64,
}

impl Launch {
    /// A fresh launch (the guest runs: a source).
    pub fn source(seed: u64) -> Self {
        Launch::new(seed, false)
    }

    /// An incoming launch (a destination).
    pub fn destination(seed: u64) -> Self {
        Launch::new(seed, true)
    }

    pub fn new(seed: u64, incoming: bool) -> Self {
        let p = policy();
        let mut page = vec![0u8; 1024];
        let n = p.encode(&mut page).unwrap();
        page.truncate(n);
        Launch {
            incoming,
            measurement: MEASUREMENT,
            host_data: p.host_data(),
            policy_page: page,
            seed,
        }
    }
}

/// A VM as covm sees it: its agent, driven through the mailbox.
pub struct Vm {
    pub agent: Box<TestAgent>,
    seq: u64,
}

/// One command's answer, as covm reads it from the mailbox; `R` is the
/// command's reply type (`()`: words posted raw, no reply type).
#[derive(Debug, Clone)]
pub struct Answer<R = ()> {
    pub status: u32,
    /// The result words as read.
    pub results: [u64; WORDS],
    pub output: Vec<u8>,
    pub error: String,
    reply: PhantomData<R>,
}

impl<R: Reply> Answer<R> {
    /// The results as the command's reply (they must be valid, even
    /// after a refusal).
    #[track_caller]
    pub fn reply(&self) -> R {
        R::from_words(&self.results).unwrap_or_else(|e| panic!("invalid results {:?}: {e}", self.results))
    }
}

impl<R> Answer<R> {
    /// The same answer without its reply type.
    pub fn raw(self) -> Answer {
        Answer {
            status: self.status,
            results: self.results,
            output: self.output,
            error: self.error,
            reply: PhantomData,
        }
    }

    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.status, mailbox::status::OK, "command failed: {}", self.error);
        self
    }

    #[track_caller]
    pub fn refused(self, status: u32, text: &str) -> Self {
        assert_eq!(self.status, status, "unexpected status, error text: {:?}", self.error);
        assert!(
            self.error.contains(text),
            "error text {:?} does not contain {text:?}",
            self.error
        );
        self
    }
}

impl Vm {
    pub fn launch(launch: &Launch) -> Vm {
        Vm::launch_with(launch, |_| {})
    }

    /// Launches with the platform changed by `tweak` first.
    pub fn launch_with(launch: &Launch, tweak: impl FnOnce(&mut FakePlatform)) -> Vm {
        let mem = VecMemory::new();
        mem.put(MIGRATION_POLICY, &launch.policy_page);
        let mut platform = FakePlatform::new(launch.measurement, launch.host_data, launch.seed);
        tweak(&mut platform);
        let scratch: &'static mut [u8] = Box::leak(vec![0u8; SCRATCH_LEN].into_boxed_slice());
        let mut agent = Box::new(Agent::new(
            mem,
            platform,
            HeapTables { lent: 0 },
            scratch,
            Ok(map()),
            Config {
                workload_vcpus: VCPUS,
                incoming: launch.incoming,
            },
        ));
        agent.announce();
        let magic = u64::from_le_bytes(agent.memory().slice(mailbox::HEADER, 8).try_into().unwrap());
        assert_eq!(magic, mailbox::MAGIC);
        Vm { agent, seq: 0 }
    }

    /// A freshly launched VM (its guest runs: it can be a source).
    pub fn source(seed: u64) -> Vm {
        Vm::launch(&Launch::source(seed))
    }

    /// A VM launched to receive a migration.
    pub fn destination(seed: u64) -> Vm {
        Vm::launch(&Launch::destination(seed))
    }

    pub fn memory(&self) -> &VecMemory {
        self.agent.memory()
    }

    pub fn memory_mut(&mut self) -> &mut VecMemory {
        self.agent.memory_mut()
    }

    /// Posts the command `args` are for as covm does (input, argument
    /// words, command, sequence last), lets the agent serve it, and reads
    /// the answer.
    pub fn send<A: Args>(&mut self, args: A, input: &[u8]) -> Answer<A::Reply> {
        self.post(A::COMMAND, &args.to_words(), input)
    }

    /// `IMPORT` of `records`.
    pub fn import(&mut self, records: &[u8]) -> Answer<ImportReply> {
        self.send(
            ImportArgs {
                len: records.len() as u64,
            },
            records,
        )
    }

    /// `READ_CONTROL` of `record`.
    pub fn read_control(&mut self, record: &[u8]) -> Answer<ReadControlReply> {
        self.send(
            ReadControlArgs {
                len: record.len() as u64,
            },
            record,
        )
    }

    /// `HANDSHAKE` with the peer's `message`.
    pub fn handshake_message(&mut self, message: &[u8]) -> Answer<HandshakeReply> {
        self.send(
            HandshakeArgs {
                len: message.len() as u64,
            },
            message,
        )
    }

    /// Posts `command` with raw argument words (a host that writes what
    /// no arguments type holds), lets the agent serve it, and reads the
    /// answer.
    pub fn call(&mut self, command: u32, args: &[u64], input: &[u8]) -> Answer {
        let mut words = [0u64; WORDS];
        words[..args.len()].copy_from_slice(args);
        self.post(command, &words, input)
    }

    /// Posts `command` as covm does (input, argument words, command,
    /// sequence last), lets the agent serve it, and reads the answer.
    fn post<R>(&mut self, command: u32, words: &[u64; WORDS], input: &[u8]) -> Answer<R> {
        self.seq += 1;
        let seq = self.seq;
        let mem = self.agent.memory_mut();
        mem.put(TO_AGENT, input);
        for (i, w) in words.iter().enumerate() {
            mem.put(mailbox::HEADER + (header::ARGS + 8 * i) as u64, &w.to_le_bytes());
        }
        mem.put(mailbox::HEADER + header::COMMAND as u64, &command.to_le_bytes());
        mem.put(mailbox::HEADER + header::COMMAND_SEQ as u64, &seq.to_le_bytes());
        assert_eq!(self.agent.serve(), seq);
        let mem = self.agent.memory();
        let u32_at = |o: usize| u32::from_le_bytes(mem.slice(mailbox::HEADER + o as u64, 4).try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(mem.slice(mailbox::HEADER + o as u64, 8).try_into().unwrap());
        assert_eq!(u64_at(header::DONE_SEQ), seq);
        let status = u32_at(header::STATUS);
        let error_len = u32_at(header::ERROR_LEN) as usize;
        assert!(error_len <= header::ERROR_TEXT_MAX);
        let error = String::from_utf8(
            mem.slice(mailbox::HEADER + header::ERROR_TEXT as u64, error_len)
                .to_vec(),
        )
        .expect("the error text is UTF-8");
        let out_len = u64_at(header::OUT_LEN);
        assert!(out_len <= FROM_AGENT_SIZE);
        let mut results = [0u64; WORDS];
        for (i, r) in results.iter_mut().enumerate() {
            *r = u64_at(header::RESULTS + 8 * i);
        }
        Answer {
            status,
            results,
            output: mem.slice(FROM_AGENT, out_len as usize).to_vec(),
            error,
            reply: PhantomData,
        }
    }

    /// `STATUS`.
    pub fn status(&mut self) -> StatusReply {
        self.send(StatusArgs, &[]).ok().reply()
    }

    /// `STATUS`: role, state and whether the source may resume.
    pub fn session(&mut self) -> (Option<Role>, SessionState, bool) {
        let s = self.status();
        (s.role, s.state, s.may_resume)
    }

    /// `STATUS`: role and state.
    pub fn role_and_state(&mut self) -> (Option<Role>, SessionState) {
        let s = self.status();
        (s.role, s.state)
    }

    pub fn state(&mut self) -> SessionState {
        self.status().state
    }

    /// Puts vCPU `index`'s state in its VMSA slot (the platform's job).
    pub fn put_vcpu_state(&mut self, index: u64, state: &[u8]) {
        let slot = AGENT_VCPU_STATES + index * VCPU_STATE_SLOT;
        let mem = self.memory_mut();
        mem.put(slot, &(state.len() as u32).to_le_bytes());
        mem.put(slot + 4, state);
    }

    pub fn vcpu_slot(&self, index: u64) -> Vec<u8> {
        let slot = AGENT_VCPU_STATES + index * VCPU_STATE_SLOT;
        let len = u32::from_le_bytes(self.memory().slice(slot, 4).try_into().unwrap()) as usize;
        self.memory().slice(slot + 4, len).to_vec()
    }
}

/// Splits handshake output into messages (`u32` length, bytes).
pub fn messages(output: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = output;
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        out.push(rest[4..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
    out
}

/// Relays the handshake between the two agents like covm's session
/// driver; returns the first refusal as (which side, answer).
pub fn handshake(src: &mut Vm, dst: &mut Vm) -> Result<(), Box<(&'static str, Answer)>> {
    handshake_lanes(src, dst, 1)
}

/// [`handshake`] for a session of `lanes` lanes.
pub fn handshake_lanes(src: &mut Vm, dst: &mut Vm, lanes: u32) -> Result<(), Box<(&'static str, Answer)>> {
    let begin = src.send(
        BeginArgs {
            role: Role::Source,
            lanes,
        },
        &[],
    );
    if begin.status != 0 {
        return Err(Box::new(("source", begin.raw())));
    }
    let begin_dst = dst.send(
        BeginArgs {
            role: Role::Destination,
            lanes,
        },
        &[],
    );
    if begin_dst.status != 0 {
        return Err(Box::new(("destination", begin_dst.raw())));
    }
    let mut to_dst = messages(&begin.output);
    let mut src_done = false;
    let mut dst_done = false;
    for _ in 0..8 {
        let mut to_src = Vec::new();
        for m in to_dst.drain(..) {
            let a = dst.handshake_message(&m);
            if a.status != 0 {
                return Err(Box::new(("destination", a.raw())));
            }
            dst_done |= a.reply().complete;
            to_src.extend(messages(&a.output));
        }
        for m in to_src {
            let a = src.handshake_message(&m);
            if a.status != 0 {
                return Err(Box::new(("source", a.raw())));
            }
            src_done |= a.reply().complete;
            to_dst.extend(messages(&a.output));
        }
        if src_done && dst_done {
            return Ok(());
        }
    }
    panic!("the handshake did not finish");
}

/// Deterministic page content for `gpa` at `version`.
pub fn content(gpa: u64, version: u64) -> Vec<u8> {
    (0..PAGE)
        .map(|i| (gpa / PAGE * 31 + i * 7 + version * 13 + 1) as u8)
        .collect()
}

/// Fills every 5th private page with content and a few bytes outside
/// private memory (which must not travel).
pub fn fill(vm: &mut Vm) {
    let pages: Vec<u64> = map().iter().collect();
    let mem = vm.memory_mut();
    for (i, &gpa) in pages.iter().enumerate() {
        if i % 5 == 0 && gpa != MIGRATION_POLICY {
            mem.put(gpa, &content(gpa, 0));
        }
    }
    mem.put(0xA0000, &[0xAA; 64]);
    mem.put(0x9fc00, &[0xBB; 64]);
}

/// Runs round 0 on the source in chunks of `chunk` pages over all of
/// memory, importing each batch at the destination (asking again from
/// where the agent stopped, as covm does).
pub fn round0(src: &mut Vm, dst: &mut Vm, chunk: u64) -> (u64, u64) {
    let (mut pages, mut zeros) = (0, 0);
    for gpa in (0..MEMORY).step_by((chunk * PAGE) as usize) {
        let mut done = 0;
        while done < chunk {
            let a = src
                .send(
                    ExportPagesArgs {
                        round: 0,
                        first: gpa + done * PAGE,
                        count: chunk - done,
                    },
                    &[],
                )
                .ok();
            let walked = a.reply().walked_frames;
            assert!(walked > 0 && walked <= chunk - done, "walked {walked}");
            done += walked;
            pages += a.reply().pages;
            zeros += a.reply().zero_pages;
            if !a.output.is_empty() {
                dst.import(&a.output).ok();
            }
        }
    }
    let end = src.send(EndRoundArgs, &[]).ok();
    assert_eq!(end.reply().pages, pages);
    dst.import(&end.output).ok();
    (pages, zeros)
}
