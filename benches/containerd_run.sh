#!/usr/bin/env bash
# `ctr run --rm IMAGE ID /bin/true` with Ampoule (io.containerd.ampoule.v2)
# versus runc on the same local busybox image, in the same run, against a
# private containerd. Prints min/median/max over N runs each, the ratio of
# medians, and Ampoule's time minus its sandbox boot-to-agent time (from the
# shim's "pod VM ready ... boot_ms=" log line) against runc's whole run.
#
# usage: sudo benches/containerd_run.sh [RUNS]      (default 20)
# env:   SHIM_BIN      containerd-shim-ampoule-v2 (default: target dir's debug build)
#        AMPOULE_TEST_KERNEL / AMPOULE_TEST_INITRD  guest image (default: runtime defaults)
#        KEEP=1        keep the work directory
set -euo pipefail
runs=${1:-20}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
shim=${SHIM_BIN:-$target/debug/containerd-shim-ampoule-v2}
kernel=${AMPOULE_TEST_KERNEL:-/usr/local/share/ampoule/vmlinux}
initrd=${AMPOULE_TEST_INITRD:-/usr/local/share/ampoule/initrd.img}
for t in containerd ctr runc umoci busybox mkfs.erofs; do
  command -v "$t" >/dev/null || { echo "containerd_run: $t not found" >&2; exit 1; }
done
[ -x "$shim" ] || { echo "containerd_run: $shim missing (cargo build -p containerd-shim-ampoule-v2)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "containerd_run: needs root" >&2; exit 1; }

work=$(mktemp -d /tmp/acb-XXXXXX)
ns=bench
ctd_pid=
cleanup() {
  set +e
  if [ -n "$ctd_pid" ]; then
    for t in $(ctr --address "$work/c.sock" -n $ns tasks ls -q 2>/dev/null); do
      ctr --address "$work/c.sock" -n $ns tasks kill -s SIGKILL "$t"; ctr --address "$work/c.sock" -n $ns tasks rm -f "$t"
    done >/dev/null 2>&1
    kill "$ctd_pid" 2>/dev/null; wait "$ctd_pid" 2>/dev/null
  fi
  for h in /sys/fs/cgroup/*/$ns; do [ -d "$h" ] && find "$h" -depth -type d -delete; done 2>/dev/null
  rmdir /run/containerd/runc/$ns 2>/dev/null
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# --- image: busybox as an OCI layout, imported with ctr
img="$work/img"
umoci init --layout "$img" >/dev/null
umoci new --image "$img:latest" >/dev/null
umoci unpack --image "$img:latest" "$work/bundle" >/dev/null
rootfs="$work/bundle/rootfs"
mkdir -p "$rootfs"/{bin,etc,tmp,proc,sys,dev,root}
cp /bin/busybox "$rootfs/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$rootfs/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$rootfs/etc/passwd"
umoci repack --image "$img:latest" "$work/bundle" >/dev/null
umoci config --image "$img:latest" --config.cmd=sh --config.env=PATH=/bin >/dev/null
tar -C "$img" -cf "$work/busybox.tar" .

# --- private containerd with the shim on PATH
mkdir -p "$work/bin"; ln -s "$(readlink -f "$shim")" "$work/bin/containerd-shim-ampoule-v2"
cat > "$work/ampoule.toml" <<EOF
kernel = "$kernel"
initrd = "$initrd"
run_dir = "$work/vm"
log_dir = "$work/log"
cache_dir = "$work/cache"
EOF
cat > "$work/config.toml" <<EOF
version = 2
root = "$work/root"
state = "$work/state"
[grpc]
  address = "$work/c.sock"
[ttrpc]
  address = "$work/c.sock.ttrpc"
EOF
PATH="$work/bin:$PATH" AMPOULE_CONFIG="$work/ampoule.toml" \
  containerd --config "$work/config.toml" > "$work/containerd.log" 2>&1 &
ctd_pid=$!
ctr_() { ctr --address "$work/c.sock" -n $ns "$@"; }
for _ in $(seq 200); do ctr_ version >/dev/null 2>&1 && break; sleep 0.05; done
ctr_ images import --base-name localhost/busybox "$work/busybox.tar" >/dev/null
image=localhost/busybox:latest

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# one warm-up each (page cache, erofs image cache)
ctr_ run --rm "$image" warm-runc /bin/true
ctr_ run --rm --runtime io.containerd.ampoule.v2 "$image" warm-amp /bin/true

: > "$work/runc.ms"; : > "$work/amp.ms"; : > "$work/amp-net.ms"; : > "$work/boot.ms"
for i in $(seq "$runs"); do
  t0=$(now_ms); ctr_ run --rm "$image" "r$i" /bin/true; t1=$(now_ms)
  echo $((t1 - t0)) >> "$work/runc.ms"
  t0=$(now_ms); ctr_ run --rm --runtime io.containerd.ampoule.v2 "$image" "a$i" /bin/true; t1=$(now_ms)
  total=$((t1 - t0))
  boot=$(grep -a "pod VM ready" "$work/containerd.log" | grep -a "sandbox=a$i " | sed -n 's/.*boot_ms=\([0-9]*\).*/\1/p' | tail -1)
  boot=${boot:-0}
  echo "$total" >> "$work/amp.ms"; echo "$boot" >> "$work/boot.ms"; echo $((total - boot)) >> "$work/amp-net.ms"
done

stats() { sort -n "$1" | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%d %d %d\n", a[1], m, a[NR]}'; }
read -r rmin rmed rmax < <(stats "$work/runc.ms")
read -r amin amed amax < <(stats "$work/amp.ms")
read -r bmin bmed bmax < <(stats "$work/boot.ms")
read -r nmin nmed nmax < <(stats "$work/amp-net.ms")
echo "ctr run --rm /bin/true, $runs runs each (ms: min / median / max)"
printf '  runc                         %6d %6d %6d\n' "$rmin" "$rmed" "$rmax"
printf '  ampoule                      %6d %6d %6d\n' "$amin" "$amed" "$amax"
printf '  ampoule boot-to-agent        %6d %6d %6d\n' "$bmin" "$bmed" "$bmax"
printf '  ampoule minus boot-to-agent  %6d %6d %6d\n' "$nmin" "$nmed" "$nmax"
awk -v a="$amed" -v r="$rmed" -v n="$nmed" 'BEGIN {
  printf "  ratio ampoule/runc (medians): %.2f\n", a / r;
  printf "  ratio (ampoule - boot)/runc (medians): %.2f (target <= 2.00: %s)\n", n / r, (n <= 2 * r) ? "met" : "NOT met" }'

# The CRI half: RunPodSandbox + CreateContainer + StartContainer with the
# runtime handlers runc and ampoule, against its own private containerd (the
# shim tests' harness). It runs the shim cargo builds from this tree, not
# SHIM_BIN; the guest image is the same (AMPOULE_TEST_KERNEL/INITRD).
echo
BENCH_RUNS="$runs" cargo bench --manifest-path "$repo/Cargo.toml" -q \
  -p containerd-shim-ampoule-v2 --bench cri_pod_start
