"""TRPO: the Fisher-vector product and natural-gradient step against an explicit Fisher matrix,
the closed-form KLs against torch.distributions, the line search's acceptance rule, the trust
region on a real update, determinism, save/load and a short learning run."""

import math

import pytest
import torch
from torch.autograd.functional import jacobian
from torch.distributions import Categorical, Normal
from torch.func import functional_call

from driftlab.rl.deep import TRPO
from driftlab.rl.deep import trpo as trpo_module
from driftlab.rl.deep.networks import CategoricalPolicy, GaussianPolicy
from driftlab.rl.deep.trpo import (
    categorical_kl,
    distribution,
    fisher_vector_product,
    flat_grad,
    gaussian_kl,
    kl_divergence,
    line_search,
    log_prob,
    natural_gradient_step,
)


def _explicit_fisher(policy, obs):
    """F = 1/B sum_s J_s^T M_s J_s, with J_s the Jacobian of the distribution's parameters
    w.r.t. theta and M_s the Fisher matrix of the distribution in those parameters:
    diag(p) - p p^T for softmax logits; 1/sigma^2 for a Gaussian mean and 2 for a log-std."""
    names = [n for n, _ in policy.named_parameters()]
    shapes = [p.shape for p in policy.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in policy.parameters()])

    def unflatten(flat):
        out, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            n = math.prod(shape)
            out[name] = flat[offset : offset + n].reshape(shape)
            offset += n
        return out

    B = obs.shape[0]
    if policy.discrete:

        def body(flat):
            return functional_call(policy.logits, _sub(unflatten(flat), "logits."), (obs,))

        J = jacobian(body, theta)  # [B, A, n]
        p = torch.softmax(body(theta), -1)
        M = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)  # [B, A, A]
        return torch.einsum("bai,bac,bcj->ij", J, M, J) / B, theta

    def params(flat):
        mean = functional_call(policy.mean, _sub(unflatten(flat), "mean."), (obs,))
        log_std = unflatten(flat)["log_std"].expand_as(mean)
        return torch.cat([mean, log_std], -1)  # [B, 2d]

    J = jacobian(params, theta)  # [B, 2d, n]
    d = policy.log_std.numel()
    sigma2 = torch.exp(2 * policy.log_std.detach())
    M = torch.diag(torch.cat([1 / sigma2, torch.full((d,), 2.0, dtype=sigma2.dtype)]))
    return torch.einsum("bai,ac,bcj->ij", J, M, J) / B, theta


def _assert_close(actual, expected, rtol=1.3e-6, atol=1e-5):
    # torch.allclose rather than torch.testing.assert_close, whose first call imports
    # torch.distributed.tensor (seconds).
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (actual, expected)


def _sub(params, prefix):
    return {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}


@pytest.mark.parametrize("discrete", [True, False])
def test_fisher_vector_product_and_step_match_direct_solve(discrete):
    torch.manual_seed(0)
    if discrete:  # 2 -> 2 -> 2: 6 + 6 = 12 parameters
        policy = CategoricalPolicy(2, 2, (2,), ortho_init=False).double()
    else:  # 2 -> 2 -> 1 plus log_std: 6 + 3 + 1 = 10 parameters
        policy = GaussianPolicy(2, 1, (2,), ortho_init=False, log_std_init=-0.3).double()
    params = list(policy.parameters())
    n = sum(p.numel() for p in params)
    obs = torch.randn(16, 2, dtype=torch.float64)
    actions = torch.randint(0, 2, (16,)) if discrete else torch.randn(16, 1, dtype=torch.float64)
    advantages = torch.randn(16, dtype=torch.float64)
    damping, max_kl = 0.05, 0.01

    old = tuple(t.detach() for t in distribution(policy, obs))
    dist = distribution(policy, obs)
    old_log_probs = log_prob(old, actions)
    surrogate = (torch.exp(log_prob(dist, actions) - old_log_probs) * advantages).mean()
    g = flat_grad(surrogate, params, retain_graph=True)
    fvp = fisher_vector_product(kl_divergence(old, dist).mean(), params, damping)

    F, _ = _explicit_fisher(policy, obs)
    A = F + damping * torch.eye(n, dtype=torch.float64)
    v = torch.randn(n, dtype=torch.float64)
    _assert_close(fvp(v), A @ v, rtol=1e-10, atol=1e-12)

    # CG is exact in n iterations (in exact arithmetic); the step is sqrt(2 max_kl / s^T A s) s.
    s = torch.linalg.solve(A, g)
    expected = torch.sqrt(2 * max_kl / (s @ A @ s)) * s
    step = natural_gradient_step(fvp, g, max_kl, cg_iterations=3 * n, residual_tol=1e-30)
    _assert_close(step, expected, rtol=1e-8, atol=1e-12)
    # With the default stopping rule (|g - A s|^2 < 1e-10) the step is close, not exact.
    default = natural_gradient_step(fvp, g, max_kl, cg_iterations=3 * n)
    assert float((default - expected).norm() / expected.norm()) < 1e-2
    # ...and by construction the quadratic model of the KL at the full step is max_kl.
    assert float(0.5 * step @ A @ step) == pytest.approx(max_kl, rel=1e-8)


def test_closed_form_kls_match_torch_distributions():
    # Hand example: p_old = (1/2, 1/2), p = (1/4, 3/4):
    # KL = 1/2 ln(2) + 1/2 ln(2/3) = 1/2 ln(4/3) = 0.1438410...
    old = torch.log(torch.tensor([[0.5, 0.5], [0.2, 0.8], [0.9, 0.1]]))
    new = torch.log(torch.tensor([[0.25, 0.75], [0.6, 0.4], [0.5, 0.5]]))
    kl = categorical_kl(old, new)
    assert float(kl[0]) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    expected = torch.distributions.kl_divergence(Categorical(logits=old), Categorical(logits=new))
    _assert_close(kl, expected)

    # Hand example: N(0, 1) || N(1, 2^2): ln 2 + (1 + 1) / 8 - 1/2 = 0.4431471...
    old_mean = torch.tensor([[0.0, 0.5], [1.0, -2.0]])
    mean = torch.tensor([[1.0, 0.0], [0.5, -1.0]])
    old_log_std = torch.tensor([0.0, -0.5])
    log_std = torch.tensor([math.log(2.0), 0.3])
    kl = gaussian_kl(old_mean, old_log_std, mean, log_std)
    per_dim = torch.distributions.kl_divergence(
        Normal(old_mean, old_log_std.exp()), Normal(mean, log_std.exp())
    )
    _assert_close(kl, per_dim.sum(-1))
    first_dim = gaussian_kl(old_mean[:1, :1], old_log_std[:1], mean[:1, :1], log_std[:1])
    assert float(first_dim[0]) == pytest.approx(math.log(2) + 2 / 8 - 0.5, rel=1e-6)
    _assert_close(kl_divergence((old_mean, old_log_std), (mean, log_std)), kl)


def test_line_search_accepts_first_step_inside_trust_region():
    # KL(x) = |x|^2 / 2, surrogate(x) = x (always improving). Full step 0.2 with max_kl 0.01:
    # k=0: 0.2^2/2 = 0.02 > 0.01; k=1: 0.16^2/2 = 0.0128 > 0.01; k=2: 0.128^2/2 = 0.008192 ok.
    def evaluate(x):
        return float(x.sum()), float(0.5 * x @ x)

    zero, full = torch.zeros(1), torch.tensor([0.2])
    accepted, fraction, surrogate, kl = line_search(evaluate, zero, full, 0.0, 0.01, 10, 0.8)
    assert accepted
    assert fraction == pytest.approx(0.64)
    assert kl == pytest.approx(0.008192) and kl <= 0.01
    assert surrogate == pytest.approx(0.128)
    # Two tries are not enough: both violate the KL constraint, so the step is rejected.
    assert line_search(evaluate, zero, full, 0.0, 0.01, 2, 0.8) == (False, 0.0, 0.0, 0.0)
    # Inside the trust region but not improving the surrogate: rejected too.
    assert not line_search(evaluate, zero, -full, 0.0, 0.01, 10, 0.8)[0]


def _cartpole(**overrides):
    return TRPO("CartPole-v1", seed=0, n_steps=128, batch_size=64, **overrides)


def _torch_distribution(algo, obs):
    with torch.no_grad():
        if algo.policy.discrete:
            return Categorical(logits=algo.policy.logits(obs))
        return Normal(algo.policy.mean(obs), algo.policy.log_std.exp().expand(len(obs), -1))


@pytest.mark.parametrize("env", ["CartPole-v1", "Pendulum-v1"])
def test_accepted_step_stays_inside_trust_region(env):
    algo = TRPO(env, seed=0, n_steps=128, batch_size=64, max_kl=0.005)
    algo.reset_envs()
    algo.collect()
    data = algo.buffer.flat()
    old = _torch_distribution(algo, data["obs"])
    log_std_old = None if algo.policy.discrete else algo.policy.log_std.detach().clone()
    metrics = algo.update_policy(data)
    assert metrics["line_search_accepted"] == 1.0
    # KL(pi_old || pi_new) through torch.distributions, summed over action dimensions.
    kl = torch.distributions.kl_divergence(old, _torch_distribution(algo, data["obs"]))
    kl = float(kl.reshape(len(kl), -1).sum(-1).mean())
    assert 0.0 < kl <= 0.005
    assert kl == pytest.approx(metrics["kl"], rel=1e-4)
    assert metrics["surrogate_improvement"] > 0
    if log_std_old is not None:  # the step moves the Gaussian's log-std too
        assert not torch.equal(algo.policy.log_std.detach(), log_std_old)


def test_step_violating_the_trust_region_is_rejected(monkeypatch):
    # A step 30 times the natural-gradient step has KL ~ 900 max_kl (quadratic model), and a
    # single try leaves nothing to backtrack to: the policy must keep its parameters exactly.
    real_step = trpo_module.natural_gradient_step
    monkeypatch.setattr(trpo_module, "natural_gradient_step", lambda *a: 30 * real_step(*a))
    algo = _cartpole(line_search_steps=1)
    algo.reset_envs()
    algo.collect()
    theta_old = algo.policy_flat.param.data.clone()
    metrics = algo.update_policy(algo.buffer.flat())
    assert metrics["line_search_accepted"] == 0.0
    assert metrics["kl"] == 0.0 and metrics["step_fraction"] == 0.0
    assert torch.equal(algo.policy_flat.param.data, theta_old)


@pytest.mark.parametrize("env", ["CartPole-v1", "Pendulum-v1"])
def test_same_seed_same_parameters(env):
    def run():
        algo = TRPO(env, seed=3, n_steps=64, batch_size=32, n_envs=2)
        algo.learn(256, show_progress=False)
        return torch.cat([p.detach().reshape(-1) for p in algo.policy.parameters()])

    a, b = run(), run()
    assert torch.equal(a, b)
    other = TRPO(env, seed=4, n_steps=64, batch_size=32, n_envs=2)
    other.learn(256, show_progress=False)
    assert not torch.equal(a, torch.cat([p.reshape(-1) for p in other.policy.parameters()]))


def test_save_load_resumes_exactly(tmp_path):
    algo = TRPO("Pendulum-v1", seed=1, n_steps=64, batch_size=32)
    algo.learn(128, show_progress=False)
    algo.save(tmp_path / "trpo")
    loaded = TRPO.load(tmp_path / "trpo")
    assert loaded.config == algo.config
    obs = torch.randn(5, 3)
    _assert_close(loaded.policy.mode(obs), algo.policy.mode(obs), rtol=0, atol=0)
    algo.learn(128, show_progress=False)
    loaded.learn(128, show_progress=False)
    for p, q in zip(algo.modules().values(), loaded.modules().values(), strict=True):
        for x, y in zip(p.parameters(), q.parameters(), strict=True):
            assert torch.equal(x, y)


def test_learns_cartpole():
    # The zoo preset (2 envs x 512 steps, 20 critic epochs) reaches ~390 by 20k steps on
    # seed 0; an untrained policy scores ~10-40.
    algo = TRPO("CartPole-v1", seed=0)
    algo.learn(20_000, show_progress=False)
    assert algo.evaluate(episodes=5)["mean_return"] >= 250
