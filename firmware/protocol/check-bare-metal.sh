#!/usr/bin/env bash
# Proves covm-agent-protocol is fit for the bare-metal migration agent
# (firmware/image: -nostdlib, panic=abort, no allocator):
#   1. the crate builds in release;
#   2. its normal dependency tree has no getrandom, libc or std crate, and
#      no dependency has a "std", "alloc" or "getrandom" feature enabled;
#   3. nostd-check/, a freestanding static executable (#![no_std], no libc,
#      no allocator, panic=abort, linked -nostdlib like the firmware),
#      builds, links and runs a whole migration through the protocol.
# Usage: firmware/protocol/check-bare-metal.sh [--skip-workspace-build]
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

fail() {
    echo "check-bare-metal: FAIL: $*" >&2
    exit 1
}

if [[ "${1:-}" != "--skip-workspace-build" ]]; then
    echo "== 1. cargo build -p covm-agent-protocol --release"
    cargo build -p covm-agent-protocol --release
fi

echo "== 2. cargo tree -p covm-agent-protocol -e normal"
tree="$(cargo tree -p covm-agent-protocol -e normal --prefix none)"
features="$(cargo tree -p covm-agent-protocol -e normal,features --prefix none)"
if grep -E '^(getrandom|libc|std|rand|rand_os) v' <<<"$tree"; then
    fail "a crate that needs std or the OS is in the dependency tree (above)"
fi
if grep -E 'feature "(std|alloc|getrandom)"' <<<"$features" | sort -u; then
    fail "a std, alloc or getrandom feature is enabled (above)"
fi
echo "$(sort -u <<<"$tree" | grep -vc "(\*)") crates, none std-only; no std/alloc/getrandom feature"

echo "== 3. freestanding static executable (nostd-check)"
target_dir="$root/target/nostd-check"
(
    cd firmware/protocol/nostd-check
    # Outer build flags must not leak in (as vmm/build.rs does for the firmware).
    env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS -u CARGO_BUILD_TARGET \
        -u CARGO_TARGET_DIR -u RUSTC_WRAPPER -u RUSTC_WORKSPACE_WRAPPER \
        cargo build --release --target x86_64-unknown-linux-gnu --target-dir "$target_dir"
)
bin="$target_dir/x86_64-unknown-linux-gnu/release/covm-agent-protocol-nostd-check"
if command -v readelf >/dev/null && readelf -l "$bin" | grep -q INTERP; then
    fail "$bin asks for a dynamic loader"
fi
"$bin" || fail "the freestanding migration failed"
echo "check-bare-metal: ok"
