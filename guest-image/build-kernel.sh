#!/usr/bin/env bash
# Builds the Ampoule guest kernel (vmlinux, an ELF with the PVH note) from
# Debian's linux-source-6.1: `make tinyconfig` + kernel.fragment.
# Cached by the hash of (fragment, this script, source package version):
# a second run with the same inputs only copies the cached vmlinux.
#
# usage: build-kernel.sh OUT_VMLINUX
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build-kernel.sh OUT_VMLINUX}
src_tar=/usr/src/linux-source-6.1.tar.xz
cache_root=${AMPOULE_CACHE:-/var/cache/ampoule}/kernel

[ -f "$src_tar" ] || { echo "build-kernel: $src_tar missing (apt-get install linux-source-6.1)" >&2; exit 1; }
src_version=$(dpkg-query -W -f '${Version}' linux-source-6.1)
key=$(cat "$here/kernel.fragment" "$0" <(echo "$src_version") | sha256sum | cut -c1-16)
cache="$cache_root/$key"

# Checks a .config against kernel.fragment. olddefconfig silently drops a
# symbol whose dependencies are off, and silently keeps a default-y symbol the
# fragment did not mention: every `CONFIG_X=v` line must be in the .config as
# is, and every `# CONFIG_X is not set` symbol must have no value (=y or =m).
check_config() {
  local config=$1 bad=0 line sym
  while IFS= read -r line; do
    case "$line" in
      CONFIG_*=*) grep -qx -- "$line" "$config" || { echo "build-kernel: $line did not survive olddefconfig" >&2; bad=1; } ;;
      "# CONFIG_"*" is not set") sym=${line#\# }; sym=${sym%% *}
        if grep -q "^$sym=" "$config"; then echo "build-kernel: $sym should be off but is $(grep "^$sym=" "$config")" >&2; bad=1; fi ;;
    esac
  done < "$here/kernel.fragment"
  return "$bad"
}

if [ -f "$cache/vmlinux" ]; then
  echo "build-kernel: cached ($key)"
  check_config "$cache/config" || exit 1
else
  echo "build-kernel: building $key from linux-source $src_version (about 10 minutes on 2 cores)"
  work="$cache_root/build-$key"
  rm -rf "$work"; mkdir -p "$work"
  tar -C "$work" -xf "$src_tar"
  ksrc=$(echo "$work"/linux-source-*)
  make -C "$ksrc" -s tinyconfig
  "$ksrc/scripts/kconfig/merge_config.sh" -m -O "$ksrc" "$ksrc/.config" "$here/kernel.fragment" >/dev/null
  make -C "$ksrc" -s olddefconfig
  check_config "$ksrc/.config" || exit 1
  make -C "$ksrc" -s -j"$(nproc)" vmlinux
  # The .config the kernel was built from (the build re-syncs it).
  check_config "$ksrc/.config" || exit 1
  mkdir -p "$cache"
  cp "$ksrc/.config" "$cache/config"
  cp "$ksrc/include/config/kernel.release" "$cache/release"
  cp "$ksrc/vmlinux" "$cache/vmlinux.tmp" && strip --strip-debug "$cache/vmlinux.tmp" && mv "$cache/vmlinux.tmp" "$cache/vmlinux"
  rm -rf "$work"
fi
mkdir -p "$(dirname "$out")"
install -m 0644 "$cache/vmlinux" "$out"
echo "build-kernel: $(cat "$cache/release") -> $out"
