"""The README's Python examples run as written (docs are part of the feature)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("index", range(len(blocks())))
def test_readme_example_runs(index, tmp_path):
    code = blocks()[index]
    if "shoal.init(" not in code:
        code = "import shoal\nshoal.init(num_workers=2)\n" + code + "\nshoal.shutdown()\n"
    script = tmp_path / f"readme_{index}.py"
    script.write_text(code)
    env = dict(os.environ)
    env.pop("SHOAL_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_main_job_runs_small(tmp_path):
    """`make run`'s job, on small inputs: it must keep working as the engine changes."""
    job = README.parent / "examples" / "main_job.py"
    env = dict(os.environ)
    env.pop("SHOAL_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(job), "--tasks", "20", "--samples", "200000",
                           "--docs", "40", "--array-mb", "16"], capture_output=True, text=True,
                          timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pi ~ 3.1" in proc.stdout
    assert "speed-up" in proc.stdout and "Cluster status" in proc.stdout
    assert "in shared memory" in proc.stdout and "read in place" in proc.stdout
