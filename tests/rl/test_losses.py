"""Every loss against a hand-computed tiny batch: returns and advantages of 3-step rollouts,
policy/value objectives, group-relative advantages, length rewards, TD3 and TRPO pieces."""

import math

import numpy as np
import pytest
import torch

from driftlab.rl.losses import (
    aggregate_loss,
    clip_fractions,
    clipped_double_q_target,
    clipped_surrogate_loss,
    clipped_value_loss,
    conjugate_gradient,
    dapo_overlong_penalty,
    discounted_returns,
    gae,
    group_advantages,
    kimi_length_reward,
    kl_estimate,
    nstep_returns,
    reinforce_pp_advantages,
    rloo_advantages,
    smoothed_target_actions,
)

REWARDS = [1.0, 2.0, 3.0]
NEXT_VALUES = [10.0, 20.0, 30.0]


def as_kind(kind, values):
    array = np.array(values, dtype=np.float64)
    return torch.tensor(array) if kind == "torch" else array


def to_numpy(x):
    return x.numpy() if isinstance(x, torch.Tensor) else x


KINDS = ["numpy", "torch"]


@pytest.mark.parametrize("kind", KINDS)
def test_discounted_returns_reward_to_go(kind):
    # G2 = 3, G1 = 2 + 0.5 * 3, G0 = 1 + 0.5 * 3.5
    returns = discounted_returns(as_kind(kind, REWARDS), 0.5)
    assert type(returns) is type(as_kind(kind, REWARDS))
    np.testing.assert_allclose(to_numpy(returns), [2.75, 3.5, 3.0])


@pytest.mark.parametrize("kind", KINDS)
def test_discounted_returns_stop_at_termination(kind):
    returns = discounted_returns(as_kind(kind, REWARDS), 0.5, as_kind(kind, [0, 1, 0]))
    np.testing.assert_allclose(to_numpy(returns), [2.0, 2.0, 3.0])


@pytest.mark.parametrize("kind", KINDS)
def test_discounted_returns_bootstrap_on_truncation_and_rollout_end(kind):
    # G2 = 3 + 0.5 * 30 = 18, G1 = 2 + 0.5 * 18 = 11, G0 = 1 + 0.5 * v(s1) = 6 (cut after 0)
    returns = discounted_returns(
        as_kind(kind, REWARDS),
        0.5,
        truncated=as_kind(kind, [1, 0, 0]),
        next_values=as_kind(kind, NEXT_VALUES),
    )
    np.testing.assert_allclose(to_numpy(returns), [6.0, 11.0, 18.0])


def test_discounted_returns_batch_columns_are_independent():
    rewards = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 1.0]])
    terminated = np.array([[0, 1], [1, 0], [0, 0]])
    returns = discounted_returns(rewards, 0.5, terminated)
    np.testing.assert_allclose(returns, [[2.0, 0.0], [2.0, 0.5], [3.0, 1.0]])


@pytest.mark.parametrize("kind", KINDS)
def test_nstep_returns(kind):
    rewards, nxt = as_kind(kind, REWARDS), as_kind(kind, NEXT_VALUES)
    # n = 2: G0 = 1 + 0.5*2 + 0.25*v(s2)=20 -> 7; G1 = 2 + 0.5*3 + 0.25*30 = 11; G2 = 3 + 15
    two = nstep_returns(rewards, 0.5, 2, next_values=nxt)
    np.testing.assert_allclose(to_numpy(two), [7.0, 11.0, 18.0])
    # termination after step 1 removes every bootstrap that reaches past it
    term = as_kind(kind, [0, 1, 0])
    two_term = nstep_returns(rewards, 0.5, 2, terminated=term, next_values=nxt)
    np.testing.assert_allclose(to_numpy(two_term), [2.0, 2.0, 18.0])
    # n = 1 is the TD target r_t + gamma v(s_{t+1})
    np.testing.assert_allclose(
        to_numpy(nstep_returns(rewards, 0.5, 1, next_values=nxt)), [6, 12, 18]
    )
    # n >= T is the full discounted return
    np.testing.assert_allclose(
        to_numpy(nstep_returns(rewards, 0.5, 5, next_values=nxt)),
        to_numpy(discounted_returns(rewards, 0.5, next_values=nxt)),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_gae(kind):
    rewards = as_kind(kind, REWARDS)
    values, nxt = as_kind(kind, [4.0, 5.0, 6.0]), as_kind(kind, [5.0, 6.0, 7.0])
    # deltas = [-0.5, 0.0, 0.5]; A2 = 0.5, A1 = 0.25 * 0.5, A0 = -0.5 + 0.25 * 0.125
    advantages = gae(rewards, values, nxt, gamma=0.5, lam=0.5)
    np.testing.assert_allclose(to_numpy(advantages), [-0.46875, 0.125, 0.5])
    # termination after step 1: delta1 = 2 - 5 = -3 and no carry from step 2
    term = as_kind(kind, [0, 1, 0])
    advantages = gae(rewards, values, nxt, gamma=0.5, lam=0.5, terminated=term)
    np.testing.assert_allclose(to_numpy(advantages), [-1.25, -3.0, 0.5])


def test_gae_limits():
    rewards = np.array(REWARDS)
    values, nxt = np.array([4.0, 5.0, 6.0]), np.array([5.0, 6.0, 7.0])
    truncated = np.array([0, 1, 0])
    td_errors = rewards + 0.9 * nxt - values
    np.testing.assert_allclose(gae(rewards, values, nxt, 0.9, 0.0, truncated=truncated), td_errors)
    returns = discounted_returns(rewards, 0.9, truncated=truncated, next_values=nxt)
    np.testing.assert_allclose(
        gae(rewards, values, nxt, 0.9, 1.0, truncated=truncated), returns - values
    )


def test_shape_and_gamma_errors():
    with pytest.raises(ValueError, match="terminated must have the shape"):
        discounted_returns(np.ones(3), 0.9, terminated=np.ones(2))
    with pytest.raises(ValueError, match="gamma must be in"):
        discounted_returns(np.ones(3), 1.5)
    with pytest.raises(ValueError, match="n must be >= 1"):
        nstep_returns(np.ones(3), 0.9, 0)


def test_inputs_are_not_modified():
    truncated = np.zeros(3)
    torch_truncated = torch.zeros(3, dtype=torch.float64)
    discounted_returns(np.ones(3), 0.9, truncated=truncated)
    gae(
        torch.ones(3, dtype=torch.float64),
        torch.zeros(3, dtype=torch.float64),
        torch.zeros(3, dtype=torch.float64),
        0.9,
        0.9,
        truncated=torch_truncated,
    )
    assert truncated.sum() == 0 and torch_truncated.sum() == 0


def test_integer_rewards_are_discounted_as_floats():
    np.testing.assert_allclose(discounted_returns(np.array([1, 2, 3]), 0.5), [2.75, 3.5, 3.0])
    returns = discounted_returns(torch.tensor([1, 2, 3]), 0.5)
    assert returns.is_floating_point()
    np.testing.assert_allclose(returns.numpy(), [2.75, 3.5, 3.0])
    np.testing.assert_allclose(nstep_returns(np.array([1, 2, 3]), 0.5, 2), [2.0, 3.5, 3.0])


# ---------------------------------------------------------------------------------------------
# Policy and value objectives
# ---------------------------------------------------------------------------------------------

# Ratios r and advantages A chosen so that each branch of the clipped surrogate shows up once.
RATIOS = [0.5, 1.1, 1.5, 0.5, 1.5]
ADVANTAGES = [-1.0, 2.0, 3.0, 1.0, -1.0]


def surrogate_inputs():
    logp = torch.tensor(RATIOS, dtype=torch.float64).log().requires_grad_()
    return logp, torch.zeros(5, dtype=torch.float64), torch.tensor(ADVANTAGES, dtype=torch.float64)


def test_clipped_surrogate_loss_symmetric():
    logp, old_logp, advantages = surrogate_inputs()
    loss = clipped_surrogate_loss(logp, old_logp, advantages, clip_eps=0.2)
    # -min(rA, clip(r, 0.8, 1.2) A):
    #   r=0.5, A=-1: min(-0.5, -0.8) = -0.8 (low clip)    -> 0.8
    #   r=1.1, A=2:  min(2.2, 2.2)                        -> -2.2
    #   r=1.5, A=3:  min(4.5, 3.6) = 3.6 (high clip)      -> -3.6
    #   r=0.5, A=1:  min(0.5, 0.8) = 0.5 (pessimistic)    -> -0.5
    #   r=1.5, A=-1: min(-1.5, -1.2) = -1.5 (pessimistic) -> 1.5
    np.testing.assert_allclose(loss.detach().numpy(), [0.8, -2.2, -3.6, -0.5, 1.5])
    # d(-rA)/dlogp = -rA where the unclipped term is taken, 0 where the clip is active
    loss.sum().backward()
    np.testing.assert_allclose(logp.grad.numpy(), [0.0, -2.2, 0.0, -0.5, 1.5])


def test_clipped_surrogate_loss_clip_higher_is_asymmetric():
    logp, old_logp, advantages = surrogate_inputs()
    loss = clipped_surrogate_loss(logp, old_logp, advantages, clip_eps=0.2, clip_eps_high=0.28)
    # only the high side moves: r=1.5, A=3 -> clip at 1.28 -> -3.84; r=0.5, A=-1 still at 0.8
    np.testing.assert_allclose(loss.detach().numpy(), [0.8, -2.2, -3.84, -0.5, 1.5])
    # a ratio of 1.25 with A > 0 is clipped symmetrically but not with clip-higher
    logp, old, adv = torch.tensor([math.log(1.25)]), torch.zeros(1), torch.ones(1)
    assert clipped_surrogate_loss(logp, old, adv, 0.2).item() == pytest.approx(-1.2)
    assert clipped_surrogate_loss(logp, old, adv, 0.2, 0.28).item() == pytest.approx(-1.25)


def test_clipped_surrogate_detaches_old_logp_and_advantages():
    logp, _, _ = surrogate_inputs()
    old_logp = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    advantages = torch.tensor(ADVANTAGES, dtype=torch.float64, requires_grad=True)
    clipped_surrogate_loss(logp, old_logp, advantages, 0.2).sum().backward()
    assert old_logp.grad is None and advantages.grad is None


def test_clip_fractions():
    logp, old_logp, advantages = surrogate_inputs()
    low, high = clip_fractions(logp, old_logp, advantages, clip_eps=0.2)
    np.testing.assert_array_equal(low.numpy(), [1.0, 0.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(high.numpy(), [0.0, 0.0, 1.0, 0.0, 0.0])
    # with eps_high = 0.6 the ratio 1.5 is inside [0.8, 1.6]: no high clip left
    low, high = clip_fractions(logp, old_logp, advantages, clip_eps=0.2, clip_eps_high=0.6)
    np.testing.assert_array_equal(low.numpy(), [1.0, 0.0, 0.0, 0.0, 0.0])
    assert high.sum().item() == 0.0
    # each mask marks exactly where the surrogate's gradient vanishes
    loss = clipped_surrogate_loss(logp, old_logp, advantages, 0.2)
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    low, high = clip_fractions(logp, old_logp, advantages, 0.2)
    np.testing.assert_array_equal((grad == 0).numpy(), (low + high).bool().numpy())


def test_clipped_value_loss():
    values = torch.tensor([1.0, 3.0, 0.0])
    old_values = torch.tensor([0.0, 2.0, 0.0])
    returns = torch.tensor([2.0, 0.0, 1.0])
    # unclipped 0.5 (v - R)^2 = [0.5, 4.5, 0.5]
    np.testing.assert_allclose(
        clipped_value_loss(values, old_values, returns).numpy(), [0.5, 4.5, 0.5]
    )
    # clip_eps = 0.5: clipped values [0.5, 2.5, 0.0], squared errors [2.25, 6.25, 1.0];
    # 0.5 * max(unclipped, clipped) = [1.125, 4.5, 0.5]
    loss = clipped_value_loss(values, old_values, returns, clip_eps=0.5)
    np.testing.assert_allclose(loss.numpy(), [1.125, 4.5, 0.5])


def test_kl_estimators_by_hand():
    logp = torch.tensor([-1.0, -0.5, -2.0], dtype=torch.float64)
    logp_ref = torch.tensor([-1.0, -1.5, -1.0], dtype=torch.float64)
    # logp - logp_ref = [0, 1, -1]
    np.testing.assert_allclose(kl_estimate(logp, logp_ref, "k1").numpy(), [0.0, 1.0, -1.0])
    np.testing.assert_allclose(kl_estimate(logp, logp_ref, "k2").numpy(), [0.0, 0.5, 0.5])
    # k3 = exp(-d) + d - 1 = [0, e^-1, e - 2]
    expected_k3 = [0.0, math.exp(-1.0), math.e - 2.0]
    np.testing.assert_allclose(kl_estimate(logp, logp_ref, "k3").numpy(), expected_k3)
    np.testing.assert_allclose(kl_estimate(logp, logp_ref).numpy(), expected_k3)


def test_kl_estimators_are_exact_in_expectation_on_a_categorical():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    exact = (p * (p / q).log()).sum()
    assert exact.item() == pytest.approx(
        torch.distributions.kl_divergence(
            torch.distributions.Categorical(probs=p), torch.distributions.Categorical(probs=q)
        ).item()
    )
    for kind in ("k1", "k3"):
        expectation = (p * kl_estimate(p.log(), q.log(), kind)).sum()
        assert expectation.item() == pytest.approx(exact.item(), rel=1e-12)
    # k2 is biased: its expectation is not the KL on this example
    k2 = (p * kl_estimate(p.log(), q.log(), "k2")).sum()
    assert abs(k2.item() - exact.item()) > 1e-3


def test_k3_is_nonnegative():
    generator = torch.Generator().manual_seed(0)
    logp = 3.0 * torch.randn(1000, generator=generator)
    logp_ref = 3.0 * torch.randn(1000, generator=generator)
    assert (kl_estimate(logp, logp_ref, "k3") >= 0).all()
    assert (kl_estimate(logp, logp_ref, "k1") < 0).any()


def test_aggregate_loss_modes():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # masked tokens: 1, 2 | 4 -> sum 7 over 3 tokens
    assert aggregate_loss(loss, mask).item() == pytest.approx(7 / 3)
    assert aggregate_loss(loss, mask, "token-mean").item() == pytest.approx(7 / 3)
    # per sequence means 1.5 and 4, averaged
    assert aggregate_loss(loss, mask, "sequence-mean").item() == pytest.approx(2.75)
    # 7 / (batch 2 * tokens 3), or / (2 * 10) with an explicit constant
    assert aggregate_loss(loss, mask, "token-sum-constant").item() == pytest.approx(7 / 6)
    assert aggregate_loss(loss, mask, "token-sum-constant", 10).item() == pytest.approx(0.35)


def test_aggregate_loss_empty_sequence_contributes_zero():
    loss = torch.tensor([[1.0, 2.0], [4.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert aggregate_loss(loss, mask, "sequence-mean").item() == pytest.approx(0.75)
    assert aggregate_loss(loss, torch.zeros(2, 2)).item() == 0.0


# ---------------------------------------------------------------------------------------------
# Group-relative advantages and length rewards
# ---------------------------------------------------------------------------------------------

# Two groups of G = 3: [0, 2, 4] (mean 2, unbiased std 2) and [3, 3, 3] (std 0).
GROUP_REWARDS = [0.0, 2.0, 4.0, 3.0, 3.0, 3.0]


@pytest.mark.parametrize("kind", KINDS)
def test_group_advantages(kind):
    rewards = as_kind(kind, GROUP_REWARDS)
    advantages = group_advantages(rewards, 3)
    assert type(advantages) is type(rewards)
    # group: [-2, 0, 2] / (2 + 1e-4); the constant group gives 0
    np.testing.assert_allclose(
        to_numpy(advantages), [-2 / 2.0001, 0.0, 2 / 2.0001, 0.0, 0.0, 0.0], rtol=1e-12
    )
    # batch: mean 2.5, squared deviations sum to 9.5 -> unbiased std sqrt(9.5 / 5)
    batch_std = math.sqrt(1.9) + 1e-4
    np.testing.assert_allclose(
        to_numpy(group_advantages(rewards, 3, scale="batch")),
        [-2 / batch_std, 0.0, 2 / batch_std, 0.0, 0.0, 0.0],
        rtol=1e-12,
    )
    # Dr. GRPO: centred only
    np.testing.assert_allclose(
        to_numpy(group_advantages(rewards, 3, scale="none")), [-2.0, 0.0, 2.0, 0.0, 0.0, 0.0]
    )


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_zero_std_groups_give_exactly_zero(scale):
    # 0.1 is not exact in binary: the mean of three of them is off by rounding
    rewards = np.array([0.1, 0.1, 0.1, 0.7, 0.7, 0.7])
    np.testing.assert_array_equal(group_advantages(rewards, 3, scale=scale), np.zeros(6))
    np.testing.assert_array_equal(rloo_advantages(rewards, 3), np.zeros(6))
    np.testing.assert_array_equal(reinforce_pp_advantages(rewards, 3), np.zeros(6))


def test_group_advantages_keep_float32_and_binary_rewards():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float32)
    advantages = group_advantages(rewards, 2)
    assert advantages.dtype == torch.float32
    # [1, 0]: mean 0.5, unbiased std sqrt(0.5); [0, 0]: zero
    scale = math.sqrt(0.5) + 1e-4
    np.testing.assert_allclose(advantages.numpy(), [0.5 / scale, -0.5 / scale, 0, 0], rtol=1e-6)
    assert group_advantages(np.array([1, 0, 1, 1]), 2).dtype == np.float64


@pytest.mark.parametrize("kind", KINDS)
def test_rloo_advantages(kind):
    rewards = as_kind(kind, GROUP_REWARDS)
    advantages = rloo_advantages(rewards, 3)
    assert type(advantages) is type(rewards)
    # 0 - (2 + 4)/2 = -3, 2 - (0 + 4)/2 = 0, 4 - (0 + 2)/2 = 3
    np.testing.assert_allclose(to_numpy(advantages), [-3.0, 0.0, 3.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("kind", KINDS)
def test_reinforce_pp_advantages(kind):
    rewards = as_kind(kind, [1.0, 0.0, 0.0, 1.0])
    advantages = reinforce_pp_advantages(rewards, 2)
    assert type(advantages) is type(rewards)
    # centred [0.5, -0.5, -0.5, 0.5]; batch mean 0, unbiased std sqrt(1 / 3)
    std = math.sqrt(1 / 3) + 1e-8
    np.testing.assert_allclose(to_numpy(advantages), [0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std])
    # whitened over the batch, not per group: a group of [0, 2] weighs more than [1, 0]
    mixed = reinforce_pp_advantages(np.array([1.0, 0.0, 0.0, 2.0]), 2)
    # centred [0.5, -0.5, -1, 1]: squares sum 2.5, unbiased std sqrt(2.5 / 3)
    std = math.sqrt(2.5 / 3) + 1e-8
    np.testing.assert_allclose(mixed, [0.5 / std, -0.5 / std, -1 / std, 1 / std])


@pytest.mark.parametrize("kind", KINDS)
def test_kimi_length_reward_one_group(kind):
    lengths = as_kind(kind, [10, 15, 30])
    # lambda = 0.5 - (len - 10) / 20 = [0.5, 0.25, -0.5]
    correct = as_kind(kind, [1, 1, 1])
    reward = kimi_length_reward(lengths, correct)
    assert type(reward) is type(lengths)
    np.testing.assert_allclose(to_numpy(reward), [0.5, 0.25, -0.5])
    # a wrong answer gets min(0, lambda): the short wrong one is not rewarded for brevity
    wrong = as_kind(kind, [0, 0, 0])
    np.testing.assert_allclose(to_numpy(kimi_length_reward(lengths, wrong)), [0.0, 0.0, -0.5])


def test_kimi_length_reward_batched_groups():
    lengths = torch.tensor([[10, 15, 30], [5, 5, 5]])
    correct = torch.tensor([[True, False, True], [True, True, False]])
    reward = kimi_length_reward(lengths, correct)
    # the second group has max_len == min_len: no length reward at all
    np.testing.assert_allclose(reward.numpy(), [[0.5, 0.0, -0.5], [0.0, 0.0, 0.0]])


@pytest.mark.parametrize("kind", KINDS)
def test_dapo_overlong_penalty(kind):
    lengths = as_kind(kind, [10, 16, 17, 18, 20, 21, 100])
    # max_length 20, cache 4: free up to 16, then (16 - L) / 4 down to -1 at 20, -1 beyond
    penalty = dapo_overlong_penalty(lengths, max_length=20, cache_length=4)
    assert type(penalty) is type(lengths)
    np.testing.assert_allclose(to_numpy(penalty), [0.0, 0.0, -0.25, -0.5, -1.0, -1.0, -1.0])


# ---------------------------------------------------------------------------------------------
# TD3 and TRPO
# ---------------------------------------------------------------------------------------------


def test_clipped_double_q_target():
    rewards = torch.tensor([1.0, 0.0, 2.0])
    next_q1 = torch.tensor([3.0, 5.0, -1.0], requires_grad=True)
    next_q2 = torch.tensor([4.0, 2.0, 0.0])
    terminated = torch.tensor([False, False, True])
    # min(q1, q2) = [3, 2, -1]; y = r + 0.5 * min, except the terminal one keeps r = 2
    target = clipped_double_q_target(rewards, next_q1, next_q2, 0.5, terminated)
    np.testing.assert_allclose(target.numpy(), [2.5, 1.0, 2.0])
    assert not target.requires_grad


def test_smoothed_target_actions_bounds_and_clip():
    actions = torch.tensor([-2.0, 0.5, 2.0])
    # no noise: only the action bounds act
    smoothed = smoothed_target_actions(actions, 0.0, 0.5, -1.0, 1.0)
    np.testing.assert_allclose(smoothed.numpy(), [-1.0, 0.5, 1.0])
    # huge noise is always clipped to +-0.5, with both signs; per-dimension tensor bounds
    generator = torch.Generator().manual_seed(0)
    actions = torch.zeros(1000, 2, dtype=torch.float64)
    low = torch.tensor([-1.0, -0.2], dtype=torch.float64)
    smoothed = smoothed_target_actions(actions, 1e6, 0.5, low, -low, generator)
    np.testing.assert_array_equal(smoothed[:, 0].abs().numpy(), np.full(1000, 0.5))
    np.testing.assert_array_equal(smoothed[:, 1].abs().numpy(), np.full(1000, 0.2))
    assert (smoothed[:, 0] > 0).any() and (smoothed[:, 0] < 0).any()


def test_smoothed_target_actions_seeded_noise():
    actions = torch.tensor([0.1, -0.3, 0.0, 0.4])
    first = smoothed_target_actions(actions, 0.2, 0.3, -1, 1, torch.Generator().manual_seed(3))
    again = smoothed_target_actions(actions, 0.2, 0.3, -1, 1, torch.Generator().manual_seed(3))
    torch.testing.assert_close(first, again)
    noise = (0.2 * torch.randn(4, generator=torch.Generator().manual_seed(3))).clamp(-0.3, 0.3)
    torch.testing.assert_close(first, actions + noise)
    assert ((first - actions).abs() <= 0.3 + 1e-7).all() and not torch.equal(first, actions)


def test_conjugate_gradient_by_hand():
    A = torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64))
    b = torch.tensor([1.0, 1.0], dtype=torch.float64)
    # one step is steepest descent from 0: x = (b.b / b.Ab) b = (2 / 3) b
    one = conjugate_gradient(lambda v: A @ v, b, iterations=1)
    np.testing.assert_allclose(one.numpy(), [2 / 3, 2 / 3])
    # two steps solve a 2x2 system exactly: [1, 0.5]
    np.testing.assert_allclose(conjugate_gradient(lambda v: A @ v, b).numpy(), [1.0, 0.5])
    # b = 0 returns 0 without dividing by zero
    zero = conjugate_gradient(lambda v: A @ v, torch.zeros(2, dtype=torch.float64))
    np.testing.assert_array_equal(zero.numpy(), [0.0, 0.0])


def test_conjugate_gradient_matches_linear_solve():
    generator = torch.Generator().manual_seed(0)
    M = torch.randn(5, 5, generator=generator, dtype=torch.float64)
    A = M @ M.T + 0.5 * torch.eye(5, dtype=torch.float64)
    b = torch.randn(5, generator=generator, dtype=torch.float64)
    x = conjugate_gradient(lambda v: A @ v, b)
    torch.testing.assert_close(x, torch.linalg.solve(A, b), atol=1e-8, rtol=0)


# ---------------------------------------------------------------------------------------------
# Bad arguments name the bad value
# ---------------------------------------------------------------------------------------------

X3 = torch.zeros(3)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: kl_estimate(X3, X3, "k4"), r"kind must be one of 'k1', 'k2', 'k3'; got 'k4'"),
        (lambda: clipped_surrogate_loss(X3, X3, X3, -0.1), r"clip_eps must be in .* got -0\.1"),
        (lambda: clipped_surrogate_loss(X3, X3, X3, 0.2, -1), r"clip_eps_high .* got -1"),
        (lambda: clip_fractions(X3, X3, X3, 1.5), r"clip_eps must be in .* got 1\.5"),
        (lambda: clipped_value_loss(X3, X3, X3, 0.0), r"clip_eps must be > 0, got 0"),
        (
            lambda: aggregate_loss(torch.ones(2, 3), torch.ones(2, 3), "mean"),
            r"mode must be one of .*'token-mean'.*got 'mean'",
        ),
        (lambda: aggregate_loss(torch.ones(2, 3), torch.ones(2, 2)), r"got \(2, 3\) and \(2, 2\)"),
        (lambda: aggregate_loss(torch.ones(3), torch.ones(3)), r"got \(3,\)"),
        (
            lambda: aggregate_loss(torch.ones(2, 3), torch.ones(2, 3), "token-sum-constant", 0),
            r"constant must be > 0, got 0",
        ),
        (
            lambda: aggregate_loss(torch.ones(2, 3), torch.ones(2, 3), "token-mean", 4),
            r"got mode 'token-mean'",
        ),
        (lambda: group_advantages(np.ones(5), 2), r"group_size=2, got shape \(5,\)"),
        (lambda: group_advantages(np.ones(4), 2, scale="std"), r"got 'std'"),
        (lambda: group_advantages(np.ones(4), 1), r"group_size must be >= 2, got 1"),
        (lambda: rloo_advantages(np.ones((2, 2)), 2), r"got shape \(2, 2\)"),
        (lambda: reinforce_pp_advantages(np.ones(0), 2), r"got shape \(0,\)"),
        (lambda: kimi_length_reward(np.ones(3), np.ones(2)), r"got \(3,\) and \(2,\)"),
        (lambda: dapo_overlong_penalty(np.ones(3), 20, 0), r"cache_length must be >= 1, got 0"),
        (lambda: dapo_overlong_penalty(np.ones(3), 20, 21), r"max_length=20, got 21"),
        (lambda: clipped_double_q_target(X3, X3, X3, 1.5, X3), r"gamma must be in .* got 1\.5"),
        (lambda: smoothed_target_actions(X3, -0.2, 0.5, -1, 1), r"noise_std must be >= 0"),
        (lambda: smoothed_target_actions(X3, 0.2, 0.5, 1, -1), r"low=1, high=-1"),
        (lambda: conjugate_gradient(lambda v: v, X3, iterations=0), r"iterations .* got 0"),
    ],
)
def test_bad_arguments_raise_with_the_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()
