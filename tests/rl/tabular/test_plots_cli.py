"""Pictures and the ``driftlab rl tabular`` command, end to end in a temporary directory."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from driftlab.cli import build_parser, main
from driftlab.rl.tabular import GridWorld, plot_grid, plot_learning_curves, policy_iteration
from driftlab.rl.tabular.cli import COMMANDS, parse_cells
from driftlab.rl.tabular.demo import run_demo


def read_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(path)


# ----- pictures ---------------------------------------------------------------------------------
def test_plot_grid_draws_cells_policy_and_values(tmp_path: Path) -> None:
    world = GridWorld()
    optimal = policy_iteration(world)
    both = read_png(plot_grid(world, optimal.values, optimal.policy, path=tmp_path / "a.png"))
    one = read_png(plot_grid(world, values=optimal.values, path=tmp_path / "b.png"))
    # Two panels side by side: about twice as wide as one.
    assert both.shape[1] > 1.7 * one.shape[1]
    # The target's cyan and the forbidden cells' orange are in the picture.
    rgb = (one[..., :3] * 255).round()
    assert (np.abs(rgb - [0x5A, 0xD2, 0xF4]).sum(axis=-1) < 10).any()
    assert (np.abs(rgb - [0xF5, 0xA6, 0x23]).sum(axis=-1) < 10).any()


def test_plot_grid_rejects_a_wrong_policy(tmp_path: Path) -> None:
    from driftlab.core.config import ConfigError

    with pytest.raises(ConfigError, match="policy rows must be probability vectors"):
        plot_grid(GridWorld(), policy=np.ones((25, 5)), path=tmp_path / "x.png")


def test_plot_learning_curves(tmp_path: Path) -> None:
    x = np.arange(10)
    path = plot_learning_curves(
        {"a": (x, 1 / (1 + x), 0.1 * np.ones(10)), "b": (x, 2 / (1 + x), np.zeros(10))},
        tmp_path / "curves.png", log_y=True,
    )  # fmt: skip
    assert read_png(path).shape[0] > 100


# ----- command line -----------------------------------------------------------------------------
def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["rl", "tabular", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_value_iteration_end_to_end(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "vi"
    code, out, _ = run_cli(capsys, "value-iteration", "--run-dir", str(run_dir))
    assert code == 0
    assert "converged after 220 iterations" in out
    assert "  1  5.83  5.58  6.20  6.48  5.83" in out  # Zhao ch. 3, first row of v*
    assert "  4 > > o < <" in out
    for name in ("grid.png", "learning_curve.png", "config.json", "metrics.jsonl", "summary.txt"):
        assert (run_dir / name).exists(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["method"] == "value-iteration" and config["gamma"] == 0.9
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    read_png(run_dir / "grid.png")


def test_world_options_change_the_world(tmp_path: Path, capsys) -> None:
    code, out, _ = run_cli(
        capsys, "policy-iteration", "--rows", "2", "--cols", "3", "--forbidden", "1,2",
        "--target", "2,3", "--gamma", "0", "--run-dir", str(tmp_path / "pi"),
    )  # fmt: skip
    assert code == 0
    # gamma = 0: v*(s) = max_a r(s, a); only the target's neighbours (and itself) reach +1.
    assert "  1 0.00 0.00 1.00" in out
    assert "  2 0.00 1.00 1.00" in out


def test_mc_basic_matches_value_iteration_from_the_cli(tmp_path: Path, capsys) -> None:
    code, out, _ = run_cli(
        capsys, "mc-basic", "--episode-length", "15", "--run-dir", str(tmp_path / "mb")
    )
    assert code == 0
    assert "max |v - v_L| = 0.00e+00" in out


@pytest.mark.parametrize(
    "method, extra",
    [
        ("truncated-policy-iteration", ["--truncation", "3"]),
        ("mc-es", ["--episodes", "40", "--runs", "3", "--alpha", "0.5"]),
        ("mc-egreedy", ["--episodes", "30", "--runs", "2", "--epsilon", "0.2"]),
        ("td0", ["--episodes", "20", "--runs", "3", "--policy", "optimal"]),
        ("sarsa", ["--episodes", "20", "--runs", "3", "--terminal-target", "--start", "1,1"]),
        ("expected-sarsa", ["--episodes", "20", "--runs", "3", "--exploring-starts"]),
        ("nstep-sarsa", ["--episodes", "20", "--runs", "3", "--n", "2"]),
        ("q-learning", ["--episodes", "5", "--runs", "3"]),
        ("q-learning", ["--episodes", "20", "--runs", "3", "--behavior", "epsilon-greedy"]),
        ("td-linear", ["--episodes", "5", "--episode-length", "50", "--features", "fourier"]),
        (
            "dqn-grid",
            ["--iterations", "20", "--transitions", "300", "--runs", "2", "--eval-every", "10"],
        ),
        (
            "reinforce-grid",
            ["--episodes", "20", "--runs", "2", "--eval-every", "10", "--terminal-target"],
        ),
        ("qac-grid", ["--episodes", "20", "--runs", "2", "--eval-every", "10"]),
    ],
)
def test_every_method_runs_and_writes_pictures(tmp_path: Path, capsys, method, extra) -> None:
    run_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, method, *extra, "--run-dir", str(run_dir))
    assert code == 0, err
    assert "state values:" in out and "policy (o = stay):" in out
    read_png(run_dir / "grid.png")
    read_png(run_dir / "learning_curve.png")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records and all("error_mean" in r for r in records)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["value-iteration", "--gamma", "1.5"], "gamma must be in [0.0, 1.0], got 1.5"),
        (["value-iteration", "--forbidden", "9,9"], "forbidden cell (9, 9) is outside"),
        (["value-iteration", "--target", "2"], "a cell must be 'row,col' with integers"),
        (["value-iteration", "--target", "2,2"], "target (2, 2) must not be a forbidden cell"),
        (["value-iteration", "--rows", "0"], "rows must be >= 1, got 0"),
        (["mc-es", "--episodes", "0"], "episodes must be >= 1, got 0"),
        (["mc-egreedy", "--epsilon", "0"], "epsilon must be > 0"),
        (["mc-basic", "--episode-length", "-2"], "episode_length must be >= 1, got -2"),
        (["sarsa", "--alpha", "2"], "alpha must be in [0.0, 1.0], got 2.0"),
        (["q-learning", "--start", "0,1"], "start (0, 1) is outside the 5x5 grid"),
    ],
)
def test_bad_values_exit_2_with_one_line(tmp_path: Path, capsys, argv, message) -> None:
    code, _, err = run_cli(capsys, *argv, "--run-dir", str(tmp_path / "bad"))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("driftlab: error: ")
    assert message in err


def test_existing_run_dir_needs_overwrite_or_resume(tmp_path: Path, capsys) -> None:
    run_dir = str(tmp_path / "run")
    assert run_cli(capsys, "value-iteration", "--gamma", "0.5", "--run-dir", run_dir)[0] == 0
    code, _, err = run_cli(capsys, "value-iteration", "--run-dir", run_dir)
    assert code == 2 and "already exists" in err and err.count("\n") == 1
    # --resume reruns the saved configuration (gamma 0.5), whatever the new options say.
    code, out, _ = run_cli(capsys, "value-iteration", "--resume", "--run-dir", run_dir)
    assert code == 0
    assert json.loads((Path(run_dir) / "config.json").read_text())["gamma"] == 0.5
    assert "  4 0.00 2.00 2.00 2.00 0.25" in out  # v*(target) = 1 / (1 - 0.5)
    # --overwrite replaces it with the new configuration (gamma 0.9: v*(target) = 10).
    code, out, _ = run_cli(capsys, "value-iteration", "--overwrite", "--run-dir", run_dir)
    assert code == 0 and " 10.00" in out


def test_help_explains_every_option_with_its_default(capsys) -> None:
    parser = build_parser()
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(["rl", "tabular", command.name, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        for option in ("--rows", "--forbidden", "--gamma", "--seed", "--run-dir", "--resume"):
            assert option in text, (command.name, option)
        assert text.count("(default:") >= 13, command.name


def test_format_value_drops_the_sign_of_a_rounded_zero() -> None:
    from driftlab.rl.tabular.plots import format_value

    assert format_value(-0.04, 1) == "0.0"
    assert format_value(-0.05001, 1) == "-0.1"
    assert format_value(5.832, 2) == "5.83"


def test_parse_cells() -> None:
    assert parse_cells("2,2;2,3") == [(2, 2), (2, 3)]
    assert parse_cells(" 1, 2 ; ") == [(1, 2)]
    assert parse_cells("") == []


def test_demo_writes_pictures_and_summary(tmp_path: Path) -> None:
    summary = run_demo(tmp_path, seed=0)
    assert "  1  5.8  5.6  6.2  6.5  5.8" in summary
    assert "greedy policy optimal in 20/20 runs" in summary
    read_png(tmp_path / "gridworld_optimal.png")
    read_png(tmp_path / "q_learning_curve.png")
