//! Builds the built-in firmware (firmware/image) and embeds it into covm.
//!
//! The firmware is a freestanding ELF: it needs panic=abort and bare-metal
//! link arguments, so it is its own cargo workspace, built here by a nested
//! cargo in a target directory of its own (sharing ours would deadlock on
//! cargo's lock). The environment of the outer build (RUSTFLAGS, wrappers set
//! by clippy, coverage or sanitiser runs) is dropped so the image is always
//! built the same way.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let image_dir = manifest_dir.join("../firmware/image");
    let abi_dir = manifest_dir.join("../firmware/abi");
    // The agent, the protocol crate and the SEV-SNP verifier (with its
    // pinned roots) are compiled into the image too.
    let agent_dir = manifest_dir.join("../firmware/agent");
    let protocol_dir = manifest_dir.join("../firmware/protocol");
    let snp_verify_dir = manifest_dir.join("../firmware/snp-verify");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let target_dir = out_dir.join("firmware-target");

    // Only paths that exist: cargo takes a missing one as always changed,
    // which made every build relink covm.
    for dir in [&image_dir, &abi_dir, &agent_dir, &protocol_dir, &snp_verify_dir] {
        for entry in [
            "src",
            "roots",
            "Cargo.toml",
            "Cargo.lock",
            "build.rs",
            "link.ld",
            ".cargo/config.toml",
        ] {
            let path = dir.join(entry);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&image_dir)
        .args([
            "build",
            "--release",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target-dir",
        ])
        .arg(&target_dir);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PROFILE_RELEASE_DEBUG",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("could not run cargo to build the firmware");
    assert!(
        status.success(),
        "building the built-in firmware (firmware/image) failed"
    );

    let elf = target_dir.join("x86_64-unknown-linux-gnu/release/covm-firmware");
    assert!(elf.exists(), "firmware build produced no {}", elf.display());
    println!("cargo:rustc-env=COVM_FIRMWARE_ELF={}", elf.display());
}
