#!/usr/bin/env python3
"""Pod networking: Ampoule versus runc on the same busybox bundle joined to
the same pod network namespace (`linux.namespaces` network path
/run/netns/POD), measured from an "outside" namespace at the other end of the
pod's veth, as a CNI bridge peer would be:

  http   N small GETs (busybox httpd, 100-byte file on a tmpfs), sequential,
         a new TCP connection per request (httpd closes each one);
         min/median/p99/max ms
  echo   N round trips of 64 bytes on one TCP connection (busybox
         `nc -ll -e cat`, TCP_NODELAY); min/median/p99/max ms
  bulk   MB MiB outside -> container (`nc -ll -e` a `dd of=/dev/null bs=1M`)
         and container -> outside (`dd if=/dev/zero bs=1M` through `nc -e`),
         from connect to the last byte acknowledged by the receiver's EOF; MiB/s

With Ampoule the pod's eth0 is redirected by tc to a tap that QEMU (or
ampoule-vmm) serves to the guest; with runc the container uses the
namespace's eth0 directly. For Ampoule the CPU seconds of the VM process's
threads during each test are shown too (the busiest thread is the vCPU: TCG
guest code; the rest is QEMU's main loop, where the tap is read and written).

Everything lives in two namespaces the bench adds (10.77.5.0/24) and deletes,
a temporary directory with a private config (run/log/cache dirs) and --root,
and containers deleted with `delete --force`, also on failure or Ctrl-C.
Nothing in the host's own network namespace is touched.

usage: benches/pod_network.py [--requests 1000] [--echo 1000] [--mb 100]
                              [--ampoule BIN] [--only ampoule|runc]
Run as root, by hand (not a test).
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
POD_IP, OUT_IP = "10.77.5.2", "10.77.5.1"
HTTP_PORT, ECHO_PORT, SINK_PORT, SOURCE_PORT = 8080, 7000, 7001, 7002

# Runs inside the outside namespace: `python3 -c CLIENT MODE ARGS...`, one
# JSON object on stdout.
CLIENT = r'''
import http.client, json, socket, sys, time
mode, ip = sys.argv[1], sys.argv[2]
def get(timeout=30):
    c = http.client.HTTPConnection(ip, %(http)d, timeout=timeout)
    try:
        c.request("GET", "/index.html")
        r = c.getresponse()
        body = r.read()
        if r.status != 200 or not body.startswith(b"pod-bench"):
            raise RuntimeError("bad answer %%d %%r" %% (r.status, body[:40]))
    finally:
        c.close()
if mode == "wait":
    end = time.monotonic() + float(sys.argv[3])
    while True:
        try:
            get(timeout=5); print(json.dumps({"ok": True})); break
        except Exception as e:
            if time.monotonic() > end:
                print(json.dumps({"ok": False, "error": str(e)})); break
            time.sleep(0.5)
elif mode == "http":
    n = int(sys.argv[3]); ms = []
    for _ in range(10):
        get()
    for _ in range(n):
        t = time.perf_counter(); get(); ms.append((time.perf_counter() - t) * 1000)
    print(json.dumps({"ms": ms}))
elif mode == "echo":
    n = int(sys.argv[3]); ms = []; msg = b"e" * 64
    s = socket.create_connection((ip, %(echo)d), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    def rt():
        s.sendall(msg); got = 0
        while got < len(msg):
            b = s.recv(len(msg) - got)
            if not b: raise RuntimeError("echo closed")
            got += len(b)
    for _ in range(10):
        rt()
    for _ in range(n):
        t = time.perf_counter(); rt(); ms.append((time.perf_counter() - t) * 1000)
    s.close()
    print(json.dumps({"ms": ms}))
elif mode == "sink":
    mib = int(sys.argv[3]); chunk = b"\0" * (1 << 20)
    t = time.perf_counter()
    s = socket.create_connection((ip, %(sink)d), timeout=120)
    for _ in range(mib):
        s.sendall(chunk)
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    secs = time.perf_counter() - t; s.close()
    print(json.dumps({"bytes": mib << 20, "secs": secs}))
elif mode == "source":
    mib = int(sys.argv[3]); n = 0
    t = time.perf_counter()
    s = socket.create_connection((ip, %(source)d), timeout=120)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    while True:
        b = s.recv(1 << 20)
        if not b: break
        n += len(b)
    secs = time.perf_counter() - t; s.close()
    if n != mib << 20:
        raise SystemExit("source: got %%d bytes, wanted %%d" %% (n, mib << 20))
    print(json.dumps({"bytes": n, "secs": secs}))
''' % {"http": HTTP_PORT, "echo": ECHO_PORT, "sink": SINK_PORT, "source": SOURCE_PORT}


def sh(argv, check=True):
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {p.returncode}: {p.stderr.strip()[-400:]}")
    return p


def quiet(argv):
    """A command whose children may outlive it (detached containers): no pipes."""
    return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode


def client(out_ns, mode, *args, timeout=600):
    p = subprocess.run(["ip", "netns", "exec", out_ns, sys.executable, "-c", CLIENT, mode, POD_IP,
                        *map(str, args)], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"client {mode}: {p.stderr.strip()[-600:]}")
    return json.loads(p.stdout)


def make_netns(pod, out):
    sh(["ip", "netns", "add", pod])
    sh(["ip", "netns", "add", out])
    for ns in (pod, out):
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
    sh(["ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "veth-out", "netns", out])
    sh(["ip", "-n", pod, "addr", "add", f"{POD_IP}/24", "dev", "eth0"])
    sh(["ip", "-n", pod, "link", "set", "eth0", "up"])
    sh(["ip", "-n", pod, "route", "add", "default", "via", OUT_IP])
    sh(["ip", "-n", out, "addr", "add", f"{OUT_IP}/24", "dev", "veth-out"])
    sh(["ip", "-n", out, "link", "set", "veth-out", "up"])


def make_bundle(tmp, ampoule, pod):
    b = os.path.join(tmp, "bundle")
    os.makedirs(b)
    rootfs = os.path.join(b, "rootfs")
    subprocess.run(["bash", os.path.join(REPO, "guest-image/busybox-rootfs.sh"), rootfs],
                   check=True, stdout=subprocess.DEVNULL)
    scripts = {
        "sink.sh": "#!/bin/sh\nexec dd of=/dev/null bs=1M 2>/dev/null\n",
        "source.sh": "#!/bin/sh\nexec dd if=/dev/zero bs=1M count=$(cat /bench-mib) 2>/dev/null\n",
        "serve.sh": ("#!/bin/sh\n"
                     "printf 'pod-bench %090d\\n' 0 > /www/index.html\n"
                     f"nc -ll -p {ECHO_PORT} -e cat &\n"
                     f"nc -ll -p {SINK_PORT} -e /sink.sh &\n"
                     f"nc -ll -p {SOURCE_PORT} -e /source.sh &\n"
                     f"httpd -f -p {HTTP_PORT} -h /www &\n"
                     "wait\n"),
    }
    for name, text in scripts.items():
        with open(os.path.join(rootfs, name), "w") as f:
            f.write(text)
        os.chmod(os.path.join(rootfs, name), 0o755)
    subprocess.run([ampoule, "spec", "--bundle", b], check=True)
    path = os.path.join(b, "config.json")
    with open(path) as f:
        c = json.load(f)
    c["process"]["terminal"] = False
    c["process"]["args"] = ["/serve.sh"]
    c["root"]["readonly"] = False
    c["mounts"].append({"destination": "/www", "type": "tmpfs", "source": "tmpfs",
                        "options": ["nosuid", "nodev", "mode=755", "size=1m"]})
    c["linux"]["namespaces"] = [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"},
                                {"type": "uts"}, {"type": "network", "path": f"/run/netns/{pod}"}]
    with open(path, "w") as f:
        json.dump(c, f)
    return b


def vm_pid(tmp):
    """The VM process (QEMU or ampoule-vmm) of the sandbox under `tmp`."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        exe = os.path.basename(cmd[0].decode(errors="replace"))
        if exe.startswith(("qemu-system", "ampoule-vmm")) and tmp.encode() in b" ".join(cmd):
            return int(d)
    return None


def thread_cpu(pid):
    """CPU seconds per thread id of `pid`."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    if pid is None:
        return out
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[t] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return out


def cpu_split(before, after):
    """(busiest thread's CPU s, all other threads' CPU s) between two samples."""
    d = sorted((after.get(t, 0) - before.get(t, 0) for t in after), reverse=True)
    return (d[0], sum(d[1:])) if d else (None, None)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def measure(name, out_ns, a, pid, tmp):
    """Runs the four tests against the container; returns {test: result}."""
    res = {}
    for test, args in (("http", (a.requests,)), ("echo", (a.echo,)),
                       ("sink", (a.mb,)), ("source", (a.mb,))):
        b = thread_cpu(pid)
        t = time.monotonic()
        r = client(out_ns, test, *args)
        r["wall"] = time.monotonic() - t
        r["cpu"] = cpu_split(b, thread_cpu(pid)) if pid else (None, None)
        r["load"] = loadavg()
        res[test] = r
        print(f"{name} {test}: {r['wall']:.1f} s, load {r['load']}", file=sys.stderr)
    return res


def lat(ms):
    xs = sorted(ms)
    p99 = xs[min(len(xs) - 1, int(round(0.99 * len(xs))) - 1)]
    return f"{xs[0]:7.3f} {statistics.median(xs):7.3f} {p99:7.3f} {xs[-1]:8.3f}"


def report(results, a):
    print(f"\npod network: {a.requests} HTTP GETs (new connection each), {a.echo} echo round trips "
          f"(64 B, one connection), {a.mb} MiB each way; outside netns <-veth-> pod netns")
    print(f"{'':22}{'min':>7} {'median':>7} {'p99':>7} {'max':>8}   wall s  VM CPU s (vCPU / rest)")
    for name, r in results.items():
        for test, label in (("http", "HTTP GET ms"), ("echo", "TCP echo RTT ms")):
            x = r[test]
            cpu = x["cpu"]
            c = f"{cpu[0]:5.2f} / {cpu[1]:5.2f}" if cpu[0] is not None else ""
            print(f"{name + ' ' + label:22}{lat(x['ms'])}   {x['wall']:6.1f}  {c}")
        for test, label in (("sink", "outside->ctr"), ("source", "ctr->outside")):
            x = r[test]
            cpu = x["cpu"]
            c = f"{cpu[0]:5.2f} / {cpu[1]:5.2f}" if cpu[0] is not None else ""
            mibs = x["bytes"] / (1 << 20) / x["secs"]
            print(f"{name + ' ' + label:22}{mibs:8.1f} MiB/s {'':22}{x['wall']:6.1f}  {c}")
    if "ampoule" in results and "runc" in results:
        am, rc = results["ampoule"], results["runc"]
        print("ratio ampoule/runc: "
              f"HTTP median {statistics.median(am['http']['ms']) / statistics.median(rc['http']['ms']):.1f}x, "
              f"echo median {statistics.median(am['echo']['ms']) / statistics.median(rc['echo']['ms']):.1f}x, "
              f"throughput out->ctr {rc['sink']['secs'] / am['sink']['secs']:.2f}, "
              f"ctr->out {rc['source']['secs'] / am['source']['secs']:.2f}")


def interrupted(*_):
    raise KeyboardInterrupt()


def unmount_under(tmp):
    """Lazily unmounts whatever is still mounted below `tmp` (nothing, normally),
    deepest first, so removing the directory never reaches through a mount."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for m in sorted((p for p in points if p.startswith(tmp + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], stderr=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000, help="HTTP GETs")
    ap.add_argument("--echo", type=int, default=1000, help="TCP echo round trips")
    ap.add_argument("--mb", type=int, default=100, help="MiB each way")
    ap.add_argument("--ampoule", default=shutil.which("ampoule") or os.path.join(REPO, "target/debug/ampoule"))
    ap.add_argument("--kernel", default="/usr/local/share/ampoule/vmlinux")
    ap.add_argument("--initrd", default="/usr/local/share/ampoule/initrd.img")
    ap.add_argument("--only", choices=["ampoule", "runc"])
    ap.add_argument("--boot-timeout", type=float, default=180, help="seconds to wait for the server")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("pod_network.py: run as root")
    # SIGTERM/SIGHUP unwind through the cleanup below, like Ctrl-C.
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, interrupted)
    tmp = tempfile.mkdtemp(prefix="amppn", dir="/tmp")  # short: socket paths
    pod, out = f"ampb-pod-{os.getpid()}", f"ampb-out-{os.getpid()}"
    cfg = os.path.join(tmp, "config.toml")
    with open(cfg, "w") as f:
        f.write(f'kernel = "{a.kernel}"\ninitrd = "{a.initrd}"\n'
                f'run_dir = "{tmp}/run"\nlog_dir = "{tmp}/log"\ncache_dir = "{tmp}/cache"\n')
    runc = shutil.which("runc")
    runtimes = {
        "ampoule": [a.ampoule, "--config", cfg, "--root", os.path.join(tmp, "amp-root")],
        "runc": [runc, "--root", os.path.join(tmp, "runc-root")] if runc else None,
    }
    live = []  # (prefix, id) to delete
    results = {}
    print(f"load average at start: {loadavg()}", file=sys.stderr)
    try:
        make_netns(pod, out)
        bundle = make_bundle(tmp, a.ampoule, pod)
        with open(os.path.join(bundle, "rootfs", "bench-mib"), "w") as f:
            f.write(f"{a.mb}\n")
        for name in ("ampoule", "runc"):
            prefix = runtimes[name]
            if (a.only and a.only != name) or prefix is None:
                continue
            leftovers = sh(["ip", "-n", pod, "-o", "link", "show"]).stdout
            if "_amp" in leftovers:
                print(f"warning: a tap is still in the pod namespace: {leftovers}", file=sys.stderr)
            cid = f"pn-{name}-{os.getpid()}"
            log = os.path.join(tmp, f"{name}.log")
            with open(log, "ab") as lf:
                t = time.monotonic()
                live.append((prefix, cid))
                rc = subprocess.run([*prefix, "create", "--bundle", bundle, cid], stdin=subprocess.DEVNULL,
                                    stdout=lf, stderr=lf).returncode
            if rc != 0 or quiet([*prefix, "start", cid]) != 0:
                raise RuntimeError(f"{name}: create/start failed, see {log}: "
                                   f"{open(log, errors='replace').read()[-800:]}")
            w = client(out, "wait", a.boot_timeout)
            if not w["ok"]:
                raise RuntimeError(f"{name}: the server never answered: {w['error']}; "
                                   f"{open(log, errors='replace').read()[-800:]}")
            print(f"{name}: create+start to first answer {time.monotonic() - t:.1f} s", file=sys.stderr)
            pid = vm_pid(tmp) if name == "ampoule" else None
            if name == "ampoule" and pid:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    exe = os.path.basename(f.read().split(b"\0")[0].decode())
                print(f"VM process {pid}: {exe}", file=sys.stderr)
            results[name] = measure(name, out, a, pid, tmp)
            quiet([*prefix, "delete", "--force", cid])
            live.remove((prefix, cid))
        report(results, a)
        print(f"load average at end: {loadavg()} ({os.cpu_count()} CPUs)")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for prefix, cid in live:
            quiet([*prefix, "delete", "--force", cid])
        for ns in (pod, out):
            # Whatever the bench left running in its namespaces (nothing, normally).
            for p in sh(["ip", "netns", "pids", ns], check=False).stdout.split():
                try:
                    os.kill(int(p), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh(["ip", "netns", "del", ns], check=False)
        unmount_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
