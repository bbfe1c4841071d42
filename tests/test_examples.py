"""The examples a newcomer runs first still run and print what they promise."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("oracle_samplers.py", [], "max |log p_ODE - log p|"),
        ("gridworld.py", [], "Q-learning: RMS error of q to q*"),
        ("train_moons.py", ["30"], "bits/dim"),
    ],
)
def test_example_runs(script, args, expected):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert expected in proc.stdout
