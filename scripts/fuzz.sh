#!/bin/sh
# Runs every ampoule-vmm fuzz target (vmm/fuzz, cargo-fuzz + libFuzzer) for
# SECONDS each (default 60) and stops at the first crash; the crashing
# input is kept under vmm/fuzz/artifacts/<target>/.
# Usage: scripts/fuzz.sh [SECONDS]
set -eu
secs=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz
fi
cd "$root/vmm/fuzz"
# blk_request's scratch disks, one per fuzzing process.
trap 'rm -f "${TMPDIR:-/tmp}"/ampoule-fuzz-blk-*' EXIT
for t in $(cargo +nightly fuzz list); do
    echo "== fuzz target $t for ${secs}s"
    cargo +nightly fuzz run "$t" -- -max_total_time="$secs"
done
