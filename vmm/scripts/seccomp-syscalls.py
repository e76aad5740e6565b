#!/usr/bin/env python3
# Measures which syscalls each ampoule-vmm thread kind makes, the source of
# vmm/src/seccomp/allowlist.rs. Usage (release test binaries built first):
#   cd vmm && for t in boot block hostile lifecycle vsock bad_config virtio_fs virtio_net; do
#     strace -f -qq -o /tmp/st/$t.trace ../target/release/deps/$t-<hash> --test-threads=2
#   done
#   python3 scripts/seccomp-syscalls.py /tmp/st/*.trace
# Attribution: `main` counts the main thread after its last thread start;
# other threads count from their PR_SET_NAME (vcpuN, vsock, vhost-fsN, netN,
# api, api-conn)
# on; `<kind>-prelude` is what a thread did before (glibc's thread start).
import re, sys, collections
line_re = re.compile(r'^(\d+)\s+(.*)$')
call_re = re.compile(r'^([a-z0-9_]+)\((.*)$')
resumed_re = re.compile(r'^<\.\.\. ([a-z0-9_]+) resumed>(.*)$')
counts = collections.defaultdict(collections.Counter)
detail = collections.defaultdict(collections.Counter)
ARGKEY = {'ioctl': (1,), 'fcntl': (1,), 'mmap': (2,), 'mprotect': (2,), 'prctl': (0,), 'socket': (0, 1),
          'futex': (1,), 'madvise': (2,), 'epoll_ctl': (1,), 'setsockopt': (1, 2), 'getsockopt': (1, 2),
          'shutdown': (1,), 'clone3': (), 'rt_sigprocmask': (0,), 'openat': (2,), 'accept4': (3,), 'socketpair': (0,1),
          'sendto': (3,), 'sendmsg': (2,), 'recvfrom': (3,), 'recvmsg': (2,), 'clock_gettime': (0,), 'clock_nanosleep': (0,1),
          'eventfd2': (1,), 'epoll_create1': (0,), 'connect': (), 'newfstatat': (3,), 'statx': (2, 3), 'lseek': (2,)}
def split_args(a):
    out, depth, cur, q = [], 0, '', False
    for ch in a:
        if q:
            cur += ch
            if ch == '"': q = False
            continue
        if ch == '"': q = True
        elif ch in '[{(': depth += 1
        elif ch in ']})': depth -= 1
        if ch == ',' and depth == 0:
            out.append(cur.strip()); cur = ''
        else: cur += ch
    out.append(cur.strip()); return out
for path in sys.argv[1:]:
    pending, events = {}, []
    for raw in open(path, errors='replace'):
        m = line_re.match(raw.rstrip('\n'))
        if not m: continue
        tid, rest = int(m.group(1)), m.group(2)
        r = resumed_re.match(rest)
        if r:
            if tid not in pending: continue
            name, head = pending.pop(tid)
            events.append((tid, name, head + r.group(2)))
            continue
        c = call_re.match(rest)
        if not c: continue
        if rest.endswith('<unfinished ...>'):
            pending[tid] = (c.group(1), c.group(2)[:-len('<unfinished ...>')])
            continue
        events.append((tid, c.group(1), c.group(2)))
    prelude = collections.defaultdict(list)
    owner, kind, main_lines = {}, {}, collections.defaultdict(list)
    for tid, name, args in events:
        mr = re.search(r'\)\s*= (.*)$', args)
        body, ret = (args[:mr.start()], mr.group(1)) if mr else (args, '')
        if name == 'execve' and 'ampoule-vmm"' in args.split(',')[0] and ret.strip().startswith('0'):
            owner[tid] = tid; kind[tid] = 'main'; main_lines[tid] = []; continue
        if tid not in owner: continue
        if name in ('clone3', 'clone') and ret.strip().split(' ')[0].isdigit():
            ch = int(ret.strip().split(' ')[0]); owner[ch] = owner[tid]; kind[ch] = None
        a = split_args(body)
        key = ' '.join(a[i] for i in ARGKEY.get(name, ()) if i < len(a))
        k = kind.get(tid)
        if name == 'prctl' and 'PR_SET_NAME' in args and k is None:
            nm = re.search(r'PR_SET_NAME, "([^"]*)"', args)
            n = nm.group(1) if nm else '?'
            kind[tid] = 'vcpu' if n.startswith('vcpu') else n
            continue
        if k == 'main':
            main_lines[tid].append((name, key)); continue
        if k is None:
            prelude[tid].append(name); continue
        counts[k][name] += 1; detail[k][(name, key)] += 1
    for tid, names in prelude.items():
        if kind.get(tid):
            for n in names: counts[kind[tid] + '-prelude'][n] += 1
    for pid, lines in main_lines.items():
        last = max((i for i, (n, _) in enumerate(lines) if n in ('clone3', 'clone')), default=None)
        if last is None: continue
        for n, key in lines[last + 1:]:
            counts['main'][n] += 1; detail['main'][(n, key)] += 1
for k in sorted(counts):
    print(f'== {k}: {len(counts[k])} distinct syscalls')
    print('  ' + ' '.join(f'{n}({c})' for n, c in sorted(counts[k].items())))
    for (n, key), c in sorted(detail[k].items()):
        if key and n in ARGKEY: print(f'    {n} {key} x{c}')
