"""Where the CPU of a no-op task goes, process by process (a diagnostic, not a
scenario: it compares nothing with peers and checks no target).

    .venv/bin/python bench/cpu_split.py one|cluster [N] [BATCHES] [--syscalls]

`one`: the private cluster of tasks_async (2 workers); `cluster`: the head
plus 3 node agents of cluster_tasks_async (`peers.shoal_head_nodes`). After a
warm-up of 2,000 tasks, each batch submits N no-op tasks (default 100,000)
and gets their results, as tasks_async does, and prints one line:

    tasks/s; CPU µs per task of the driver, the head (or the one agent), the
    node agents and the workers (each group summed; from /proc schedstat,
    all threads); voluntary context switches per 1,000 tasks (the
    processes' other threads apart, as "-thr"); the machine's idle share
    over the batch, and over its submit and get phases.

With --syscalls, `perf stat -e raw_syscalls:sys_enter,context-switches`
runs on each group during the batch and its system calls and context
switches per task are printed too (needs perf; root or a low
perf_event_paranoid).

The wall clock of this shared 2-core machine moves by ±30% between runs;
CPU per task moves with it (a slower machine is slower everywhere), the
counts of switches and system calls much less. Compare shapes and builds
in alternation, several batches each.
"""

import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# Workers import the no-op function by name (workloads.noop), daemons of
# their own included: they inherit this.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [HERE] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

import peers  # noqa: E402
from workloads import noop  # noqa: E402


def _children():
    kids = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(p))
    return kids


def _labels():
    """pid -> driver | head | agent | worker, for this process and its
    descendants (a shoal binary joining a head with --address is a node
    agent; the head, or the one-node agent, is "head")."""
    kids, me = _children(), os.getpid()
    labels = {me: "driver"}

    def cmdline(p):
        try:
            with open(f"/proc/{p}/cmdline") as f:
                return f.read().split("\0")
        except OSError:
            return []

    def walk(p):
        for k in kids.get(p, []):
            argv = cmdline(k)
            exe = os.path.basename(argv[0]) if argv else ""
            if exe.startswith("shoal") and "python" not in exe:
                labels[k] = "agent" if "--address" in argv else "head"
            else:
                labels[k] = "worker"
            walk(k)

    walk(me)
    return labels


def _per_thread(pid, main, read):
    """Sum of read(path of a thread's directory) over pid's threads: all
    (main=None), only its main thread (True) or only the others (False)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for t in tids:
        if main is not None and (t == str(pid)) != main:
            continue
        try:
            total += read(f"/proc/{pid}/task/{t}")
        except OSError:
            pass
    return total


def _read_cpu_ns(path):
    with open(f"{path}/schedstat") as f:
        return int(f.read().split()[0])


def _read_switches(path):
    with open(f"{path}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches"):
                return int(line.split()[1])
    return 0


def _cpu_ns(pid, main=None):
    return _per_thread(pid, main, _read_cpu_ns)


def _switches(pid, main):
    return _per_thread(pid, main, _read_switches)


def _cpustat():
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def _idle(a, b):
    d = [y - x for x, y in zip(a, b)]
    return (d[3] + d[4]) / max(1, sum(d))


def _perf_stats(labels, n, run):
    groups, procs = {}, []
    for pid, label in labels.items():
        groups.setdefault(label, []).append(str(pid))
    for label, pids in sorted(groups.items()):
        out = f"/tmp/cpu_split.{os.getpid()}.{label}"
        procs.append((label, out, subprocess.Popen(
            ["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter,context-switches",
             "-p", ",".join(pids), "-o", out], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)))
    time.sleep(0.5)
    try:
        result = run()
    finally:
        for label, out, p in procs:
            p.send_signal(signal.SIGINT)
            p.wait()
    for label, out, p in procs:
        vals = {}
        try:
            with open(out) as f:
                for line in f:
                    parts = line.strip().split(",")
                    if len(parts) > 3 and parts[0].replace(".", "").isdigit():
                        vals[parts[2]] = float(parts[0])
            os.unlink(out)
        except OSError:
            pass
        print(f"    {label}: {vals.get('raw_syscalls:sys_enter', 0) / n:.3f} syscalls/task, "
              f"{vals.get('context-switches', 0) / n:.3f} context switches/task")
    return result


def batch(shoal, n, syscalls=False):
    f = shoal.remote(noop)
    shoal.get([f.remote(i) for i in range(2000)])
    labels = _labels()
    cpu0 = {p: _cpu_ns(p) for p in labels}
    me = os.getpid()
    io0 = _cpu_ns(me, main=False)
    sw0 = {(p, m): _switches(p, m) for p in labels for m in (True, False)}
    marks = {}

    def run():
        marks["c0"], marks["t0"] = _cpustat(), time.perf_counter()
        refs = [f.remote(i) for i in range(n)]
        marks["c1"], marks["t1"] = _cpustat(), time.perf_counter()
        values = shoal.get(refs)
        marks["c2"], marks["t2"] = _cpustat(), time.perf_counter()
        return values

    values = _perf_stats(labels, n, run) if syscalls else run()
    if values != list(range(n)):
        raise SystemExit("wrong results")
    cpu, count, sw = {}, {}, {}
    for p, label in labels.items():
        cpu[label] = cpu.get(label, 0) + _cpu_ns(p) - cpu0[p]
        count[label] = count.get(label, 0) + 1
        for main in (True, False):
            key = label if main else label + "-thr"
            sw[key] = sw.get(key, 0) + _switches(p, main) - sw0[(p, main)]
    io = _cpu_ns(me, main=False) - io0
    secs = marks["t2"] - marks["t0"]
    order = ["driver", "head", "agent", "worker"]
    print(f"{n / secs:,.0f} tasks/s; CPU µs/task: "
          + f"driver {cpu['driver'] / n / 1e3:.2f} (its main thread {(cpu['driver'] - io) / n / 1e3:.2f}), "
          + ", ".join(f"{k} ({count[k]}) {cpu[k] / n / 1e3:.2f}" for k in order[1:] if k in cpu)
          + f", total {sum(cpu.values()) / n / 1e3:.2f}; switches/1k: "
          + ", ".join(f"{k} {sw[k] * 1000 / n:.0f}" for k in sorted(sw))
          + f"; idle {_idle(marks['c0'], marks['c2']):.0%} (submit {marks['t1'] - marks['t0']:.2f} s, "
          f"{_idle(marks['c0'], marks['c1']):.0%} idle; get {marks['t2'] - marks['t1']:.2f} s, "
          f"{_idle(marks['c1'], marks['c2']):.0%} idle)", flush=True)


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    if not args or args[0] not in ("one", "cluster"):
        raise SystemExit(__doc__)
    n = int(args[1]) if len(args) > 1 else 100_000
    batches = int(args[2]) if len(args) > 2 else 3
    syscalls = "--syscalls" in argv
    if args[0] == "one":
        ctx = peers.shoal_cluster()
        with ctx as shoal:
            for _ in range(batches):
                batch(shoal, n, syscalls)
    else:
        with peers.shoal_head_nodes(head_workers=0, head_cpus=0, node_workers=1,
                                    node_cpus=1) as (shoal, _):
            for _ in range(batches):
                batch(shoal, n, syscalls)


if __name__ == "__main__":
    main(sys.argv[1:])
