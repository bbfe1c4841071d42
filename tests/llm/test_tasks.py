"""Tasks: registry, seeded disjoint splits, prompts, and reference solutions that the task's
own rewards score 1 (and score 0 once corrupted)."""

import pytest

from driftlab.llm.expression import parse_expression
from driftlab.llm.tasks import TASKS, get_task, solve_countdown
from driftlab.llm.tokenizer import CharTokenizer

OPTIONS = {
    "addition": {"digits": 3},
    "multiplication": {"digits": 2},
    "countdown": {"count": 3, "max_number": 50, "max_target": 100},
}


def test_registry():
    assert set(TASKS) == {"addition", "multiplication", "countdown"}
    assert get_task("addition", digits=3).digits == 3
    with pytest.raises(ValueError, match="task must be one of"):
        get_task("subtraction")
    with pytest.raises(ValueError, match="min_digits must be <= digits=1"):
        get_task("addition", digits=1, min_digits=2)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_splits_are_disjoint_and_seeded(name):
    task = get_task(name, **OPTIONS[name])
    train = task.problems(200, "train", seed=0)
    test = task.problems(50, "test", seed=0)
    assert len({task._key(p) for p in train}) == 200
    assert not {task._key(p) for p in train} & {task._key(p) for p in test}
    assert all(task.split_of(p) == "test" for p in test)
    assert task.problems(200, "train", seed=0) == train
    assert task.problems(200, "train", seed=1) != train
    # Another split seed moves problems between the splits.
    moved = get_task(name, split_seed=1, **OPTIONS[name])
    assert {moved.split_of(p) for p in test} == {"train", "test"}


def test_commuted_operands_share_a_split():
    task = get_task("addition", digits=2)
    for a, b in [(3, 4), (12, 97), (50, 5)]:
        assert task.split_of({"a": a, "b": b}) == task.split_of({"a": b, "b": a})


def test_small_split_is_exhausted_exactly():
    task = get_task("addition", digits=1, test_fraction=0.2)
    train = task.problems(100, "train", allow_fewer=True)
    test = task.problems(100, "test", allow_fewer=True)
    assert len(train) + len(test) == 55  # unordered pairs of digits, 0-9
    with pytest.raises(ValueError, match="fewer than n=100"):
        task.problems(100, "test")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_reference_solutions_score_one_and_corruptions_zero(name):
    task = get_task(name, **OPTIONS[name])
    problems = task.problems(100, "train")
    tok = CharTokenizer()
    solutions = [p["solution"] for p in problems]
    assert all(
        tok.decode(tok.encode(p["prompt"] + s)) == p["prompt"] + s
        for p, s in zip(problems, solutions, strict=True)
    )
    correctness, fmt = task.reward_functions
    prompts = [p["prompt"] for p in problems]
    fields = task.fields(problems)
    assert correctness(prompts, solutions, **fields) == [1.0] * 100
    assert fmt(prompts, solutions, **fields) == [1.0] * 100
    assert task.score(problems, solutions) == [1.0] * 100
    wrong_answer = [s.replace("</answer>", "+1</answer>") for s in solutions]
    assert correctness(prompts, wrong_answer, **fields) == [0.0] * 100
    no_tag = [s.replace("<answer>", "") for s in solutions]
    assert correctness(prompts, no_tag, **fields) == [0.0] * 100
    assert fmt(prompts, no_tag, **fields) == [0.0] * 100


def test_addition_steps_are_column_sums_with_carries():
    p = get_task("addition", digits=3)._complete({"a": 987, "b": 45})
    assert p["prompt"] == "987+45=\n"
    assert p["solution"] == "7+5+0=12\n8+4+1=13\n9+0+1=10\n<answer>1032</answer>"
    assert p["target"] == 1032


def test_multiplication_steps_are_partial_products_then_sums():
    p = get_task("multiplication", digits=3)._complete({"a": 47, "b": 215})
    assert p["solution"] == (
        "47*5=235\n47*10=470\n47*200=9400\n235+470=705\n705+9400=10105\n<answer>10105</answer>"
    )


def test_chain_of_thought_off_gives_the_answer_alone():
    p = get_task("addition", chain_of_thought=False)._complete({"a": 47, "b": 85})
    assert p["solution"] == "<answer>132</answer>"


def test_countdown_search():
    expression, steps = solve_countdown([3, 7, 25, 50], 100)
    parsed = parse_expression(expression)
    assert parsed.value == 100 and sorted(parsed.numbers) == [3, 7, 25, 50]
    assert len(steps) == 3
    for step in steps:  # every step is a true equation between positive integers
        left, right = step.split("=")
        assert parse_expression(left).value == int(right) > 0
    assert solve_countdown([2, 3], 7) is None
    assert solve_countdown([2, 3], 6) == ("3*2", ["3*2=6"])
    problem = get_task("countdown", count=3)._complete({"numbers": [1, 1, 1], "target": 100})
    assert problem is None
