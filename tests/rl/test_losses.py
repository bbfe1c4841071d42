"""Returns and advantages against hand-computed 3-step rollouts (NumPy and torch)."""

import numpy as np
import pytest
import torch

from driftlab.rl.losses import discounted_returns, gae, nstep_returns

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
