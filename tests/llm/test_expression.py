"""The safe arithmetic parser: precedence, exact rationals, and everything it must reject."""

from fractions import Fraction

import pytest

from driftlab.llm.expression import (
    MAX_DEPTH,
    MAX_LENGTH,
    ExpressionError,
    evaluate,
    parse_expression,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1+2*3", 7),
        ("(1+2)*3", 9),
        ("10-4-3", 3),  # left associative
        ("100/10/5", 2),
        ("2*3+4*5", 26),
        ("8/(3-1)", 4),
        (" 7 - ( 2 + 3 ) ", 2),
        ("((((5))))", 5),
        ("0*9", 0),
    ],
)
def test_precedence_and_parentheses(text, value):
    assert parse_expression(text).value == value


def test_division_is_exact_rational():
    assert evaluate("1/3") == Fraction(1, 3)
    assert evaluate("1/3+1/3+1/3") == 1
    assert evaluate("(1+2)/4*4") == 3
    assert evaluate("7/2") == Fraction(7, 2)


def test_numbers_are_recorded_in_order():
    assert parse_expression("(25-3)*4+50/5").numbers == (25, 3, 4, 50, 5)


@pytest.mark.parametrize(
    "text",
    [
        "1/0",
        "5/(3-3)",
        "__import__('os')",
        "abs(3)",
        "x+1",
        "(1).real",
        "2**3",
        "2^3",
        "-3+5",  # unary minus
        "+3",
        "3 4",
        "1+",
        "(1+2",
        "1+2)",
        "",
        "   ",
        "07+1",
        "1.5+2",
        "1e3",
        "1" * 13,
        "1+" * (MAX_LENGTH // 2) + "1",
        "(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1),
    ],
)
def test_rejects(text):
    with pytest.raises(ExpressionError):
        parse_expression(text)
    assert evaluate(text) is None


def test_depth_limit_is_inclusive():
    assert evaluate("(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH) == 1
