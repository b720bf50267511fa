"""One measurement in a fresh process: child.py SCENARIO SYSTEM PARAMS_JSON RESULT_PATH.

Runs the scenario's measure(system, params) and writes its result as JSON to
RESULT_PATH: {"status": "ok", "value": ..., "check": ..., "extra": {...}}, or
{"status": "not installed" | "error", "message": ...}. The scenario's measure
function is responsible for shutting down what it started (in `finally`);
the runner stops whatever is left afterwards.
"""

import importlib
import json
import os
import sys
import traceback


def main():
    scenario, system, params, result_path = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    mod = importlib.import_module(f"scenarios.{scenario}")
    try:
        out = mod.measure(system, params)
        out.setdefault("status", "ok")
    except ImportError as e:
        out = {"status": "not installed", "message": f"{type(e).__name__}: {e}"}
    except BaseException as e:  # noqa: BLE001 - every failure is reported
        traceback.print_exc()
        msg = f"{type(e).__name__}: {e}".strip()
        out = {"status": "error", "message": msg[:500]}
    tmp = result_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.rename(tmp, result_path)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: some peers hang in atexit handlers after
    # their own shutdown; the result is already written.
    os._exit(0)


if __name__ == "__main__":
    main()
