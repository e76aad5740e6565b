#!/bin/sh
# Builds the test guests into $1 (default: .): guest-linux64.elf (64-bit
# Linux boot protocol) and guest-pvh.elf (PVH note), plus bench-guest.elf.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-.}
CFLAGS="-O2 -ffreestanding -nostdlib -mgeneral-regs-only -mno-red-zone -fno-pic -fno-pie -static -fno-stack-protector -fno-asynchronous-unwind-tables -mcmodel=small -Wall -Wextra -Wno-builtin-declaration-mismatch"
gcc $CFLAGS -no-pie -T "$here/guest.ld" -Wl,--build-id=none,--no-warn-rwx-segments,-z,noexecstack -o "$out/guest-linux64.elf" "$here/guest.S" "$here/guest.c"
gcc $CFLAGS -no-pie -DPVH -T "$here/guest.ld" -Wl,--build-id=none,--no-warn-rwx-segments,-z,noexecstack -o "$out/guest-pvh.elf" "$here/guest.S" "$here/guest.c"
gcc $CFLAGS -no-pie -T "$here/bench-guest.ld" -Wl,--build-id=none,--no-warn-rwx-segments,-z,noexecstack -o "$out/bench-guest.elf" "$here/bench-guest.S"
