//! What a confidential VM shares between its vCPU threads, its ports and
//! the migration session: the launch mode, the agent's doorbell and team
//! ([`AgentTeam`]), the park gate of an incoming VM's workload vCPUs, and
//! the one-way "retired" flag.
//!
//! The ports (`covm_guest_abi::ports::AGENT_DOORBELL` .. `AGENT_RETIRE`)
//! are one device, [`CvmPort`]; what they mean is in
//! `covm_guest_abi::mailbox`.

use super::agent_team::AgentTeam;
use crate::platform::Platform;
use covm_devices::PioDevice;
use covm_guest_abi::mailbox::{self, header, launch_mode, DOORBELL_RETRY};
use covm_guest_abi::ports;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

use crate::vm::memory::GuestMemory;

/// How a confidential VM was launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchMode {
    /// Its first launch: the workload runs.
    Fresh,
    /// Launched to receive a migration: the workload vCPUs park until the
    /// agent has imported and committed their state.
    Incoming,
}

/// The doorbell between covm (posting commands) and the agent's vCPU
/// (waiting in a port read).
#[derive(Debug, Default)]
struct Doorbell {
    /// Highest command sequence posted, highest delivered to the agent,
    /// highest completed, whether the agent's vCPU must leave its wait.
    state: Mutex<DoorbellState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct DoorbellState {
    posted: u64,
    delivered: u64,
    done: u64,
    wake: bool,
    closed: bool,
}

/// Incoming workload vCPUs wait here until released (or the VM stops).
#[derive(Debug, Default)]
struct ParkGate {
    state: Mutex<ParkState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct ParkState {
    parked: usize,
    released: bool,
    closed: bool,
}

/// A confidential VM's shared runtime state.
#[derive(Debug)]
pub struct CvmRuntime {
    mode: LaunchMode,
    memory: GuestMemory,
    doorbell: Doorbell,
    team: AgentTeam,
    park: ParkGate,
    retired: AtomicBool,
    /// A workload vCPU used an agent port (logged once).
    misuse_logged: AtomicBool,
    platform: OnceLock<Arc<dyn Platform>>,
    /// The guest's time-stamp counter rate (0: unknown).
    tsc_khz: AtomicU32,
}

/// Why waiting on the agent failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    /// No answer in time.
    #[error("the migration agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The VM is stopping.
    #[error("the VM stopped while waiting for its migration agent")]
    Closed,
}

impl CvmRuntime {
    /// The runtime of a VM launched in `mode` over `memory`, whose agent
    /// has `agent_vcpus` vCPUs.
    pub fn new(mode: LaunchMode, memory: GuestMemory, agent_vcpus: u32) -> Self {
        CvmRuntime {
            mode,
            memory,
            doorbell: Doorbell::default(),
            team: AgentTeam::new(agent_vcpus),
            park: ParkGate::default(),
            retired: AtomicBool::new(false),
            misuse_logged: AtomicBool::new(false),
            platform: OnceLock::new(),
            tsc_khz: AtomicU32::new(0),
        }
    }

    /// How the VM was launched.
    pub fn mode(&self) -> LaunchMode {
        self.mode
    }

    /// The VM's guest memory (the mailbox lives in it).
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// The guest's time-stamp counter runs at `khz` (KVM's answer).
    pub fn set_tsc_khz(&self, khz: u32) {
        self.tsc_khz.store(khz, Ordering::Relaxed);
    }

    /// The guest's time-stamp counter rate in kHz, once a vCPU said it.
    pub fn tsc_khz(&self) -> Option<u32> {
        Some(self.tsc_khz.load(Ordering::Relaxed)).filter(|&k| k != 0)
    }

    /// Gives the ports the launched platform (for evidence). Once.
    pub fn set_platform(&self, platform: Arc<dyn Platform>) {
        let _ = self.platform.set(platform);
    }

    /// The sequence number of the next command: one counter per VM, shared
    /// by every session's mailbox (a VM received as a destination migrates
    /// on as a source). Never 0 modulo 2^32 (`DOORBELL_RETRY`).
    pub fn next_seq(&self) -> u64 {
        let s = lock(&self.doorbell.state);
        let mut seq = s.posted.max(s.done) + 1;
        if seq as u32 == DOORBELL_RETRY {
            seq += 1;
        }
        seq
    }

    /// Posts command `seq` (already written to the mailbox) to the agent.
    pub fn post(&self, seq: u64) {
        let mut s = lock(&self.doorbell.state);
        s.posted = seq;
        self.doorbell.changed.notify_all();
    }

    /// Waits until the agent completed command `seq`.
    pub fn wait_done(&self, seq: u64, timeout: Duration) -> Result<(), WaitError> {
        let deadline = Instant::now() + timeout;
        let mut s = lock(&self.doorbell.state);
        loop {
            if s.done >= seq {
                return Ok(());
            }
            if s.closed {
                return Err(WaitError::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::Timeout(timeout));
            }
            s = self
                .doorbell
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Whether the agent has announced itself in the mailbox header.
    pub fn agent_ready(&self) -> bool {
        self.memory
            .read_obj::<u64>(GuestAddress(mailbox::HEADER + header::MAGIC as u64))
            .is_ok_and(|m| m == mailbox::MAGIC)
    }

    /// The agent's vCPUs: a migration's lanes.
    pub fn agent_vcpus(&self) -> u32 {
        self.team.vcpus()
    }

    /// The VM stops: wake everything that waits, for good.
    pub fn close(&self) {
        lock(&self.doorbell.state).closed = true;
        self.doorbell.changed.notify_all();
        self.team.close();
        lock(&self.park.state).closed = true;
        self.park.changed.notify_all();
    }

    /// The agent's vCPU reads the doorbell: blocks until a command is
    /// posted (its sequence's low 32 bits) or the vCPU must leave
    /// ([`DOORBELL_RETRY`]).
    fn doorbell_read(&self) -> u32 {
        let mut s = lock(&self.doorbell.state);
        loop {
            if s.closed || s.wake {
                s.wake = false;
                return DOORBELL_RETRY;
            }
            if s.posted > s.delivered {
                s.delivered = s.posted;
                // Never 0 (DOORBELL_RETRY): sequences start at 1 and skip
                // multiples of 2^32 (see AgentMailbox).
                return s.posted as u32;
            }
            s = self.doorbell.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn doorbell_done(&self, low: u32) {
        let mut s = lock(&self.doorbell.state);
        if low == s.delivered as u32 {
            s.done = s.delivered;
            self.doorbell.changed.notify_all();
        } else {
            tracing::warn!(
                low,
                delivered = s.delivered,
                "the agent completed a command that was not delivered"
            );
        }
    }

    /// A workload vCPU of an incoming VM parks: returns once released
    /// (its state was loaded meanwhile) or the VM stops (false).
    pub fn park_workload_vcpu(&self) -> bool {
        let mut s = lock(&self.park.state);
        s.parked += 1;
        self.park.changed.notify_all();
        while !s.released && !s.closed {
            s = self.park.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.parked -= 1;
        !s.closed
    }

    /// Workload vCPUs parked now.
    pub fn parked(&self) -> usize {
        lock(&self.park.state).parked
    }

    /// Lets the parked workload vCPUs run.
    pub fn release_workload(&self) {
        lock(&self.park.state).released = true;
        self.park.changed.notify_all();
    }

    /// Whether the agent reported the migration committed: the workload
    /// must never run here again.
    pub fn retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    fn report(&self) {
        let at = |offset: usize| GuestAddress(mailbox::HEADER + offset as u64);
        let mut report_data = [0u8; 64];
        let result = self
            .memory
            .read_slice(&mut report_data, at(header::REPORT_DATA))
            .map_err(|e| e.to_string())
            .and_then(|()| {
                let platform = self.platform.get().ok_or("the platform is not launched yet")?;
                platform.evidence(&report_data).map_err(|e| e.to_string())
            });
        let status: u32 = match result {
            Ok(evidence) => {
                let written = self
                    .memory
                    .write_obj(evidence.platform().code(), at(header::REPORT_PLATFORM))
                    .and_then(|()| self.memory.write_slice(evidence.raw_report(), at(header::REPORT)));
                match written {
                    Ok(()) => 0,
                    Err(e) => {
                        tracing::error!("cannot write the agent's attestation report: {e}");
                        1
                    }
                }
            }
            Err(e) => {
                tracing::error!("the agent asked for a report and none could be made: {e}");
                1
            }
        };
        if let Err(e) = self.memory.write_obj(status, at(header::REPORT_STATUS)) {
            tracing::error!("cannot write the report status: {e}");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One of the confidential platform's ports on the port bus. Each port is
/// its own device: the bus locks a device while it is accessed, and the
/// doorbell blocks, so sharing one device would stall the other ports.
pub struct CvmPort {
    runtime: Arc<CvmRuntime>,
    port: u16,
}

impl CvmPort {
    /// The ports of `runtime`, as (port, device) for the bus; each 4 wide.
    pub fn all(runtime: &Arc<CvmRuntime>) -> Vec<(u16, CvmPort)> {
        let helpers = (1..runtime.agent_vcpus()).map(ports::team_wait);
        [
            ports::AGENT_DOORBELL,
            ports::AGENT_DONE,
            ports::AGENT_REPORT,
            ports::LAUNCH_MODE,
            ports::AGENT_RETIRE,
            ports::AGENT_VCPUS,
            ports::TEAM_DONE,
            ports::TEAM_START,
            ports::TEAM_JOIN,
        ]
        .into_iter()
        .chain(helpers)
        .map(|port| {
            (
                port,
                CvmPort {
                    runtime: runtime.clone(),
                    port,
                },
            )
        })
        .collect()
    }

    /// Whether the calling vCPU may use this port. A workload vCPU may
    /// not use the agent's: its read is answered at once with all ones
    /// (it would otherwise wait in covm, never park for a pause, and hold
    /// the port the agent waits on), its write is dropped; logged once per
    /// VM.
    fn allowed(&self, access: &str) -> bool {
        if !agent_only(self.port) || crate::vcpu::role::on_agent_vcpu() {
            return true;
        }
        if !self.runtime.misuse_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                port = format_args!("{:#x}", self.port),
                "a workload vCPU tried to {access} a port of the migration agent's: refused (only the agent's \
                 vCPUs may; logged once)"
            );
        }
        false
    }
}

/// Whether only the agent's vCPUs may use `port`: every port of the
/// platform but the two any vCPU reads at boot (how the VM was launched,
/// how many agent vCPUs it has). The others block (the doorbell, the
/// team's waits) or act for the agent.
fn agent_only(port: u16) -> bool {
    !matches!(port, ports::LAUNCH_MODE | ports::AGENT_VCPUS)
}

impl PioDevice for CvmPort {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        if !self.allowed("read") {
            data.fill(0xff);
            return;
        }
        let value = match (self.port, offset) {
            (ports::AGENT_DOORBELL, 0) => self.runtime.doorbell_read(),
            (ports::LAUNCH_MODE, 0) => match self.runtime.mode {
                LaunchMode::Fresh => launch_mode::FRESH,
                LaunchMode::Incoming => launch_mode::INCOMING,
            },
            (ports::AGENT_VCPUS, 0) => self.runtime.agent_vcpus(),
            (ports::TEAM_JOIN, 0) => self.runtime.team.join(),
            (port, 0) if port >= ports::TEAM_WAIT_BASE => {
                self.runtime
                    .team
                    .wait_for_work(u32::from(port - ports::TEAM_WAIT_BASE) / 4 + 1);
                0
            }
            _ => u32::MAX,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if !self.allowed("write") {
            return;
        }
        let mut bytes = [0u8; 4];
        let n = data.len().min(4);
        bytes[..n].copy_from_slice(&data[..n]);
        let value = u32::from_le_bytes(bytes);
        match (self.port, offset) {
            (ports::AGENT_DONE, 0) => self.runtime.doorbell_done(value),
            (ports::AGENT_REPORT, 0) => self.runtime.report(),
            (ports::TEAM_START, 0) => self.runtime.team.start(),
            (ports::TEAM_DONE, 0) => self.runtime.team.done(),
            (ports::AGENT_RETIRE, 0) => {
                tracing::info!("the migration agent read the destination's Commit: this VM never runs here again");
                self.runtime.retired.store(true, Ordering::SeqCst);
            }
            (port, offset) => tracing::debug!("write {value:#x} to confidential port {port:#x}+{offset} ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::memory;

    fn runtime() -> Arc<CvmRuntime> {
        Arc::new(CvmRuntime::new(
            LaunchMode::Fresh,
            memory::allocate(1 << 20).unwrap(),
            2,
        ))
    }

    fn port(runtime: &Arc<CvmRuntime>, port: u16) -> CvmPort {
        CvmPort::all(runtime)
            .into_iter()
            .find(|(p, _)| *p == port)
            .expect("a port of the runtime")
            .1
    }

    fn read(device: &mut CvmPort) -> u32 {
        let mut data = [0u8; 4];
        device.read(0, &mut data);
        u32::from_le_bytes(data)
    }

    /// A workload vCPU's read of the agent's blocking ports is answered at
    /// once, and its writes do nothing; the agent's vCPU waits and acts.
    #[test]
    fn only_agent_vcpus_use_the_agent_ports() {
        let runtime = runtime();
        // This test thread plays a workload vCPU: nothing is posted, yet
        // neither the doorbell nor a team wait blocks it.
        assert_eq!(read(&mut port(&runtime, ports::AGENT_DOORBELL)), u32::MAX);
        assert_eq!(read(&mut port(&runtime, ports::TEAM_JOIN)), u32::MAX);
        assert_eq!(read(&mut port(&runtime, ports::team_wait(1))), u32::MAX);
        // Harmless reads still answer.
        assert_eq!(read(&mut port(&runtime, ports::AGENT_VCPUS)), 2);
        // A retire from the workload is dropped.
        port(&runtime, ports::AGENT_RETIRE).write(0, &[0; 4]);
        assert!(!runtime.retired());

        // The agent's vCPU waits in the doorbell until a command is posted.
        let seq = runtime.next_seq();
        let agent = {
            let runtime = runtime.clone();
            std::thread::spawn(move || {
                crate::vcpu::role::enter_agent_vcpu();
                let got = read(&mut port(&runtime, ports::AGENT_DOORBELL));
                port(&runtime, ports::AGENT_DONE).write(0, &got.to_le_bytes());
                got
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!agent.is_finished(), "the agent's vCPU waits for a command");
        runtime.post(seq);
        runtime
            .wait_done(seq, Duration::from_secs(10))
            .expect("the agent completes it");
        assert_eq!(agent.join().unwrap(), seq as u32);
    }
}
