#!/usr/bin/env python3
"""How container files reach the guest: virtio-fs (default) versus erofs images
on virtio-blk (`rootfs_sharing = "erofs"`), beside runc, all in one run.

1. Container start (`run` of `true`) on the busybox bundle and on a large
   bundle built here (busybox + ~3,000 random files of mixed sizes in nested
   dirs, ~50 MB, + a 100 MB /bigfile; random so erofs cannot compress them).
   erofs is timed cold (empty image cache) and warm (image cached).
2. Inside a container of the large bundle: `find / -xdev | wc -l`,
   `tar cf - /usr | wc -c`, then `dd` of /bigfile twice (the second one from
   the guest's page cache), timed in the container with the kernel's
   monotonic clock (/proc/timer_list, unmasked in this bench's spec). Each VM
   run is a fresh guest (cold guest caches, warm host page cache).
3. N pods started at once (`run --detach` of `sleep`), per mode: wall time,
   start rate, that all run; host memory per pod as PSS of every host process
   of the sandbox (the `ampoule` monitor and its children: QEMU,
   vhost-device-vsock, virtiofsd), per process kind, beside runc's container
   process; QEMU's PSS split into guest RAM (memfd), TCG translation buffer
   (anonymous rwx mapping), file mappings and the rest.
4. QEMU's TCG translation buffer size: a QEMU wrapper (config `qemu = ...`)
   rewrites the configured `tb-size=N` to each value of --tb-sizes; per value, start
   latency of busybox `true`, then one pod of the large bundle: QEMU's memory
   after boot and after the step 2 workload (run with `exec`), and the
   workload's time. No runtime code is changed.

usage: benches/rootfs_sharing.py [--runs 5] [--pods 10] [--tb-sizes 128,32,16]
                                 [--ampoule BIN] [--max-load 1.0] [--wait-load 300]
                                 [--skip PART,...]   (start,io,pods,tb)
Run as root, by hand (not a test). Private --root, run/log/cache dirs under
one temp dir; every container is deleted (--force) whatever fails.
"""
import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

MODES = ("virtio-fs", "erofs")
VFS_ALWAYS = "virtio-fs cache=always"

# In-container workload: a fork-free monotonic clock read (line 3 of
# /proc/timer_list is "now at N nsecs"), then find, tar, dd twice.
WORKLOAD = r"""
now() { { read _; read _; read _ _ T _; } </proc/timer_list; }
now; a=$T; now; b=$T
n=$(find / -xdev | wc -l); now; c=$T
s=$(tar cf - /usr 2>/dev/null | wc -c); now; d=$T
dd if=/bigfile of=/dev/null bs=1M 2>/dev/null; now; e=$T
dd if=/bigfile of=/dev/null bs=1M 2>/dev/null; now; f=$T
echo "BENCH $a $b $c $d $e $f $n $s"
"""
BIGFILE_MB = 100


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def load1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def run(argv, timeout=300, **kw):
    """(returncode, stdout, stderr, ms)."""
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        return -1, "", f"timeout after {timeout}s", (time.monotonic() - t0) * 1000
    return p.returncode, p.stdout, p.stderr, (time.monotonic() - t0) * 1000


def quiet(argv, timeout=120):
    """A command whose children keep running (detached containers): no pipes
    for them to hold open."""
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def stats(xs, unit="", fmt="{:8.1f}"):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    f = lambda v: fmt.format(v)
    return f"{f(min(xs))} {f(statistics.median(xs))} {f(max(xs))}{unit}  (n={len(xs)})"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------- bundles

def make_busybox(path, ampoule):
    os.makedirs(path)
    subprocess.run(["bash", os.path.join(REPO, "guest-image/busybox-rootfs.sh"), os.path.join(path, "rootfs")],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([ampoule, "spec", "--bundle", path], check=True)
    with open(os.path.join(path, "config.json")) as f:
        c = json.load(f)
    c["process"]["terminal"] = False
    c["process"]["args"] = ["true"]
    # The workload's clock (a read-only kernel file; nothing else unmasked).
    c["linux"]["maskedPaths"] = [p for p in c["linux"].get("maskedPaths", []) if p != "/proc/timer_list"]
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(c, f)


def add_large_files(rootfs, files=3000, small_total_mb=50, seed=1):
    """~`files` files of log-uniform sizes (512 B .. 256 KiB, scaled to
    `small_total_mb`) under /usr/share/bench/dNN/dNN/, plus /bigfile."""
    rnd = random.Random(seed)
    sizes = [int(2 ** rnd.uniform(9, 18)) for _ in range(files)]
    scale = small_total_mb * 2 ** 20 / sum(sizes)
    sizes = [max(1, int(s * scale)) for s in sizes]
    base = os.path.join(rootfs, "usr/share/bench")
    with open("/dev/urandom", "rb") as rnd_src:
        for i, size in enumerate(sizes):
            d = os.path.join(base, f"d{i % 10:02d}", f"d{(i // 10) % 10:02d}")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"f{i:04d}"), "wb") as f:
                f.write(rnd_src.read(size))
        with open(os.path.join(rootfs, "bigfile"), "wb") as f:
            for _ in range(BIGFILE_MB):
                f.write(rnd_src.read(2 ** 20))
    total = sum(sizes) + BIGFILE_MB * 2 ** 20
    return files + 1, total


def tree_size(rootfs):
    n, b = 0, 0
    for dp, dns, fns in os.walk(rootfs):
        for fn in fns:
            p = os.path.join(dp, fn)
            if not os.path.islink(p):
                n += 1
                b += os.path.getsize(p)
    return n, b


def set_args(bundle, args):
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        c = json.load(f)
    c["process"]["args"] = args
    with open(path, "w") as f:
        json.dump(c, f)


# ---------------------------------------------------------------- runtimes

class Env:
    def __init__(self, tmp, ampoule):
        self.tmp = tmp
        self.ampoule = ampoule
        self.runc = shutil.which("runc")
        self.amp_root = os.path.join(tmp, "amp-root")
        self.runc_root = os.path.join(tmp, "runc-root")
        self.cache = os.path.join(tmp, "cache")
        self.created = []  # (kind, config or None, id)
        self.configs = {m: self.write_config(m, m) for m in MODES}
        self.n = 0

    def write_config(self, name, sharing, qemu=None, virtiofsd=None):
        path = os.path.join(self.tmp, f"config-{name}.toml")
        text = (f'rootfs_sharing = "{sharing}"\n'
                f'run_dir = "{os.path.join(self.tmp, "run")}"\n'
                f'log_dir = "{os.path.join(self.tmp, "log")}"\n'
                f'cache_dir = "{self.cache}"\n')
        if qemu:
            text += f'qemu = "{qemu}"\n'
        if virtiofsd:
            text += f'virtiofsd = "{virtiofsd}"\n'
        with open(path, "w") as f:
            f.write(text)
        return path

    def new_id(self, prefix):
        self.n += 1
        return f"{prefix}{self.n}"

    def amp(self, cfg, *args):
        return [self.ampoule, "--config", cfg, "--root", self.amp_root, *args]

    def runc_cmd(self, *args):
        return [self.runc, "--root", self.runc_root, *args]

    def run_amp(self, cfg, bundle, prefix="a", timeout=300):
        cid = self.new_id(prefix)
        self.created.append(("amp", cfg, cid))
        rc, out, err, ms = run(self.amp(cfg, "run", "--bundle", bundle, cid), timeout=timeout)
        if rc != 0:
            log(f"ampoule run {cid} failed ({rc}): {err.strip()[-400:]}")
            return None, out
        return ms, out

    def run_runc(self, bundle, prefix="r"):
        if not self.runc:
            return None, ""
        cid = self.new_id(prefix)
        self.created.append(("runc", None, cid))
        rc, out, err, ms = run(self.runc_cmd("run", "--bundle", bundle, cid))
        if rc != 0:
            log(f"runc run {cid} failed ({rc}): {err.strip()[-400:]}")
            return None, out
        return ms, out

    def clear_cache(self):
        shutil.rmtree(self.cache, ignore_errors=True)

    def cleanup(self):
        for kind, cfg, cid in self.created:
            if kind == "amp":
                quiet(self.amp(cfg, "delete", "--force", cid))
            elif self.runc:
                quiet(self.runc_cmd("delete", "--force", cid))
        self.created.clear()


# ---------------------------------------------------------------- memory

def children_map():
    kids = {}
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat") as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st[st.rfind(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(e))
    return kids


def tree(pid, kids):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def kind_of(pid):
    c = comm(pid)
    for k in ("qemu", "vhost-device", "virtiofsd", "ampoule"):
        if c.startswith(k):
            return {"vhost-device": "vhost-vsock"}.get(k, k)
    return c


def pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def qemu_breakdown(pid):
    """{category: [rss_kb, pss_kb, size_kb]} from /proc/PID/smaps."""
    cats = {k: [0, 0, 0] for k in ("guest RAM", "TCG buffer", "files", "other anon")}
    files = {}
    cur = name = None
    try:
        f = open(f"/proc/{pid}/smaps")
    except OSError:
        return None
    with f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                parts = line.split(None, 5)
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                name = parts[5].strip() if len(parts) > 5 else ""
                if "memfd:memory-backend" in name:
                    cur = "guest RAM"
                elif name.startswith("/"):
                    cur = "files"
                elif "x" in parts[1] and not name:
                    cur = "TCG buffer"
                else:
                    cur = "other anon"
                cats[cur][2] += (hi - lo) >> 10
            elif line.startswith("Rss:"):
                cats[cur][0] += int(line.split()[1])
            elif line.startswith("Pss:"):
                cats[cur][1] += int(line.split()[1])
                if cur == "files":
                    files[name] = files.get(name, 0) + int(line.split()[1])
    cats["_files"] = files
    return cats


def cgroup_kb(pid):
    """The memory cgroup's usage of `pid` (v1 or v2), kB."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, ctrl, path = line.split(":", 2)
        if path == "/":
            continue
        if "memory" in ctrl.split(","):
            f = os.path.join("/sys/fs/cgroup/memory" + path, "memory.usage_in_bytes")
        elif ctrl == "":
            f = os.path.join("/sys/fs/cgroup" + path, "memory.current")
        else:
            continue
        try:
            with open(f) as fh:
                return int(fh.read()) // 1024
        except OSError:
            pass
    return None


def state_pid(cmd):
    rc, out, _, _ = run(cmd)
    if rc != 0:
        return None, None
    try:
        st = json.loads(out)
        return st.get("pid"), st.get("status")
    except json.JSONDecodeError:
        return None, None


def pod_memory(env, cfg, cid, kids):
    """{kind: pss_kb} over the monitor's process tree, QEMU's pid, cgroup kB."""
    pid, _ = state_pid(env.amp(cfg, "state", cid))
    if not pid:
        return None, None, None
    per, qemu = {}, None
    for p in tree(pid, kids):
        k = kind_of(p)
        per[k] = per.get(k, 0) + (pss_kb(p) or 0)
        if k == "qemu":
            qemu = p
    return per, qemu, cgroup_kb(qemu) if qemu else None


# ---------------------------------------------------------------- parts

def part_start(env, a, bundles, res):
    for name, bundle in bundles:
        set_args(bundle, ["true"])
        r = {k: [] for k in ("erofs cold", "erofs warm", "virtio-fs", "runc")}
        for i in range(a.runs):
            env.clear_cache()
            r["erofs cold"].append(env.run_amp(env.configs["erofs"], bundle)[0])
            r["erofs warm"].append(env.run_amp(env.configs["erofs"], bundle)[0])
            r["virtio-fs"].append(env.run_amp(env.configs["virtio-fs"], bundle)[0])
            r["runc"].append(env.run_runc(bundle)[0])
            log(f"start {name} {i + 1}/{a.runs}: " + ", ".join(f"{k} {v[-1] and round(v[-1])}" for k, v in r.items()))
        res[name] = r


def parse_workload(out):
    m = re.search(r"BENCH (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", out or "")
    if not m:
        return None
    a, b, c, d, e, f, n, s = (int(x) for x in m.groups())
    clk = b - a  # one clock read
    ms = lambda x, y: max(0.0, (y - x - clk) / 1e6)
    return {"find": ms(b, c), "tar": ms(c, d), "dd": ms(d, e), "dd again": ms(e, f), "entries": n,
            "tar bytes": s}


def write_virtiofsd_wrapper(path, cache):
    real = shutil.which("virtiofsd") or "/usr/libexec/virtiofsd"
    with open(path, "w") as f:
        f.write("#!/bin/sh\n# rootfs_sharing.py: virtiofsd with another --cache\n"
                'for a in "$@"; do shift; case "$a" in --cache=*) '
                f'a=--cache={cache};; esac; set -- "$@" "$a"; done\n'
                f'exec {real} "$@"\n')
    os.chmod(path, 0o755)


def part_io(env, a, bundle, res, skip):
    set_args(bundle, ["sh", "-c", WORKLOAD])
    modes = list(MODES)
    if "always" not in skip:
        w = os.path.join(env.tmp, "virtiofsd-always.sh")
        write_virtiofsd_wrapper(w, "always")
        env.configs[VFS_ALWAYS] = env.write_config("vfs-always", "virtio-fs", virtiofsd=w)
        modes.insert(1, VFS_ALWAYS)
    r = {m: [] for m in (*modes, "runc")}
    for i in range(a.runs):
        for m in modes:
            _, out = env.run_amp(env.configs[m], bundle, timeout=600)
            r[m].append(parse_workload(out))
        _, out = env.run_runc(bundle)
        r["runc"].append(parse_workload(out))
        log(f"io {i + 1}/{a.runs}: " + ", ".join(
            f"{k} {v[-1] and {x: round(y) for x, y in v[-1].items() if x in ('find', 'tar', 'dd')}}" for k, v in r.items()))
    res["io"] = r


def part_pods(env, a, bundle, res):
    set_args(bundle, ["sleep", "100000"])
    out = {}
    for mode in (*MODES, "runc"):
        if mode == "runc" and not env.runc:
            continue
        ids = [env.new_id(f"p{mode[0]}") for _ in range(a.pods)]
        if mode == "runc":
            cmds = [env.runc_cmd("run", "--detach", "--bundle", bundle, c) for c in ids]
            for c in ids:
                env.created.append(("runc", None, c))
        else:
            cfg = env.configs[mode]
            cmds = [env.amp(cfg, "run", "--detach", "--bundle", bundle, c) for c in ids]
            for c in ids:
                env.created.append(("amp", cfg, c))
        t0 = time.monotonic()
        procs = [(subprocess.Popen(c, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL), time.monotonic()) for c in cmds]
        lat, ok = [], 0
        for p, ts in procs:
            try:
                rc = p.wait(timeout=300)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = -1
            lat.append((time.monotonic() - ts) * 1000)
            ok += rc == 0
        wall = time.monotonic() - t0
        time.sleep(2)  # let the guests settle (agent idle) before reading memory
        kids = children_map()
        running, per_pod, qemu_cats, cgroups = 0, [], [], []
        for c in ids:
            if mode == "runc":
                pid, status = state_pid(env.runc_cmd("state", c))
                if status == "running" and pid:
                    running += 1
                    per_pod.append({"container": pss_kb(pid) or 0})
                continue
            _, status = state_pid(env.amp(env.configs[mode], "state", c))
            running += status == "running"
            per, qemu, cg = pod_memory(env, env.configs[mode], c, kids)
            if per:
                per_pod.append(per)
            if qemu:
                qemu_cats.append(qemu_breakdown(qemu))
            if cg:
                cgroups.append(cg)
        out[mode] = {"ok": ok, "running": running, "wall": wall, "lat": lat, "per_pod": per_pod,
                     "qemu": [q for q in qemu_cats if q], "cgroup": cgroups}
        log(f"pods {mode}: {ok}/{a.pods} started, {running} running, {wall:.1f} s")
        for kind, cfg, c in [x for x in env.created if x[2] in ids]:
            if kind == "amp":
                quiet(env.amp(cfg, "delete", "--force", c))
            else:
                quiet(env.runc_cmd("delete", "--force", c))
    res["pods"] = out


def write_qemu_wrapper(path, tb):
    with open(path, "w") as f:
        f.write("#!/bin/sh\n# rootfs_sharing.py: QEMU with another TCG tb-size\n"
                'for a in "$@"; do shift; case "$a" in *tb-size=*) '
                f'a=$(printf %s "$a" | sed "s/tb-size=[0-9]*/tb-size={tb}/");; esac; set -- "$@" "$a"; done\n'
                'exec /usr/bin/qemu-system-x86_64 "$@"\n')
    os.chmod(path, 0o755)


def part_tb(env, a, small, large, res):
    qemu = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
    if os.path.realpath(qemu) != "/usr/bin/qemu-system-x86_64":
        log(f"tb: wrapper execs /usr/bin/qemu-system-x86_64, but qemu is {qemu}")
    cfgs = {}
    for tb in a.tb_sizes:
        w = os.path.join(env.tmp, f"qemu-tb{tb}.sh")
        write_qemu_wrapper(w, tb)
        cfgs[tb] = env.write_config(f"tb{tb}", "virtio-fs", qemu=w)
    starts = {tb: [] for tb in a.tb_sizes}
    set_args(small, ["true"])
    for i in range(a.runs):
        for tb in a.tb_sizes:
            starts[tb].append(env.run_amp(cfgs[tb], small)[0])
        log(f"tb start {i + 1}/{a.runs}: " + ", ".join(f"{tb}: {v[-1] and round(v[-1])}" for tb, v in starts.items()))
    out = {}
    set_args(large, ["sleep", "100000"])
    for tb in a.tb_sizes:
        cid = env.new_id("tb")
        env.created.append(("amp", cfgs[tb], cid))
        r = {"start": starts[tb]}
        if quiet(env.amp(cfgs[tb], "run", "--detach", "--bundle", large, cid)):
            time.sleep(2)
            pid, _ = state_pid(env.amp(cfgs[tb], "state", cid))
            qemu = next((p for p in tree(pid, children_map()) if kind_of(p) == "qemu"), None) if pid else None
            if qemu:
                try:
                    with open(f"/proc/{qemu}/cmdline") as f:
                        r["accel"] = [x for x in f.read().split("\0") if "tb-size" in x]
                except OSError:
                    pass
                r["boot"] = qemu_breakdown(qemu)
                rc, o, err, ms = run(env.amp(cfgs[tb], "exec", cid, "sh", "-c", WORKLOAD), timeout=600)
                r["workload"] = parse_workload(o)
                r["workload_ms"] = ms if rc == 0 else None
                r["after"] = qemu_breakdown(qemu)
        quiet(env.amp(cfgs[tb], "delete", "--force", cid))
        log(f"tb {tb}: {r.get('accel')} workload {r.get('workload_ms')} ms")
        out[tb] = r
    res["tb"] = out


# ---------------------------------------------------------------- report

def mb(kb):
    return f"{kb / 1024:7.1f}"


def report(a, res, info):
    p = print
    p(f"\n== rootfs_sharing: {' '.join(sys.argv)}")
    p(f"load average before: {info['load_before']}  after: {loadavg()}  ({os.cpu_count()} CPUs)")
    p(f"large bundle: {info['large_files']} files, {info['large_bytes'] / 2**20:.0f} MiB "
      f"(+ busybox); mkfs.erofs alone on it: {info.get('mkfs_ms', 0):.0f} ms")
    p("ms: min median max (n)")
    for name in ("busybox", "large"):
        if name not in res:
            continue
        p(f"\n-- container start, `run` of `true`, {name} bundle")
        for k, v in res[name].items():
            p(f"  {k:<12} {stats(v)}")
        r = res[name]
        if med(r["erofs warm"]) and med(r["erofs cold"]) and med(r["virtio-fs"]):
            p(f"  medians: erofs warm - cold {med(r['erofs warm']) - med(r['erofs cold']):+.0f} ms, "
              f"erofs warm - virtio-fs {med(r['erofs warm']) - med(r['virtio-fs']):+.0f} ms")
    if "io" in res:
        p("\n-- in a container of the large bundle (fresh guest each run), ms")
        p(f"  {'':<22} {'find / -xdev':>26} {'tar cf - /usr':>26} {'dd 100MB':>26} {'dd again':>26}")
        for m, runs in res["io"].items():
            ok = [r for r in runs if r]
            if not ok:
                p(f"  {m:<22} n/a")
                continue
            cols = [stats([r[k] for r in ok], fmt="{:6.0f}") for k in ("find", "tar", "dd", "dd again")]
            p(f"  {m:<22} " + " ".join(f"{c:>26}" for c in cols))
            dd = med([r["dd"] for r in ok])
            dd2 = med([r["dd again"] for r in ok])
            p(f"  {'':<22} entries {ok[0]['entries']}, tar {ok[0]['tar bytes'] / 2**20:.0f} MiB; "
              f"dd {BIGFILE_MB / (dd / 1000) if dd else 0:.0f} MB/s, again {BIGFILE_MB / (dd2 / 1000) if dd2 else 0:.0f} MB/s")
    if "pods" in res:
        p(f"\n-- {a.pods} pods started at once (`run --detach` of sleep), busybox bundle")
        for m, r in res["pods"].items():
            p(f"  {m:<10} {r['ok']}/{a.pods} started, {r['running']} running, wall {r['wall']:.1f} s "
              f"({a.pods / r['wall']:.2f} pods/s); per-pod start ms {stats(r['lat'], fmt='{:6.0f}')}")
        p("  host memory per pod, PSS MiB (mean over pods):")
        for m, r in res["pods"].items():
            pods = r["per_pod"]
            if not pods:
                continue
            kinds = sorted({k for d in pods for k in d})
            tot = statistics.mean(sum(d.values()) for d in pods)
            parts = ", ".join(f"{k} {statistics.mean(d.get(k, 0) for d in pods) / 1024:.1f}" for k in kinds)
            cg = f"; memory cgroup {statistics.mean(r['cgroup']) / 1024:.1f}" if r["cgroup"] else ""
            p(f"  {m:<10} total {tot / 1024:6.1f} = {parts}{cg}")
        p("  QEMU's memory per pod after boot, MiB (mean): category  Rss / Pss / mapped")
        for m, r in res["pods"].items():
            if not r["qemu"]:
                continue
            p(f"  {m}:")
            for cat in r["qemu"][0]:
                if cat.startswith("_"):
                    continue
                vals = [statistics.mean(q[cat][i] for q in r["qemu"]) for i in range(3)]
                p(f"    {cat:<12} {mb(vals[0])} / {mb(vals[1])} / {mb(vals[2])}")
            names = {n for q in r["qemu"] for n in q["_files"]}
            top = sorted(((statistics.mean(q["_files"].get(n, 0) for q in r["qemu"]), n) for n in names),
                         reverse=True)[:4]
            p("    largest file Pss: " + ", ".join(f"{os.path.basename(n)} {v / 1024:.1f}" for v, n in top))
    if "tb" in res:
        p("\n-- TCG tb-size (QEMU wrapper), virtio-fs")
        p(f"  {'tb MiB':<7} {'start ms (busybox true)':>32}  {'workload ms':>11}  "
          "QEMU Rss MiB after boot -> after workload: TCG buffer, guest RAM, total Pss")
        for tb, r in res["tb"].items():
            def q(key):
                c = r.get(key)
                if not c:
                    return "n/a"
                return (f"{c['TCG buffer'][0] / 1024:.1f}, {c['guest RAM'][0] / 1024:.1f}, "
                        f"{sum(v[1] for k, v in c.items() if not k.startswith('_')) / 1024:.1f}")
            w = r.get("workload")
            wl = f"{r['workload_ms']:.0f}" if r.get("workload_ms") else "n/a"
            p(f"  {tb:<7} {stats(r['start']):>32}  {wl:>11}  {q('boot')} -> {q('after')}"
              + (f"  (find {w['find']:.0f} tar {w['tar']:.0f} dd {w['dd']:.0f})" if w else ""))


# ---------------------------------------------------------------- main

def leftovers(tmp):
    out = []
    for e in os.listdir("/proc"):
        if e.isdigit() and int(e) != os.getpid():
            try:
                with open(f"/proc/{e}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if tmp in cmd:
                out.append((int(e), cmd[:200]))
    return out


def mounts_under(tmp):
    with open("/proc/self/mounts") as f:
        return [l.split()[1] for l in f if l.split()[1].startswith(tmp)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pods", type=int, default=10)
    ap.add_argument("--tb-sizes", default="128,64,32,16")
    ap.add_argument("--ampoule", default=os.path.join(REPO, "target/release/ampoule"))
    ap.add_argument("--max-load", type=float, default=1.0, help="wait for a 1-min load below this")
    ap.add_argument("--wait-load", type=int, default=300, help="at most this many seconds")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: start,io,always,pods,tb")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (bundles) for inspection")
    a = ap.parse_args()
    a.tb_sizes = [int(x) for x in a.tb_sizes.split(",") if x]
    skip = set(a.skip.split(","))
    if os.geteuid() != 0:
        sys.exit("run as root")
    if not os.access(a.ampoule, os.X_OK):
        sys.exit(f"{a.ampoule} missing: cargo build --release -p ampoule-runtime")

    deadline = time.monotonic() + a.wait_load
    while load1() >= a.max_load and time.monotonic() < deadline:
        log(f"load {loadavg()}: waiting for < {a.max_load}")
        time.sleep(15)
    info = {"load_before": loadavg()}

    tmp = tempfile.mkdtemp(prefix="ampbench-rootfs")
    env = Env(tmp, a.ampoule)
    res = {}
    try:
        small = os.path.join(tmp, "busybox")
        large = os.path.join(tmp, "large")
        make_busybox(small, a.ampoule)
        make_busybox(large, a.ampoule)
        add_large_files(os.path.join(large, "rootfs"))
        info["large_files"], info["large_bytes"] = tree_size(os.path.join(large, "rootfs"))
        img = os.path.join(tmp, "mkfs-probe.erofs")
        _, _, _, info["mkfs_ms"] = run(["mkfs.erofs", "--quiet", "-T0", img, os.path.join(large, "rootfs")])
        os.unlink(img) if os.path.exists(img) else None
        log(f"bundles ready in {tmp}; load {loadavg()}")
        if "start" not in skip:
            part_start(env, a, [("busybox", small), ("large", large)], res)
        if "io" not in skip:
            part_io(env, a, large, res, skip)
        if "pods" not in skip:
            part_pods(env, a, small, res)
        if "tb" not in skip:
            part_tb(env, a, small, large, res)
    finally:
        env.cleanup()
        left = leftovers(tmp)
        for pid, cmd in left:
            log(f"leftover process {pid}: {cmd}")
        m = mounts_under(tmp)
        if m:
            log(f"leftover mounts (temp dir kept): {m}")
        elif not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    report(a, res, info)
    if left:
        sys.exit(1)


if __name__ == "__main__":
    main()
