"""placement: the head's placement decisions per second with 1,000 simulated
nodes (issue 3), timed by the C program bench/place_bench.c."""

import json
import os
import subprocess

from harness import REPO_DIR, System, digest

NAME = "placement"
TITLE = "placement: head decisions per second, 1,000 simulated nodes"
DESCRIPTION = (
    "bench/place_bench.c (built as build/place_bench) registers 1,000 nodes "
    "(70% CPU nodes of 4 to 64 CPUs, 15% with 1 to 8 GPUs, 15% with custom "
    "resources) and runs a stream of mixed requests (1/2/4 CPUs, memory, whole "
    "and fractional GPUs, custom names, 0.2% infeasible; 30% with 1 to 3 "
    "locality hints) through sh_head_place. Placed tasks end after a random "
    "number of decisions and are released (about 70% of the CPUs stay busy); "
    "a heartbeat updates one node's measured load every 256 decisions and one "
    "node is drained every 16,384. The timed loop is all of that: releases, "
    "heartbeats and decisions. Each repetition is a fresh process: a warm-up "
    "pass, then 3 timed passes of n decisions (the value is their median; the "
    "table's min and max are over repetitions). Before timing, 100,000 "
    "decisions are checked one by one against a scan of every node with the "
    "same policy, and at the end every node's free resources must equal its "
    "total once all tasks are released. No peer: Ray, Dask and the others "
    "do not expose their placement decision as a function that can be timed "
    "on its own, so the only comparison is the same policy without the index "
    "(a full scan of the node records, same C program)."
)
PRIMARY = "shoal"
FLOOR = None
WARMUP_ROUND = True
NODES = 1000
VERIFY = 100_000

SYSTEMS = [
    System("shoal", "shoal head, sh_head_place (C)", n=2_000_000, unit="decisions/s", role="shoal",
           timeout=300, note="1,000 nodes; target ≥ 1,000,000/s; no peer exists (see above)"),
    System("scan", "same policy, full scan of every node (C, reference)", n=200_000,
           unit="decisions/s", role="peer", timeout=300,
           note="not a peer: the index's own baseline, same program"),
]


def binary():
    return os.path.join(REPO_DIR, "build", "place_bench")


def expected(system, params):
    return digest(("consistent", params["n"]))


def measure(system, params):
    exe = binary()
    if not os.path.exists(exe):
        raise RuntimeError(f"{exe} is missing: run `make build` (CMake target place_bench)")
    cmd = [exe, "--nodes", str(NODES), "--decisions", str(params["n"]), "--reps", "3", "--warmup", "1"]
    if system == "shoal":
        cmd += ["--verify", str(VERIFY)]
    else:
        cmd += ["--mode", "scan"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=280)
    if out.stderr:
        print(out.stderr, end="", flush=True)
    if out.returncode != 0:
        raise RuntimeError(f"place_bench exited with {out.returncode}: {out.stderr.strip()[-300:]}")
    r = json.loads(out.stdout)
    ok = r["consistent"] and r["verified"] in (True, None)
    return {
        "value": r["median"],
        "check": digest(("consistent", params["n"])) if ok else "inconsistent",
        "extra": {k: r[k] for k in ("min", "max", "per_cpu_second", "placed", "local", "no_room",
                                    "infeasible") if k in r},
    }
