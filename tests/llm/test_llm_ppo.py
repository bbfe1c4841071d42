"""PPO for language models: per-token rewards with the KL penalty, GAE over tokens, the
adaptive KL controller, the value model and full PPO steps on a tiny transformer."""

import copy

import pytest
import torch

from driftlab.llm.generation import sequence_log_probs
from driftlab.llm.model import TransformerConfig, TransformerLM
from driftlab.llm.ppo import (
    AdaptiveKLController,
    FixedKLController,
    last_token,
    masked_whiten,
    token_advantages,
    token_rewards,
)
from driftlab.llm.value import ValueModel

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
    log_probs, same_values = head.log_probs_and_values(
        prompt_ids, prompt_mask, completion_ids, completion_mask, temperature=0.7
    )
    reference = sequence_log_probs(
        policy, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature=0.7
    )
    assert torch.allclose(log_probs, reference, atol=1e-6)
    assert torch.allclose(same_values, values)
