#!/usr/bin/env bash
# Sets up Ampoule on a fresh Debian 12 machine, as root, and runs the main job:
# a busybox container in a microVM (no registry needed).
#
#   scripts/setup.sh            packages + build + install + main job
#   scripts/setup.sh --no-demo  packages + build + install (what the tests need)
#
# Idempotent: packages already present are not reinstalled, the guest kernel
# build is cached by its config hash (/var/cache/ampoule/kernel), cargo builds
# are incremental.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
demo=1
[ "${1:-}" = "--no-demo" ] && demo=0

prefix=${AMPOULE_PREFIX:-/usr/local}
share="$prefix/share/ampoule"
log() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "setup: run as root (it installs packages and to $prefix)" >&2; exit 1; }

# --- Debian packages ---------------------------------------------------------
packages=(
  linux-source-6.1 flex bison bc libelf-dev libssl-dev xz-utils cpio   # guest kernel + initramfs
  qemu-system-x86                                                        # qemu backend, benches
  erofs-utils e2fsprogs                                                  # container rootfs images
  busybox-static umoci                                                   # built-in test images
  containerd runc containernetworking-plugins podman                     # shim tests (CRI pods with CNI), engine tests, runc baseline
  protobuf-compiler                                                      # CRI v1 client of the shim tests (k8s-cri)
  python3 gcc make file                                                  # test guests, benches
  libseccomp-dev libcap-ng-dev                                           # virtiofsd links against both
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- vhost-device-vsock (the qemu backend's vsock, from crates.io) ------------
vhost_version=0.3.0
if ! "$prefix/bin/vhost-device-vsock" --version 2>/dev/null | grep -q "$vhost_version"; then
  log "building vhost-device-vsock $vhost_version (about 70 s)"
  CARGO_TARGET_DIR="${AMPOULE_CACHE:-/var/cache/ampoule}/vhost-device-vsock-target" \
    cargo install --quiet vhost-device-vsock --version "$vhost_version" --locked --root "$prefix"
fi

# --- virtiofsd (the pod's shared directory over virtio-fs, from crates.io) -----
virtiofsd_version=1.14.0
if ! "$prefix/bin/virtiofsd" --version 2>/dev/null | grep -q "$virtiofsd_version"; then
  log "building virtiofsd $virtiofsd_version (about 3 minutes)"
  CARGO_TARGET_DIR="${AMPOULE_CACHE:-/var/cache/ampoule}/virtiofsd-target" \
    cargo install --quiet virtiofsd --version "$virtiofsd_version" --locked --root "$prefix"
fi

# --- Ampoule binaries ----------------------------------------------------------
log "building Ampoule (release)"
cargo build --release --workspace --bins

# --- guest image -----------------------------------------------------------------
mkdir -p "$share"
log "guest kernel"
guest-image/build-kernel.sh "$share/vmlinux"
log "guest agent (static) and initramfs"
guest-image/build-initrd.sh "$share/initrd.img"

# --- install ---------------------------------------------------------------------
log "installing to $prefix"
for b in ampoule ampoule-vmm containerd-shim-ampoule-v2; do
  [ -f "target/release/$b" ] && install -m 0755 "target/release/$b" "$prefix/bin/$b"
done
# The built-in default bundle: busybox, no registry needed.
bundle="$share/bundles/busybox"
if [ ! -x "$bundle/rootfs/bin/busybox" ] || ! cmp -s /bin/busybox "$bundle/rootfs/bin/busybox"; then
  rm -rf "$bundle"
  guest-image/busybox-rootfs.sh "$bundle/rootfs" >/dev/null
fi

[ "$demo" = 1 ] || exit 0

# --- the main job ------------------------------------------------------------------
log "main job: a busybox container in a microVM"
if "$prefix/bin/ampoule" run --help >/dev/null 2>&1; then
  if [ ! -f "$bundle/config.json" ]; then
    (cd "$bundle" && "$prefix/bin/ampoule" spec)
    python3 - "$bundle/config.json" <<'PY'
import json, sys
p = sys.argv[1]
spec = json.load(open(p))
spec["process"]["terminal"] = False
spec["process"]["args"] = ["sh", "-c", "echo \"hello from a busybox container in a microVM: kernel $(uname -r), $(nproc) cpu\""]
json.dump(spec, open(p, "w"), indent=2)
PY
  fi
  exec "$prefix/bin/ampoule" run --bundle "$bundle" "ampoule-demo-$$"
else
  exec "$prefix/bin/ampoule" check --boot
fi
