"""Rewards: answer extraction, correctness per task, format, Countdown's usage rule,
abstentions and weighted combination."""

import pytest

from driftlab.llm.rewards import (
    answer_reward,
    combine_rewards,
    correctness_reward,
    countdown_reward,
    extract_answer,
    format_reward,
)


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("7+5+0=12\n<answer>12</answer>", "12"),
        ("<answer>12</answer>\n  ", "12"),
        ("<answer>12</answer> more", None),  # text after the answer
        ("<answer>1</answer><answer>2</answer>", None),
        ("<answer></answer>", None),
        ("<answer>  </answer>", None),
        ("</answer>12<answer>", None),
        ("12", None),
        ("<answer>12", None),
    ],
)
def test_extract_answer(completion, answer):
    assert extract_answer(completion) == answer
    assert format_reward([""], [completion]) == [0.0 if answer is None else 1.0]


def test_answer_reward_is_exact_integer_match():
    completions = [
        "<answer>132</answer>",
        "<answer> 132 </answer>",
        "<answer>131</answer>",
        "<answer>0132</answer>",
        "<answer>47+85</answer>",
        "132",
        "<answer>132</answer>",
    ]
    targets = [132] * 6 + [None]
    scores = answer_reward([""] * 7, completions, target=targets)
    assert scores == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, None]


def test_countdown_uses_each_number_exactly_once():
    numbers = [[3, 7, 25, 50]] * 6
    target = [100] * 6
    completions = [
        "<answer>(7-3)*25+50-50</answer>",  # 50 twice
        "<answer>(7-3)*25</answer>",  # 50 unused
        "<answer>50+25+7*3+4</answer>",  # 4 is not given
        "<answer>50*(7-3)/(25/25)</answer>",  # 25 twice
        "<answer>(3+7)*50/25*5</answer>",  # value 100, but 5 is not given
        "<answer>25*(7-3)+50-50</answer>",
    ]
    assert countdown_reward([""] * 6, completions, target=target, numbers=numbers) == [0.0] * 6
    right = ["<answer>(50-25)*(7-3)</answer>"]
    assert countdown_reward([""], right, target=[100], numbers=numbers[:1]) == [1.0]
    # Exact rationals: 7/25 is not an integer, yet (3+7/25)*50 is exactly 164.
    exact = ["<answer>(3+7/25)*50</answer>"]
    assert countdown_reward([""], exact, target=[164], numbers=numbers[:1]) == [1.0]
    # 7/3*25+50 is 108.33..., which must not round to 108.
    near = ["<answer>7/3*25+50</answer>"]
    assert countdown_reward([""], near, target=[108], numbers=numbers[:1]) == [0.0]


def test_countdown_repeated_numbers_count_as_a_multiset():
    assert countdown_reward([""], ["<answer>5*5-5</answer>"], target=[20], numbers=[[5, 5, 5]]) == [
        1.0
    ]
    assert countdown_reward([""], ["<answer>5*5</answer>"], target=[25], numbers=[[5, 5, 5]]) == [
        0.0
    ]


def test_malicious_answers_get_zero():
    bad = ["<answer>__import__('os').system('true')</answer>", "<answer>9**9**9</answer>"]
    assert countdown_reward(["", ""], bad, target=[1, 1], numbers=[[9, 9, 9]] * 2) == [0.0, 0.0]


def test_correctness_reward_dispatches_per_row():
    completions = ["<answer>12</answer>", "<answer>3*4</answer>", "<answer>12</answer>", "x"]
    scores = correctness_reward(
        [""] * 4,
        completions,
        target=[12, 12, None, 12],
        numbers=[None, [3, 4], None, None],
    )
    assert scores == [1.0, 1.0, None, 0.0]


def test_missing_fields_abstain():
    assert answer_reward(["", ""], ["<answer>1</answer>", "a"]) == [None, None]
    assert countdown_reward([""], ["<answer>1</answer>"], target=[1]) == [None]


def test_combine_rewards_skips_abstentions():
    def half(prompts, completions, **fields):
        return [None, 0.5, None]

    combined = combine_rewards([answer_reward, format_reward, half], weights=[1.0, 0.1, 2.0])
    completions = ["<answer>3</answer>", "<answer>4</answer>", "oops"]
    scores = combined([""] * 3, completions, target=[3, 3, None])
    assert scores == pytest.approx([1.1, 0.1 + 1.0, 0.0])
    only_abstaining = combine_rewards([half])
    assert only_abstaining([""] * 3, completions) == [None, 0.5, None]


def test_combine_rewards_validates():
    with pytest.raises(ValueError, match="2 weights for 1"):
        combine_rewards([format_reward], weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        combine_rewards([format_reward], weights=[float("nan")])
    with pytest.raises(ValueError, match="field 'target' has 1 values for 2"):
        answer_reward(["", ""], ["a", "b"], target=[1])
