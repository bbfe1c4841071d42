"""Deep reinforcement learning on Gymnasium environments.

Every learner is ``Algo(env, seed=0, **hyperparameters)`` with ``learn(total_steps)``,
``evaluate(episodes=20)``, ``predict(obs)``, ``save(path)`` and ``Algo.load(path)``; the
environment's preset (:mod:`driftlab.rl.deep.presets`) supplies the defaults. Each algorithm
lives in its own file and is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from driftlab.rl.deep.algorithm import ALGORITHM_CLASSES, Algorithm, get_algorithm

__all__ = ["Algorithm", "get_algorithm", *ALGORITHM_CLASSES]


def __getattr__(name: str) -> Any:
    if name in ALGORITHM_CLASSES:
        module = importlib.import_module(f"driftlab.rl.deep.{ALGORITHM_CLASSES[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'driftlab.rl.deep' has no attribute {name!r}")
