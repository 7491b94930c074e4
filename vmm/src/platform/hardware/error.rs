//! Errors of a confidential launch (SEV-SNP and TDX alike): which KVM call
//! failed, with which arguments, and what KVM, the SEV firmware or the
//! TDX module said.

/// Why one KVM call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The ioctl failed with an errno.
    #[error("{0}")]
    Os(#[from] std::io::Error),
    /// The SEV firmware refused (`kvm_sev_cmd.error`).
    #[error("{source}; SEV firmware status {code:#x} ({name})")]
    Firmware {
        /// The ioctl's errno.
        source: std::io::Error,
        /// The firmware's status code.
        code: u32,
        /// Its name.
        name: &'static str,
    },
    /// The TDX module refused (`kvm_tdx_cmd.hw_error`, a SEAMCALL status).
    #[error("{source}; TDX module status {code:#018x}")]
    TdxModule {
        /// The ioctl's errno.
        source: std::io::Error,
        /// The SEAMCALL status.
        code: u64,
    },
    /// covm refused before calling KVM (a missing VM, a bad argument).
    #[error("{0}")]
    Refused(String),
}

impl From<kvm_ioctls::Error> for CallError {
    fn from(e: kvm_ioctls::Error) -> Self {
        CallError::Os(std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// A launch that stopped: the platform, the step (the KVM call), its
/// arguments and why.
#[derive(Debug, thiserror::Error)]
#[error("{platform} launch failed at {step}{}: {source}", detail_suffix(.detail))]
pub struct LaunchError {
    /// `AMD SEV-SNP` or `Intel TDX`.
    pub platform: &'static str,
    /// The KVM call, as the uapi names it (`KVM_SEV_SNP_LAUNCH_UPDATE`).
    pub step: &'static str,
    /// Its arguments, for the reader (may be empty).
    pub detail: String,
    /// Why it failed.
    pub source: CallError,
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

/// Turns a call's result into the launch's, naming the step.
pub(crate) fn at<T>(
    platform: &'static str,
    step: &'static str,
    detail: impl FnOnce() -> String,
    result: Result<T, CallError>,
) -> Result<T, LaunchError> {
    result.map_err(|source| LaunchError {
        platform,
        step,
        detail: detail(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_step_and_the_cause() {
        let e = at::<()>(
            "AMD SEV-SNP",
            "KVM_SEV_SNP_LAUNCH_UPDATE",
            || "2 normal pages at GPA 0x100000".into(),
            Err(CallError::Firmware {
                source: std::io::Error::from_raw_os_error(libc::EIO),
                code: 7,
                name: "POLICY_FAILURE",
            }),
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(
                "AMD SEV-SNP launch failed at KVM_SEV_SNP_LAUNCH_UPDATE (2 normal pages at GPA 0x100000): "
            ),
            "{text}"
        );
        assert!(text.ends_with("SEV firmware status 0x7 (POLICY_FAILURE)"), "{text}");
        let e = at::<()>(
            "Intel TDX",
            "KVM_TDX_FINALIZE_VM",
            String::new,
            Err(CallError::Refused("no".into())),
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "Intel TDX launch failed at KVM_TDX_FINALIZE_VM: no"
        );
    }
}
