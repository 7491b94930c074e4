//! Links the firmware as a freestanding image at fixed physical addresses.

use std::env;
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let script = dir.join("link.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=src/ring0.s");
    println!("cargo:rerun-if-changed=build.rs");

    // The ring-0 assembly and the linker script assume absolute, non-PIE
    // code. A RUSTFLAGS / CARGO_ENCODED_RUSTFLAGS inherited from an outer
    // cargo replaces .cargo/config.toml silently, so say so loudly.
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if !flags.split('\x1f').any(|f| f.contains("relocation-model=static")) {
        panic!(
            "covm-firmware must be built with -C relocation-model=static (set in firmware/image/.cargo/config.toml); \
             an inherited RUSTFLAGS or CARGO_ENCODED_RUSTFLAGS overrides it: remove them from the environment"
        );
    }

    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
        "-Wl,--gc-sections",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
}
