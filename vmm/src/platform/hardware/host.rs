//! What a confidential-platform probe looks at, injectable for tests: the
//! host's files (under a root: `/` for this machine) and KVM's answers to
//! `KVM_CHECK_EXTENSION` on `/dev/kvm` (nothing is created). Shared by the
//! SEV-SNP and TDX probes, with the checks both make.

use kvm_bindings::{
    KVM_CAP_EXIT_HYPERCALL, KVM_CAP_GUEST_MEMFD, KVM_CAP_MEMORY_ATTRIBUTES, KVM_CAP_USER_MEMORY2, KVM_CAP_VM_TYPES,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
};
use std::path::PathBuf;

use super::map_gpa::EXIT_MAP_GPA_RANGE;

/// Where KVM's capability answers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmAnswers {
    /// Ask this machine's KVM device (`crate::vm::kvm::device_path`).
    Device,
    /// Fixed answers (capability, value); capabilities not listed answer 0.
    #[cfg(test)]
    Fixed(Vec<(u32, i32)>),
    /// KVM cannot be asked, for this reason.
    #[cfg(test)]
    Unusable(String),
}

/// The SEV firmware, as SNP_PLATFORM_STATUS reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnpFirmware {
    /// The SNP API version (major, minor).
    pub api: (u8, u8),
    /// The firmware's build ID.
    pub build: u32,
}

/// Where the SEV firmware's status comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SevAnswers {
    /// Ask this machine's `/dev/sev` (SNP_PLATFORM_STATUS, the `sev` crate).
    Device,
    /// A fixed answer, or why there is none.
    #[cfg(test)]
    Fixed(Result<SnpFirmware, String>),
}

/// The host a probe examines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    root: PathBuf,
    kvm: KvmAnswers,
    sev: SevAnswers,
}

/// A kernel module parameter's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleParam {
    /// The module is not loaded (no `/sys/module/NAME`).
    NotLoaded,
    /// Loaded, without this parameter.
    Missing,
    /// The parameter's value, trimmed (`Y`, `N`, `1`, `0`).
    Value(String),
}

/// What a host lacks for a confidential platform.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} is not available on this machine: {}", missing.join("; "))]
pub struct Unavailable {
    /// `AMD SEV-SNP` or `Intel TDX`.
    pub what: &'static str,
    /// Each missing piece, said precisely.
    pub missing: Vec<String>,
}

impl Host {
    /// This machine.
    pub fn this_machine() -> Self {
        Host {
            root: PathBuf::from("/"),
            kvm: KvmAnswers::Device,
            sev: SevAnswers::Device,
        }
    }

    /// A host whose files are under `root`, whose KVM answers `kvm` and
    /// whose SEV firmware answers `sev` (the probes' tests).
    #[cfg(test)]
    pub fn at(root: impl Into<PathBuf>, kvm: KvmAnswers, sev: SevAnswers) -> Self {
        Host {
            root: root.into(),
            kvm,
            sev,
        }
    }

    /// The SEV firmware's SNP status (asked only when `/dev/sev` exists).
    pub fn snp_firmware(&self) -> Result<SnpFirmware, String> {
        match &self.sev {
            #[cfg(test)]
            SevAnswers::Fixed(answer) => answer.clone(),
            SevAnswers::Device => {
                let mut firmware = sev::firmware::host::Firmware::open().map_err(|e| e.to_string())?;
                let status = firmware.snp_platform_status().map_err(|e| e.to_string())?;
                Ok(SnpFirmware {
                    api: status.version,
                    build: status.build_id,
                })
            }
        }
    }

    /// The host's file at absolute path `path`.
    pub fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Whether `path` exists.
    pub fn exists(&self, path: &str) -> bool {
        self.path(path).exists()
    }

    /// `path`'s contents, if readable.
    pub fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.path(path)).ok()
    }

    /// `/proc/cpuinfo`'s first `vendor_id` and `flags`, if readable.
    pub fn cpu(&self) -> Option<(String, Vec<String>)> {
        let info = self.read("/proc/cpuinfo")?;
        let field = |name: &str| {
            info.lines().find_map(|l| {
                let (key, value) = l.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_string())
            })
        };
        let vendor = field("vendor_id").unwrap_or_default();
        let flags = field("flags")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        Some((vendor, flags))
    }

    /// The loaded KVM vendor modules (`kvm_amd`, `kvm_intel`, ...).
    pub fn kvm_modules(&self) -> Vec<String> {
        let mut modules: Vec<String> = std::fs::read_dir(self.path("/sys/module"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.starts_with("kvm_"))
            .collect();
        modules.sort();
        modules
    }

    /// Module `module`'s parameter `param`.
    pub fn module_param(&self, module: &str, param: &str) -> ModuleParam {
        if !self.exists(&format!("/sys/module/{module}")) {
            return ModuleParam::NotLoaded;
        }
        match self.read(&format!("/sys/module/{module}/parameters/{param}")) {
            None => ModuleParam::Missing,
            Some(value) => ModuleParam::Value(value.trim().to_string()),
        }
    }

    /// KVM's answers to `KVM_CHECK_EXTENSION` for `caps`, on the system fd.
    pub fn capabilities(&self, caps: &[u32]) -> Result<Vec<i32>, String> {
        match &self.kvm {
            #[cfg(test)]
            KvmAnswers::Unusable(why) => Err(why.clone()),
            #[cfg(test)]
            KvmAnswers::Fixed(answers) => Ok(caps
                .iter()
                .map(|cap| answers.iter().find(|(c, _)| c == cap).map_or(0, |(_, v)| *v))
                .collect()),
            KvmAnswers::Device => {
                let kvm = crate::vm::kvm::open().map_err(|e| e.to_string())?;
                Ok(caps
                    .iter()
                    .map(|&cap| kvm.check_extension_raw(libc::c_ulong::from(cap)))
                    .collect())
            }
        }
    }
}

/// What a platform needs of the CPU, as `/proc/cpuinfo` shows it.
#[derive(Debug, Clone, Copy)]
pub struct CpuNeed {
    /// The vendor (`vendor_id`).
    pub vendor: &'static str,
    /// Who makes such CPUs, for messages (`an AMD`).
    pub maker: &'static str,
    /// The feature, for messages (`SEV-SNP`).
    pub feature: &'static str,
    /// The flag that shows it.
    pub flag: &'static str,
    /// Why the flag may be missing, if worth saying.
    pub why: &'static str,
}

/// Checks the CPU against `need` (nothing is said if `/proc/cpuinfo` is
/// unreadable).
pub fn cpu_offers(host: &Host, need: CpuNeed, missing: &mut Vec<String>) {
    match host.cpu() {
        Some((vendor, _)) if vendor != need.vendor => {
            missing.push(format!(
                "the CPU is {vendor}: {} needs {} CPU",
                need.feature, need.maker
            ));
        }
        Some((_, flags)) if !flags.iter().any(|f| f == need.flag) => missing.push(format!(
            "the CPU does not advertise {} (no {} flag in /proc/cpuinfo{})",
            need.feature, need.flag, need.why
        )),
        _ => {}
    }
}

/// The probe's answer: `Ok` if nothing is `missing`.
pub fn verdict(what: &'static str, missing: Vec<String>) -> Result<(), Unavailable> {
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Unavailable { what, missing })
    }
}

/// Checks that `module`'s `param` is on, or says why not.
pub fn module_param_on(host: &Host, module: &str, param: &str, missing: &mut Vec<String>) {
    let file = format!("/sys/module/{module}/parameters/{param}");
    match host.module_param(module, param) {
        ModuleParam::Value(v) if v == "Y" || v == "1" => {}
        ModuleParam::Value(v) => missing.push(format!("{module}'s {param} parameter is off ({file} = {v})")),
        ModuleParam::Missing => missing.push(format!(
            "{module} has no {param} parameter ({file} is absent: this kernel's {module} predates it)"
        )),
        ModuleParam::NotLoaded => {
            let others = host.kvm_modules();
            let from = if others.is_empty() {
                String::new()
            } else {
                format!("; this host's KVM comes from {}", others.join(", "))
            };
            missing.push(format!("{module} is not loaded (no /sys/module/{module}{from})"));
        }
    }
}

/// Checks what KVM must offer a private-memory VM of type `vm_type`
/// (`vm_type_name`): the VM type, guest_memfd, memory slots with one,
/// the PRIVATE attribute and the `KVM_HC_MAP_GPA_RANGE` exit.
pub fn kvm_private_vm(host: &Host, vm_type: u32, vm_type_name: &str, missing: &mut Vec<String>) {
    let caps = [
        KVM_CAP_VM_TYPES,
        KVM_CAP_GUEST_MEMFD,
        KVM_CAP_USER_MEMORY2,
        KVM_CAP_MEMORY_ATTRIBUTES,
        KVM_CAP_EXIT_HYPERCALL,
    ];
    let values = match host.capabilities(&caps) {
        Ok(values) => values,
        Err(why) => return missing.push(format!("KVM cannot be asked: {why}")),
    };
    let [types, gmem, mem2, attributes, exits] = [values[0], values[1], values[2], values[3], values[4]];
    if types & (1 << vm_type) == 0 {
        missing.push(format!(
            "KVM does not offer the {vm_type_name} VM type (KVM_CHECK_EXTENSION(KVM_CAP_VM_TYPES) = {types:#x}: \
             bit {vm_type} clear)"
        ));
    }
    if gmem <= 0 {
        missing.push(format!(
            "KVM has no guest_memfd for private memory (KVM_CAP_GUEST_MEMFD = {gmem})"
        ));
    }
    if mem2 <= 0 {
        missing.push(format!(
            "KVM has no KVM_SET_USER_MEMORY_REGION2 (KVM_CAP_USER_MEMORY2 = {mem2})"
        ));
    }
    if attributes as u32 & KVM_MEMORY_ATTRIBUTE_PRIVATE == 0 {
        missing.push(format!(
            "KVM cannot mark guest memory private (KVM_CAP_MEMORY_ATTRIBUTES = {attributes:#x}: \
             KVM_MEMORY_ATTRIBUTE_PRIVATE, bit 3, clear)"
        ));
    }
    if exits as u64 & EXIT_MAP_GPA_RANGE == 0 {
        missing.push(format!(
            "KVM cannot hand the guest's KVM_HC_MAP_GPA_RANGE conversions to covm \
             (KVM_CAP_EXIT_HYPERCALL = {exits:#x}: bit 12 clear)"
        ));
    }
}

/// A scratch host tree for probe tests.
#[cfg(test)]
pub(crate) struct ScratchHost {
    pub root: PathBuf,
}

#[cfg(test)]
impl ScratchHost {
    pub fn new(name: &str) -> Self {
        let root = std::env::temp_dir().join(format!("covm-probe-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        ScratchHost { root }
    }

    /// Writes `contents` at absolute path `path` under the root.
    pub fn file(&self, path: &str, contents: &str) -> &Self {
        let path = self.root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
        self
    }

    /// The host under the root, with KVM answering `kvm` and an SEV
    /// firmware of SNP API 1.55 (one recent enough).
    pub fn host(&self, kvm: KvmAnswers) -> Host {
        self.host_with_sev(
            kvm,
            SevAnswers::Fixed(Ok(SnpFirmware {
                api: (1, 55),
                build: 21,
            })),
        )
    }

    /// The host under the root, with KVM answering `kvm` and the SEV
    /// firmware `sev`.
    pub fn host_with_sev(&self, kvm: KvmAnswers, sev: SevAnswers) -> Host {
        Host::at(&self.root, kvm, sev)
    }
}

#[cfg(test)]
impl Drop for ScratchHost {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_tree() {
        let scratch = ScratchHost::new("host");
        scratch
            .file(
                "/proc/cpuinfo",
                "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sev sev_snp\n\nprocessor\t: 1\n",
            )
            .file("/sys/module/kvm_amd/parameters/sev_snp", "N\n")
            .file("/sys/module/kvm_pvm/uevent", "");
        let host = scratch.host(KvmAnswers::Fixed(vec![(KVM_CAP_VM_TYPES, 0x11)]));
        let (vendor, flags) = host.cpu().unwrap();
        assert_eq!(vendor, "AuthenticAMD");
        assert_eq!(flags, ["fpu", "sev", "sev_snp"]);
        assert_eq!(host.kvm_modules(), ["kvm_amd", "kvm_pvm"]);
        assert_eq!(host.module_param("kvm_amd", "sev_snp"), ModuleParam::Value("N".into()));
        assert_eq!(host.module_param("kvm_amd", "sev"), ModuleParam::Missing);
        assert_eq!(host.module_param("kvm_intel", "tdx"), ModuleParam::NotLoaded);
        assert_eq!(
            host.capabilities(&[KVM_CAP_VM_TYPES, KVM_CAP_GUEST_MEMFD]),
            Ok(vec![0x11, 0])
        );
        let unusable = scratch.host(KvmAnswers::Unusable("no /dev/kvm".into()));
        assert_eq!(unusable.capabilities(&[1]), Err("no /dev/kvm".into()));
    }
}
