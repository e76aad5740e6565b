#!/usr/bin/env bash
# Runs Ampoule's whole test suite, as root: formatting and lints, unit tests,
# and the integration tests with real microVMs, the real binaries and a real
# containerd. Sets the machine up first (scripts/setup.sh --no-demo).
#
# Where a VM can start (/dev/kvm or QEMU present) VM tests must run: a skipped
# VM test fails the run. A test that is impossible on this host says so by
# name ("SKIPPED (impossible on this host: ...)") and is listed at the end.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
log() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }

scripts/setup.sh --no-demo

if [ -e /dev/kvm ] || command -v qemu-system-x86_64 >/dev/null; then
  export AMPOULE_REQUIRE_VM=1
fi
export AMPOULE_BIN_DIR="$top/target/release"
export RUST_BACKTRACE=1

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --release --workspace --all-targets -- -D warnings

log "cargo test (release, VM tests included)"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
set +e
cargo test --release --workspace --no-fail-fast -- --show-output 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
# The VMM's seccomp kill test needs a control command that exists only with
# the `test-syscall` feature: built in its own target directory, so that the
# release binaries above (and those setup.sh installs) never carry it.
log "cargo test: ampoule-vmm seccomp kill (feature test-syscall)"
cargo test --release -p ampoule-vmm --features test-syscall --test seccomp_kill \
  --target-dir target/test-syscall -- --show-output 2>&1 | tee -a "$out"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
# Every fuzz target (ampoule-vmm's and the agent's) for a short time: a
# crash fails the run (scripts/fuzz.sh SECONDS runs them for longer).
log "fuzz targets, ${AMPOULE_CI_FUZZ_SECONDS:-15} s each"
scripts/fuzz.sh "${AMPOULE_CI_FUZZ_SECONDS:-15}" 2>&1 | grep -E '^== |^Done|ERROR|panicked|SUMMARY|crash-' | tee -a "$out"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
set -e

echo
impossible=$(grep -E 'SKIPPED \(impossible on this host' "$out" | sort -u || true)
skipped=$(grep -E 'SKIPPED: ' "$out" | sort -u || true)
if [ -n "$impossible" ]; then
  log "tests impossible on this host (reported, not run):"
  echo "$impossible"
fi
if [ -n "$skipped" ]; then
  log "skipped tests:"
  echo "$skipped"
  if [ "${AMPOULE_REQUIRE_VM:-0}" = 1 ]; then
    echo "test: a VM could start here, so no VM test may be skipped" >&2
    status=1
  fi
fi
[ "$status" = 0 ] && log "all tests passed" || log "tests FAILED"
exit "$status"
