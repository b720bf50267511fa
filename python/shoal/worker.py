"""The worker process: ``python -m shoal.worker``.

A node agent starts one per pool slot (and one per actor) with fd 3 its end of
a socketpair. Everything runs in the C loop ``shoal._core.worker_main``: it
reads FUNC and EXEC frames, runs each request in order in this process and
answers with batched RESULT frames. It returns when the agent closes fd 3;
the process then exits at once with status 0 (``os._exit`` after flushing
stdout and stderr), so a non-daemon thread left behind by user code cannot
keep a retired worker alive. The loop also sets ``PR_SET_PDEATHSIG`` so the
worker never outlives its agent.
"""

import os
import sys

if __name__ == "__main__":
    from . import _core, _serial

    # Functions defined in a driver's __main__ travel by value and need
    # cloudpickle to load: import it before the first request arrives.
    _serial.preload()
    _core.worker_main(3, _serial)
    for _stream in (sys.stdout, sys.stderr):
        try:
            _stream.flush()
        except Exception:
            pass
    os._exit(0)
