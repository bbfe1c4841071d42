"""RolloutBuffer's GAE with truncation bootstrap, minibatch coverage, and the replay ring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from driftlab.core.checkpoint import load_checkpoint, save_checkpoint
from driftlab.rl.deep.buffers import ReplayBuffer, RolloutBuffer, minibatches


def _filled_rollout() -> RolloutBuffer:
    """3 steps of 2 envs, obs = [c]; env 0 terminates at t = 1, env 1 is truncated at t = 0
    with final observation [4] (value_fn(obs) = obs[:, 0], so v(final) = 4)."""
    buffer = RolloutBuffer(3, 2, (1,), ())
    rewards = [[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]]
    terminated = [[False, False], [True, False], [False, False]]
    truncated = [[False, True], [False, False], [False, False]]
    for t in range(3):
        final_obs = np.array([[0.0], [4.0 if t == 0 else 0.0]], dtype=np.float32)
        buffer.add(
            obs=torch.zeros(2, 1),
            actions=torch.zeros(2),
            log_probs=torch.zeros(2),
            values=torch.tensor([1.0, 2.0]),
            rewards=np.array(rewards[t]),
            terminated=np.array(terminated[t]),
            truncated=np.array(truncated[t]),
            final_obs=final_obs,
        )
    return buffer


def test_gae_bootstraps_truncation_from_final_obs_and_not_termination():
    buffer = _filled_rollout()
    assert buffer.full
    buffer.compute_advantages(
        torch.tensor([2.0, 3.0]), lambda obs: obs[:, 0], gamma=0.5, gae_lambda=0.5
    )
    # gamma = lambda = 0.5, so gamma * lambda = 0.25.
    # env 0: v = 1, r = 1, 2, 3, terminated at t = 1, v(s_3) = 2
    #   delta_0 = 1 + 0.5 * 1 - 1 = 0.5;  delta_1 = 2 - 1 = 1 (no bootstrap)
    #   delta_2 = 3 + 0.5 * 2 - 1 = 3
    #   A_2 = 3;  A_1 = 1 (episode ends);  A_0 = 0.5 + 0.25 * 1 = 0.75
    # env 1: v = 2, r = 1, truncated at t = 0 with v(final) = 4, v(s_3) = 3
    #   delta_0 = 1 + 0.5 * 4 - 2 = 1;  delta_1 = 1 + 0.5 * 2 - 2 = 0;  delta_2 = 1 + 1.5 - 2 = 0.5
    #   A_2 = 0.5;  A_1 = 0 + 0.25 * 0.5 = 0.125;  A_0 = 1 (the next episode is not added)
    # Were truncation treated as termination, A_0 of env 1 would be 1 - 2 = -1.
    expected = torch.tensor([[0.75, 1.0], [1.0, 0.125], [3.0, 0.5]])
    torch.testing.assert_close(buffer.advantages, expected)
    torch.testing.assert_close(buffer.returns, expected + torch.tensor([1.0, 2.0]))
    flat = buffer.flat()
    assert flat["advantages"].shape == (6,)
    torch.testing.assert_close(flat["advantages"], expected.reshape(-1))

    buffer.reset()
    assert buffer.pos == 0 and buffer._truncations == []


@pytest.mark.parametrize("batch_size", [4, 5, 12])
def test_minibatches_cover_every_index_once_per_epoch(batch_size):
    generator = torch.Generator().manual_seed(0)
    epochs = [torch.cat(list(minibatches(12, batch_size, generator))) for _ in range(2)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(12))
    assert not torch.equal(epochs[0], epochs[1])  # a fresh permutation each epoch
    sizes = [len(b) for b in minibatches(12, 5)]
    assert sizes == [5, 5, 2]


def _add(buffer: ReplayBuffer, values: list[float]) -> None:
    obs = np.array(values, dtype=np.float32)[:, None]
    buffer.add(
        obs, np.array(values), np.array(values), obs + 0.5, np.array([v > 4 for v in values])
    )


def test_replay_ring_wraps_around():
    buffer = ReplayBuffer(5, (1,), ())
    _add(buffer, [0.0, 1.0])
    _add(buffer, [2.0, 3.0])
    assert (buffer.pos, buffer.size) == (4, 4)
    _add(buffer, [4.0, 5.0])  # 4 lands in slot 4, 5 overwrites slot 0
    assert (buffer.pos, buffer.size) == (1, 5)
    torch.testing.assert_close(buffer.rewards, torch.tensor([5.0, 1.0, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(buffer.next_obs[:, 0], buffer.obs[:, 0] + 0.5)
    torch.testing.assert_close(buffer.terminated, torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0]))
    # one env at a time, float64 observations are cast
    single = ReplayBuffer(2, (1,), ())
    for v in (1.0, 2.0, 3.0):
        single.add(np.array([[v]]), np.array([v]), np.array([v]), np.array([[v]]), np.array([0]))
    torch.testing.assert_close(single.rewards, torch.tensor([3.0, 2.0]))
    assert (single.pos, single.size) == (1, 2)


def test_replay_sampling_is_deterministic_and_state_round_trips(tmp_path):
    buffer = ReplayBuffer(8, (1,), ())
    _add(buffer, [0.0, 1.0, 2.0])
    _add(buffer, [3.0, 4.0, 5.0])

    def draw(b: ReplayBuffer) -> torch.Tensor:
        return b.sample(16, torch.Generator().manual_seed(1)).rewards

    first = draw(buffer)
    torch.testing.assert_close(first, draw(buffer))
    assert set(first.tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}  # never an empty slot
    batch = buffer.sample(4, torch.Generator().manual_seed(1))
    torch.testing.assert_close(batch.obs[:, 0], batch.rewards)
    torch.testing.assert_close(batch.terminated, (batch.rewards > 4).float())

    save_checkpoint(tmp_path / "buffer", buffer.state_dict())
    restored = ReplayBuffer(8, (1,), ())
    restored.load_state_dict(load_checkpoint(tmp_path / "buffer"))
    assert (restored.pos, restored.size) == (6, 6)
    torch.testing.assert_close(draw(restored), first)
    _add(restored, [6.0, 7.0, 8.0])  # continues the ring where it stopped
    assert restored.rewards[0] == 8.0
