#!/usr/bin/env bash
# Boots the agent in QEMU microvm (TCG) with a busybox erofs rootfs drive and
# a bind-sources drive, runs `devclient smoke` (every container call of the
# agent API, checked), then Shutdown, and checks that QEMU exited.
# Needs root, qemu-system-x86_64, vhost-device-vsock, mkfs.erofs, busybox,
# and /usr/local/share/ampoule/vmlinux.
#
# usage: agent/examples/smoke.sh [WORKDIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${1:-$(mktemp -d)}
target_dir=${CARGO_TARGET_DIR:-$repo/target}
kernel=${AMPOULE_KERNEL:-/usr/local/share/ampoule/vmlinux}
mkdir -p "$work"

cargo build -q -p ampoule-agent --example devclient --manifest-path "$repo/Cargo.toml"
client=$target_dir/debug/examples/devclient
"$repo/guest-image/build-initrd.sh" "$work/initrd.img"

rm -rf "$work/bb" "$work/binds"
mkdir -p "$work/bb/bin" "$work/bb/etc" "$work/bb/tmp" "$work/bb/root" "$work/binds/host/data"
cp "$(command -v busybox)" "$work/bb/bin/busybox"
for a in $("$work/bb/bin/busybox" --list); do [ -e "$work/bb/bin/$a" ] || ln -s busybox "$work/bb/bin/$a"; done
chmod 1777 "$work/bb/tmp"
echo "root:x:0:0:root:/root:/bin/sh" > "$work/bb/etc/passwd"
echo "root:x:0:" > "$work/bb/etc/group"
echo hi > "$work/binds/host/data/hello.txt"
mkdir -p "$work/binds/host/secrets"
echo "nameserver 10.0.0.10" > "$work/binds/host/resolv.conf"
echo secret > "$work/binds/host/secrets/token"
echo "127.0.0.1 localhost" > "$work/binds/host/hosts"
rm -f "$work/bb.erofs" "$work/binds.erofs"
mkfs.erofs --quiet --all-root "$work/bb.erofs" "$work/bb"
mkfs.erofs --quiet --all-root "$work/binds.erofs" "$work/binds"

rm -f "$work"/vhost.sock "$work"/vsock.sock*
vhost-device-vsock --vm "guest-cid=3,socket=$work/vhost.sock,uds-path=$work/vsock.sock" > "$work/vhost.log" 2>&1 &
vhost=$!
"$client" ready "$work/vsock.sock_1023" > "$work/ready.txt" &
ready=$!
cleanup() { kill "$vhost" "$ready" ${qemu:-} 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$work/vhost.sock" ] && [ -S "$work/vsock.sock_1023" ] && break; sleep 0.05; done
qemu-system-x86_64 -M microvm,acpi=off,memory-backend=mem,x-option-roms=off,isa-serial=on,rtc=on \
  -accel tcg -cpu max -m 256M -object memory-backend-memfd,id=mem,size=256M,share=on -smp 1 \
  -nodefaults -no-user-config -nographic -serial "file:$work/serial.log" -no-reboot \
  -kernel "$kernel" -initrd "$work/initrd.img" -append "console=ttyS0 quiet panic=-1" \
  -chardev "socket,id=vs,path=$work/vhost.sock" -device vhost-user-vsock-device,chardev=vs \
  -drive "file=$work/bb.erofs,if=none,id=d0,format=raw,readonly=on" -device virtio-blk-device,drive=d0,serial=busybox \
  -drive "file=$work/binds.erofs,if=none,id=d1,format=raw,readonly=on" -device virtio-blk-device,drive=d1,serial=binds \
  > "$work/qemu.log" 2>&1 &
qemu=$!
wait "$ready"
cat "$work/ready.txt"
"$client" check "$work/vsock.sock"
status=0
"$client" smoke "$work/vsock.sock" busybox binds || status=$?
"$client" shutdown "$work/vsock.sock"
for _ in $(seq 100); do kill -0 "$qemu" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$qemu" 2>/dev/null; then echo "QEMU still running after Shutdown"; status=1; else echo "QEMU exited after Shutdown"; fi
echo "serial log: $work/serial.log"
exit "$status"
