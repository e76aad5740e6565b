#!/usr/bin/env bash
# Populates DIR with a minimal busybox root filesystem from Debian's
# busybox-static: /bin/busybox, one symlink per applet, and the directories a
# container expects. No registry needed.
#
# usage: busybox-rootfs.sh DIR
set -euo pipefail
dir=${1:?usage: busybox-rootfs.sh DIR}
bb=/bin/busybox
[ -x "$bb" ] || { echo "busybox-rootfs: $bb missing (apt-get install busybox-static)" >&2; exit 1; }
file -L "$bb" 2>/dev/null | grep -q 'statically linked' || ldd "$bb" 2>&1 | grep -q 'not a dynamic' \
  || { echo "busybox-rootfs: $bb is not static (install busybox-static)" >&2; exit 1; }
mkdir -p "$dir"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,root,home,var,run}
chmod 1777 "$dir/tmp"
install -m 0755 "$bb" "$dir/bin/busybox"
for applet in $("$bb" --list-full); do
  [ "$applet" = bin/busybox ] && continue
  mkdir -p "$dir/$(dirname "$applet")"
  ln -sf /bin/busybox "$dir/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$dir/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$dir/etc/group"
echo "busybox-rootfs: $dir"
