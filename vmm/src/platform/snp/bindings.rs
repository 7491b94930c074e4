//! The SEV-SNP uapi values covm uses.
//!
//! kvm-bindings 0.14 has the structures (`kvm_sev_cmd`, `kvm_sev_init`,
//! `kvm_sev_snp_launch_{start,update,finish}`, `kvm_create_guest_memfd`,
//! `kvm_userspace_memory_region2`, `kvm_memory_attributes`) and kvm-ioctls
//! 0.25 the ioctls on a VM fd; what they lack is here: the names of the SEV firmware's
//! status codes (`include/uapi/linux/psp-sev.h`), for errors. (The
//! `KVM_HC_MAP_GPA_RANGE` hypercall's values, shared with TDX, are in
//! `platform::hardware::map_gpa`.)

use kvm_bindings::{
    sev_cmd_id_KVM_SEV_INIT2, sev_cmd_id_KVM_SEV_SNP_LAUNCH_FINISH, sev_cmd_id_KVM_SEV_SNP_LAUNCH_START,
    sev_cmd_id_KVM_SEV_SNP_LAUNCH_UPDATE, KVM_X86_SNP_VM,
};

/// `KVM_CREATE_VM`'s type for an SEV-SNP guest.
pub const SNP_VM_TYPE: u64 = KVM_X86_SNP_VM as u64;
/// `kvm_sev_cmd.id` of `KVM_SEV_INIT2`.
pub const SEV_INIT2: u32 = sev_cmd_id_KVM_SEV_INIT2;
/// `kvm_sev_cmd.id` of `KVM_SEV_SNP_LAUNCH_START`.
pub const SNP_LAUNCH_START: u32 = sev_cmd_id_KVM_SEV_SNP_LAUNCH_START;
/// `kvm_sev_cmd.id` of `KVM_SEV_SNP_LAUNCH_UPDATE`.
pub const SNP_LAUNCH_UPDATE: u32 = sev_cmd_id_KVM_SEV_SNP_LAUNCH_UPDATE;
/// `kvm_sev_cmd.id` of `KVM_SEV_SNP_LAUNCH_FINISH`.
pub const SNP_LAUNCH_FINISH: u32 = sev_cmd_id_KVM_SEV_SNP_LAUNCH_FINISH;

/// The GHCB protocol version an SNP guest may use (version 2 is SNP's).
pub const GHCB_VERSION: u16 = 2;

/// The device through which KVM reaches the AMD secure processor.
pub const SEV_DEVICE: &str = "/dev/sev";

/// The name of an SEV firmware status code (`kvm_sev_cmd.error`), from
/// the SEV-SNP firmware ABI specification's status code table.
pub fn firmware_status_name(code: u32) -> &'static str {
    match code {
        0x00 => "SUCCESS",
        0x01 => "INVALID_PLATFORM_STATE",
        0x02 => "INVALID_GUEST_STATE",
        0x03 => "INVALID_CONFIG",
        0x04 => "INVALID_LENGTH",
        0x05 => "ALREADY_OWNED",
        0x06 => "INVALID_CERTIFICATE",
        0x07 => "POLICY_FAILURE",
        0x08 => "INACTIVE",
        0x09 => "INVALID_ADDRESS",
        0x0a => "BAD_SIGNATURE",
        0x0b => "BAD_MEASUREMENT",
        0x0c => "ASID_OWNED",
        0x0d => "INVALID_ASID",
        0x0e => "WBINVD_REQUIRED",
        0x0f => "DF_FLUSH_REQUIRED",
        0x10 => "INVALID_GUEST",
        0x11 => "INVALID_COMMAND",
        0x12 => "ACTIVE",
        0x13 => "HWERROR_PLATFORM",
        0x14 => "HWERROR_UNSAFE",
        0x15 => "UNSUPPORTED",
        0x16 => "INVALID_PARAM",
        0x17 => "RESOURCE_LIMIT",
        0x18 => "SECURE_DATA_INVALID",
        0x19 => "INVALID_PAGE_SIZE",
        0x1a => "INVALID_PAGE_STATE",
        0x1b => "INVALID_MDATA_ENTRY",
        0x1c => "INVALID_PAGE_OWNER",
        0x1d => "AEAD_OFLOW",
        0x1f => "RMP_INIT_REQUIRED",
        _ => "unknown status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uapi_values() {
        assert_eq!(SNP_VM_TYPE, 4);
        assert_eq!(
            (SEV_INIT2, SNP_LAUNCH_START, SNP_LAUNCH_UPDATE, SNP_LAUNCH_FINISH),
            (22, 100, 101, 102)
        );
        assert_eq!(firmware_status_name(0x07), "POLICY_FAILURE");
        assert_eq!(firmware_status_name(0x99), "unknown status");
    }
}
