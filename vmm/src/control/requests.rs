//! The API's requests, one at a time: each checks the VM's state, acts
//! and replies in Cloud Hypervisor's terms.

use super::messages::{ApiError, Reply, Request, VmState};
use super::Vmm;
use crate::event_monitor::emit;
use crate::vm::Vm;

impl Vmm {
    /// Handles one request.
    pub fn handle(&mut self, request: Request) -> Result<Reply, ApiError> {
        tracing::debug!("API request {request:?} in state {:?}", self.state);
        if self.migrating_out()
            && !matches!(
                request,
                Request::Ping | Request::Info | Request::Counters | Request::ShutdownVmm
            )
        {
            return Err(ApiError::InvalidState(
                "the VM is migrating out; wait for the migration to end".into(),
            ));
        }
        match request {
            Request::Ping => Ok(Reply::Ping {
                pid: std::process::id(),
            }),
            Request::ShutdownVmm => Ok(Reply::Done),
            Request::Create(config) => self.create(*config).map(|()| Reply::Done),
            Request::Boot => self.boot().map(|()| Reply::Done),
            Request::Info => {
                if self.migrating_out() {
                    if let Some(m) = &mut self.migration {
                        m.followed = true;
                    }
                }
                let config = self.created()?;
                Ok(Reply::Info {
                    memory_actual_size: config.memory.size,
                    platform: self
                        .platform_info
                        .clone()
                        .unwrap_or_else(|| config.platform.info_before_launch()),
                    config: Box::new(config.clone()),
                    state: self.state,
                    migration: self.migration_info(),
                    devices: self.vm.as_ref().map(Vm::pci_devices).unwrap_or_default(),
                })
            }
            Request::Counters => {
                self.created()?;
                Ok(Reply::Counters(self.vm.as_ref().map(Vm::counters).unwrap_or_default()))
            }
            Request::Pause => {
                self.expect_state(VmState::Running, "pause")?;
                emit("vm", "pausing", &[]);
                self.vm.as_ref().expect("a running VM exists").pause();
                self.state = VmState::Paused;
                emit("vm", "paused", &[]);
                Ok(Reply::Done)
            }
            Request::Resume => {
                self.expect_state(VmState::Paused, "resume")?;
                if self.undecided {
                    return Err(ApiError::InvalidState(
                        "cannot resume the VM: its confidential migration sealed the final record and neither the \
                         destination's Commit nor a valid abort token arrived, so the guest may be running at the \
                         destination; it stays paused here"
                            .into(),
                    ));
                }
                emit("vm", "resuming", &[]);
                self.vm
                    .as_ref()
                    .expect("a paused VM exists")
                    .resume()
                    .map_err(|e| ApiError::InvalidState(format!("cannot resume the VM: {e}")))?;
                self.state = VmState::Running;
                emit("vm", "resumed", &[]);
                Ok(Reply::Done)
            }
            Request::ShutdownVm => {
                self.expect_booted("shut down")?;
                self.stop_vm();
                self.state = VmState::Shutdown;
                emit("vm", "shutdown", &[]);
                Ok(Reply::Done)
            }
            Request::Reboot => {
                self.expect_booted("reboot")?;
                emit("vm", "rebooting", &[]);
                self.stop_vm();
                self.state = VmState::Shutdown;
                self.start_vm()?;
                emit("vm", "rebooted", &[]);
                Ok(Reply::Done)
            }
            Request::PowerButton => {
                self.expect_booted("press the power button of")?;
                self.vm.as_ref().expect("a booted VM exists").press_power_button();
                Ok(Reply::Done)
            }
            Request::Delete => {
                if self.vm.is_some() {
                    self.stop_vm();
                    emit("vm", "shutdown", &[]);
                }
                if self.config.is_some() {
                    emit("vm", "deleted", &[]);
                }
                self.config = None;
                self.platform_info = None;
                self.state = VmState::Created;
                Ok(Reply::Done)
            }
            Request::SendMigration {
                endpoint,
                options,
                verified,
            } => self.send_migration(endpoint, *options, verified),
            Request::ReceiveMigration { endpoint } => self.receive_migration(endpoint),
            Request::AddDisk(disk) => self.add_disk(*disk),
            Request::AddNet(net, passed) => self.add_net(*net, passed),
            Request::AddVsock(vsock) => self.add_vsock(*vsock),
        }
    }

    /// `vm.add-disk` on a created VM: the disk joins its configuration
    /// (checked as `--disk` is) and the bus when it boots.
    fn add_disk(&mut self, disk: crate::config::DiskConfig) -> Result<Reply, ApiError> {
        self.cold_plug("a disk", |devices| {
            devices.disks.push(disk);
            Ok(())
        })
    }

    /// `vm.add-net` on a created VM: the interface joins its configuration.
    /// A descriptor passed with the request is closed if it is refused.
    fn add_net(&mut self, net: crate::config::NetConfig, passed: bool) -> Result<Reply, ApiError> {
        let passed_fd = match net.backend {
            crate::config::NetBackend::Fd(fd) if passed => Some(fd),
            _ => None,
        };
        let result = self.cold_plug("a network interface", |devices| {
            devices.nets.push(net);
            Ok(())
        });
        if let (Err(_), Some(fd)) = (&result, passed_fd) {
            // SAFETY: the descriptor came with this request and nothing
            // else took it: the refused configuration was dropped.
            drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        }
        result
    }

    /// `vm.add-vsock` on a created VM: one socket device, as in CH.
    fn add_vsock(&mut self, vsock: crate::config::VsockConfig) -> Result<Reply, ApiError> {
        self.cold_plug("a vsock device", |devices| match devices.vsock {
            Some(_) => Err(ApiError::Conflict(
                "the VM already has its vsock device (one at most)".into(),
            )),
            None => {
                devices.vsock = Some(vsock);
                Ok(())
            }
        })
    }

    /// Adds `what` to a created VM's devices with `add`, checked as the
    /// command line's are; it joins the bus when the VM boots.
    fn cold_plug(
        &mut self,
        what: &str,
        add: impl FnOnce(&mut crate::config::DevicesConfig) -> Result<(), ApiError>,
    ) -> Result<Reply, ApiError> {
        self.created()?;
        if self.vm.is_some() {
            return Err(ApiError::InvalidState(format!(
                "cannot add {what} to a booted VM: that would be a hot plug, which covm does not support; add \
                 devices before vm.boot (or on the command line)"
            )));
        }
        let config = self.config.as_mut().expect("created");
        let mut devices = config.devices.clone();
        add(&mut devices)?;
        devices.check().map_err(|e| match e {
            crate::config::DevicesError::DuplicateId(id) => {
                ApiError::Conflict(format!("a device with the id '{id}' already exists"))
            }
            other => ApiError::BadRequest(other.to_string()),
        })?;
        config.devices = devices;
        Ok(Reply::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VmConfig;
    use crate::platform::hardware::{SNP_NOT_MIGRATABLE, TDX_NOT_MIGRATABLE};
    use crate::vm::{snp_tests, tdx_tests};
    use std::time::Instant;

    /// A running VMM holding `vm` (built from `config`) refuses
    /// `vm.send-migration` with `reason`, before anything is sent (the VM
    /// stays here); its `vm.info` platform block, then the VMM finished.
    fn refuses_to_migrate(config: VmConfig, vm: Vm, reason: &str) -> serde_json::Value {
        let mut vmm = Vmm::new(Instant::now(), vec![], false, 1 << 40, None);
        vmm.config = Some(config);
        vmm.vm = Some(vm);
        vmm.state = VmState::Running;
        let request = Request::SendMigration {
            endpoint: "tcp:127.0.0.1:9".parse().unwrap(),
            options: Box::default(),
            verified: false,
        };
        assert_eq!(
            vmm.handle(request).unwrap_err(),
            ApiError::BadRequest(format!("cannot migrate the VM: {reason}"))
        );
        assert!(vmm.migration.is_none(), "no migration started");
        assert!(vmm.vm.is_some(), "the VM stays");
        let Reply::Info { platform, .. } = vmm.handle(Request::Info).unwrap() else {
            panic!()
        };
        vmm.finish(None);
        platform
    }

    /// `vm.send-migration` of an SEV-SNP VM is refused with the reason,
    /// before anything is sent (the VM stays here, running).
    #[test]
    fn an_snp_vm_refuses_to_migrate() {
        let config = snp_tests::snp_config();
        let Some((vm, _)) = snp_tests::snp_vm(&config) else {
            return;
        };
        let platform = refuses_to_migrate(config, vm, SNP_NOT_MIGRATABLE);
        assert_eq!(platform["kind"], "sev_snp");
    }

    /// `vm.send-migration` of a TD is refused with the reason, before
    /// anything is sent; `vm.info` says it is a TD.
    #[test]
    fn a_td_refuses_to_migrate() {
        let config = tdx_tests::tdx_config();
        let Some((vm, _)) = tdx_tests::tdx_vm(&config) else {
            return;
        };
        let platform = refuses_to_migrate(config, vm, TDX_NOT_MIGRATABLE);
        assert_eq!(platform["kind"], "tdx");
        assert_eq!(platform["note"], crate::platform::tdx::GUEST_NOT_READY);
    }
}
