import pytest
import torch

from driftlab.core.checkpoint import load_checkpoint, save_checkpoint
from driftlab.llm.curriculum import ProblemSampler, step_generator
from driftlab.llm.tasks import get_task

torch.set_num_threads(1)


def _sampler(**options) -> ProblemSampler:
    return ProblemSampler([get_task("addition", digits=1)], pool_size=4, seed=3, **options)


def test_step_generator_depends_on_seed_and_step():
    a = torch.rand(3, generator=step_generator(1, 2))
    assert torch.equal(a, torch.rand(3, generator=step_generator(1, 2)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(1, 3)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(2, 2)))


def test_prioritised_probabilities_are_one_minus_success_rate():
    sampler = _sampler(floor=0.05)
    assert len(sampler.problems) == 4
    # success rates 0, 1/2, 1, 3/4 -> weights 1, 0.5, floor 0.05, 0.25 (sum 1.8)
    sampler.update(sampler.problems[:1], [[0, 0]])
    sampler.update(sampler.problems[1:4], [[1, 0], [1, 1, 1], [1, 1, 1, 0]])
    expected = torch.tensor([1.0, 0.5, 0.05, 0.25], dtype=torch.float64) / 1.8
    torch.testing.assert_close(sampler.probabilities(), expected)


def test_prioritised_sampling_frequencies_on_a_seeded_example():
    sampler = _sampler(floor=0.05)
    sampler.update(sampler.problems, [[0, 0], [1, 0], [1, 1], [1, 1, 1, 0]])
    prompts = [p["prompt"] for p in sampler.problems]
    counts = torch.zeros(4)
    for step in range(100):
        for problem in sampler.sample(100, step):
            counts[prompts.index(problem["prompt"])] += 1
    frequencies = counts / counts.sum()
    expected = torch.tensor([1.0, 0.5, 0.05, 0.25]) / 1.8
    # 10,000 draws: the standard error of each frequency is below 0.005
    torch.testing.assert_close(frequencies, expected, atol=0.015, rtol=0)
    # the same step draws the same problems
    assert sampler.sample(5, 7) == sampler.sample(5, 7)


def test_uniform_sampling_when_not_prioritised():
    sampler = _sampler(prioritized=False)
    sampler.update(sampler.problems, [[1, 1], [0, 0], [1, 1], [1, 1]])
    torch.testing.assert_close(sampler.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))


def test_curriculum_advances_on_accuracy_threshold_and_on_schedule():
    levels = [get_task("addition", digits=1), get_task("addition", digits=2, min_digits=2)]
    sampler = ProblemSampler(levels, pool_size=8, seed=0, threshold=0.75, window=2)
    easy = sampler.problems[:1]
    assert sampler.level == 0 and all("+" in p["prompt"] for p in sampler.sample(3, 0))
    sampler.update(easy, [[1, 1, 1, 1]])  # window not yet full
    assert sampler.level == 0
    sampler.update(easy, [[1, 0, 0, 0]])  # mean of (1, 0.25) = 0.625 < 0.75
    assert sampler.level == 0
    sampler.update(easy, [[1, 1, 1, 1]])  # mean of (0.25, 1) = 0.625
    assert sampler.level == 0
    sampler.update(easy, [[1, 1, 1, 0]])  # mean of (1, 0.75) = 0.875 >= 0.75
    assert sampler.level == 1 and sampler.recent == [] and sampler.level_steps == 0
    hard = sampler.sample(20, 1)
    assert all(p["a"] >= 10 and p["b"] >= 10 for p in hard)
    sampler.update(hard[:1], [[1, 1, 1, 1]] * 1)
    assert sampler.level == 1  # the last level is kept

    scheduled = ProblemSampler(levels, pool_size=8, seed=0, threshold=1.0, every=3)
    for _ in range(2):
        scheduled.update(easy, [[0, 0]])
    assert scheduled.level == 0
    scheduled.update(easy, [[0, 0]])
    assert scheduled.level == 1


def test_sampler_state_round_trips_through_a_checkpoint(tmp_path):
    levels = [get_task("addition", digits=1), get_task("addition", digits=2)]
    a = ProblemSampler(levels, pool_size=16, seed=1, threshold=0.5, window=1)
    b = ProblemSampler(levels, pool_size=16, seed=1, threshold=0.5, window=1)
    for step in range(3):
        drawn = a.sample(4, step)
        a.update(drawn, [[step % 2, 1]] * 4)
    save_checkpoint(tmp_path / "sampler", a.state_dict())
    b.load_state_dict(load_checkpoint(tmp_path / "sampler"))
    assert b.level == a.level == 1
    torch.testing.assert_close(b.success_rates(), a.success_rates())
    for step in range(3, 6):
        assert b.sample(4, step) == a.sample(4, step)
        outcomes = [[1, 0]] * 4
        a.update(a.sample(4, step), outcomes)
        b.update(b.sample(4, step), outcomes)
    torch.testing.assert_close(b.probabilities(), a.probabilities())
    other = ProblemSampler(levels, pool_size=8, seed=1)
    with pytest.raises(ValueError, match="pool_size or seed"):
        other.load_state_dict(a.state_dict())
