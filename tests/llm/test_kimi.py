import pytest
import torch

from driftlab.core import distributed
from driftlab.llm.kimi import (
    kimi_baseline,
    kimi_gradient_loss,
    kimi_surrogate,
    length_reward,
)
from gloo import rendezvous

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


# --- partial rollouts (sec. 2.6.2) -----------------------------------------------------------


def _tiny_model(seed: int = 0):
    from driftlab.llm.model import TransformerConfig, TransformerLM
    from driftlab.llm.tokenizer import CharTokenizer

    tokenizer = CharTokenizer()
    torch.manual_seed(seed)
    config = TransformerConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_layers=2, n_heads=2)
    return TransformerLM(config).eval(), tokenizer


def _groups(problems, k):
    from driftlab.llm.kimi import PendingGroup

    return [
        PendingGroup(problem=p, birth=3, slot=s, tokens=[[] for _ in range(k)], done=[False] * k)
        for s, p in enumerate(problems)
    ]


def test_a_completion_cut_by_the_budget_continues_as_an_uncut_one():
    from driftlab.llm.kimi import sample_segments

    model, tokenizer = _tiny_model()
    problems = [{"prompt": "12+34=\n"}, {"prompt": "7+8=\n"}]
    uncut = _groups(problems, k=3)
    first = sample_segments(model, tokenizer, uncut, budget=20, max_new_tokens=20, seed=5)
    assert all(g.complete for g in uncut)

    cut = _groups(problems, k=3)
    segments, iterations = [], 0
    while not all(g.complete for g in cut):
        segments.append(sample_segments(model, tokenizer, cut, budget=6, max_new_tokens=20, seed=5))
        iterations += 1
    assert iterations == 4  # 20 tokens in segments of 6: some completions ran to the cap
    for a, b in zip(uncut, cut, strict=True):
        assert a.tokens == b.tokens and a.done == b.done
    lengths = [len(t) for g in uncut for t in g.tokens]
    assert min(lengths) < 20 and max(lengths) == 20  # some ended with <eos>, some were cut
    # the log-probs of the pieces are those of the single pass
    for g in range(2):
        for j in range(3):
            pieces = [
                s.log_probs[s.rows.index((g, j))][s.completion_mask[s.rows.index((g, j))].bool()]
                for s in segments
                if (g, j) in s.rows
            ]
            i = first.rows.index((g, j))
            whole = first.log_probs[i][first.completion_mask[i].bool()]
            torch.testing.assert_close(torch.cat(pieces), whole, rtol=1e-5, atol=1e-5)
    # a later iteration only continues the unfinished rows, with the earlier tokens as context
    second = segments[1]
    (g, j) = second.rows[0]
    context = second.prompt_ids[0][second.prompt_mask[0].bool()].tolist()
    assert context == tokenizer.encode(problems[g]["prompt"], add_bos=True) + cut[g].tokens[j][:6]


# --- the trainer -----------------------------------------------------------------------------


def _trainer(tmp_path=None, **options):
    from driftlab.llm.kimi import KimiConfig, KimiTrainer

    model, tokenizer = _tiny_model()
    settings = dict(
        task="addition",
        task_options={"digits": 1},
        steps=4,
        prompts_per_step=4,
        group_size=3,
        max_new_tokens=12,
        lr=3e-3,
        mu=2,
        minibatch_size=6,
        train_size=40,
        length_weight=0.1,
        seed=1,
    )
    settings.update(options)
    return KimiTrainer(model, tokenizer, KimiConfig(**settings), run_dir=tmp_path)


def test_config_validation():
    from driftlab.core.config import ConfigError
    from driftlab.llm.kimi import KimiConfig

    with pytest.raises(ConfigError, match="tau must be > 0"):
        KimiConfig(tau=0.0)
    with pytest.raises(ConfigError, match="rollout_budget must be >= 1"):
        KimiConfig(rollout_budget=0)
    with pytest.raises(ConfigError, match=r"curriculum\[1\]"):
        KimiConfig(curriculum=[{"digits": 1}, {"count": 3}])
    assert KimiConfig().beta == 0.0


def test_trainer_loss_is_the_surrogate_over_the_batch():
    trainer = _trainer(rollout_budget=None)
    problems = trainer.select_problems(4)
    exp = trainer.collect(problems)
    trainer.prepare(exp)
    total = exp.extras["total_rewards"]
    torch.testing.assert_close(exp.extras["baseline"], kimi_baseline(total, 3))
    torch.testing.assert_close(
        total - exp.rewards,
        length_reward(exp.lengths, exp.correct, 3, weight=0.1, step=0),
    )
    shifted = exp.old_log_probs + 0.01 * exp.completion_mask  # log-ratio 0.01 per token
    loss, metrics = trainer.loss(exp, shifted)
    ratio = 0.01 * exp.completion_mask.sum(dim=1).float()
    expected = kimi_gradient_loss(ratio, total, exp.extras["baseline"], 1.0, exp.rows)
    torch.testing.assert_close(loss, expected)
    assert metrics["log_ratio"] == pytest.approx(float(ratio.mean()), rel=1e-6)


def test_partial_rollouts_carry_unfinished_groups_and_train_only_new_tokens():
    trainer = _trainer(rollout_budget=5, max_new_tokens=10)
    exp = trainer.collect(trainer.select_problems(4))
    # the groups still running after 5 tokens are carried over; they end within 10
    carried = len(trainer.pending)
    assert carried + exp.groups == 4 and carried > 0
    assert all(len(t) <= 5 for group in trainer.pending for t in group.tokens)
    assert len(trainer.select_problems(4)) == 4 - carried
    before = [[list(t) for t in group.tokens] for group in trainer.pending]
    trainer.prepare(exp)
    trainer.update(exp, trainer.global_groups(exp, 4))
    trainer.step_count += 1
    exp = trainer.collect(trainer.select_problems(4))
    # every carried group ends now (10 tokens in two budgets of 5) and comes first, in order;
    # its earlier tokens are context, only this iteration's are trained
    assert trainer.pending == [] and exp.groups == 4
    for g, prefixes in enumerate(before):
        for j, prefix in enumerate(prefixes):
            row = g * 3 + j
            context = exp.prompt_ids[row][exp.prompt_mask[row].bool()].tolist()
            assert context[len(context) - len(prefix) :] == prefix
            trained = exp.completion_mask[row].sum().item()
            assert trained <= 5 and exp.extras["lengths"][row] == len(prefix) + trained
            if len(prefix) < 5 or prefix[-1] == trainer.tokenizer.eos_id:
                assert trained == 0  # ended in the first iteration: no gradient


def test_resume_continues_exactly(tmp_path):
    from driftlab.llm.kimi import KimiTrainer

    straight = _trainer(rollout_budget=5, steps=4)
    straight.train(show_progress=False)

    first = _trainer(tmp_path, rollout_budget=5, steps=4)
    first.train(steps=2, show_progress=False)
    resumed = KimiTrainer.resume(tmp_path)
    assert resumed.step_count == 2
    assert [g.state_dict() for g in resumed.pending] == [g.state_dict() for g in first.pending]
    torch.testing.assert_close(resumed.sampler.success_rates(), first.sampler.success_rates())
    resumed.train(show_progress=False)
    for a, b in zip(straight.policy.parameters(), resumed.policy.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [g.state_dict() for g in resumed.pending] == [g.state_dict() for g in straight.pending]
    torch.testing.assert_close(resumed.sampler.attempts, straight.sampler.attempts)


def test_kimi_steps_with_partial_rollouts_on_a_hugging_face_gpt2():
    pytest.importorskip("transformers")
    from driftlab.llm.hf import HFPolicy, char_gpt2
    from driftlab.llm.kimi import KimiConfig, KimiTrainer
    from driftlab.llm.tokenizer import CharTokenizer

    tokenizer = CharTokenizer()
    torch.manual_seed(0)
    policy = HFPolicy(char_gpt2(n_layer=1, n_head=2, n_embd=32, n_positions=64))
    before = [p.detach().clone() for p in policy.parameters()]
    settings = dict(task="addition", task_options={"digits": 1}, prompts_per_step=2, group_size=2)
    trainer = KimiTrainer(
        policy,
        tokenizer,
        KimiConfig(**settings, max_new_tokens=8, rollout_budget=4, length_weight=0.5, lr=1e-2),
    )
    records = trainer.train(steps=3, show_progress=False)
    assert sum(r["completed_groups"] for r in records) >= 2
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))


def test_trainer_curriculum_moves_to_harder_problems_on_schedule():
    trainer = _trainer(
        curriculum=[{"digits": 1}, {"digits": 2, "min_digits": 2}],
        curriculum_every=1,
        max_new_tokens=6,
        mu=1,
        minibatch_size=None,
    )
    assert all(p["a"] < 10 and p["b"] < 10 for p in trainer.select_problems(4))
    record = trainer.train(steps=1, show_progress=False)[0]
    assert record["curriculum_level"] == 0.0  # logged before the rule moved on
    assert trainer.sampler.level == 1
    assert all(p["a"] >= 10 and p["b"] >= 10 for p in trainer.select_problems(4))
    # evaluation stays on the configured task (1-digit here)
    assert all(p["a"] < 10 and p["b"] < 10 for p in trainer.eval_problems)


DISTRIBUTED_OPTIONS = {"rollout_budget": 5, "max_new_tokens": 10}


def _distributed_worker(rank: int, init_method: str, out_dir: str) -> None:
    from torch import distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=2)
    try:
        trainer = _trainer(**DISTRIBUTED_OPTIONS)
        trainer.train(3, show_progress=False)
        if rank == 0:
            torch.save(
                {
                    "params": [p.detach() for p in trainer.policy.parameters()],
                    "pending": [g.state_dict() for g in trainer.pending],
                    "attempts": trainer.sampler.attempts,
                },
                f"{out_dir}/rank0.pt",
            )
    except BaseException:
        distributed.shutdown(wait=False)  # the other rank may never arrive
        raise
    distributed.shutdown()  # waits for the other rank, then leaves the group


def test_two_processes_equal_one_with_partial_rollouts(tmp_path):
    """Each rank continues 2 of the 4 groups; the unfinished groups and the success rates
    are shared, and the gradients averaged, so both runs take the same steps."""
    from torch import multiprocessing as mp

    mp.spawn(_distributed_worker, args=(rendezvous(tmp_path), str(tmp_path)), nprocs=2)
    two = torch.load(tmp_path / "rank0.pt")
    one = _trainer(**DISTRIBUTED_OPTIONS)
    one.train(3, show_progress=False)
    assert two["pending"] == [g.state_dict() for g in one.pending]
    torch.testing.assert_close(two["attempts"], one.sampler.attempts)
    assert one.sampler.attempts.sum() > 0
    for a, b in zip(one.policy.parameters(), two["params"], strict=True):
        torch.testing.assert_close(a.detach(), b, atol=1e-5, rtol=0)
