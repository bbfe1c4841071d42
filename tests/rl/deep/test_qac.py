"""QAC (Zhao ch. 10.1) with networks: Sarsa critic target, actor loss, determinism, save/load,
learning on CartPole."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from driftlab.rl.deep import QAC
from driftlab.rl.deep.qac import qac_actor_loss, sarsa_targets


class Table(nn.Module):
    """A network whose output for observation ``s`` is row ``s[0]`` of a fixed table."""

    def __init__(self, rows: list[list[float]]) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.tensor(rows))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.table[obs[:, 0].long()]


def parameters(algo: QAC) -> list[torch.Tensor]:
    return [p.detach().clone() for m in algo.modules().values() for p in m.parameters()]


# Three transitions (s, a, r, s', terminated), states numbered 0..5:
#   0: s=0, a=1, r=1.0,  s'=3, continues
#   1: s=1, a=0, r=1.0,  s'=4, terminated        -> no bootstrap
#   2: s=2, a=0, r=0.5,  s'=5, truncated (time limit; s' is the real final observation)
Q_TABLE = [[1.0, 2.0], [3.0, 0.5], [4.0, 1.0], [5.0, 5.0], [7.0, 7.0], [10.0, 10.0]]
OBS = torch.tensor([[0.0], [1.0], [2.0]])
ACTIONS = torch.tensor([1, 0, 0])
REWARDS = torch.tensor([1.0, 1.0, 0.5])
NEXT_OBS = torch.tensor([[3.0], [4.0], [5.0]])
TERMINATED = torch.tensor([0.0, 1.0, 0.0])
# pi(.|s) = softmax([0, ln 3]) = [0.25, 0.75] everywhere; H = -(0.25 ln 0.25 + 0.75 ln 0.75)
LOG_3 = math.log(3.0)
ENTROPY = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))  # 0.562335


def test_sarsa_targets_by_hand():
    # y = r + 0.9 (1 - terminated) q(s', a'): 1 + 0.9*5 = 5.5; 1 (terminal); 0.5 + 0.9*10 = 9.5
    y = sarsa_targets(REWARDS, TERMINATED, torch.tensor([5.0, 7.0, 10.0]), 0.9)
    assert torch.allclose(y, torch.tensor([5.5, 1.0, 9.5]))


def test_actor_loss_by_hand():
    log_probs = torch.tensor([math.log(0.75), math.log(0.25), math.log(0.25)])
    weights = torch.tensor([2.0, 3.0, 4.0])
    loss = qac_actor_loss(log_probs, weights, torch.full((3,), ENTROPY), 0.01)
    # -(2 ln .75 + 3 ln .25 + 4 ln .25)/3 - 0.01 H = 3.426475 - 0.005623
    assert float(loss) == pytest.approx(3.426475 - 0.01 * ENTROPY, abs=1e-5)


@pytest.mark.parametrize("baseline", [False, True])
def test_update_on_a_hand_computed_batch(baseline):
    algo = QAC("CartPole-v1", seed=0, gamma=0.9, ent_coef=0.01, baseline=baseline)
    algo.critic.net = Table(Q_TABLE)
    algo.policy.logits = Table([[0.0, LOG_3]] * 6)
    metrics = algo.update(OBS, ACTIONS, REWARDS, NEXT_OBS, TERMINATED)
    # q(s', .) is equal across actions, so the sampled a' does not matter:
    # targets 5.5, 1.0, 9.5 against q(s, a) = 2, 3, 4 -> ((-3.5)^2 + 2^2 + (-5.5)^2)/3 = 15.5
    assert metrics["critic_loss"] == pytest.approx(15.5, abs=1e-5)
    # baseline: v(s) = sum_b pi(b|s) q(s, b) = 0.25+1.5 = 1.75, 0.75+0.375 = 1.125, 1+0.75 = 1.75;
    #   weights q - v = 0.25, 1.875, 2.25;
    #   -(0.25 ln .75 + 1.875 ln .25 + 2.25 ln .25)/3 = (0.071921 + 2.599301 + 3.119162)/3
    # no baseline: weights q(s, a) = 2, 3, 4: -(2 ln .75 + 3 ln .25 + 4 ln .25)/3
    expected = 1.930128 if baseline else 3.426475
    assert metrics["actor_loss"] == pytest.approx(expected - 0.01 * ENTROPY, abs=1e-5)


def test_same_seed_same_parameters():
    runs = [QAC("CartPole-v1", seed=seed).learn(1_000, show_progress=False) for seed in (3, 3, 4)]
    a, b, c = (parameters(run) for run in runs)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_save_load_round_trip_and_exact_resume(tmp_path):
    algo = QAC("CartPole-v1", seed=1).learn(640, show_progress=False)
    algo.save(tmp_path / "qac")
    loaded = QAC.load(tmp_path / "qac")
    assert loaded.config == algo.config and loaded.num_steps == algo.num_steps
    assert all(torch.equal(x, y) for x, y in zip(parameters(algo), parameters(loaded), strict=True))
    obs = torch.randn(16, 4, generator=torch.Generator().manual_seed(0)).numpy()
    assert (algo.predict(obs) == loaded.predict(obs)).all()
    algo.learn(640, show_progress=False)
    loaded.learn(640, show_progress=False)
    assert all(torch.equal(x, y) for x, y in zip(parameters(algo), parameters(loaded), strict=True))


def test_learns_cartpole():
    # A random policy scores about 20, and flipping the actor's sign gives 10. A constant
    # step size learns faster than the preset's decaying one (which is safer over 200k steps).
    algo = QAC("CartPole-v1", seed=0, learning_rate=7e-4, lr_schedule="constant")
    algo.learn(75_000, show_progress=False)
    assert algo.evaluate(episodes=5)["mean_return"] >= 300
