"""``driftlab llm sft | train | eval`` end to end on a tiny transformer, their one-line errors,
exact resume, and a 2-process torchrun run equal to the 1-process one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from driftlab.cli import main
from driftlab.core.checkpoint import load_checkpoint
from driftlab.llm.cli import build_config, parse_pairs, parse_value
from driftlab.llm.grpo import GRPOConfig, GRPOTrainer
from driftlab.llm.model import load_model
from driftlab.llm.sft import SFTConfig, sft
from driftlab.llm.tasks import get_task
from driftlab.llm.tokenizer import CharTokenizer

TASK = [
    "--task",
    "addition",
    "--task-option",
    "digits=1",
    "--task-option",
    "chain_of_thought=false",
]
MODEL = ["--model-set", "d_model=16", "--model-set", "n_heads=2", "--model-set", "n_layers=1"]
SFT = ["--set", "steps=40", "--set", "batch_size=8", "--set", "lr=0.01", "--set", "train_size=20"]
SFT += ["--eval-size", "6"]
# 4 prompts x 4 completions, minibatches of 2 groups and mu=2 (4 optimiser steps per
# iteration), a KL term to a reference: every path of the update that crosses ranks. The
# format reward (weight 0.5) gives the barely trained warm-up's groups unequal rewards.
GRPO_SETTINGS = {
    "prompts_per_step": 4,
    "group_size": 4,
    "minibatch_size": 8,
    "mu": 2,
    "max_new_tokens": 8,
    "reward_weights": [1.0, 0.5],
    "beta": 0.04,
    "lr": 0.01,
    "train_size": 20,
    "eval_size": 4,
}
GRPO = [item for k, v in GRPO_SETTINGS.items() for item in ("--set", f"{k}={json.dumps(v)}")]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def warm_up(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SFT run directory (40 steps of one layer of width 16)."""
    path = tmp_path_factory.mktemp("llm") / "sft"
    assert main(["llm", "sft", *TASK, *MODEL, *SFT, "--run-dir", str(path)]) == 0
    return path


def test_sft_writes_a_run_equal_to_the_api(warm_up: Path) -> None:
    """The CLI's model is the one ``sft`` trains from the same seed; eval.json's accuracy is
    the fraction of its listed completions marked correct."""
    for name in ("config.json", "run.json", "metrics.jsonl", "model.json", "eval.json"):
        assert (warm_up / name).exists(), name
    assert any((warm_up / "tensorboard").iterdir())
    config = json.loads((warm_up / "config.json").read_text())
    assert config["command"] == "llm sft"
    assert config["sft"]["steps"] == 40 and config["model"]["d_model"] == 16
    assert json.loads((warm_up / "run.json").read_text())["status"] == "complete"
    torch.manual_seed(0)
    from driftlab.llm.model import TransformerConfig, TransformerLM

    tok = CharTokenizer()
    model = TransformerLM(
        TransformerConfig(
            vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=1, max_seq_len=128
        )
    )
    sft(
        model,
        tok,
        get_task("addition", digits=1, chain_of_thought=False),
        SFTConfig(steps=40, batch_size=8, lr=0.01, train_size=20),
    )
    saved = load_model(warm_up / "model")
    for (name, a), b in zip(model.state_dict().items(), saved.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    report = json.loads((warm_up / "eval.json").read_text())
    assert report["problems"] == 6 == len(report["samples"])
    assert report["accuracy"] == sum(s["correct"] for s in report["samples"]) / 6


def test_train_and_eval_end_to_end(
    warm_up: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two GRPO iterations from the warm-up equal the API's trainer; eval prints the accuracy
    it writes."""
    run = tmp_path / "grpo"
    code, out, err = run_cli(
        capsys, "llm", "train", "grpo", *TASK, "--init", str(warm_up), *GRPO,
        "--steps", "2", "--run-dir", str(run),
    )  # fmt: skip
    assert code == 0, err
    assert "held-out greedy accuracy" in out and "| completion" in out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert {"reward_mean", "accuracy", "kl", "clip_low", "entropy"} <= set(records[0])
    assert any((run / "tensorboard").iterdir())
    assert (run / "checkpoint.json").exists() and (run / "samples.txt").exists()
    config = json.loads((run / "config.json").read_text())
    assert config["trainer"]["steps"] == 2 and config["trainer"]["minibatch_size"] == 8

    api = GRPOTrainer(
        load_model(warm_up / "model"),
        CharTokenizer(),
        GRPOConfig(
            task="addition",
            task_options={"digits": 1, "chain_of_thought": False},
            steps=2,
            **GRPO_SETTINGS,
        ),
    )
    api.train(show_progress=False)
    trained = load_model(run / "model").state_dict()
    for name, value in api.policy.state_dict().items():
        assert torch.equal(value, trained[name]), name
    # Not vacuous: some groups had unequal rewards, and the weights moved.
    assert min(r["zero_std_fraction"] for r in records) < 1.0
    start = load_model(warm_up / "model").state_dict()
    assert max((trained[k] - start[k]).abs().max().item() for k in start) > 1e-3

    code, out, err = run_cli(capsys, "llm", "eval", str(run), "--size", "4", "--samples", "2")
    assert code == 0, err
    report = json.loads((run / "eval.json").read_text())
    assert f"held-out greedy accuracy {report['accuracy']:.3f} on 4 problems" in out
    assert len(out.splitlines()) == 1 + 2 + 2 + 1  # summary, header, rule, 2 rows, "wrote"


def test_resume_continues_exactly(
    warm_up: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """Ctrl-C during iteration 2 of 3 checkpoints iteration 1; --resume then ends with the
    weights and metrics of an uninterrupted run."""
    common = ["llm", "train", "grpo", *TASK, "--init", str(warm_up), *GRPO, "--steps", "3"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_cli(capsys, *common, "--run-dir", str(whole))[0] == 0

    step = GRPOTrainer.step

    def interrupted(self: GRPOTrainer) -> dict:
        if self.step_count == 1:
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(GRPOTrainer, "step", interrupted)
    code, out, _ = run_cli(capsys, *common, "--run-dir", str(parts))
    assert code == 130 and "interrupted after iteration 1 of 3" in out
    assert json.loads((parts / "run.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(GRPOTrainer, "step", step)
    code, _, err = run_cli(capsys, "llm", "train", "grpo", "--resume", "--run-dir", str(parts))
    assert code == 0, err
    a = load_checkpoint(whole / "checkpoint")
    b = load_checkpoint(parts / "checkpoint")
    assert a["step"] == b["step"] == 3
    for name, value in a["modules"]["policy"].items():
        assert torch.equal(value, b["modules"]["policy"][name]), name
    steps = [json.loads(line)["step"] for line in (parts / "metrics.jsonl").open()]
    assert steps == [1, 2, 3]
    rewards = [json.loads(line)["reward_mean"] for line in (whole / "metrics.jsonl").open()]
    assert rewards == [json.loads(line)["reward_mean"] for line in (parts / "metrics.jsonl").open()]


def test_existing_run_dir_is_never_replaced(
    warm_up: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (warm_up / "model.safetensors").read_bytes()
    code, out, err = run_cli(capsys, "llm", "sft", *TASK, *MODEL, *SFT, "--run-dir", str(warm_up))
    assert code == 2 and out == ""
    assert err == (
        f"driftlab: error: run directory {str(warm_up)!r} already exists; pass --overwrite "
        "to replace it\n"
    )
    assert (warm_up / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "grpo", "--set", "lr=-1"], "lr must be > 0, got -1.0"),
        (["train", "grpo", "--set", "lr=fast"], "lr must be a number, got 'fast'"),
        (["train", "grpo", "--set", "nope=1"], "unknown grpo option 'nope'; allowed: "),
        (["train", "grpo", "--set", "lr"], "--set takes KEY=VALUE, got 'lr'"),
        (["train", "grpo", "--set", "group_size=1"], "group_size must be >= 2, got 1"),
        (["train", "sac"], "unknown algorithm 'sac'; allowed: grpo, ppo, kimi"),
        (
            ["train", "grpo", "--init", "a", "--hf-model", "b"],
            "give exactly one of --init RUN_OR_MODEL and --hf-model LOCAL_DIR",
        ),
        (["train", "grpo", "--init", "missing"], "no saved model at 'missing'"),
        (["train", "grpo", "--task", "chess"], "task must be one of"),
        (["train", "grpo", "--resume", "--set", "lr=1"], "drop --set"),
        (["train", "kimi", "--resume"], "cannot resume"),
        (["sft", "--set", "steps=0"], "steps must be >= 1, got 0"),
        (["sft", "--model-set", "d_model=15"], "d_model must be divisible by n_heads=4, got 15"),
        (["sft", "--task-option", "digits=0"], "digits must be >= 1, got 0"),
        (["eval", "missing"], "'missing' is not a run directory of driftlab llm"),
    ],
)
def test_bad_values_are_one_line_errors(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.chdir(tmp_path)  # relative paths ("missing", default run dirs) land here
    run = ["--run-dir", "run"] if argv[0] != "eval" else []
    code, out, err = run_cli(capsys, "llm", *argv, *run)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("driftlab: error: "), err
    assert message in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_set_values_are_json_and_never_evaluated() -> None:
    assert parse_value("1e-3") == 0.001 and parse_value("[1, 2]") == [1, 2]
    assert parse_value("true") is True and parse_value("null") is None
    assert parse_value("token-mean") == "token-mean"
    assert parse_value("__import__('os').getcwd()") == "__import__('os').getcwd()"
    assert parse_pairs("--set", ["a = 1", "b=x=y"]) == {"a": 1, "b": "x=y"}
    with pytest.raises(ValueError, match="aggregation must be one of"):
        build_config(GRPOConfig, parse_pairs("--set", ["aggregation=os.system('x')"]), "grpo")


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    for verb in (["sft"], ["train"], ["eval"]):
        with pytest.raises(SystemExit) as exit_:
            main(["llm", *verb, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert "--threads THREADS" in text and "(default: 1)" in text
    from driftlab.cli import build_parser

    llm = build_parser()._subparsers._group_actions[0].choices["llm"]
    for verb in llm._subparsers._group_actions[0].choices.values():
        for action in verb._actions:
            assert action.help, (verb.prog, action.dest)


def test_torchrun_two_processes_equal_one(
    warm_up: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``torchrun --nproc_per_node 2`` (gloo): each rank samples 2 of the 4 groups and the
    update averages gradients with global denominators; after 2 iterations the weights equal
    the 1-process run's within 1e-5."""
    args = ["llm", "train", "grpo", *TASK, "--init", str(warm_up), *GRPO, "--steps", "2"]
    assert run_cli(capsys, *args, "--run-dir", str(tmp_path / "one"))[0] == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: torchrun binds its own free port (none picked here to race for).
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launch += ["--nproc_per_node", "2", "-m", "driftlab.cli"]
    result = subprocess.run(
        [*launch, *args, "--run-dir", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["world_size"] == 2
    one = load_checkpoint(tmp_path / "one" / "checkpoint")["modules"]["policy"]
    two = load_checkpoint(tmp_path / "two" / "checkpoint")["modules"]["policy"]
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-5
    assert any(
        (one[k] - load_model(warm_up / "model").state_dict()[k]).abs().max() > 1e-4 for k in one
    )
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]  # rank 0 logs alone
    expected = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").open()]
    for mine, theirs in zip(map(json.loads, lines), expected, strict=True):
        assert mine["reward_mean"] == theirs["reward_mean"]
        assert mine["accuracy"] == theirs["accuracy"]


def test_train_a_local_hugging_face_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """``--hf-model DIR``: one GRPO iteration of a tiny random GPT-2 with the character
    vocabulary (built here, nothing downloaded); the run saves it as ``hf_model/`` and
    ``eval`` reloads it and reproduces the accuracy."""
    transformers = pytest.importorskip("transformers")
    from driftlab.llm.hf import char_gpt2, save_char_tokenizer

    source = tmp_path / "gpt2"
    save_char_tokenizer(source)
    torch.manual_seed(0)
    char_gpt2(n_layer=1, n_head=2, n_embd=16, n_positions=32).save_pretrained(source)
    run = tmp_path / "run"
    code, _, err = run_cli(
        capsys, "llm", "train", "grpo", *TASK, "--hf-model", str(source), *GRPO,
        "--steps", "1", "--run-dir", str(run),
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["source"] == {
        "hf_model": str(source.resolve())
    }
    assert (run / "hf_model" / "config.json").exists() and (run / "checkpoint.json").exists()
    trained = load_checkpoint(run / "checkpoint")["modules"]["policy"]
    saved = transformers.GPT2LMHeadModel.from_pretrained(run / "hf_model").state_dict()
    assert all(torch.equal(trained[f"model.{k}"], v) for k, v in saved.items())
    before = json.loads((run / "eval.json").read_text())
    code, _, err = run_cli(capsys, "llm", "eval", str(run), "--size", "4")
    assert code == 0, err
    after = json.loads((run / "eval.json").read_text())
    assert after["accuracy"] == before["accuracy"]
    assert [s["completion"] for s in after["samples"]] == [
        s["completion"] for s in before["samples"]
    ]


def test_demo_stage_reports_accuracy_before_and_after(tmp_path: Path) -> None:
    """The ``make demo`` stage, shortened: its summary quotes the accuracies it saved."""
    from driftlab.llm.demo import run_demo

    summary = run_demo(tmp_path, seed=0, sft_steps=3, grpo_steps=1, eval_size=8)
    before = json.loads((tmp_path / "sft" / "eval.json").read_text())
    after = json.loads((tmp_path / "grpo" / "eval.json").read_text())
    assert before["problems"] == after["problems"] == 8
    assert f"accuracy {before['accuracy']:.1%} (8 problems)" in summary
    assert "1 iterations of 16 prompts x 8 completions in" in summary
    assert summary.splitlines()[2].endswith(f" s: {after['accuracy']:.1%}")
    assert (tmp_path / "grpo" / "model.json").exists()
    assert (tmp_path / "grpo" / "checkpoint.json").exists()
    records = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [1]


def test_train_without_init_warms_up_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``driftlab llm train grpo --task addition`` with neither --init nor --hf-model warms a
    TransformerLM up by SFT (here shortened to 5 steps), saves it as ``warmup.*`` in the run
    and trains from it: the run's starting weights are that model's, and equal to a warm-up
    made directly with the same seed."""
    from driftlab.llm import demo
    from driftlab.llm.cli import warm_up

    monkeypatch.setitem(demo.SFT, "steps", 5)
    run = tmp_path / "run"
    code, out, err = run_cli(
        capsys, "llm", "train", "grpo", *TASK, *GRPO, "--steps", "1", "--run-dir", str(run)
    )
    assert code == 0, err
    assert "warming up a TransformerLM by SFT" in out
    config = json.loads((run / "config.json").read_text())
    assert config["source"]["init"] == str((run / "warmup").resolve())
    assert "warm_up" in config["source"]
    options = {"digits": 1, "chain_of_thought": False}
    warm_up("addition", options, 0, tmp_path / "direct")
    saved, direct = load_model(run / "warmup"), load_model(tmp_path / "direct")
    assert all(
        torch.equal(a, b)
        for a, b in zip(saved.state_dict().values(), direct.state_dict().values(), strict=True)
    )
    trained = load_model(run / "model")
    assert any(
        not torch.equal(a, b)
        for a, b in zip(saved.state_dict().values(), trained.state_dict().values(), strict=True)
    )
