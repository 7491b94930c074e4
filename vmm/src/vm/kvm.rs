//! Opening KVM, with errors that say what to do.

use kvm_ioctls::{Cap, Kvm};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::PathBuf;

/// The KVM device; `COVM_KVM_DEVICE` overrides it (for hosts that place it
/// elsewhere, and for testing covm's own error paths).
pub fn device_path() -> PathBuf {
    std::env::var_os("COVM_KVM_DEVICE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/dev/kvm".into())
}

/// Why KVM cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// No device node.
    #[error("{} does not exist: this host has no KVM (load kvm_intel or kvm_amd, or enable nested virtualization)", path.display())]
    Missing {
        /// The device path.
        path: PathBuf,
    },
    /// Permission denied.
    #[error("no permission to open {}: run covm as a user in the kvm group, or as root", path.display())]
    Denied {
        /// The device path.
        path: PathBuf,
    },
    /// Any other failure opening it.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The device path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The device is not KVM, or too old.
    #[error("{} is not a usable KVM device: {reason}", path.display())]
    Unusable {
        /// The device path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Capabilities covm cannot run without.
const REQUIRED: [(Cap, &str); 4] = [
    (Cap::Irqchip, "in-kernel irqchip"),
    (Cap::UserMemory, "user memory regions"),
    (Cap::SetTssAddr, "TSS address"),
    (Cap::Pit2, "in-kernel PIT"),
];

/// Opens KVM and checks the API version and the capabilities covm needs.
pub fn open() -> Result<Kvm, KvmError> {
    let path = device_path();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => KvmError::Missing { path: path.clone() },
            std::io::ErrorKind::PermissionDenied => KvmError::Denied { path: path.clone() },
            _ => KvmError::Open {
                path: path.clone(),
                source,
            },
        })?;
    // SAFETY: the descriptor was just opened and is owned by nothing else; Kvm takes ownership.
    let kvm = unsafe { Kvm::from_raw_fd(file.into_raw_fd()) };
    let unusable = |reason: String| KvmError::Unusable {
        path: path.clone(),
        reason,
    };
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(unusable(format!("KVM API version {version}, covm needs 12")));
    }
    for (cap, name) in REQUIRED {
        if !kvm.check_extension(cap) {
            return Err(unusable(format!("no {name} capability")));
        }
    }
    Ok(kvm)
}
