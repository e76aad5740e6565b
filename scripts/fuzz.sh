#!/bin/sh
# Runs every fuzz target (cargo-fuzz + libFuzzer) for SECONDS each (default
# 60) and stops at the first crash; the crashing input is kept under
# <crate>/fuzz/artifacts/<target>/. The targets: ampoule-vmm's (vmm/fuzz:
# virtio-blk requests, vsock packets and handshake, virtio-net frames,
# virtio-fs queues, MMIO register writes, the control socket) and the
# agent's (agent/fuzz: the intake of a container spec and a process spec,
# seeded from agent/fuzz/seeds/<target>/).
# Usage: scripts/fuzz.sh [SECONDS]
set -eu
secs=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi
# blk_request's scratch disks, one per fuzzing process.
trap 'rm -f "${TMPDIR:-/tmp}"/ampoule-fuzz-blk-*' EXIT
for crate in vmm agent; do
    cd "$root/$crate/fuzz"
    for t in $(cargo +nightly fuzz list); do
        echo "== fuzz target $crate/$t for ${secs}s"
        mkdir -p "corpus/$t"
        set -- "corpus/$t"
        if [ -d "seeds/$t" ]; then
            set -- "$@" "seeds/$t"
        fi
        cargo +nightly fuzz run "$t" "$@" -- -max_total_time="$secs"
    done
done
