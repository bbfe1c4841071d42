"""The shared RL trainer loop: sharding-independent sampling, experience slicing, exact
resume, evaluation, checkpoints on Ctrl-C, the trainer registry and config errors."""

import ast
import math
from pathlib import Path

import pytest
import torch
from llm_helpers import SMALL, TOK, length_reward, tiny_model

from driftlab.core import distributed
from driftlab.core.config import ConfigError
from driftlab.llm import trainer as trainer_module
from driftlab.llm.generation import generate, inverse_cdf_sample
from driftlab.llm.grpo import GRPOConfig, GRPOTrainer
from driftlab.llm.trainer import (
    STANDARD_METRICS,
    TRAINERS,
    Experience,
    RLConfig,
    RLTrainer,
    get_trainer,
    samples_table,
)


def make(run_dir=None, **options):
    config = GRPOConfig(**{**SMALL, **options})
    return GRPOTrainer(tiny_model(), TOK, config, reward_functions=[length_reward], run_dir=run_dir)


def test_inverse_cdf_sample_picks_the_interval_of_the_uniform():
    probs = torch.tensor([[0.2, 0.0, 0.5, 0.3]] * 5)
    uniforms = torch.tensor([0.0, 0.19, 0.2, 0.69, 0.999])
    # Intervals: token 0 [0, 0.2), token 1 empty, token 2 [0.2, 0.7), token 3 [0.7, 1).
    assert inverse_cdf_sample(probs, uniforms).tolist() == [0, 0, 2, 2, 3]


def test_samples_do_not_depend_on_how_the_batch_is_split():
    model = tiny_model().eval()
    prompts = ["1+2=\n", "3+4=\n", "5+6=\n", "7+8=\n"]
    options = {"eos_id": TOK.eos_id, "pad_id": TOK.pad_id, "max_new_tokens": 10}
    uniforms = torch.rand(8, 10, generator=torch.Generator().manual_seed(0))
    ids, mask = TOK.batch_encode(prompts, "left")
    whole = generate(model, ids, mask, group_size=2, uniforms=uniforms, **options)
    halves = []
    for part in (slice(0, 2), slice(2, 4)):
        ids, mask = TOK.batch_encode(prompts[part], "left")
        rows = uniforms[part.start * 2 : part.stop * 2]
        halves.append(generate(model, ids, mask, group_size=2, uniforms=rows, **options))
    for name in ("completion_mask", "log_probs"):
        joined = torch.cat([getattr(h, name) for h in halves])
        width = min(joined.shape[1], getattr(whole, name).shape[1])
        assert torch.allclose(joined[:, :width], getattr(whole, name)[:, :width], atol=1e-5)
    joined_ids = torch.cat([h.completion_ids[:, :width] for h in halves])
    assert torch.equal(joined_ids, whole.completion_ids[:, :width])


def test_collect_on_two_ranks_equals_one(monkeypatch):
    """Rank 0 and rank 1 of 2 sample exactly the rows of the one-process batch."""
    one = make()
    exp = one.collect(one.select_problems(4))
    parts = []
    for r in (0, 1):
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        t = make()
        parts.append(t.collect(t.select_problems(4)))
    monkeypatch.undo()
    assert [p.extras["group_id"][::4].tolist() for p in parts] == [[0, 1], [2, 3]]
    merged = Experience.concatenate(parts, pad_id=TOK.pad_id)
    width = exp.completion_ids.shape[1]
    assert torch.equal(merged.completion_ids[:, :width], exp.completion_ids)
    assert torch.equal(merged.rewards, exp.rewards)


def test_experience_select_keeps_groups_whole():
    t = make()
    exp = t.collect(t.select_problems(4))
    part = exp.select(list(range(8, 12)) + list(range(0, 4)))
    assert part.problems == [exp.problems[2], exp.problems[0]]
    assert torch.equal(part.completion_ids[4:], exp.completion_ids[:4])
    with pytest.raises(ValueError, match="whole groups of 4 consecutive rows"):
        exp.select([1, 2, 3, 4])
    with pytest.raises(ValueError, match="whole groups of 4 rows"):
        exp.select([0, 1])


def test_metrics_of_a_step():
    t = make(beta=0.04)
    metrics = t.step()
    assert set(STANDARD_METRICS) <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    # The length reward takes the values 0, 0.5, 1; accuracy is the task's correctness.
    assert 0 < metrics["reward_mean"] < 1 and metrics["accuracy"] == 0.0
    assert 0 <= metrics["zero_std_fraction"] <= 1 and metrics["entropy"] > 0
    assert metrics["generation_tokens_per_s"] > 0 and metrics["training_tokens_per_s"] > 0
    assert t.step_count == 1


def test_exact_resume(tmp_path):
    """2 iterations, save, resume, 2 more == 4 straight: parameters, reference, optimiser
    state and metrics all equal (mu = 2 and shuffled minibatches exercise every draw)."""
    options = {"steps": 4, "mu": 2, "minibatch_size": 8, "beta": 0.04, "lr": 0.01}
    straight = make(**options)
    records = straight.train(show_progress=False)
    first = make(run_dir=tmp_path, **options)
    first.train(steps=2, show_progress=False)
    resumed = RLTrainer.resume(tmp_path, reward_functions=[length_reward])
    assert isinstance(resumed, GRPOTrainer) and resumed.step_count == 2
    later = resumed.train(show_progress=False)
    assert [r["step"] for r in later] == [3, 4]
    for name, module in straight.modules().items():
        for p, q in zip(module.parameters(), resumed.modules()[name].parameters(), strict=True):
            assert torch.equal(p, q), name
    assert later[-1]["loss"] == records[-1]["loss"]
    assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "checkpoint.json").exists()


def test_interrupt_saves_a_checkpoint(tmp_path, monkeypatch):
    t = make(run_dir=tmp_path, steps=5)
    calls = []

    def interrupted_step(original=t.step):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return original()

    monkeypatch.setattr(t, "step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        t.train(show_progress=False)
    assert RLTrainer.resume(tmp_path, reward_functions=[length_reward]).step_count == 2


def test_evaluate_and_samples_table(tmp_path):
    t = make(run_dir=tmp_path, eval_every=1, steps=1, eval_samples=2)
    result = t.evaluate()
    assert result["eval_accuracy"] == 0.0 and len(result["samples"]) == 2
    assert 1 <= result["eval_length"] <= 13
    records = t.train(show_progress=False)
    assert "eval_accuracy" in records[0]
    table = (tmp_path / "samples.md").read_text()
    assert "## step 1" in table and "| prompt | completion | reward | correct |" in table
    one = samples_table([{"prompt": "1+2=\n", "completion": "a|b", "reward": 1, "correct": 1}])
    assert one.splitlines()[-1] == "| 1+2=\\n | a\\|b | 1.00 | 1 |"


def test_trainer_registry_imports_lazily():
    """trainer.py imports no algorithm module at module level (they import it)."""
    tree = ast.parse(Path(trainer_module.__file__).read_text())
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not imported & {module for module, _ in TRAINERS.values()}
    assert get_trainer("grpo") is GRPOTrainer
    assert set(TRAINERS) == {"grpo", "ppo", "kimi"}
    with pytest.raises(ConfigError, match="trainer must be one of 'grpo', 'ppo', 'kimi'"):
        get_trainer("dpo")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"task": "sorting"}, "task must be one of 'addition', 'multiplication', 'countdown'"),
        ({"task_options": {"digitz": 2}}, "are not options of task 'addition'"),
        ({"steps": 0}, "steps must be >= 1, got 0"),
        ({"group_size": 1}, "group_size must be >= 2, got 1"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"top_p": 1.5}, "top_p must be in"),
        ({"mu": 0}, "mu must be >= 1"),
        ({"minibatch_size": 6}, "minibatch_size must be a multiple of group_size=4"),
        ({"beta": -1.0}, "beta must be >= 0"),
        ({"reward_weights": []}, "reward_weights must be a non-empty list"),
        ({"lr": "fast"}, "lr must be a number, got 'fast'"),
    ],
)
def test_bad_config_values_raise_one_line_errors(options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as e:
        RLConfig(**{**SMALL, **options})
    assert "\n" not in str(e.value)


def test_reward_weights_must_match_the_reward_functions():
    with pytest.raises(ConfigError, match="one weight per reward function \\(2\\), got 3"):
        GRPOTrainer(tiny_model(), TOK, GRPOConfig(**SMALL, reward_weights=[1, 1, 1]))
    with pytest.raises(ConfigError, match="needs a GRPOConfig, got RLConfig"):
        GRPOTrainer(tiny_model(), TOK, RLConfig(**SMALL))
