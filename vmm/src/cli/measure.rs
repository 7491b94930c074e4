//! `covm measure`: the launch measurement a VM's options would give,
//! computed as a launch computes it but in scratch memory (no KVM, no
//! SEV-SNP or TDX hardware), printed as JSON.

use super::{failed, refused, MeasureArgs, Stop};
use crate::config::{self, Payload, VmConfig};
use crate::platform::measure::{self, HardwarePlatform};
use crate::platform::{self, hex, root_key, PlatformConfig};
use covm_measure::kernel_hashes::{KernelHashes, SEV_HASHES_GPA};
use covm_measure::mrtd::TD_HOB_GPA;
use covm_measure::snp::SnpLaunch;
use covm_measure::vmsa;

/// `covm measure`: the launch measurement the VM options would give, as
/// JSON, computed as a launch computes it but in scratch memory (no KVM, no
/// SEV-SNP or TDX hardware).
pub fn measure(args: &MeasureArgs) -> Result<String, Stop> {
    let host_ram = config::host_ram().map_err(|e| failed(format!("cannot read this host's memory size: {e}")))?;
    let (config, hardware, no_policy) = VmConfig::for_measure(&args.vm, host_ram).map_err(refused)?;
    if hardware != Some(HardwarePlatform::SevSnp) {
        if args.vcpu_type.is_some() {
            return Err(refused("--vcpu-type is for --platform sev_snp=on"));
        }
        if args.kernel_hashes {
            return Err(refused("--kernel-hashes is for --platform sev_snp=on"));
        }
    }
    // Without --migration-policy the measurement is the same (the policy
    // page is an UNMEASURED entry) but there is no HOST_DATA to show.
    let host_data = config.platform.host_data().filter(|_| !no_policy).map(|h| hex(&h));
    let policy_version = config
        .platform
        .migration_policy()
        .filter(|_| !no_policy)
        .map(|p| p.version());
    let out = match hardware {
        Some(HardwarePlatform::SevSnp) => {
            // --vcpu-type, or vcpu_type= in --platform as a launch takes it.
            let (launch_type, guest_policy) = match &config.platform {
                PlatformConfig::SevSnp(snp) => (snp.vcpu_type.clone(), snp.guest_policy),
                _ => (None, platform::hardware::DEFAULT_GUEST_POLICY),
            };
            let vcpu_type = match (args.vcpu_type.clone(), launch_type) {
                (Some(given), Some(launch)) if given != launch => {
                    return Err(refused(format!(
                        "--vcpu-type {given} and --platform vcpu_type={launch} differ: give one"
                    )))
                }
                (given, launch) => given.or(launch),
            };
            let signature = vcpu_type
                .as_deref()
                .map(vmsa::vcpu_type_signature)
                .transpose()
                .map_err(refused)?;
            let kernel_hashes = match (&config.payload, args.kernel_hashes) {
                (_, false) => None,
                (Payload::Kernel { kernel, initramfs }, true) => Some(
                    KernelHashes::from_files(kernel, initramfs.as_deref(), &config.cmdline)
                        .map_err(|e| refused(format!("--kernel-hashes: cannot read the kernel or initramfs: {e}")))?,
                ),
                (_, true) => {
                    return Err(refused(
                        "--kernel-hashes needs --kernel (it hashes the kernel, initramfs and command line)",
                    ))
                }
            };
            let launch = SnpLaunch {
                vcpu_signature: signature.unwrap_or(0),
                kernel_hashes,
                cpuid_page: None,
            };
            let measurement = measure::measure_sev_snp(&config, &launch).map_err(failed)?;
            let mut out = serde_json::json!({
                "platform": "sev_snp",
                "measurement": hex(&measurement.digest),
                "host_data": host_data,
                "policy_version": policy_version,
                "vcpus": config.cpus.boot_vcpus,
                "guest_policy": format!("{guest_policy:#x}"),
                "vcpu_type": vcpu_type,
                "vcpu_signature": signature.map(|s| format!("{s:#x}")),
                "kernel_hashes": launch.kernel_hashes.map(|h| serde_json::json!({
                    "gpa": format!("{SEV_HASHES_GPA:#x}"),
                    "kernel": hex(&h.kernel),
                    "initrd": hex(&h.initrd),
                    "cmdline": hex(&h.cmdline),
                })),
                "entries": measurement.pages.len(),
            });
            if args.pages {
                out["pages"] = measured_pages(&measurement.pages);
            }
            out
        }
        Some(HardwarePlatform::Tdx) => {
            let td = measure::measure_tdx(&config).map_err(failed)?;
            let mut out = serde_json::json!({
                "platform": "tdx",
                "mrtd": hex(&td.mrtd),
                "host_data": host_data,
                "policy_version": policy_version,
                "vcpus": config.cpus.boot_vcpus,
                "td_hob": format!("{TD_HOB_GPA:#x}"),
                "entries": td.pages.len(),
            });
            if args.pages {
                out["pages"] = td
                    .pages
                    .iter()
                    .map(|p| {
                        let op = if p.extended { "add+extend" } else { "add" };
                        serde_json::json!({"gpa": format!("{:#x}", p.gpa), "op": op, "what": p.what})
                    })
                    .collect();
            }
            out
        }
        None => {
            let PlatformConfig::EmulatedCvm(emulated) = &config.platform else {
                return Err(refused(
                    "give a confidential platform (--platform emulated_cvm=on), or sev_snp=on or tdx=on: a plain VM is \
                     not measured",
                ));
            };
            // The root key only when a file is named: a key for one VM is of no use here.
            let root_public_key = match &emulated.root_key {
                Some(path) => {
                    let key = root_key::load_or_create(Some(path)).map_err(failed)?;
                    if let Some(line) = key.announcement() {
                        eprintln!("covm: {line}");
                    }
                    Some(hex(&key.public_key))
                }
                None => None,
            };
            let measurement = platform::measure(&config).map_err(failed)?;
            let mut out = serde_json::json!({
                "platform": config.platform.name(),
                "measurement": hex(&measurement.digest),
                "host_data": host_data,
                "policy_version": policy_version,
                "root_public_key": root_public_key,
                "vcpus": config.cpus.boot_vcpus,
                "entries": measurement.pages.len(),
            });
            if args.pages {
                out["pages"] = measured_pages(&measurement.pages);
            }
            out
        }
    };
    Ok(serde_json::to_string_pretty(&out).expect("JSON serialises"))
}

/// `--pages`: each entry's address, page type and contents.
fn measured_pages(pages: &[covm_measure::snp::MeasuredPage]) -> serde_json::Value {
    pages
        .iter()
        .map(|p| serde_json::json!({"gpa": format!("{:#x}", p.gpa), "type": p.page_type.name(), "what": p.what}))
        .collect()
}
