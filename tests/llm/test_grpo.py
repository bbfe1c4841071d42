"""GRPO and its variants: the loss of a hand-computed batch, aggregation modes, clipping
with mu = 1, recorded log-probs, minibatch gradients, process supervision, dynamic
sampling, reference resets, a step through a Hugging Face model, and config errors."""

import math

import pytest
import torch
from llm_helpers import SMALL, TOK, length_reward, tiny_model

from driftlab.core.config import ConfigError
from driftlab.llm.grpo import GRPOConfig, GRPOTrainer, grpo_config, process_advantages
from driftlab.llm.trainer import Experience
from driftlab.rl.losses import aggregate_loss


def trainer(**options):
    config = GRPOConfig(**{**SMALL, **options})
    return GRPOTrainer(tiny_model(), TOK, config, reward_functions=[length_reward])


def hand_batch(rewards, old, new, ref, mask):
    """An experience of G = 2 with given per-token log-probs (as probabilities)."""
    rows, width = len(rewards), len(mask[0])
    return Experience(
        prompt_ids=torch.full((rows, 2), TOK.bos_id),
        prompt_mask=torch.ones(rows, 2, dtype=torch.long),
        completion_ids=torch.full((rows, width), TOK.encode("1")[0]),
        completion_mask=torch.tensor(mask),
        old_log_probs=torch.tensor(old).log(),
        ref_log_probs=torch.tensor(ref).log(),
        rewards=torch.tensor(rewards),
        correct=torch.tensor(rewards),
        problems=[{}] * (rows // 2),
        group_size=2,
        extras={"group_id": torch.arange(rows // 2).repeat_interleave(2)},
    ), torch.tensor(new).log()


def test_grpo_loss_of_a_hand_computed_two_group_batch():
    """Groups (r = 1, 0) and (1, 1), eps = 0.2, beta = 0.04, k3, sequence mean (eq. 3).

    Group 1: mean 0.5, std sqrt(0.5), so A = +-0.5 / (0.70711 + 1e-4); group 2: A = 0.
    Row 0 (A > 0): ratios 0.7/0.5 = 1.4 (clipped to 1.2) and 1; row 1 (A < 0): ratio
    0.3/0.5 = 0.6 (clipped to 0.8; min(0.6 A, 0.8 A) = 0.8 A). k3 = r - log r - 1 with
    r = ref/new: 5/7 (row 0), 5/3 (row 1), 1/2 (row 2, ref 0.25 against 0.5).
    """
    t = trainer(beta=0.04, clip_eps=0.2, aggregation="sequence-mean")
    exp, new = hand_batch(
        rewards=[1.0, 0.0, 1.0, 1.0],
        old=[[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]],
        new=[[0.7, 0.5], [0.3, 1.0], [0.5, 0.5], [0.5, 0.5]],
        ref=[[0.5, 0.5], [0.5, 1.0], [0.25, 0.5], [0.5, 0.5]],
        mask=[[1, 1], [1, 0], [1, 1], [1, 1]],
    )
    t.prepare(exp)
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    assert exp.advantages.tolist() == pytest.approx([a, -a, 0.0, 0.0], abs=1e-6)

    def k3(r):
        return r - math.log(r) - 1

    row0 = (-1.2 * a + 0.04 * k3(5 / 7) - a) / 2
    row1 = 0.8 * a + 0.04 * k3(5 / 3)
    row2 = 0.04 * k3(0.5) / 2
    expected = (row0 + row1 + row2 + 0.0) / 4
    loss, metrics = t.loss(exp, new)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # One of the 7 tokens is clipped high (row 0), one low (row 1).
    assert metrics["clip_high"] == pytest.approx(1 / 7)
    assert metrics["clip_low"] == pytest.approx(1 / 7)
    assert metrics["kl"] == pytest.approx((k3(5 / 7) + k3(5 / 3) + k3(0.5)) / 7, abs=1e-6)


def test_aggregation_modes_on_a_padded_batch():
    """values [[1, 2, 3], [4, pad, pad]]: token mean 10/4, sequence mean (2 + 4)/2, token sum
    over a constant 10/(2 * 12); only the constant form ignores a wider padding."""
    t = trainer()
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    exp = Experience(
        prompt_ids=torch.zeros(2, 1, dtype=torch.long),
        prompt_mask=torch.ones(2, 1, dtype=torch.long),
        completion_ids=torch.zeros(2, 3, dtype=torch.long),
        completion_mask=mask,
        old_log_probs=torch.zeros(2, 3),
        ref_log_probs=None,
        rewards=torch.zeros(2),
        correct=torch.zeros(2),
        problems=[{}],
        group_size=2,
    )
    expected = {"token-mean": 2.5, "sequence-mean": 3.0, "token-sum-constant": 10 / 24}
    for mode, value in expected.items():
        assert t.aggregate(values, exp, mode).item() == pytest.approx(value)
        constant = 12 if mode == "token-sum-constant" else None
        assert aggregate_loss(values, mask, mode, constant).item() == pytest.approx(value)
    # Two more padding columns: Dr. GRPO's sum over a constant is unchanged (and so are the
    # means), while a constant taken from the padded width would change.
    padded = torch.cat((values, torch.full((2, 2), 7.0)), dim=1)
    padded_mask = torch.cat((mask, torch.zeros(2, 2, dtype=torch.long)), dim=1)
    exp.completion_mask = padded_mask
    for mode, value in expected.items():
        assert t.aggregate(padded, exp, mode).item() == pytest.approx(value)
    assert aggregate_loss(values, mask, "token-sum-constant").item() == pytest.approx(10 / 6)
    assert aggregate_loss(padded, padded_mask, "token-sum-constant").item() == pytest.approx(1.0)


def test_mu_1_never_clips_and_mu_2_does():
    """With mu = 1 and one minibatch the only update is at the sampling policy: ratio exactly
    1, clip fractions exactly 0. A second pass after a large step does clip."""
    metrics = trainer(mu=1, lr=0.05, beta=0.0).step()
    assert metrics["clip_low"] == 0.0 and metrics["clip_high"] == 0.0
    assert metrics["ratio_mean"] == 1.0
    assert metrics["advantage_abs_mean"] > 0  # a real update happened
    again = trainer(mu=4, lr=0.05, beta=0.0).step()
    assert again["clip_low"] + again["clip_high"] > 0


def test_recomputed_log_probs_equal_recorded():
    t = trainer(temperature=0.8)
    exp = t.collect(t.select_problems(4))
    recomputed, entropy = t.forward(exp)
    assert exp.completion_mask.sum() > 20
    assert (recomputed - exp.old_log_probs).abs().max().item() < 1e-5
    assert (entropy[exp.completion_mask.bool()] > 0).all()


@pytest.mark.parametrize("mode", ["token-mean", "sequence-mean", "token-sum-constant"])
def test_minibatch_split_gives_the_whole_batch_gradient(mode):
    """Two minibatches of two groups: the mean of their gradients (same weights) equals the
    gradient of the whole batch, because both divide by the whole batch's denominator."""
    t = trainer(aggregation=mode, beta=0.04, temperature=1.0)
    exp = t.collect(t.select_problems(4))
    t.prepare(exp)
    params = t.parameters_to_train()

    def gradient(parts, minibatches):
        for p in params:
            p.grad = None
        exp.totals = t._totals(exp, minibatches)
        for rows in parts:
            mb = exp.select(rows)
            loss, _ = t.loss(mb, t.forward(mb)[0])
            loss.backward()
        return torch.cat([p.grad.reshape(-1) for p in params]) / minibatches

    whole = gradient([range(16)], 1)
    split = gradient([range(8), range(8, 16)], 2)
    assert whole.abs().max() > 1e-4
    assert torch.allclose(whole, split, atol=1e-6, rtol=1e-5)


def test_process_advantages_by_hand():
    """Group of 2: steps (1 ending at token 1, 0 at token 3) and (1 at token 2). Normalised
    together: mean 2/3, std sqrt(1/3); a token gets the sum over steps ending at or after it."""
    advantages = process_advantages([[1.0, 0.0], [1.0]], [[1, 3], [2]], 2, 5)
    std = math.sqrt(1 / 3) + 1e-4
    one, zero = (1 / 3) / std, (-2 / 3) / std
    expected = [[one + zero] * 2 + [zero] * 2 + [0.0], [one] * 3 + [0.0] * 2]
    assert advantages.tolist() == [pytest.approx(row, abs=1e-6) for row in expected]


def test_process_supervision_rewards_correct_steps():
    t = trainer(supervision="process")
    problem = t.task.problems(1, "train", seed=3)[0]
    lines = problem["solution"].split("\n")
    assert t.step_rewards(problem, problem["solution"], 1.0) == [1.0] * len(lines)
    wrong = "9+9+0=18\n" + "\n".join(lines[1:])
    assert t.step_rewards(problem, wrong, 0.0) == [0.0] * len(lines)
    metrics = t.step()
    assert math.isfinite(metrics["loss"])


def test_dynamic_sampling_keeps_only_mixed_groups(monkeypatch):
    """DAPO: groups that are all correct or all wrong are dropped and the batch refilled."""
    t = trainer(dynamic_sampling=True, max_sampling_rounds=5)

    def score(problems, completions):
        # Correct when the completion's length is odd: mixed groups, all-equal ones too.
        correct = torch.tensor([float(len(c) % 2) for c in completions])
        return correct, correct

    monkeypatch.setattr(t, "score", score)
    exp = t.collect(t.select_problems(4))
    correct = exp.correct.reshape(-1, 4)
    assert exp.groups == t._kept_groups <= 4 and exp.groups > 0
    assert (correct.min(dim=1).values == 0).all() and (correct.max(dim=1).values == 1).all()
    assert exp.extras["group_id"].tolist() == [g for g in range(exp.groups) for _ in range(4)]


def test_reference_reset_makes_the_reference_the_policy():
    t = trainer(beta=0.04, ref_reset_every=2, lr=0.01)
    t.step()
    differs = any(
        not torch.equal(p, q)
        for p, q in zip(t.policy.parameters(), t.reference.parameters(), strict=True)
    )
    assert differs
    t.step()
    for p, q in zip(t.policy.parameters(), t.reference.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    "options",
    [
        {"advantage": "rloo"},
        {"advantage": "reinforce++", "kl_in": "reward", "kl_estimator": "k1"},
        {"kl_estimator": "k2"},
        {"preset": "dr_grpo"},
        {"preset": "dapo"},
    ],
)
def test_variants_take_a_step(options):
    options = dict(options)
    preset = options.pop("preset", "grpo")
    config = grpo_config(preset, **SMALL, **options)
    metrics = GRPOTrainer(tiny_model(), TOK, config, reward_functions=[length_reward]).step()
    assert metrics["advantage_abs_mean"] > 0
    assert all(math.isfinite(v) for v in metrics.values())


def test_full_step_through_a_tiny_hugging_face_gpt2():
    pytest.importorskip("transformers")
    from driftlab.llm.hf import HFPolicy, char_gpt2

    torch.manual_seed(0)
    policy = HFPolicy(char_gpt2(n_layer=1, n_head=2, n_embd=16, n_positions=48))
    before = [p.detach().clone() for p in policy.parameters()]
    config = GRPOConfig(**SMALL, beta=0.04, lr=0.01)
    t = GRPOTrainer(policy, TOK, config, reward_functions=[length_reward])
    exp = t.collect(t.select_problems(4))
    recomputed, _ = t.forward(exp)
    assert (recomputed - exp.old_log_probs).abs().max().item() < 1e-5
    metrics = t.step()
    assert metrics["clip_low"] == 0.0 and metrics["ratio_mean"] == 1.0
    assert math.isfinite(metrics["loss"]) and metrics["response_length"] > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, policy.parameters(), strict=True))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"clip_eps": 1.5}, "clip_eps must be in"),
        ({"clip_eps_high": -0.1}, "clip_eps_high must be >= 0"),
        ({"kl_estimator": "k4"}, "kl_estimator must be one of 'k1', 'k2', 'k3'; got 'k4'"),
        ({"kl_in": "reward"}, "kl_in='reward' uses the k1 estimator"),
        ({"advantage": "ppo"}, "advantage must be one of"),
        ({"advantage": "rloo", "scale": "none"}, "scale applies to advantage='grpo' only"),
        ({"aggregation": "sum"}, "aggregation must be one of"),
        ({"loss_constant": 10.0}, "loss_constant is used by"),
        ({"supervision": "process", "task": "countdown", "task_options": {}}, "unique reference"),
        ({"ref_reset_every": 5, "beta": 0.0}, "needs a reference model"),
        ({"dynamic_sampling": "yes"}, "dynamic_sampling must be true or false"),
        ({"overlong_cache": 13}, "overlong_cache must be <= max_new_tokens=12"),
        ({"max_sampling_rounds": 0}, "max_sampling_rounds must be >= 1"),
    ],
)
def test_bad_config_values_raise_one_line_errors(options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")) as e:
        GRPOConfig(**{**SMALL, **options})
    assert "\n" not in str(e.value)


def test_presets_are_validated():
    assert grpo_config("dapo", **SMALL).clip_eps_high == 0.28
    with pytest.raises(ConfigError, match="preset must be one of"):
        grpo_config("ppo")
    with pytest.raises(ConfigError, match="unknown GRPOConfig option"):
        grpo_config("grpo", clip=0.1)
