#!/usr/bin/env python3
"""VMM cost on the same minimal guest: ampoule-vmm vs QEMU microvm.

The guest (vmm/test-guests/bench-guest.S, built here with gcc) writes one
byte to COM1, then writes the debug-exit port (QEMU isa-debug-exit /
ampoule-vmm port 0xf4) and pulses the i8042 reset line. Both VMMs boot it
through its PVH note. For each run we measure, from just before spawning
the process:

  first byte  time until the guest's byte arrives on the VMM's stdout
  exit        time until the process has exited (reaped)
  peak RSS    ru_maxrss of the process (wait4)

The measuring is done by a small C helper (compiled here) that forks and
execs the VMM: a child forked from Python would carry Python's own
resident memory into ru_maxrss.

A third row, kvm-floor, is the host's own floor: a C program that creates a
VM with the same memory, irqchip, PIT and one vCPU, writes the byte and
exits without running a guest. Its exit time is KVM's VM teardown in the
host kernel (it varies from host to host and day to day: 5 to 25 ms seen
here), which every VMM pays; the last line is ampoule-vmm's exit above it.

Runs alternate between the VMMs. Usage:

  python3 benches/vmm_boot.py [--runs 30] [--vmm PATH] [--qemu PATH] [--memory-mib 128]

By default PATH is $CARGO_TARGET_DIR/release/ampoule-vmm (build it with
`cargo build --release -p ampoule-vmm`). This is a benchmark, not a test:
it asserts nothing about time.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


HELPER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/wait.h>
static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}
int main(int argc, char **argv) {
    int fds[2];
    if (argc < 2 || pipe(fds)) return 100;
    long long t0 = now_ns();
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execv(argv[1], argv + 1);
        _exit(127);
    }
    close(fds[1]);
    char c = 0;
    long long t1 = -1;
    if (read(fds[0], &c, 1) == 1) t1 = now_ns();
    int status;
    struct rusage ru;
    wait4(pid, &status, 0, &ru);
    long long t2 = now_ns();
    char rest[256];
    while (read(fds[0], rest, sizeof rest) > 0) {}
    printf("%c %lld %lld %ld %d\n", c ? c : '-', t1 - t0, t2 - t0, ru.ru_maxrss,
           WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    return 0;
}
"""


# The host's own floor: a program that only creates what a VMM must (a VM
# with its guest memory, irqchip, PIT and one vCPU), writes the byte and
# exits, with no guest run. Its exit time is KVM's VM teardown in the host
# kernel, which every VMM pays on top of its own work.
FLOOR_C = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <linux/kvm.h>
int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 128;
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    int vm = kvm < 0 ? -1 : ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) return 1;
    void *mem = mmap(0, mib << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    struct kvm_userspace_memory_region r = { .slot = 0, .guest_phys_addr = 0,
        .memory_size = mib << 20, .userspace_addr = (unsigned long)mem };
    struct kvm_pit_config pit = { 0 };
    if (mem == MAP_FAILED || ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) ||
        ioctl(vm, KVM_CREATE_IRQCHIP, 0) || ioctl(vm, KVM_CREATE_PIT2, &pit) ||
        ioctl(vm, KVM_CREATE_VCPU, 0) < 0) return 2;
    return write(1, "A", 1) == 1 ? 0 : 3;
}
"""


def compile_c(out_dir, name, source):
    src = os.path.join(out_dir, f"{name}.c")
    exe = os.path.join(out_dir, name)
    with open(src, "w") as f:
        f.write(source)
    subprocess.run(["gcc", "-O2", "-o", exe, src], check=True)
    return exe


def build_guest(out_dir):
    subprocess.run(["sh", os.path.join(ROOT, "vmm/test-guests/build.sh"), out_dir], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return os.path.join(out_dir, "bench-guest.elf")


def run_once(helper, argv):
    out = subprocess.run([helper] + argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, check=True).stdout.decode().split()
    byte, first_ns, exit_ns, maxrss_kb, status = out[0], int(out[1]), int(out[2]), int(out[3]), int(out[4])
    if byte != "A" or first_ns < 0:
        raise RuntimeError(f"{argv[0]}: unexpected output {byte!r}, status {status}")
    return first_ns / 1e6, exit_ns / 1e6, maxrss_kb / 1024.0, status


def summary(values):
    return min(values), statistics.median(values), max(values)


def main():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    built = os.path.join(target, "release", "ampoule-vmm")
    default_vmm = built if os.path.exists(built) else (shutil.which("ampoule-vmm") or built)
    ap.add_argument("--vmm", default=default_vmm)
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--memory-mib", type=int, default=128)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="ampoule-bench-") as tmp:
        guest = build_guest(tmp)
        helper = compile_c(tmp, "measure", HELPER_C)
        floor = compile_c(tmp, "kvm-floor", FLOOR_C)
        qemu = args.qemu if os.path.isabs(args.qemu) else shutil.which(args.qemu)
        if not qemu:
            sys.exit(f"{args.qemu} not found")
        cmds = {
            "ampoule-vmm": [args.vmm, "--kernel", guest, "--memory-mib", str(args.memory_mib)],
            "qemu-microvm": [
                qemu, "-M", "microvm,x-option-roms=off,rtc=off", "-accel", "kvm",
                # arch-capabilities: PVM refuses MSR 0x10a that -cpu host sets.
                "-cpu", "host,-arch-capabilities", "-m", f"{args.memory_mib}M",
                "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
                "-kernel", guest, "-device", "isa-debug-exit,iobase=0xf4,iosize=1", "-no-reboot",
            ],
            "kvm-floor": [floor, str(args.memory_mib)],
        }
        results = {name: {"first": [], "exit": [], "rss": []} for name in cmds}
        for name, argv in cmds.items():  # warm-up (page cache)
            run_once(helper, argv)
        for _ in range(args.runs):
            for name, argv in cmds.items():
                first, exit_ms, rss, _ = run_once(helper, argv)
                results[name]["first"].append(first)
                results[name]["exit"].append(exit_ms)
                results[name]["rss"].append(rss)

    print(f"runs per VMM: {args.runs}, guest memory {args.memory_mib} MiB, host kvm: "
          f"{'PVM' if os.path.exists('/sys/module/kvm_pvm') else 'hardware'}")
    print(f"{'metric':<22}{'VMM':<14}{'min':>10}{'median':>10}{'max':>10}")
    labels = {"first": "first byte (ms)", "exit": "exit (ms)", "rss": "peak RSS (MiB)"}
    for key, label in labels.items():
        for name in cmds:
            lo, med, hi = summary(results[name][key])
            print(f"{label:<22}{name:<14}{lo:>10.2f}{med:>10.2f}{hi:>10.2f}")
    print("ratios qemu-microvm / ampoule-vmm (medians):")
    for key, label in labels.items():
        a = statistics.median(results["ampoule-vmm"][key])
        q = statistics.median(results["qemu-microvm"][key])
        print(f"  {label:<20} {q / a:6.2f}x")
    a = statistics.median(results["ampoule-vmm"]["exit"])
    f = statistics.median(results["kvm-floor"]["exit"])
    print(f"ampoule-vmm exit above the host's KVM create+teardown floor (medians): {a - f:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
