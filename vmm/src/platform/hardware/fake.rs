//! A recording fake of the launch calls both hardware platforms share
//! (tests only): each call is kept with its arguments, and one chosen call
//! can fail, so tests check the order and the arguments of a launch and
//! that a failure stops it. [`Fake`] is generic over the call record, so
//! SEV-SNP's and TDX's fakes add their own calls to it.

use super::create::CreateOps;
use super::error::{CallError, LaunchError};
use super::private_memory::{PrivateMemoryOps, RamRegion};
use crate::config::{CpusConfig, MemoryConfig, Payload, SerialMode, VmConfig};
use crate::platform::image::{self, Loaded};
use crate::platform::{EmulatedCvmConfig, MigrationPolicy, PlatformConfig};
use crate::vm::memory::GuestMemory;
use kvm_bindings::{kvm_create_guest_memfd, kvm_memory_attributes, kvm_userspace_memory_region2};

/// A call both launches make: the VM and vCPU creation ([`CreateOps`])
/// and the private-memory calls ([`PrivateMemoryOps`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum SharedCall {
    CreateVm(u64),
    CreateVcpus(usize),
    CreateGuestMemfd(kvm_create_guest_memfd),
    SetUserMemoryRegion2(kvm_userspace_memory_region2),
    SetMemoryAttributes(kvm_memory_attributes),
    EnableExitHypercall(u64),
}

impl SharedCall {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            SharedCall::CreateVm(_) => "KVM_CREATE_VM",
            SharedCall::CreateVcpus(_) => "KVM_CREATE_VCPU",
            SharedCall::CreateGuestMemfd(_) => "KVM_CREATE_GUEST_MEMFD",
            SharedCall::SetUserMemoryRegion2(_) => "KVM_SET_USER_MEMORY_REGION2",
            SharedCall::SetMemoryAttributes(_) => "KVM_SET_MEMORY_ATTRIBUTES",
            SharedCall::EnableExitHypercall(_) => "KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)",
        }
    }
}

/// A platform's call record.
pub(crate) trait Recorded {
    /// The KVM call, as the launch errors name it.
    fn name(&self) -> &'static str;
    /// The record of a call both launches make.
    fn from_shared(call: SharedCall) -> Self;
}

/// The recording fake.
#[derive(Debug)]
pub(crate) struct Fake<C> {
    /// Every call made, with its arguments, in order.
    pub calls: Vec<C>,
    /// The call to fail: its name and which occurrence (from 0).
    fail: Option<(&'static str, usize)>,
    next_fd: u32,
}

impl<C> Default for Fake<C> {
    fn default() -> Self {
        Fake {
            calls: Vec::new(),
            fail: None,
            next_fd: Self::FIRST_FD,
        }
    }
}

impl<C> Fake<C> {
    /// The first guest_memfd number handed out.
    pub const FIRST_FD: u32 = 100;
}

impl<C: Recorded> Fake<C> {
    /// A fake whose `nth` call named `name` fails with [`Fake::failure`].
    pub fn failing(name: &'static str, nth: usize) -> Self {
        Fake {
            fail: Some((name, nth)),
            ..Self::default()
        }
    }

    /// The error a failing call returns.
    pub fn failure() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::EIO)
    }

    /// Records `call`; fails it if it is the chosen one.
    pub fn record(&mut self, call: C) -> Result<(), CallError> {
        let name = call.name();
        let seen = self.calls.iter().filter(|c| c.name() == name).count();
        self.calls.push(call);
        match self.fail {
            Some(fail) if fail == (name, seen) => Err(CallError::Os(Self::failure())),
            _ => Ok(()),
        }
    }
}

impl<C: Recorded> CreateOps for Fake<C> {
    fn create_vm(&mut self, vm_type: u64) -> Result<(), CallError> {
        self.record(C::from_shared(SharedCall::CreateVm(vm_type)))
    }

    fn create_vcpus(&mut self, count: usize) -> Result<(), CallError> {
        self.record(C::from_shared(SharedCall::CreateVcpus(count)))
    }
}

impl<C: Recorded> PrivateMemoryOps for Fake<C> {
    fn create_guest_memfd(&mut self, gmem: &kvm_create_guest_memfd) -> Result<u32, CallError> {
        self.record(C::from_shared(SharedCall::CreateGuestMemfd(*gmem)))?;
        self.next_fd += 1;
        Ok(self.next_fd - 1)
    }

    fn set_user_memory_region2(&mut self, region: &kvm_userspace_memory_region2) -> Result<(), CallError> {
        self.record(C::from_shared(SharedCall::SetUserMemoryRegion2(*region)))
    }

    fn set_memory_attributes(&mut self, attributes: &kvm_memory_attributes) -> Result<(), CallError> {
        self.record(C::from_shared(SharedCall::SetMemoryAttributes(*attributes)))
    }

    fn enable_exit_hypercall(&mut self, hypercalls: u64) -> Result<(), CallError> {
        self.record(C::from_shared(SharedCall::EnableExitHypercall(hypercalls)))
    }
}

/// Guest memory of the launch tests.
pub(crate) const MEMORY: u64 = 64 << 20;

/// The built-in firmware loaded as a confidential launch loads it (an
/// emulated_cvm VM of [`MEMORY`] with 2 vCPUs, 3 with the agent's), and
/// the HOST_DATA of its (empty) migration policy.
pub(crate) fn loaded_firmware() -> (GuestMemory, Loaded, [u8; 32]) {
    let platform = PlatformConfig::EmulatedCvm(EmulatedCvmConfig {
        root_key: None,
        policy: MigrationPolicy::empty(),
    });
    let host_data = platform.host_data().unwrap();
    let config = VmConfig {
        cpus: CpusConfig::boot(2),
        memory: MemoryConfig { size: MEMORY },
        payload: Payload::BuiltinFirmware,
        cmdline: "workload=hello".into(),
        serial: SerialMode::Null,
        api_socket: None,
        dirty_tracking: Default::default(),
        devices: Default::default(),
        platform,
    };
    let memory = crate::vm::memory::allocate(MEMORY).unwrap();
    let loaded = image::load(&memory, &config).unwrap();
    (memory, loaded, host_data)
}

/// RAM as covm lays out 4 GiB: 3 GiB low, the MMIO hole, 1 GiB high.
pub(crate) fn split_ram() -> Vec<RamRegion> {
    vec![
        RamRegion {
            slot: 0,
            gpa: 0,
            size: 0xc000_0000,
            uaddr: 0x7000_0000_0000,
        },
        RamRegion {
            slot: 1,
            gpa: 1 << 32,
            size: 1 << 30,
            uaddr: 0x7100_0000_0000,
        },
    ]
}

/// Fails each call of `launch`'s sequence in turn, and checks that the
/// launch stops there with an error naming `platform` and the call.
pub(crate) fn each_call_failing<C: Recorded>(platform: &str, launch: impl Fn(&mut Fake<C>) -> Result<(), LaunchError>) {
    let mut reference = Fake::default();
    launch(&mut reference).unwrap();
    for (index, call) in reference.calls.iter().enumerate() {
        let name = call.name();
        let nth = reference.calls[..index].iter().filter(|c| c.name() == name).count();
        let mut fake = Fake::failing(name, nth);
        let err = launch(&mut fake).unwrap_err();
        assert_eq!(err.step, name);
        assert_eq!(err.platform, platform);
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("{platform} launch failed at {name}")),
            "{text}"
        );
        assert!(text.ends_with(&Fake::<C>::failure().to_string()), "{text}");
        assert_eq!(fake.calls.len(), index + 1, "nothing after the failing {name}");
    }
}
