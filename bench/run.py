#!/usr/bin/env python3
"""shoal benchmarks: every scenario runs shoal and its peers side by side in one
invocation, alternating systems per repetition, each repetition in a fresh
process with a time limit.

    python bench/run.py                       # all scenarios
    python bench/run.py --scenario tasks_sync # one (repeatable, or a,b)
    python bench/run.py --systems shoal,ray   # only these systems

Writes bench/results/<timestamp>.json and bench/results/latest.md and prints
the Markdown. See docs/benchmarks.md.
"""

import argparse
import datetime
import importlib
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import ERROR, NOT_INSTALLED, OK, TIMED_OUT, WRONG  # noqa: E402
import scenarios  # noqa: E402
import targets  # noqa: E402

TERMINAL = {NOT_INSTALLED, TIMED_OUT, ERROR, WRONG}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", action="append", default=[],
                   help=f"scenario(s) to run (default: all of {', '.join(scenarios.ORDER)})")
    p.add_argument("--systems", default="", help="comma-separated system names to run (default: all)")
    p.add_argument("--reps", type=int, default=None, help="measured repetitions (default: the "
                   "scenario's, 5 or more; at least 5 for reportable numbers)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every n by this (e.g. 0.1 while developing; reported)")
    p.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every time limit")
    p.add_argument("--out", default=os.path.join(harness.BENCH_DIR, "results"))
    p.add_argument("--list", action="store_true", help="list scenarios and systems, then exit")
    args = p.parse_args(argv)
    names = []
    for s in args.scenario or scenarios.ORDER:
        names += [x for x in s.split(",") if x]
    bad = [n for n in names if n not in scenarios.ORDER]
    if bad:
        p.error(f"unknown scenario {', '.join(bad)}; known: {', '.join(scenarios.ORDER)}")
    args.scenario = names
    args.systems = {s for s in args.systems.split(",") if s}
    return args


def reps_for(mod, args):
    return args.reps if args.reps is not None else getattr(mod, "REPS", 5)


def params_for(system, args):
    if system.n is None:
        return {}
    return {"n": max(1, int(system.n * args.scale))}


def run_scenario(mod, args, log_path):
    systems = [s for s in mod.SYSTEMS if not args.systems or s.name in args.systems
               or s.role in ("floor", "shoal")]
    state = {s.name: {"values": [], "extras": [], "status": None, "message": "", "left": []}
             for s in systems}
    expected = {s.name: mod.expected(s.name, params_for(s, args)) for s in systems}

    rounds = [("warm-up", i) for i in range(1 if mod.WARMUP_ROUND else 0)]
    rounds += [("rep", i) for i in range(reps_for(mod, args))]
    for kind, i in rounds:
        k = i % len(systems)
        order = systems[k:] + systems[:k]  # rotate so no system always goes first
        for s in order:
            st = state[s.name]
            if st["status"] in TERMINAL:
                continue
            params = params_for(s, args)
            timeout = s.timeout * args.timeout_scale
            r = harness.run_child(mod.NAME, s, params, timeout, log_path)
            if r.get("left_behind"):
                st["left"].extend(r["left_behind"])
            status = r.get("status", ERROR)
            if status == OK and r.get("check") != expected[s.name]:
                status = WRONG
                r["message"] = f"result check {r.get('check')} != expected {expected[s.name]}"
            tag = f"{mod.NAME} {kind} {i + 1} {s.name}"
            if status != OK:
                st["status"] = status
                st["message"] = r.get("message", "")
                log(f"  {tag}: {status} {st['message']}")
                continue
            log(f"  {tag}: {harness.fmt_num(r['value'])} {s.unit} ({r['wall_s']:.1f} s wall)")
            if kind == "rep":
                st["values"].append(r["value"])
                st["extras"].append(r.get("extra", {}))
    return systems, state


def median_extras(extras):
    keys = {k for e in extras for k, v in e.items() if isinstance(v, (int, float))}
    return {k: statistics.median([e[k] for e in extras if k in e]) for k in sorted(keys)}


def records_for(mod, systems, state, args):
    recs = []
    summ = {s.name: harness.summarize(state[s.name]["values"]) for s in systems}
    shoal_systems = [s for s in systems if s.role == "shoal"]
    for s in systems:
        # The floor of this row: its own (System.floor) or the scenario's.
        floor_name = s.floor or mod.FLOOR
        floor_sys = next((f for f in systems if f.name == floor_name), None) if floor_name else None
        floor_med = summ[floor_sys.name]["median"] if floor_sys and summ.get(floor_sys.name) else None
        st = state[s.name]
        sm = summ[s.name]
        status = st["status"] or OK
        if status == OK and not sm:
            status = ERROR
        rec = {
            "scenario": mod.NAME, "system": s.name, "label": s.label, "role": s.role,
            "n": params_for(s, args).get("n"), "unit": s.unit, "better": s.better,
            "repetitions": len(st["values"]), "values": st["values"],
            "median": sm["median"] if sm else None, "min": sm["min"] if sm else None,
            "max": sm["max"] if sm else None,
            "status": status, "message": st["message"], "note": s.note,
            "extra": median_extras(st["extras"]),
        }
        if status != OK:
            # A system that failed in any repetition reports no time.
            rec["median"] = rec["min"] = rec["max"] = None
        # ratios[x]: how many times faster shoal system x is than this row;
        # for peers only (a floor row has its own column).
        # With SHOAL_CROSS_RATIOS, shoal rows get them too (one shoal shape
        # against another, e.g. a cluster against one node).
        rec["ratios"] = {}
        cross = s.role == "peer" or (s.role == "shoal" and getattr(mod, "SHOAL_CROSS_RATIOS", False))
        for sh in shoal_systems:
            sh_med = summ[sh.name]["median"] if summ.get(sh.name) and state[sh.name]["status"] in (None, OK) else None
            if s.name == sh.name and rec["median"] is not None:
                rec["ratios"][sh.name] = 1.0
            elif cross and s.unit == sh.unit and rec["median"] is not None:
                rec["ratios"][sh.name] = harness.speedup(sh_med, rec["median"], s.better)
        rec["ratio_to_shoal"] = rec["ratios"].get(mod.PRIMARY)
        rec["floor"] = floor_med
        rec["x_floor"] = (rec["median"] / floor_med if floor_med and rec["median"] is not None
                          and floor_sys.unit == s.unit else None)
        if st["left"]:
            rec["left_behind"] = sorted(set(st["left"]))
        recs.append(rec)
    return recs


def markdown(machine, meta, scen_mods, records, target_rows):
    out = [f"# shoal benchmarks, {meta['started']}", ""]
    out.append(f"Machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
               f"{machine['ram_gib']} GiB RAM, Linux {machine['kernel']}, Python {machine['python']}.")
    vers = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    missing = ", ".join(k for k, v in machine["versions"].items() if not v)
    out.append(f"Versions: {vers}" + (f"; not installed: {missing}" if missing else "") +
               f". shoal commit {machine['shoal_commit'] or '?'}.")
    reps = sorted(set(meta["reps"].values()))
    out.append(f"Repetitions: {'/'.join(map(str, reps))} measured per system (median, min, max; "
               f"see each scenario), systems alternating, each repetition a fresh process" +
               (f"; n scaled by {meta['scale']}" if meta["scale"] != 1 else "") + ".")
    out.append("")
    out.append("\"shoal ×\": how many times faster shoal is than that row (>1: shoal faster). "
               "\"× floor\": that row's time as a multiple of the hardware floor.")
    for mod in scen_mods:
        rows = [r for r in records if r["scenario"] == mod.NAME]
        if not rows:
            continue
        out += ["", f"## {mod.TITLE}", "", mod.DESCRIPTION,
                "", f"{meta['reps'][mod.NAME]} repetitions. Load average (1 min) at start / end: "
                f"{rows[0]['load_start']} / {rows[0]['load_end']}.", ""]
        has_floor = any(r["x_floor"] is not None for r in rows)
        shoal_rows = [r for r in rows if r["role"] == "shoal"]
        if getattr(mod, "RATIO_COLUMNS", None):
            # Only the shoal systems that peers are compared with get a column.
            shoal_rows = [r for r in shoal_rows if r["system"] in mod.RATIO_COLUMNS]
        ratio_heads = ["shoal ×"] if len(shoal_rows) <= 1 else [f"{r['label']} ×" for r in shoal_rows]
        head = ("| system | n | median | min | max | " + " | ".join(ratio_heads) + " |" +
                (" × floor |" if has_floor else "") + " note |")
        out.append(head)
        out.append("|" + "---|" * (head.count("|") - 1))
        for r in rows:
            if r["status"] == OK:
                div, unit = harness.display_unit(r["median"], r["unit"])
                cells = [f"{harness.fmt_num(r['median'] / div)} {unit}", harness.fmt_num(r["min"] / div),
                         harness.fmt_num(r["max"] / div)]
            else:
                cells = [f"**{r['status']}**", "–", "–"]
            note = r["note"]
            if r["status"] != OK and r["message"]:
                note = (note + "; " if note else "") + r["message"].replace("|", "/")[:160]
            if r.get("left_behind"):
                note = (note + "; " if note else "") + f"left {len(r['left_behind'])} process(es) behind"
            line = f"| {r['label']} | {harness.fmt_n(r['n'])} | " + " | ".join(cells)
            line += " | " + " | ".join(harness.fmt_ratio(r["ratios"].get(sr["system"])) for sr in shoal_rows) + " |"
            if has_floor:
                line += f" {harness.fmt_ratio(r['x_floor'])} |"
            line += f" {note} |"
            out.append(line)
    if target_rows:
        out += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
        for t in target_rows:
            out.append(f"| {t['target']} | {t['measured']} | {t['met']} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    mods = [importlib.import_module(f"scenarios.{n}") for n in args.scenario]
    if args.list:
        for m in mods:
            print(f"{m.NAME}: " + ", ".join(s.name for s in m.SYSTEMS))
        return 0
    if args.reps is not None and args.reps < 5:
        log(f"note: --reps {args.reps} is below the 5 that BENCH.md asks for reportable numbers")
    harness.become_subreaper()
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_path = os.path.join(args.out, f"{stamp}.log")
    json_path = os.path.join(args.out, f"{stamp}.json")
    machine = harness.machine_info()
    meta = {"started": datetime.datetime.now().isoformat(timespec="seconds"),
            "reps": {m.NAME: reps_for(m, args) for m in mods},
            "scale": args.scale, "argv": sys.argv[1:]}
    log(f"shoal bench: {', '.join(args.scenario)}; log {log_path}")
    records = []
    done_mods = []
    t0 = time.monotonic()
    for mod in mods:
        load0 = harness.loadavg()
        log(f"[{mod.NAME}] load average {load0}")
        systems, state = run_scenario(mod, args, log_path)
        recs = records_for(mod, systems, state, args)
        for r in recs:
            r["load_start"], r["load_end"] = load0, harness.loadavg()
        records += recs
        done_mods.append(mod)
        target_rows = targets.evaluate(records)
        doc = {"machine": machine, "meta": meta, "results": records, "targets": target_rows}
        with open(json_path, "w") as f:
            json.dump(doc, f, indent=1)
        md = markdown(machine, meta, done_mods, records, target_rows)
        with open(os.path.join(args.out, "latest.md"), "w") as f:
            f.write(md)
    meta["elapsed_s"] = time.monotonic() - t0
    with open(json_path, "w") as f:
        json.dump({"machine": machine, "meta": meta, "results": records, "targets": target_rows}, f, indent=1)
    print(md)
    log(f"wrote {json_path} and {os.path.join(args.out, 'latest.md')} ({meta['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
