"""The README's Python example (bindings/python/examples/quickstart.py) runs as written."""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_quickstart_runs_and_reports_a_pick_losses_and_dice():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "bindings" / "python"))
    out = subprocess.run([sys.executable, "bindings/python/examples/quickstart.py"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert sum("knowledge gap" in line for line in lines) == 3, out.stdout
    assert re.search(r"annotate first: pd_pool_00[012] ", out.stdout), out.stdout
    losses = [float(m) for m in re.findall(r"loss (\S+)", out.stdout)]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses), out.stdout
    dice = [float(m) for m in re.findall(r"(?:gm|wm) ([0-9.]+)", out.stdout)]
    assert len(dice) == 2 and all(0.0 <= d <= 1.0 for d in dice), out.stdout
