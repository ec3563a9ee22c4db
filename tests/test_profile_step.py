"""The developer's profiling tool (benchmarks/profile_step.py) runs and names real operations."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_step.py"


def test_profile_step_lists_the_step_operations_with_their_times():
    run = subprocess.run([sys.executable, str(SCRIPT), "--model", "dense", "--units", "4",
                          "--batch-size", "8", "--steps", "2", "--rounds", "1", "--top", "5"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert re.match(r"dense: [\d.]+ ms per step .*operations [\d.]+ ms per step", lines[0])
    ops = [line for line in lines[1:] if re.match(r"\s*[\d.]+ ms  \S+", line)]
    assert ops, run.stdout
    # The dense network's forward pass is matrix products: one must appear with its shape.
    assert any("f32[8," in line for line in ops), run.stdout
