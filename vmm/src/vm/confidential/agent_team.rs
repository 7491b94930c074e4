//! The migration agent's vCPUs waiting on each other (the team ports,
//! `covm_guest_abi::mailbox` "Team"): agent 0 posts work to its helpers
//! and waits for them; each helper waits for work and reports it done.
//!
//! covm only blocks and wakes here. What the work is, and whether every
//! helper finished it, the agent keeps in its private memory and checks
//! itself, so nothing covm answers can make it skip or repeat work.

use std::sync::{Condvar, Mutex, MutexGuard};

/// The waits of one VM's agent vCPUs.
#[derive(Debug)]
pub struct AgentTeam {
    /// The agent's vCPUs, agent 0's included.
    vcpus: u32,
    state: Mutex<TeamState>,
    changed: Condvar,
}

#[derive(Debug)]
struct TeamState {
    /// Work posted so far.
    posted: u64,
    /// Per helper (index 1..vcpus, at `index - 1`), the work it was last
    /// woken for.
    woken: Vec<u64>,
    /// Helpers that reported the work posted last done.
    done: u32,
    closed: bool,
}

impl AgentTeam {
    /// The team of an agent with `vcpus` vCPUs (at least 1).
    pub fn new(vcpus: u32) -> Self {
        AgentTeam {
            vcpus,
            state: Mutex::new(TeamState {
                posted: 0,
                woken: vec![0; vcpus.saturating_sub(1) as usize],
                done: 0,
                closed: false,
            }),
            changed: Condvar::new(),
        }
    }

    /// The agent's vCPUs (`ports::AGENT_VCPUS`).
    pub fn vcpus(&self) -> u32 {
        self.vcpus
    }

    fn lock(&self) -> MutexGuard<'_, TeamState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, s: MutexGuard<'a, TeamState>) -> MutexGuard<'a, TeamState> {
        self.changed.wait(s).unwrap_or_else(|p| p.into_inner())
    }

    /// Agent 0 posted work (`ports::TEAM_START`).
    pub fn start(&self) {
        let mut s = self.lock();
        s.posted += 1;
        s.done = 0;
        self.changed.notify_all();
    }

    /// Helper `index` waits for work it was not woken for yet
    /// (`ports::team_wait`); returns at once for an index that is no
    /// helper's, and once the VM stops.
    pub fn wait_for_work(&self, index: u32) {
        let mut s = self.lock();
        let Some(slot) = (index as usize).checked_sub(1).filter(|&i| i < s.woken.len()) else {
            tracing::debug!(index, "a team wait from no helper of the agent");
            return;
        };
        while !s.closed && s.woken[slot] >= s.posted {
            s = self.wait(s);
        }
        s.woken[slot] = s.posted;
    }

    /// A helper finished the work posted last (`ports::TEAM_DONE`).
    pub fn done(&self) {
        let mut s = self.lock();
        s.done = s.done.saturating_add(1);
        self.changed.notify_all();
    }

    /// Agent 0 waits until every helper reported the work posted last
    /// done (`ports::TEAM_JOIN`), or the VM stops; returns how many did.
    pub fn join(&self) -> u32 {
        let helpers = self.vcpus.saturating_sub(1);
        let mut s = self.lock();
        while !s.closed && s.done < helpers {
            s = self.wait(s);
        }
        s.done
    }

    /// The VM stops: every wait returns, for good.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    /// Each helper is woken once per post, however late it comes to
    /// wait; agent 0's join returns once all reported.
    #[test]
    fn helpers_wake_once_per_post_and_join_waits_for_all() {
        let team = Arc::new(AgentTeam::new(3));
        team.start();
        let helpers: Vec<_> = (1..3)
            .map(|index| {
                let team = team.clone();
                std::thread::spawn(move || {
                    team.wait_for_work(index);
                    team.done();
                })
            })
            .collect();
        assert_eq!(team.join(), 2);
        for h in helpers {
            h.join().unwrap();
        }
        // A second wait with nothing new posted blocks until the close.
        let waiter = {
            let team = team.clone();
            std::thread::spawn(move || team.wait_for_work(1))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "woken without new work");
        team.close();
        waiter.join().unwrap();
        assert_eq!(team.join(), 2);
    }

    #[test]
    fn a_wait_from_no_helper_returns() {
        let team = AgentTeam::new(2);
        team.wait_for_work(0);
        team.wait_for_work(2);
        team.wait_for_work(u32::MAX);
    }
}
