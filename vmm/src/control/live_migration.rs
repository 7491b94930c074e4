//! The control loop's side of live migration: starting a send or a
//! receive, what `vm.info` shows of it, and the events it reports.

use super::messages::{ApiError, Reply};
use super::Vmm;
use crate::config::NetBackend;
use crate::event_monitor::emit;
use crate::migration;
use crate::migration::confidential::SessionInfo;
use crate::vm::Vm;
use covm_migration::engine::{Milestone, Observer, Phase, Progress, SendOptions};
use covm_migration::transport::{Endpoint, Listener};
use std::sync::Arc;

/// The current or last migration, for `vm.info`.
pub(super) struct MigrationStatus {
    pub(super) direction: &'static str,
    pub(super) url: String,
    pub(super) progress: Progress,
    pub(super) outcome: Option<Result<String, String>>,
    /// The confidential session, when the VM is confidential.
    pub(super) session: Option<SessionInfo>,
    /// A client read `vm.info` while the VM migrated out: it follows the
    /// migration and should read the report before the source exits.
    pub(super) followed: bool,
}

/// Tells the event monitor a migration's phases and pre-copy rounds; the
/// control loop reports the start, the end and failures itself. `receive`
/// selects the destination's names (`migration-receive-...`).
pub(super) fn migration_events(receive: bool) -> Observer {
    Arc::new(move |milestone| {
        let name = match (milestone, receive) {
            (Milestone::Phase(Phase::Handshake), false) => "migration-handshake",
            // The source connected: CH's name for the destination's start.
            (Milestone::Phase(Phase::Handshake), true) => "migration-receive-started",
            (Milestone::Phase(Phase::PreCopy), false) => "migration-precopy",
            (Milestone::Phase(Phase::PreCopy), true) => "migration-receive-precopy",
            (Milestone::Phase(Phase::StopAndCopy), false) => "migration-stop-and-copy",
            (Milestone::Phase(Phase::StopAndCopy), true) => "migration-receive-stop-and-copy",
            (Milestone::Phase(Phase::Completing), false) => "migration-completing",
            (Milestone::Phase(Phase::Completing), true) => "migration-receive-completing",
            (Milestone::Round(round), receive) => {
                let name = if receive {
                    "migration-receive-memory-iteration"
                } else {
                    "migration-memory-iteration"
                };
                emit("vm", name, &[("id", round.to_string())]);
                return;
            }
            // Connecting is the start, Completed and Failed the end: the
            // control loop reports those with what it knows of them.
            (Milestone::Phase(Phase::Connecting | Phase::Completed | Phase::Failed), _) => return,
        };
        emit("vm", name, &[]);
    })
}

impl Vmm {
    pub(super) fn migrating_out(&self) -> bool {
        self.migration
            .as_ref()
            .is_some_and(|m| m.direction == "send" && m.outcome.is_none())
    }

    pub(super) fn migration_info(&self) -> Option<serde_json::Value> {
        let m = self.migration.as_ref()?;
        let parse = |json: &str| serde_json::from_str::<serde_json::Value>(json).unwrap_or_default();
        Some(serde_json::json!({
            "direction": m.direction,
            "url": m.url,
            "progress": m.progress.snapshot(),
            "report": m.outcome.as_ref().and_then(|o| o.as_ref().ok()).map(|r| parse(r)),
            "error": m.outcome.as_ref().and_then(|o| o.as_ref().err()),
            "session": m.session.as_ref().map(SessionInfo::to_json),
        }))
    }

    pub(super) fn send_migration(
        &mut self,
        endpoint: Endpoint,
        options: SendOptions,
        verified: bool,
    ) -> Result<Reply, ApiError> {
        self.expect_booted("migrate")?;
        if self.undecided {
            return Err(ApiError::InvalidState(
                "the last confidential migration's outcome is undecided (the guest may run at its destination): \
                 this VM cannot migrate again"
                    .into(),
            ));
        }
        if let Some(why) = self.vm.as_ref().and_then(Vm::migration_refusal) {
            return Err(ApiError::BadRequest(format!("cannot migrate the VM: {why}")));
        }
        let passed_fd = self
            .created()?
            .devices
            .nets
            .iter()
            .any(|n| matches!(n.backend, NetBackend::Fd(_)));
        if passed_fd {
            return Err(ApiError::BadRequest(
                "cannot migrate the VM: a network interface's TAP was passed as a descriptor (--net fd= or \
                 net's fds), which another covm cannot take over; give the TAP by name (tap=) to migrate. The VM \
                 keeps running here"
                    .into(),
            ));
        }
        // A confidential VM moves only through its agent's sealed session;
        // a plain one has nothing to verify.
        let confidential = self.vm.as_ref().is_some_and(|vm| vm.platform().confidential());
        if verified && !confidential {
            return Err(ApiError::BadRequest(
                "verified is a confidential migration mode: this VM is not confidential".into(),
            ));
        }
        let session = confidential.then(|| SessionInfo::new("source"));
        let config = self.created()?.clone();
        let vm = self.vm.take().expect("a booted VM exists");
        let url = endpoint.to_string();
        let progress = Progress::with_observer(migration_events(false));
        self.migration = Some(MigrationStatus {
            direction: "send",
            url: url.clone(),
            progress: progress.clone(),
            outcome: None,
            session: session.clone(),
            followed: false,
        });
        let send = migration::Outgoing {
            vm,
            endpoint,
            options,
            session,
            verified,
        };
        emit("vm", "migration-started", &[("destination_url", url)]);
        migration::start_send(send, &config, progress, self.events_tx.clone());
        Ok(Reply::Done)
    }

    pub(super) fn receive_migration(&mut self, endpoint: Endpoint) -> Result<Reply, ApiError> {
        if self.config.is_some() {
            return Err(ApiError::InvalidState(
                "a VM already exists here; receive a migration in a covm started with only --api-socket".into(),
            ));
        }
        if self.migration.as_ref().is_some_and(|m| m.outcome.is_none()) {
            return Err(ApiError::InvalidState("already receiving a migration".into()));
        }
        let listener = Listener::bind(&endpoint).map_err(|e| ApiError::BadRequest(format!("receiver_url: {e}")))?;
        self.generation += 1;
        let progress = Progress::with_observer(migration_events(true));
        let session = SessionInfo::new("destination");
        self.migration = Some(MigrationStatus {
            direction: "receive",
            url: endpoint.to_string(),
            progress: progress.clone(),
            outcome: None,
            session: Some(session.clone()),
            followed: false,
        });
        let incoming = migration::Incoming {
            listener,
            start: self.start,
            host_ram: self.host_ram,
            serial: self.serial_override.clone(),
            platform: self.incoming_platform.clone(),
            notify: self.exit_notifier(),
            session,
        };
        emit(
            "vm",
            "migration-receive-ready",
            &[("receiver_url", endpoint.to_string())],
        );
        migration::start_receive(incoming, progress, self.events_tx.clone());
        Ok(Reply::Done)
    }
}
