"""Hyperparameter presets: zoo values, override order, validation messages."""

from __future__ import annotations

import pytest

from driftlab.core.config import ConfigError
from driftlab.rl.deep.presets import (
    DEFAULTS,
    PRESETS,
    ZOO_DEPARTURES,
    ZOO_SOURCE,
    hyperparameters,
)

ALGORITHMS = ["dqn", "reinforce", "qac", "a2c", "off_policy_ac", "ddpg", "td3", "trpo", "ppo"]


def test_every_algorithm_has_defaults_and_every_preset_validates():
    assert sorted(DEFAULTS) == sorted(ALGORITHMS)
    for (algo, env_id), preset in PRESETS.items():
        assert set(preset) <= set(DEFAULTS[algo]), (algo, env_id)
        assert (algo, env_id) in ZOO_SOURCE
        params = hyperparameters(algo, env_id, {})
        assert set(params) == set(DEFAULTS[algo])
    for algo in ALGORITHMS:
        assert hyperparameters(algo, None, {}) == DEFAULTS[algo]
        assert hyperparameters(algo, "NoSuchEnv-v0", {}) == DEFAULTS[algo]
        assert (algo, "CartPole-v1") in PRESETS or algo in ("ddpg", "td3")


def test_ppo_cartpole_is_the_zoo_entry():
    p = hyperparameters("ppo", "CartPole-v1", {})
    assert (p["n_envs"], p["n_steps"], p["batch_size"], p["n_epochs"]) == (8, 32, 256, 20)
    assert (p["gae_lambda"], p["gamma"], p["ent_coef"]) == (0.8, 0.98, 0.0)
    assert (p["learning_rate"], p["lr_schedule"]) == (1e-3, "linear")
    assert (p["clip_range"], p["clip_schedule"]) == (0.2, "linear")
    assert p["total_steps"] == 100_000
    # keys the zoo leaves out keep SB3's defaults
    assert (p["vf_coef"], p["max_grad_norm"], p["hidden_sizes"]) == (0.5, 0.5, (64, 64))


def test_other_zoo_entries():
    dqn = hyperparameters("dqn", "CartPole-v1", {})
    assert (dqn["train_freq"], dqn["gradient_steps"], dqn["target_update_interval"]) == (
        256,
        128,
        10,
    )
    assert (dqn["learning_rate"], dqn["exploration_final_eps"]) == (1e-3, 0.04)  # see the preset
    assert (dqn["lr_schedule"], dqn["double_q"], dqn["huber"]) == ("linear", True, False)
    zoo = hyperparameters("dqn", "CartPole-v1", ZOO_DEPARTURES[("dqn", "CartPole-v1")])
    assert (zoo["learning_rate"], zoo["lr_schedule"]) == (2.3e-3, "constant")
    assert (zoo["double_q"], zoo["huber"]) == (False, True)
    assert dqn["hidden_sizes"] == (256, 256) and dqn["activation"] == "relu"
    # gradient_steps -1 (one per collected step) becomes train_freq with one environment
    assert hyperparameters("dqn", "Acrobot-v1", {})["gradient_steps"] == 4

    td3 = hyperparameters("td3", "Pendulum-v1", {})
    assert (td3["gamma"], td3["buffer_size"], td3["learning_starts"]) == (0.98, 200_000, 10_000)
    assert (td3["action_noise"], td3["action_noise_std"]) == ("normal", 0.1)
    assert (td3["hidden_sizes"], td3["policy_delay"], td3["total_steps"]) == ((400, 300), 2, 20_000)
    ddpg = hyperparameters("ddpg", "Pendulum-v1", {})
    assert (ddpg["policy_delay"], ddpg["target_noise"]) == (1, 0.0)

    a2c = hyperparameters("a2c", "Pendulum-v1", {})
    assert (a2c["n_steps"], a2c["gae_lambda"], a2c["vf_coef"], a2c["gamma"]) == (8, 0.9, 0.4, 0.9)
    assert a2c["normalize_obs"] and a2c["normalize_reward"]
    assert (a2c["log_std_init"], a2c["ortho_init"], a2c["lr_schedule"]) == (-2.0, False, "linear")
    assert hyperparameters("a2c", "CartPole-v1", {})["n_steps"] == 5  # SB3 default

    trpo = hyperparameters("trpo", "CartPole-v1", {})
    assert (trpo["n_envs"], trpo["n_steps"], trpo["batch_size"]) == (2, 512, 512)
    assert (trpo["cg_damping"], trpo["n_critic_updates"], trpo["gae_lambda"]) == (1e-3, 20, 0.98)
    assert "learning_rate" not in trpo
    assert hyperparameters("trpo", "HalfCheetah-v5", {})["max_kl"] == 0.04
    assert hyperparameters("trpo", "Hopper-v5", {})["max_kl"] == 0.01

    hopper = hyperparameters("ppo", "Hopper-v5", {})
    assert (hopper["batch_size"], hopper["n_epochs"], hopper["gamma"]) == (32, 5, 0.999)
    assert (hopper["hidden_sizes"], hopper["activation"]) == ((256, 256), "relu")


def test_overrides_apply_last_and_are_validated():
    p = hyperparameters("ppo", "CartPole-v1", {"n_envs": 2, "hidden_sizes": [32, 16]})
    assert p["n_envs"] == 2 and p["n_steps"] == 32
    assert p["hidden_sizes"] == (32, 16)
    assert hyperparameters("dqn", "CartPole-v1", {"double_q": True})["double_q"] is True
    assert hyperparameters("ppo", None, {"clip_range_vf": 0.3})["clip_range_vf"] == 0.3
    # the tables themselves are not modified
    assert PRESETS[("ppo", "CartPole-v1")]["n_envs"] == 8
    assert DEFAULTS["ppo"]["hidden_sizes"] == (64, 64)


def test_unknown_algorithm_and_key():
    with pytest.raises(ValueError, match=r"unknown algorithm 'sac'; allowed: dqn, reinforce"):
        hyperparameters("sac", "Pendulum-v1", {})
    with pytest.raises(
        ValueError, match=r"unknown hyperparameter 'lr' for ppo; allowed: gamma, learning_rate"
    ):
        hyperparameters("ppo", "CartPole-v1", {"lr": 1e-3})
    # a key of another algorithm is unknown here too
    with pytest.raises(ValueError, match="unknown hyperparameter 'buffer_size' for a2c"):
        hyperparameters("a2c", None, {"buffer_size": 10})


@pytest.mark.parametrize(
    ("algo", "overrides", "message"),
    [
        ("ppo", {"gamma": 1.5}, r"gamma must be in \[0.0, 1.0\], got 1.5"),
        ("ppo", {"learning_rate": 0}, "learning_rate must be > 0, got 0.0"),
        ("ppo", {"n_envs": 0}, "n_envs must be >= 1, got 0"),
        ("ppo", {"n_envs": 2.0}, "n_envs must be an integer, got 2.0"),
        ("ppo", {"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ("ppo", {"clip_range": 1.0}, r"clip_range must be in \(0, 1\), got 1.0"),
        ("ppo", {"clip_range": 0}, r"clip_range must be in \(0, 1\), got 0.0"),
        ("ppo", {"lr_schedule": "cosine"}, "lr_schedule must be one of 'constant', 'linear'"),
        ("ppo", {"clip_schedule": "exp"}, "clip_schedule must be one of 'constant', 'linear'"),
        ("ppo", {"activation": "gelu"}, "activation must be one of 'tanh', 'relu'; got 'gelu'"),
        ("ppo", {"normalize_obs": 1}, "normalize_obs must be True or False, got 1"),
        ("ppo", {"hidden_sizes": ()}, "hidden_sizes must be a non-empty tuple"),
        ("ppo", {"hidden_sizes": (64, 0)}, r"hidden_sizes\[1\] must be >= 1, got 0"),
        ("ppo", {"max_grad_norm": -1.0}, "max_grad_norm must be > 0, got -1.0"),
        ("ppo", {"ent_coef": -0.1}, "ent_coef must be >= 0, got -0.1"),
        ("a2c", {"optimizer": "sgd"}, "optimizer must be one of 'rmsprop', 'adam'"),
        ("dqn", {"tau": 0.0}, r"tau must be in \(0, 1\], got 0.0"),
        ("dqn", {"learning_starts": -1}, "learning_starts must be >= 0, got -1"),
        ("dqn", {"exploration_final_eps": 2}, r"exploration_final_eps must be in \[0.0, 1.0\]"),
        ("td3", {"action_noise": "pink"}, "action_noise must be one of 'normal'"),
        ("trpo", {"line_search_shrink": 1.0}, r"line_search_shrink must be in \(0, 1\)"),
        ("off_policy_ac", {"behaviour": "greedy"}, "behaviour must be one of 'uniform', 'lagged'"),
    ],
)
def test_bad_values_name_the_value_and_what_is_allowed(algo, overrides, message):
    with pytest.raises(ConfigError, match=message):
        hyperparameters(algo, None, overrides)


def test_none_is_allowed_where_documented():
    assert hyperparameters("ppo", None, {"max_grad_norm": None})["max_grad_norm"] is None
    assert hyperparameters("td3", None, {})["max_grad_norm"] is None
