#!/usr/bin/env python3
"""Container start latency: `ampoule run` versus `runc run` on the same busybox
bundle with `true` as the process, interleaved, min/median/max over N runs,
their ratio, and `ampoule run` minus the sandbox's own boot-to-agent time
(from `ampoule check --boot --json` in the same run): our container overhead.
Then exec latency: `exec ID true` into a running container (`sleep`),
ampoule versus runc, N runs each.

usage: benches/container_run.py [--runs 20] [--ampoule BIN] [--config FILE]
Run as root, by hand (not a test).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def make_bundle(tmp, ampoule):
    b = os.path.join(tmp, "bundle")
    os.makedirs(b)
    subprocess.run(["bash", os.path.join(REPO, "guest-image/busybox-rootfs.sh"), os.path.join(b, "rootfs")],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([ampoule, "spec", "--bundle", b], check=True)
    with open(os.path.join(b, "config.json")) as f:
        c = json.load(f)
    c["process"]["terminal"] = False
    c["process"]["args"] = ["true"]
    with open(os.path.join(b, "config.json"), "w") as f:
        json.dump(c, f)
    return b


def timed(argv, **kw):
    t0 = time.monotonic()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, **kw)
    ms = (time.monotonic() - t0) * 1000
    if p.returncode != 0:
        print(f"{argv[0]} failed ({p.returncode}): {p.stderr.decode(errors='replace')[-500:]}", file=sys.stderr)
        return None
    return ms


def set_args(bundle, args):
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        c = json.load(f)
    c["process"]["args"] = args
    with open(path, "w") as f:
        json.dump(c, f)


def quiet(argv):
    """Runs a command whose children may keep running (detached
    containers): no pipes for them to hold open."""
    return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def exec_latency(runtime, prefix, cid, runs):
    """`exec ID true` into a running detached container `cid`, `runs` times."""
    return [timed([runtime, *prefix, "exec", cid, "true"]) for _ in range(runs)]


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
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ampbench")
    try:
        bundle = make_bundle(tmp, a.ampoule)
        cfg = ["--config", a.config] if a.config else []
        amp_root = os.path.join(tmp, "amp-root")
        runc_root = os.path.join(tmp, "runc-root")
        runc = shutil.which("runc")
        amp, rc, boot = [], [], []
        # Warm the rootfs image cache once (built once per content).
        timed([a.ampoule, *cfg, "--root", amp_root, "run", "--bundle", bundle, "warm"])
        for i in range(a.runs):
            amp.append(timed([a.ampoule, *cfg, "--root", amp_root, "run", "--bundle", bundle, f"a{i}"]))
            if runc:
                rc.append(timed([runc, "--root", runc_root, "run", "--bundle", bundle, f"r{i}"]))
            out = subprocess.run([a.ampoule, *cfg, "check", "--boot", "--json"], capture_output=True, text=True)
            try:
                boot.append(json.loads(out.stdout).get("boot_ms"))
            except json.JSONDecodeError:
                boot.append(None)
            print(f"run {i + 1}/{a.runs}: ampoule {amp[-1]} ms, runc {rc[-1] if rc else None} ms, "
                  f"sandbox boot {boot[-1]} ms", file=sys.stderr)
        print(f"\n{a.runs} runs, busybox bundle, process `true`, ms")
        print(f"ampoule run        {stats(amp)}")
        print(f"runc run           {stats(rc)}")
        print(f"sandbox boot       {stats(boot)}")
        am = [x for x in amp if x is not None]
        rm = [x for x in rc if x is not None]
        bm = [x for x in boot if x is not None]
        if am and rm:
            print(f"ratio ampoule/runc (medians)  {statistics.median(am) / statistics.median(rm):.1f}x")
        if am and bm:
            print(f"container overhead: median(ampoule run) - median(sandbox boot) = "
                  f"{statistics.median(am) - statistics.median(bm):.1f} ms")

        set_args(bundle, ["sleep", "1000"])
        amp_prefix = [*cfg, "--root", amp_root]
        ae, re_ = [], []
        if quiet([a.ampoule, *amp_prefix, "run", "--detach", "--bundle", bundle, "ex-a"]):
            ae = exec_latency(a.ampoule, amp_prefix, "ex-a", a.runs)
            quiet([a.ampoule, *amp_prefix, "delete", "--force", "ex-a"])
        else:
            print("ampoule run --detach failed: no exec figures", file=sys.stderr)
        if runc and quiet([runc, "--root", runc_root, "run", "--detach", "--bundle", bundle, "ex-r"]):
            re_ = exec_latency(runc, ["--root", runc_root], "ex-r", a.runs)
            quiet([runc, "--root", runc_root, "delete", "--force", "ex-r"])
        print(f"ampoule exec true  {stats(ae)}")
        print(f"runc exec true     {stats(re_)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
