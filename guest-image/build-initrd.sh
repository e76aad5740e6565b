#!/usr/bin/env bash
# Builds the Ampoule guest initramfs: an uncompressed newc cpio (the guest
# kernel has no decompressors) whose /init is the static ampoule-agent, plus
# /dev/console so the kernel can give /init its console fds (the agent
# mounts devtmpfs itself).
#
# usage: build-initrd.sh OUT_INITRD               builds the agent first (the
#                                                 flags the guest needs)
#        build-initrd.sh AGENT_BINARY OUT_INITRD  uses a built agent
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
target=x86_64-unknown-linux-gnu

case $# in
  1) out=$1
     target_dir=${CARGO_TARGET_DIR:-$repo/target}
     echo "build-initrd: building the static agent" >&2
     # Static (crt-static) and not position-independent (relocation-model=
     # static): under TCG a static-pie agent is loaded at a new random
     # address at every exec, so QEMU translates its code again each time
     # and applies its 16k relocations; every container create and exec
     # re-executes the agent as its helper (measured in a guest: 80-170 ms
     # per exec as static-pie, 10-20 ms as a plain static executable).
     # With --target, RUSTFLAGS reach only the target crates, not build
     # scripts or proc-macros.
     RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" CARGO_TARGET_DIR=$target_dir \
       cargo build --release -p ampoule-agent --target "$target" --manifest-path "$repo/Cargo.toml" >&2
     agent=$target_dir/$target/release/ampoule-agent ;;
  2) agent=$1; out=$2 ;;
  *) echo "usage: build-initrd.sh [AGENT_BINARY] OUT_INITRD" >&2; exit 2 ;;
esac

[ -f "$agent" ] || { echo "build-initrd: agent binary $agent not found" >&2; exit 1; }
if readelf -lW "$agent" 2>/dev/null | grep -q 'program interpreter'; then
  echo "build-initrd: $agent is dynamically linked; build it with -C target-feature=+crt-static" >&2
  exit 1
fi
if [ "$(readelf -hW "$agent" 2>/dev/null | awk '/Type:/ {print $2}')" != EXEC ]; then
  echo "build-initrd: warning: $agent is position-independent; every helper exec in the guest pays for it (build with -C relocation-model=static)" >&2
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
if command -v strip >/dev/null; then
  strip -o "$stage/init" "$agent"
else
  cp "$agent" "$stage/init"
fi
chmod 0755 "$stage/init"
mkdir -m 0755 "$stage/dev"
if ! mknod -m 0600 "$stage/dev/console" c 5 1 2>/dev/null; then
  echo "build-initrd: cannot mknod dev/console (not root?): the agent opens it from devtmpfs" >&2
fi
find "$stage" -exec touch -h -d @0 {} +

mkdir -p "$(dirname "$out")"
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) > "$out.tmp"
mv "$out.tmp" "$out"
echo "build-initrd: $(stat -c %s "$out") bytes -> $out" >&2
