"""The ``driftlab`` command: help, the oracle sampler, and one-line errors with exit 2."""

import json
import subprocess
import sys

import pytest

from driftlab.cli import main


def test_help_lists_families_and_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["diffusion", "oracle", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--sampler" in out and "(default: heun)" in out and "(default: 18)" in out


def test_oracle_run_writes_outputs(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["diffusion", "oracle", "--sampler", "dpmpp-2m", "--steps", "20", "--n", "500"]
    assert main([*args, "--run-dir", str(run)]) == 0
    assert "sliced Wasserstein" in capsys.readouterr().out
    for name in ("config.json", "run.json", "metrics.jsonl", "samples.png", "samples.json"):
        assert (run / name).exists(), name
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    metrics = json.loads((run / "metrics.jsonl").read_text())
    assert metrics["nfe"] == 20 and metrics["weight_error"] < 0.05
    # A second run into the same directory is refused and leaves it untouched.
    before = (run / "metrics.jsonl").read_text()
    assert main([*args, "--run-dir", str(run)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == before
    assert main([*args, "--run-dir", str(run), "--overwrite"]) == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "0"], "steps must be >= 1, got 0"),
        (["--sigma-min", "-1"], "sigma-min must be > 0, got -1.0"),
        (["--sampler", "ddim", "--eta", "1.5"], "eta must be in [0.0, 1.0], got 1.5"),
        (["--sampler", "heun", "--eta", "0.5"], "unknown option 'eta' for sampler 'heun'"),
    ],
)
def test_bad_values_exit_2_with_one_line(tmp_path, capsys, extra, message):
    run = tmp_path / "bad"
    assert main(["diffusion", "oracle", "--run-dir", str(run), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not run.exists()


def test_unknown_choice_is_rejected_by_the_parser():
    proc = subprocess.run(
        [sys.executable, "-m", "driftlab.cli", "diffusion", "oracle", "--sampler", "plms"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "invalid choice: 'plms'" in proc.stderr
