"""The hop breakdown of one echo's round trip through a tunnel, for scripts/bench-vpn:
`perf` syscall tracepoints on every thread while namespace a pings b, then per hop (one
side's syscall to the next step's) the median time, and the time inside the syscall that
ends it. x86-64 only (it reads syscall numbers)."""
import os, re, shutil, subprocess


# x86-64 syscall numbers the hop breakdown follows.
SYS_READ, SYS_WRITE, SYS_WRITEV = 0, 1, 20
SYS_SENDS = {44, 46, 307}          # sendto, sendmsg, sendmmsg
SYS_RECVMSG = 47
SYS_WAITS = {232, 281}             # epoll_wait, epoll_pwait

# One echo's steps: (name, side, test on (kind, syscall, result)); a hop is the time from
# the step before. `None` as side: the ping process.
HOPS = [
    ("ping sends", None, lambda k, nr, r: k == "enter" and nr == 44),
    ("a wakes (TUN)", "a", lambda k, nr, r: k == "exit" and nr in SYS_WAITS),
    ("a sent the datagram", "a", lambda k, nr, r: k == "exit" and nr in SYS_SENDS),
    ("b wakes (socket)", "b", lambda k, nr, r: k == "exit" and nr in SYS_WAITS),
    ("b wrote the TUN", "b", lambda k, nr, r: k == "exit" and nr in (SYS_WRITE, SYS_WRITEV)),
    ("b read the reply", "b", lambda k, nr, r: k == "exit" and nr == SYS_READ and r > 0),
    ("b sent the datagram", "b", lambda k, nr, r: k == "exit" and nr in SYS_SENDS),
    ("a wakes (socket)", "a", lambda k, nr, r: k == "exit" and nr in SYS_WAITS),
    ("a wrote the TUN", "a", lambda k, nr, r: k == "exit" and nr in (SYS_WRITE, SYS_WRITEV)),
    ("ping hears", None, lambda k, nr, r: k == "exit" and nr == SYS_RECVMSG and r > 0),
]
TRACE_LINE = re.compile(r"\s*(\S+)\s+(\d+)/(\d+)\s+\[\d+\]\s+([\d.]+):\s+raw_syscalls:sys_"
                        r"(enter|exit):\s+NR (\d+)(?: \(.*\))?(?:\s+=\s+(-?\d+))?")


def hops(in_a, to_ip, pids, echoes, work, tag):
    """Medians (µs) of each hop of HOPS over `echoes` pings to `to_ip` from namespace a
    (`in_a` makes a command run there), the tunnel's processes being `pids` (a, b); or
    (None, why)."""
    data = os.path.join(work, f"hops-{tag}.data")
    r = subprocess.run(["perf", "record", "-q", "-e", "raw_syscalls:sys_enter",
                        "-e", "raw_syscalls:sys_exit", "-a", "--exclude-perf", "-o", data,
                        "--", *in_a("ping", "-q", "-c", str(echoes), "-i", "0.02", to_ip)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None, f"perf record failed: {r.stderr.strip()[-200:]}"
    script = subprocess.run(["perf", "script", "-F", "comm,pid,tid,cpu,time,event,trace",
                             "-i", data], capture_output=True, text=True)
    events, per_tid = [], {}
    for line in script.stdout.splitlines():
        m = TRACE_LINE.match(line)
        if not m:
            continue
        comm, pid, tid, ts, kind, nr, ret = m.groups()
        e = (float(ts) * 1e6, comm, int(pid), int(tid), kind, int(nr),
             int(ret) if ret else 0)
        events.append(e)
        per_tid[(e[2], e[3])] = per_tid.get((e[2], e[3]), 0) + 1
    # Each side's data thread: the thread of its process with the most syscalls.
    side = {}
    for name, pid in zip("ab", pids):
        tids = [(n, t) for (p, t), n in per_tid.items() if p == pid]
        if not tids:
            return None, f"no syscalls of {name}'s tunnel in the trace"
        side[name] = max(tids)[1]
    steps = [(n, side[s] if s else None, f) for n, s, f in HOPS]
    samples = [[] for _ in steps[1:]]
    # Of each hop that ends in a read, write or send, the time inside that syscall (its
    # enter to its exit): the rest is the process's own work and its syscalls before it.
    in_call = [[] for _ in steps[1:]]
    i = 0
    while i < len(events):
        e = events[i]
        if not (e[1] == "ping" and steps[0][2](e[4], e[5], e[6])):
            i += 1
            continue
        times, calls, j = [e[0]], [], i + 1
        for _, tid, test in steps[1:]:
            while j < len(events) and not (
                    (events[j][3] == tid if tid else events[j][1] == "ping")
                    and test(events[j][4], events[j][5], events[j][6])):
                j += 1
            if j == len(events):
                break
            times.append(events[j][0])
            # A wait's or ping's call is mostly sleep: only the tunnel's IO calls count.
            blocking = events[j][5] in SYS_WAITS or not tid
            calls.append(None if blocking else syscall_us(events, j))
            j += 1
        if len(times) < len(steps):
            break
        # An echo whose steps span over 2 ms went astray (lost, or a step was missed).
        if times[-1] - times[0] < 2000:
            for k in range(1, len(times)):
                samples[k - 1].append(times[k] - times[k - 1])
                if calls[k - 1] is not None:
                    in_call[k - 1].append(calls[k - 1])
        i += 1
    if not samples[0]:
        return None, "no whole echo in the trace"
    med = lambda s: sorted(s)[len(s) // 2] if s else None
    names = [name for name, _, _ in steps[1:]]
    return {"echoes": len(samples[0]),
            "hops_us": dict(zip(names, map(med, samples))),
            "syscall_us": dict(zip(names, map(med, in_call)))}, None


def syscall_us(events, j):
    """How long the syscall whose exit is events[j] took (from its thread's enter of the
    same call), or None when the enter is not in the trace."""
    _, _, _, tid, _, nr, _ = events[j]
    for k in range(j - 1, max(-1, j - 500), -1):
        if events[k][3] == tid:
            return events[j][0] - events[k][0] if events[k][4] == "enter" and events[k][5] == nr else None
    return None


# The hop breakdown alternates the two tunnels for this many rounds: traced one after
# the other, a tunnel's hops moved by up to 1.7x between minutes on this shared VM.
HOP_ROUNDS = 4


def hop_table(in_a, to, pids, wg_to, wg_pids, echoes, work):
    """The hop breakdown of p2pnode's tunnel and boringtun's, traced in turns for
    HOP_ROUNDS rounds of echoes / HOP_ROUNDS echoes each: per hop, the median of the
    rounds' medians."""
    if shutil.which("perf") is None:
        return {"skipped": "perf is not installed (Debian: linux-perf)"}
    if os.uname().machine != "x86_64":
        return {"skipped": "the hop breakdown reads x86-64 syscall numbers"}
    per_round = max(1, echoes // HOP_ROUNDS)
    rounds = {"p2pnode": [], "boringtun x1": []}
    for r in range(HOP_ROUNDS):
        for name, ip, pids_ in (("p2pnode", to, pids), ("boringtun x1", wg_to, wg_pids)):
            result, why = hops(in_a, ip, pids_, per_round, work, f"{name.split()[0]}-{r}")
            if why:
                return {"skipped": f"{name}: {why}"}
            rounds[name].append(result)
    med = lambda s: sorted(s)[len(s) // 2] if s else None
    out = {}
    for name, results in rounds.items():
        out[name] = {"echoes": sum(r["echoes"] for r in results), "rounds": len(results)}
        for key in ("hops_us", "syscall_us"):
            out[name][key] = {hop: med([r[key][hop] for r in results if r[key][hop] is not None])
                              for hop in results[0][key]}
    return out


def print_table(table):
    """The hop breakdown as bench-vpn prints it."""
    if table and "skipped" in table:
        print(f"  hops of a round trip: skipped: {table['skipped']}")
    elif table:
        ours, theirs = table["p2pnode"], table["boringtun x1"]
        print(f"  hops of a round trip, median us of {ours['rounds']} rounds in turns (echoes:"
              f" p2pnode {ours['echoes']}, boringtun x1 {theirs['echoes']}); call: the median"
              f" time inside the syscall that ends the hop:")
        total_o = total_t = 0.0
        fmt = lambda v: f"{v:5.1f}" if v is not None else "    -"
        for hop, o in ours["hops_us"].items():
            t = theirs["hops_us"][hop]
            total_o, total_t = total_o + o, total_t + t
            co, ct = ours["syscall_us"][hop], theirs["syscall_us"][hop]
            print(f"    {hop:<22} p2pnode {o:6.1f} (call {fmt(co)})  boringtun x1 {t:6.1f}"
                  f" (call {fmt(ct)})  difference {o - t:+6.1f}")
        print(f"    {'sum of the medians':<22} p2pnode {total_o:6.1f}  boringtun x1 {total_t:6.1f}"
              f"  difference {total_o - total_t:+6.1f}")

