//! Links the check as a freestanding static executable: no C runtime, no
//! libc, exactly as the firmware is linked (an undefined symbol from any
//! dependency fails the link).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for arg in ["-nostartfiles", "-nostdlib", "-static", "-no-pie", "-Wl,--gc-sections"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
