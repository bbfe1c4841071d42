"""PPO for language models: per-token rewards with the KL penalty, GAE over tokens, the
adaptive KL controller, the value model and full PPO steps on a tiny transformer."""

import copy

import pytest
import torch
from llm_helpers import SMALL
from torch import distributed as dist
from torch import multiprocessing as mp

from driftlab.core import distributed
from driftlab.core.config import ConfigError
from driftlab.llm.generation import sequence_log_probs
from driftlab.llm.model import TransformerConfig, TransformerLM
from driftlab.llm.ppo import (
    PRESETS,
    AdaptiveKLController,
    FixedKLController,
    PPOConfig,
    PPOTrainer,
    last_token,
    masked_whiten,
    ppo_config,
    token_advantages,
    token_rewards,
)
from driftlab.llm.tokenizer import CharTokenizer
from driftlab.llm.trainer import Experience
from driftlab.llm.value import ValueModel
from gloo import rendezvous

torch.set_num_threads(1)

# Two completions: three tokens, and two tokens then one padding position.
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
SCORES = torch.tensor([1.0, 0.0])
LOGP = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
REF = torch.tensor([[-1.5, -2.0, -1.0], [-0.5, -1.0, 0.0]])
# The padding position's value is garbage on purpose: it must not matter.
VALUES = torch.tensor([[0.5, 0.6, 0.8], [0.2, 0.4, 9.0]])


def test_token_rewards_put_the_outcome_last_and_the_k1_penalty_everywhere():
    rewards, kl = token_rewards(SCORES, MASK, LOGP, REF, kl_coef=0.1)
    # k1 = logp - logp_ref on valid tokens; r_t = [t = last] score - 0.1 k1_t.
    assert torch.allclose(kl, torch.tensor([[0.5, 0.0, 0.5], [-0.5, 0.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.0, 0.95], [0.05, 0.0, 0.0]]))
    no_ref, zero_kl = token_rewards(SCORES, MASK)
    assert torch.equal(no_ref, torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    assert torch.equal(zero_kl, torch.zeros(2, 3))
    assert torch.equal(
        last_token(torch.tensor([[1, 1, 0], [0, 0, 0]])),
        torch.tensor([[False, True, False], [False, False, False]]),
    )


def test_gae_over_tokens_by_hand_and_padding_changes_nothing():
    rewards, _ = token_rewards(SCORES, MASK, LOGP, REF, kl_coef=0.1)
    advantages, returns = token_advantages(rewards, VALUES, MASK, gamma=1.0, lam=0.5)
    # Row 0: deltas (-0.05 + 0.6 - 0.5, 0 + 0.8 - 0.6, 0.95 - 0.8) = (0.05, 0.2, 0.15);
    # A_2 = 0.15, A_1 = 0.2 + 0.5 * 0.15 = 0.275, A_0 = 0.05 + 0.5 * 0.275 = 0.1875.
    # Row 1: deltas (0.05 + 0.4 - 0.2, 0 - 0.4) = (0.25, -0.4); A_1 = -0.4, A_0 = 0.05.
    expected = torch.tensor([[0.1875, 0.275, 0.15], [0.05, -0.4, 0.0]])
    assert torch.allclose(advantages, expected)
    assert torch.allclose(returns, torch.tensor([[0.6875, 0.875, 0.95], [0.25, 0.0, 0.0]]))
    # Two more padding positions with garbage everywhere: the valid tokens keep their values.
    pad = torch.tensor([[7.0, -3.0], [5.0, 2.0]])
    mask = torch.cat((MASK, torch.zeros(2, 2, dtype=MASK.dtype)), dim=1)
    rewards_padded, _ = token_rewards(
        SCORES, mask, torch.cat((LOGP, pad), 1), torch.cat((REF, -pad), 1), kl_coef=0.1
    )
    padded, padded_returns = token_advantages(
        rewards_padded, torch.cat((VALUES, pad), 1), mask, gamma=1.0, lam=0.5
    )
    assert torch.allclose(padded[:, :3], expected)
    assert torch.equal(padded[:, 3:], torch.zeros(2, 2))
    assert torch.allclose(padded_returns[:, :3], returns)
    # lambda = 1, gamma = 1: A_t + V(s_t) is the reward-to-go.
    _, mc_returns = token_advantages(rewards, VALUES, MASK, gamma=1.0, lam=1.0)
    assert torch.allclose(mc_returns, torch.tensor([[0.9, 0.95, 0.95], [0.05, 0.0, 0.0]]))


def test_masked_whiten_uses_only_valid_tokens():
    x = torch.tensor([[0.1875, 0.275, 0.15], [0.05, -0.4, 123.0]])
    whitened = masked_whiten(x, MASK)
    valid = torch.tensor([0.1875, 0.275, 0.15, 0.05, -0.4])
    expected = (valid - valid.mean()) / (valid.std() + 1e-8)
    assert torch.allclose(whitened[MASK.bool()], expected, atol=1e-6)
    assert whitened[1, 2] == 0.0
    assert abs(float(whitened[MASK.bool()].mean())) < 1e-6
    # Two ranks holding the same rows: the statistics are those of the ten tokens together.
    doubled = torch.cat((valid, valid))
    twice = masked_whiten(x, MASK, reduce=lambda t: 2 * t)[MASK.bool()]
    assert torch.allclose(twice, (valid - doubled.mean()) / (doubled.std() + 1e-8), atol=1e-6)


def test_adaptive_kl_controller_worked_example():
    controller = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    # KL 9 is 50 % over target: the error clips to +0.2; beta *= 1 + 0.2 * 256 / 10000.
    controller.update(9.0, n_steps=256)
    assert controller.value == pytest.approx(0.1 * 1.00512)
    # KL 5: error 5/6 - 1 = -1/6; beta *= 1 - (1/6) * 256 / 10000.
    controller.update(5.0, n_steps=256)
    assert controller.value == pytest.approx(0.1 * 1.00512 * (1 - 256 / 60_000))
    # At the target nothing moves; a fixed controller never moves.
    before = controller.value
    controller.update(6.0, n_steps=256)
    assert controller.value == before
    fixed = FixedKLController(0.05)
    fixed.update(100.0, n_steps=256)
    assert fixed.value == 0.05
    restored = AdaptiveKLController(1.0, target=6.0, horizon=10_000)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == controller.value


def tiny_lm(seed=0, vocab=24):
    torch.manual_seed(seed)
    config = TransformerConfig(vocab_size=vocab, d_model=16, n_layers=2, n_heads=2, max_seq_len=64)
    return TransformerLM(config).eval()


def test_value_model_reads_the_state_before_each_token():
    policy = tiny_lm()
    ids = torch.randint(3, 24, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # a left-padded prompt
    # One backbone pass gives forward's logits through the output projection.
    logits, _ = policy(ids, mask)
    assert torch.equal(policy.logits_from_hidden(policy.hidden_states(ids, mask)), logits)

    prompt_ids, prompt_mask = ids[:, :5], mask[:, :5]
    completion_ids = ids[:, 5:]
    completion_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    head = ValueModel(policy, shared=True)
    separate = ValueModel(copy.deepcopy(policy), shared=False)
    # The head starts at zero; a shared backbone is not the value model's parameter.
    assert torch.equal(
        head(prompt_ids, prompt_mask, completion_ids, completion_mask), torch.zeros(2, 4)
    )
    assert sum(p.numel() for p in head.parameters()) == 17
    assert sum(p.numel() for p in separate.parameters()) == 17 + sum(
        p.numel() for p in policy.parameters()
    )
    torch.nn.init.normal_(head.head.weight)
    values = head(prompt_ids, prompt_mask, completion_ids, completion_mask)
    hidden = policy.hidden_states(
        torch.cat((prompt_ids, completion_ids), 1), torch.cat((prompt_mask, completion_mask), 1)
    )
    # V(s_t) is read where the logits of token t are: position prompt_len - 1 + t.
    expected = (hidden[:, 4:8] @ head.head.weight[0] + head.head.bias) * completion_mask
    assert torch.allclose(values, expected, atol=1e-6)
    log_probs, entropy, same_values = head.log_probs_and_values(
        prompt_ids, prompt_mask, completion_ids, completion_mask, temperature=0.7
    )
    reference, reference_entropy = sequence_log_probs(
        policy,
        prompt_ids,
        prompt_mask,
        completion_ids,
        completion_mask,
        temperature=0.7,
        return_entropy=True,
    )
    assert torch.equal(log_probs, reference) and torch.equal(entropy, reference_entropy)
    assert torch.allclose(same_values, values)


# -- the trainer ------------------------------------------------------------------------------

TOK = CharTokenizer()


def length_reward(prompts, completions, **fields):
    """A reward every completion earns differently (a random policy rarely adds right)."""
    return [len(c) / 10 for c in completions]


def ppo_trainer(policy=None, tokenizer=TOK, **options):
    settings = {**SMALL, "max_new_tokens": 10, "lr": 1e-3, **options}
    if policy is None:
        policy = tiny_lm(vocab=TOK.vocab_size)
    return PPOTrainer(policy, tokenizer, PPOConfig(**settings), reward_functions=[length_reward])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"value_model": "critic"}, "value_model must be one of 'separate', 'head'; got 'critic'"),
        ({"kl_controller": "adaptive", "beta": 0.0}, "kl_controller 'adaptive' needs beta > 0"),
        ({"kl_controller": "pid"}, "kl_controller must be one of"),
        ({"kl_target": 0.0}, "kl_target must be > 0, got 0.0"),
        ({"kl_horizon": 0}, "kl_horizon must be >= 1, got 0"),
        ({"value_lr": -1e-3}, "value_lr must be > 0, got -0.001"),
        ({"vf_coef": -1.0}, "vf_coef must be >= 0, got -1.0"),
        ({"value_clip": 0.0}, "value_clip must be > 0, got 0.0"),
        ({"clip_eps": 0.0}, "clip_eps must be > 0, got 0.0"),
        ({"lam": 1.5}, r"lam must be in \[0.0, 1.0\], got 1.5"),
        ({"gamma": -0.1}, r"gamma must be in \[0.0, 1.0\], got -0.1"),
        ({"whiten_advantages": "yes"}, "whiten_advantages must be true or false"),
    ],
)
def test_bad_config_values_raise_one_line_errors(options, message):
    with pytest.raises(ConfigError, match=message) as error:
        PPOConfig(**options)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_configs(name):
    config = ppo_config(name, seed=3)
    assert all(getattr(config, key) == value for key, value in PRESETS[name].items())
    assert config.seed == 3
    with pytest.raises(ConfigError, match="unknown PPOConfig option"):
        ppo_config(name, clip_range=0.1)


def hand_experience(trainer):
    """One group of two completions shaped like ``MASK``, with set values, returns and
    advantages."""
    prompt_ids = torch.tensor([[5, 6, 7], [5, 6, 7]])
    completion_ids = torch.tensor([[8, 9, 10], [11, 12, TOK.pad_id]])
    return Experience(
        prompt_ids=prompt_ids,
        prompt_mask=torch.ones_like(prompt_ids),
        completion_ids=completion_ids,
        completion_mask=MASK,
        old_log_probs=torch.zeros(2, 3),
        ref_log_probs=None,
        rewards=SCORES,
        correct=SCORES,
        problems=[{"prompt": "1+1=\n", "target": 2}],
        group_size=2,
        advantages=torch.tensor([[1.0, -1.0, 0.5], [2.0, 0.0, 0.0]]),
        extras={
            "values": torch.tensor([[0.0, 0.5, 1.0], [0.3, 0.3, 0.0]]),
            "returns": torch.tensor([[1.0, 0.2, 0.9], [0.0, 0.6, 0.0]]),
        },
    )


@pytest.mark.parametrize(("value_clip", "expected"), [(0.2, 0.113), (None, 0.085)])
def test_clipped_value_loss_on_the_batch(value_clip, expected):
    trainer = ppo_trainer(value_clip=value_clip, vf_coef=0.5)
    # Every value is the head's bias, 0.4.
    torch.nn.init.constant_(trainer.value_model.head.bias, 0.4)
    exp = hand_experience(trainer)
    loss, metrics = trainer.loss(exp, exp.old_log_probs.clone())
    # Tokens (v_old, R) with v = 0.4 and clip 0.2: 0.5 max((v - R)^2, (v_clipped - R)^2) =
    # 0.32 (v_clipped 0.2), 0.02, 0.125 (v_clipped 0.8, the unclipped error is larger), 0.08,
    # 0.02; the token mean is 0.565 / 5. Unclipped: 0.5 (0.36 + 0.04 + 0.25 + 0.16 + 0.04) / 5.
    assert metrics["value_loss"] == pytest.approx(expected)
    # Ratio 1: the surrogate is -mean(A) over the five tokens, -(1 - 1 + 0.5 + 2 + 0) / 5.
    assert metrics["policy_loss"] == pytest.approx(-0.5)
    assert float(loss.detach()) == pytest.approx(-0.5 + 0.5 * expected)
    assert metrics["value_clip_fraction"] == pytest.approx(0.4 if value_clip else 0.0)
    assert metrics["ratio_min"] == metrics["ratio_max"] == 1.0


def test_one_epoch_one_minibatch_has_ratio_exactly_one():
    metrics = ppo_trainer(mu=1, minibatch_size=None).step()
    assert metrics["ratio_min"] == metrics["ratio_max"] == 1.0
    assert metrics["clip_low"] == metrics["clip_high"] == 0.0
    # Two passes: the second pass's ratios have moved.
    moved = ppo_trainer(mu=2, minibatch_size=None).step()
    assert moved["ratio_max"] > 1.0 or moved["ratio_min"] < 1.0


@pytest.mark.parametrize("value_model", ["separate", "head"])
def test_ppo_update_decreases_the_loss_on_its_batch(value_model):
    trainer = ppo_trainer(value_model=value_model, value_lr=1e-2, mu=1, beta=0.1)
    trainer.step()  # the policy moves away from the reference: the KL penalty is live
    exp = trainer.collect(trainer.select_problems(trainer.config.prompts_per_step))
    trainer.prepare(exp)
    assert exp.advantages.shape == exp.completion_mask.shape
    assert exp.extras["returns"].shape == exp.completion_mask.shape

    def loss_on_batch():
        with torch.no_grad():
            return trainer.loss(exp, trainer.forward(exp)[0])

    before, before_metrics = loss_on_batch()
    policy_before = [p.detach().clone() for p in trainer.policy.parameters()]
    trainer.update(exp)
    after, after_metrics = loss_on_batch()
    assert float(after) < float(before)
    assert after_metrics["value_loss"] < before_metrics["value_loss"]
    assert after_metrics["policy_loss"] < before_metrics["policy_loss"]
    assert any(
        not torch.equal(p, q)
        for p, q in zip(policy_before, trainer.policy.parameters(), strict=True)
    )


def test_separate_value_model_leaves_the_policy_alone_and_head_shares_it():
    separate = ppo_trainer(value_model="separate")
    head = ppo_trainer(value_model="head")
    n_policy = sum(p.numel() for p in separate.policy.parameters())
    assert sum(p.numel() for p in separate.parameters_to_train()) == 2 * n_policy + 17
    assert sum(p.numel() for p in head.parameters_to_train()) == n_policy + 17
    assert set(head.modules()) == {"policy", "reference", "value_model"}
    # The value loss alone: it reaches the policy's weights only through a shared backbone.
    for trainer, reaches_policy in ((separate, False), (head, True)):
        torch.nn.init.normal_(trainer.value_model.head.weight)
        exp = hand_experience(trainer)
        exp.advantages = torch.zeros(2, 3)
        trainer.optimizer.zero_grad()
        loss, _ = trainer.loss(exp, trainer.forward(exp)[0])
        loss.backward()
        grads = [p.grad for p in trainer.policy.parameters() if p.grad is not None]
        assert any(bool(g.abs().sum() > 0) for g in grads) == reaches_policy


def test_adaptive_kl_coefficient_follows_the_batch_kl():
    trainer = ppo_trainer(kl_controller="adaptive", beta=0.2, kl_target=0.5, kl_horizon=64, lr=1e-2)
    first = trainer.step()
    assert first["kl_coef"] == 0.2
    second = trainer.step()
    # Ziegler et al.: beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * rows / horizon.
    error = min(max(first["sequence_kl"] / 0.5 - 1.0, -0.2), 0.2)
    assert second["kl_coef"] == pytest.approx(0.2 * (1 + error * 16 / 64))
    error = min(max(second["sequence_kl"] / 0.5 - 1.0, -0.2), 0.2)
    assert trainer.kl_controller.value == pytest.approx(second["kl_coef"] * (1 + error / 4))
    assert second["kl_coef"] != 0.2


@pytest.mark.parametrize("value_model", ["separate", "head"])
def test_exact_resume(tmp_path, value_model):
    options = {"value_model": value_model, "kl_controller": "adaptive", "mu": 2}
    options["minibatch_size"] = 8
    straight = ppo_trainer(**options)
    straight.train(3, show_progress=False)
    first = ppo_trainer(**options, seed=0)
    first.train(2, show_progress=False)
    first.save(tmp_path)
    resumed = PPOTrainer.resume(tmp_path, reward_functions=[length_reward])
    assert resumed.kl_controller.value == first.kl_controller.value
    resumed.train(1, show_progress=False)
    for a, b in zip(straight.parameters_to_train(), resumed.parameters_to_train(), strict=True):
        assert torch.equal(a, b)
    assert resumed.kl_controller.value == straight.kl_controller.value


@pytest.mark.parametrize("value_model", ["separate", "head"])
def test_ppo_step_on_a_hugging_face_policy(value_model):
    pytest.importorskip("transformers")
    from driftlab.llm.hf import HFPolicy, char_gpt2

    torch.manual_seed(0)
    policy = HFPolicy(char_gpt2(n_layer=2, n_head=2, n_embd=32, n_positions=64)).eval()
    ids = torch.randint(3, TOK.vocab_size, (2, 6))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    logits, _ = policy(ids, mask)
    assert torch.allclose(policy.logits_from_hidden(policy.hidden_states(ids, mask)), logits)
    trainer = ppo_trainer(policy, value_model=value_model, value_lr=1e-2, mu=2, minibatch_size=8)
    before = [p.detach().clone() for p in trainer.parameters_to_train()]
    first, second = trainer.step(), trainer.step()
    for metrics in (first, second):
        assert all(v == v for v in metrics.values())  # no NaN
    assert second["value_mean"] != 0.0  # the value head has learned something
    after = trainer.parameters_to_train()
    assert all(not torch.equal(p, q) for p, q in zip(before[-2:], after[-2:], strict=True))


def test_value_model_steps_at_its_own_learning_rate():
    trainer = ppo_trainer(lr=1e-3, value_lr=5e-3, warmup_steps=2)
    trainer.step()
    policy_group, value_group = trainer.optimizer.param_groups
    # Warm-up scales both: step 1 of 2 is half of each rate.
    assert policy_group["lr"] == pytest.approx(0.5e-3)
    assert value_group["lr"] == pytest.approx(2.5e-3)
    assert ppo_trainer(lr=1e-3).optimizer.param_groups[1]["lr_scale"] == 1.0


DISTRIBUTED_OPTIONS = {"kl_controller": "adaptive", "beta": 0.1, "mu": 2, "minibatch_size": 8}


def _distributed_worker(rank: int, init_method: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=2)
    try:
        trainer = ppo_trainer(**DISTRIBUTED_OPTIONS)
        trainer.train(1, show_progress=False)
        if rank == 0:
            params = [p.detach() for p in trainer.parameters_to_train()]
            torch.save(
                {"params": params, "beta": trainer.kl_controller.value}, f"{out_dir}/rank0.pt"
            )
    except BaseException:
        distributed.shutdown(wait=False)  # the other rank may never arrive
        raise
    distributed.shutdown()  # waits for the other rank, then leaves the group


def test_two_processes_equal_one(tmp_path):
    """Each rank samples 2 of the 4 groups; whitening and the KL controller see the whole
    batch, and the gradients are averaged, so both runs take the same steps."""
    mp.spawn(_distributed_worker, args=(rendezvous(tmp_path), str(tmp_path)), nprocs=2)
    two = torch.load(tmp_path / "rank0.pt")
    one = ppo_trainer(**DISTRIBUTED_OPTIONS)
    one.train(1, show_progress=False)
    assert two["beta"] == pytest.approx(one.kl_controller.value, rel=1e-6)
    assert two["beta"] != 0.1
    for a, b in zip(one.parameters_to_train(), two["params"], strict=True):
        assert torch.allclose(a, b, atol=1e-5)
