"""Twin Delayed DDPG (Fujimoto et al. 2018, "Addressing Function Approximation Error in
Actor-Critic Methods").

DDPG (:mod:`driftlab.rl.deep.ddpg`) with three changes against the critic's overestimation:

1. Clipped double Q-learning: two critics regress onto one target built from the smaller of
   their target networks' values,
       y = r + gamma (1 - d) min_{i=1,2} Q'_i(s', a')              (eq. 10)
2. Target policy smoothing: the target action is the target actor's, perturbed by clipped
   Gaussian noise and clipped to the action box,
       a' = clip(mu'(s') + clip(eps, -c, c), -1, 1),  eps ~ N(0, target_noise^2)   (eq. 14)
3. Delayed policy updates: the actor and all targets move once every ``policy_delay``
   critic updates (sec. 5.2, ``d = 2``).

The actor ascends ``Q_1(s, mu(s))`` alone. The two critics are one
:class:`~driftlab.rl.deep.ensemble.EnsembleQNet`, whose parameters are one tensor per layer
for both. Acting, replay and the update schedule are DDPG's.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from driftlab.rl.deep.buffers import Transitions
from driftlab.rl.deep.ddpg import DDPG
from driftlab.rl.losses import clipped_double_q_target


class TD3(DDPG):
    """``TD3(env, seed=0, **hyperparameters)``; see :mod:`driftlab.rl.deep.presets`."""

    name = "td3"
    n_critics: ClassVar[int] = 2

    def critic_target_values(self, batch: Transitions) -> torch.Tensor:
        """Clipped double-Q target (eq. 10) at the smoothed target action (eq. 14)."""
        next_q = self.critic_target(batch.next_obs, self.target_actions(batch.next_obs))
        return clipped_double_q_target(
            batch.rewards, next_q[0], next_q[1], self.config["gamma"], batch.terminated
        )
