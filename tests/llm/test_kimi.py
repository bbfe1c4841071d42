import pytest
import torch

from driftlab.llm.kimi import (
    kimi_baseline,
    kimi_gradient_loss,
    kimi_surrogate,
    length_reward,
)

torch.set_num_threads(1)


# --- the squared surrogate and its gradient (Kimi k1.5 sec. 2.3.2) ---------------------------


def _toy_policy(theta: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
    """log pi_theta(y|x) of length-3 sequences over 4 tokens with per-position logits
    ``theta`` [3, 4] (a tabular autoregressive policy: direct parameters)."""
    log_probs = theta.log_softmax(dim=-1)  # [3, 4]
    return log_probs.gather(1, sequences.T).T.sum(dim=1)  # [k]


def _setup():
    gen = torch.Generator().manual_seed(0)
    theta_old = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    theta = theta_old + 0.3 * torch.randn(3, 4, generator=gen, dtype=torch.float64)
    sequences = torch.randint(0, 4, (5, 3), generator=gen)  # k = 5 samples of one prompt
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    return theta_old, theta, sequences, rewards


def test_baseline_is_the_group_mean_reward():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    torch.testing.assert_close(
        kimi_baseline(rewards, group_size=4), torch.tensor([0.5] * 4 + [0.5] * 4)
    )
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 1.0])
    expected = torch.tensor([1 / 3] * 3 + [1.0] * 3)
    torch.testing.assert_close(kimi_baseline(rewards, group_size=3), expected)
    with pytest.raises(ValueError, match="group_size"):
        kimi_baseline(rewards, group_size=4)


def test_surrogate_on_a_hand_computed_group():
    # r = (1, 0), baseline 0.5, tau 0.5, log-ratios (0.2, -0.4):
    # (1 - 0.5 - 0.1)^2 = 0.16 and (0 - 0.5 + 0.2)^2 = 0.09
    surrogate = kimi_surrogate(
        torch.tensor([0.2, -0.4]), torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]), tau=0.5
    )
    torch.testing.assert_close(surrogate, torch.tensor([0.16, 0.09]))


def test_gradient_equals_the_papers_and_a_finite_difference_of_the_surrogate():
    theta_old, theta, sequences, rewards = _setup()
    tau, k = 0.7, rewards.numel()
    logp_old = _toy_policy(theta_old, sequences)
    baseline = kimi_baseline(rewards, group_size=k)

    def surrogate_mean(t: torch.Tensor) -> torch.Tensor:
        # L(theta) = (1/k) sum_j (r_j - tau log Z - tau log(pi_theta / pi_old))^2
        return kimi_surrogate(_toy_policy(t, sequences) - logp_old, rewards, baseline, tau).mean()

    # central finite difference of the squared surrogate, coordinate by coordinate
    h = 1e-6
    fd = torch.zeros_like(theta)
    for index in range(theta.numel()):
        e = torch.zeros_like(theta).view(-1)
        e[index] = h
        e = e.view_as(theta)
        fd.view(-1)[index] = (surrogate_mean(theta + e) - surrogate_mean(theta - e)) / (2 * h)

    # the paper's gradient: (1/k) sum_j [grad log pi_j (r_j - mean r) - tau/2 grad (log ratio_j)^2]
    paper = torch.zeros_like(theta)
    for j in range(k):
        t = theta.clone().requires_grad_(True)
        logp = _toy_policy(t, sequences[j : j + 1])[0]
        ratio = logp - logp_old[j]
        term = logp * (rewards[j] - rewards.mean()) - tau / 2 * ratio**2
        paper += torch.autograd.grad(term, t)[0] / k

    # the trainer's loss is the surrogate over 2 tau: its gradient is minus the paper's
    t = theta.clone().requires_grad_(True)
    loss = kimi_gradient_loss(
        _toy_policy(t, sequences) - logp_old, rewards, baseline, tau, num_sequences=k
    )
    (grad,) = torch.autograd.grad(loss, t)

    torch.testing.assert_close(fd, -2 * tau * paper, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(grad, -paper, rtol=1e-10, atol=1e-12)
    # the second term matters here: theta != theta_old
    assert (paper - _reinforce_part(theta, sequences, rewards)).abs().max() > 1e-3


def _reinforce_part(theta, sequences, rewards):
    t = theta.clone().requires_grad_(True)
    logp = _toy_policy(t, sequences)
    return torch.autograd.grad((logp * (rewards - rewards.mean())).mean(), t)[0]


def test_at_the_old_policy_the_gradient_is_reinforce_with_the_mean_baseline():
    theta_old, _, sequences, rewards = _setup()
    t = theta_old.clone().requires_grad_(True)
    logp_old = _toy_policy(theta_old, sequences)
    baseline = kimi_baseline(rewards, group_size=5)
    loss = kimi_gradient_loss(_toy_policy(t, sequences) - logp_old, rewards, baseline, 0.3, 5)
    (grad,) = torch.autograd.grad(loss, t)
    torch.testing.assert_close(grad, -_reinforce_part(theta_old, sequences, rewards))


def test_gradient_loss_sums_over_the_whole_batch_denominator():
    ratio = torch.tensor([0.1, -0.2, 0.3, 0.0])
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    baseline = kimi_baseline(rewards, 2)
    whole = kimi_gradient_loss(ratio, rewards, baseline, 0.5, num_sequences=4)
    parts = sum(
        kimi_gradient_loss(ratio[i : i + 2], rewards[i : i + 2], baseline[i : i + 2], 0.5, 4)
        for i in (0, 2)
    )
    torch.testing.assert_close(whole, parts)
    expected = kimi_surrogate(ratio, rewards, baseline, 0.5).sum() / (2 * 0.5 * 4)
    torch.testing.assert_close(whole, expected)


# --- the length reward with its warm-up switch (sec. 2.3.3) ----------------------------------


def test_length_reward_on_a_worked_example_with_warm_up():
    # one group of four: lengths 10, 20, 30, 10 -> min 10, max 30, lambda = 0.5 - (len-10)/20
    # = 0.5, 0, -0.5, 0.5; wrong answers keep only min(0, lambda): the second (0) and fourth (0)
    lengths = torch.tensor([10, 20, 30, 10, 7, 7, 7, 7])
    correct = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    expected = torch.tensor([0.5, 0.0, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0])
    on = length_reward(lengths, correct, group_size=4, weight=0.2, step=5, warmup_steps=5)
    torch.testing.assert_close(on, 0.2 * expected)
    off = length_reward(lengths, correct, group_size=4, weight=0.2, step=4, warmup_steps=5)
    torch.testing.assert_close(off, torch.zeros(8))
    # a wrong answer shorter than the middle gets 0, a long wrong one is penalised
    lam = length_reward(
        torch.tensor([4, 8, 12]), torch.tensor([0, 0, 0]), group_size=3, weight=1.0, step=0
    )
    torch.testing.assert_close(lam, torch.tensor([0.0, 0.0, -0.5]))
