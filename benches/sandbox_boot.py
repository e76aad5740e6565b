#!/usr/bin/env python3
"""Sandbox boot latency: `Sandbox::start` to the agent's first Check answer
(as `ampoule check --boot --json` measures it, `boot_ms`), per backend
available here, beside QEMU booting the same vmlinux with a busybox
initramfs to /init in the same run (interleaved). The difference is our
own overhead (vhost-device-vsock, the agent's start, readiness, ttrpc).

usage: benches/sandbox_boot.py [--runs 20] [--ampoule BIN] [--config FILE]
                               [--backends auto,qemu,ampoule]
Run as root, by hand (not a test).
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
KERNEL = "/usr/local/share/ampoule/vmlinux"

# The same machine settings as runtime/src/hypervisor/qemu.rs.
MICROVM = "microvm,acpi=off,memory-backend=mem,x-option-roms=off,isa-serial=on,rtc=on"


def busybox_initrd(tmp):
    root = os.path.join(tmp, "bbroot")
    os.makedirs(os.path.join(root, "bin"))
    os.makedirs(os.path.join(root, "proc"))
    os.makedirs(os.path.join(root, "dev"))
    shutil.copy("/bin/busybox", os.path.join(root, "bin/busybox"))
    with open(os.path.join(root, "init"), "w") as f:
        f.write("#!/bin/busybox sh\n"
                "/bin/busybox mount -t proc proc /proc\n"
                "read up idle < /proc/uptime\n"
                "echo BUSYBOX_INIT uptime=$up\n"
                "/bin/busybox reboot -f\n")
    os.chmod(os.path.join(root, "init"), 0o755)
    out = os.path.join(tmp, "busybox-initrd.img")
    subprocess.run(f"cd {root} && find . | cpio -o -H newc --quiet > {out}", shell=True, check=True)
    return out


def host_mhz():
    """The host CPU clock from /proc/cpuinfo (close enough to its TSC rate to
    let the baseline skip calibration as our sandboxes do)."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1])
    return None


def tcg_params():
    """The kernel parameters runtime/src/hypervisor/tcg_tuning.rs gives a
    one-vCPU TCG guest, so the baseline boots the same way ours does."""
    mhz = host_mhz()
    tsc = [f"tsc_early_khz={int(mhz * 1000)}", "tsc=reliable"] if mhz else []
    return " ".join(tsc + ["no_timer_check", "noreplace-smp", "noapictimer"])


def raw_qemu_boot(kernel, initrd, accel, mem=256):
    """QEMU start to the busybox /init marker on the serial console."""
    extra = " " + tcg_params() if accel != "kvm" else ""
    accel_args = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
    argv = ["qemu-system-x86_64", "-M", MICROVM,
            "-object", f"memory-backend-memfd,id=mem,size={mem}M,share=on", "-m", f"{mem}M",
            "-smp", "1", *accel_args, "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-kernel", kernel, "-initrd", initrd,
            "-append", "console=ttyS0 quiet panic=-1 reboot=t" + extra, "-serial", "stdio"]
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    ms, uptime = None, None
    for line in p.stdout:
        m = re.search(rb"BUSYBOX_INIT uptime=([0-9.]+)", line)
        if m:
            ms = (time.monotonic() - t0) * 1000
            uptime = float(m.group(1)) * 1000
            break
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    return ms, uptime


def ampoule_boot(ampoule, config, backend, tmp):
    cfg = os.path.join(tmp, f"config-{backend}.toml")
    base = open(config).read() if config else ""
    base = "\n".join(l for l in base.splitlines() if not l.strip().startswith(("hypervisor", "run_dir", "log_dir")))
    with open(cfg, "w") as f:
        f.write(base + f'\nhypervisor = "{backend}"\nrun_dir = "{tmp}/run"\nlog_dir = "{tmp}/log"\n')
    out = subprocess.run([ampoule, "--config", cfg, "check", "--boot", "--json"],
                         capture_output=True, text=True)
    try:
        v = json.loads(out.stdout)
    except json.JSONDecodeError:
        return None, None, out.stderr.strip()
    if not v.get("ok"):
        return None, None, v.get("error") or out.stderr.strip()
    return v.get("boot_ms"), v.get("guest_uptime_ms"), v


def stats(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    return f"min {min(xs):7.1f}  median {statistics.median(xs):7.1f}  max {max(xs):7.1f}  (n={len(xs)})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--ampoule", default=shutil.which("ampoule") or os.path.join(REPO, "target/debug/ampoule"))
    ap.add_argument("--config", default=os.environ.get("AMPOULE_CONFIG"))
    ap.add_argument("--backends", default="auto")
    ap.add_argument("--kernel", default=KERNEL)
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="ampbench")
    try:
        initrd = busybox_initrd(tmp)
        results = {}
        choice = None
        for b in a.backends.split(","):
            _, _, info = ampoule_boot(a.ampoule, a.config, b, tmp)
            if not isinstance(info, dict):
                print(f"backend {b}: not available: {info}", file=sys.stderr)
                continue
            results[b] = {"boot": [], "uptime": [], "launched": [], "ready": [], "connected": []}
            choice = choice or info
            print(f"backend {b}: {info.get('backend')} ({info.get('accel')}): {info.get('reason')}")
        if not results:
            sys.exit("no backend available")
        accel = choice.get("accel", "tcg")
        raw, raw_up = [], []
        for i in range(a.runs):
            ms, up = raw_qemu_boot(a.kernel, initrd, accel)
            raw.append(ms)
            raw_up.append(up)
            for b, r in results.items():
                boot, up2, v = ampoule_boot(a.ampoule, a.config, b, tmp)
                r["boot"].append(boot)
                r["uptime"].append(up2)
                for k in ("launched", "ready", "connected"):
                    r[k].append(v.get(f"{k}_ms") if isinstance(v, dict) else None)
            print(f"run {i + 1}/{a.runs}: raw {ms:.0f} ms; " +
                  "; ".join(f"{b} {r['boot'][-1]} ms" for b, r in results.items()), file=sys.stderr)
        print(f"\n{a.runs} runs, kernel {a.kernel}, accel {accel}, ms")
        print(f"raw QEMU microvm start -> busybox /init  {stats(raw)}")
        print(f"  guest uptime at /init                  {stats(raw_up)}")
        for b, r in results.items():
            print(f"{b:8} Sandbox::start -> first Check     {stats(r['boot'])}")
            print(f"  guest uptime when the agent answered   {stats(r['uptime'])}")
            print(f"  start -> VM processes spawned          {stats(r['launched'])}")
            print(f"  start -> agent readiness               {stats(r['ready'])}")
            print(f"  start -> ttrpc connected               {stats(r['connected'])}")
            host = [b_ - u for b_, u in zip(r["boot"], r["uptime"]) if b_ is not None and u is not None]
            rawh = [x - u for x, u in zip(raw, raw_up) if x is not None and u is not None]
            if host and rawh:
                print(f"  host-side part (boot - guest uptime)   {stats(host)}")
                print(f"  raw: QEMU start - guest uptime         {stats(rawh)}")
            ok = [x for x in r["boot"] if x is not None]
            rr = [x for x in raw if x is not None]
            if ok and rr:
                print(f"  overhead above raw boot (median)       {statistics.median(ok) - statistics.median(rr):7.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
