//! covm's side of its launch measurements: what it loads, measured by
//! covm-measure (`measure/`, pure functions over a launch description).
//!
//! covm loads a configuration into guest memory as every launch does
//! ([`image::load`], which records the pages it wrote), reads the measured
//! pages back into covm-measure's [`Launch`] ([`image::with_contents`]),
//! and has covm-measure compute the measurement: the emulated platform's
//! SEV-SNP-style digest ([`image_digest`]), an SEV-SNP launch's digest with
//! what that launch adds ([`snp_launch`], which also writes the added pages
//! for the launch to update), and a TD's MRTD with covm's TD-HOB
//! ([`image_mrtd`]). `covm measure` computes the same in scratch memory
//! ([`super::measure()`], [`measure_sev_snp`], [`measure_tdx`]), so a launch
//! and `covm measure` agree by construction. docs/platforms.md lists the
//! sequence for the built-in firmware.

use super::image;
use super::PlatformError;
use crate::config::VmConfig;
use crate::vm::memory::{self, GuestMemory};
use covm_measure::mrtd::{self, TdMeasurement, TD_HOB_GPA, TD_HOB_PAGES};
use covm_measure::snp::{self, Measurement, SnpLaunch};
use covm_measure::Launch;

/// The hardware platforms `covm measure` models without the hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HardwarePlatform {
    /// AMD SEV-SNP (`--platform sev_snp=on`): the launch digest.
    SevSnp,
    /// Intel TDX (`--platform tdx=on`): MRTD.
    Tdx,
}

impl HardwarePlatform {
    /// The name `--platform` and the output use.
    pub fn name(self) -> &'static str {
        match self {
            HardwarePlatform::SevSnp => "sev_snp",
            HardwarePlatform::Tdx => "tdx",
        }
    }
}

/// The launch digest of `image` (loaded in `memory`): its pages, then one
/// VMSA per vCPU; the emulated platform's measurement.
pub fn image_digest(memory: &GuestMemory, image: &Launch) -> Result<Measurement, PlatformError> {
    Ok(snp::launch_digest(&image::with_contents(memory, image)?)?)
}

/// The SEV-SNP launch of `image` (loaded in `memory`) with `snp`'s
/// additions ([`SnpLaunch::apply`]): the launch as the secure processor
/// takes it in (the added secrets, CPUID and kernel hashes pages written
/// to `memory` for the launch to update; every vCPU's RDX the vCPU
/// signature) and the digest it must arrive at.
pub fn snp_launch(
    memory: &GuestMemory,
    image: &Launch,
    snp: &SnpLaunch,
) -> Result<(Launch, Measurement), PlatformError> {
    let described = image::with_contents(memory, image)?;
    let loaded = described.pages.len();
    let launch = snp.apply(described)?;
    image::write_pages(memory, &launch.pages[loaded..])?;
    let measurement = snp::launch_digest(&launch)?;
    Ok((launch, measurement))
}

/// The SEV-SNP launch digest `config` gives with `snp`, computed in
/// scratch memory as a launch loads it (`covm measure --platform
/// sev_snp=on`). `config` is a confidential configuration (its platform
/// places the migration policy page and adds the agent's vCPU).
pub fn measure_sev_snp(config: &VmConfig, snp: &SnpLaunch) -> Result<Measurement, PlatformError> {
    let scratch = memory::allocate(config.memory.size)?;
    let loaded = image::load(&scratch, config)?;
    Ok(snp_launch(&scratch, &loaded.image, snp)?.1)
}

/// MRTD of `image` (loaded in `memory`) with covm's TD-HOB at
/// [`TD_HOB_GPA`], as `platform::tdx::plan` launches it.
pub fn image_mrtd(memory: &GuestMemory, image: &Launch) -> Result<TdMeasurement, PlatformError> {
    let described = image::with_contents(memory, image)?;
    mrtd::launch_mrtd(&described, TD_HOB_GPA, TD_HOB_PAGES).map_err(|e| PlatformError::Mrtd(Box::new(e)))
}

/// MRTD `config` gives (a confidential configuration), computed in
/// scratch memory as a launch loads it, with covm's TD HOB
/// (`covm measure --platform tdx=on`).
pub fn measure_tdx(config: &VmConfig) -> Result<TdMeasurement, PlatformError> {
    let scratch = memory::allocate(config.memory.size)?;
    let loaded = image::load(&scratch, config)?;
    image_mrtd(&scratch, &loaded.image)
}

/// A small ELF kernel for tests: one PT_LOAD segment of 5000 bytes of
/// `i % 253` at 1 MiB (entry there, 8 KiB of `.bss` after it), no PVH
/// note, so covm boots it through the 64-bit Linux entry (zero page, page
/// tables).
#[cfg(test)]
pub(crate) fn tiny_elf() -> Vec<u8> {
    const LOAD: u64 = 0x10_0000;
    const CODE: usize = 5000;
    let mut elf = vec![0u8; 64 + 56];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little-endian
    elf[6] = 1; // version
    elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[24..32].copy_from_slice(&LOAD.to_le_bytes()); // entry
    elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
    elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
    elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
    let ph = 64;
    elf[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf[ph + 4..ph + 8].copy_from_slice(&7u32.to_le_bytes()); // RWX
    elf[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes()); // offset
    elf[ph + 16..ph + 24].copy_from_slice(&LOAD.to_le_bytes()); // vaddr
    elf[ph + 24..ph + 32].copy_from_slice(&LOAD.to_le_bytes()); // paddr
    elf[ph + 32..ph + 40].copy_from_slice(&(CODE as u64).to_le_bytes()); // filesz
    elf[ph + 40..ph + 48].copy_from_slice(&(CODE as u64 + 0x2000).to_le_bytes()); // memsz
    elf[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes()); // align
    elf.extend((0..CODE).map(|i| (i % 253) as u8));
    elf
}

/// A confidential configuration of `vcpus` for tests (the migration
/// policy page and the agent's vCPU, as every confidential launch loads
/// them): 64 MiB, emulated_cvm with an empty migration policy.
#[cfg(test)]
pub(crate) fn confidential_config(vcpus: u8, payload: crate::config::Payload, cmdline: &str) -> VmConfig {
    use crate::config::{CpusConfig, MemoryConfig, SerialMode};
    use crate::platform::{EmulatedCvmConfig, MigrationPolicy, PlatformConfig};
    VmConfig {
        cpus: CpusConfig::boot(vcpus),
        memory: MemoryConfig { size: 64 << 20 },
        payload,
        cmdline: cmdline.into(),
        serial: SerialMode::Off,
        api_socket: None,
        dirty_tracking: Default::default(),
        devices: Default::default(),
        platform: PlatformConfig::EmulatedCvm(EmulatedCvmConfig {
            root_key: None,
            policy: MigrationPolicy::empty(),
        }),
    }
}

#[cfg(test)]
mod tests;
