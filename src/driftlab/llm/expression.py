"""A safe arithmetic parser: answers are parsed, never executed.

Recursive descent over the grammar

    expression := term (("+" | "-") term)*
    term       := factor (("*" | "/") factor)*
    factor     := NUMBER | "(" expression ")"
    NUMBER     := "0" | [1-9][0-9]*

with exact rational arithmetic (:class:`fractions.Fraction`), so ``(1+2)/4*4`` is exactly 3
and no rounding can make a wrong Countdown answer right. Only digits, the four operators,
parentheses and whitespace are accepted: names, attributes, calls, ``**`` and every other
character are rejected by the tokenizer of this module before anything is evaluated, and no
Python code is ever run (no ``eval``). Unary signs are rejected too, as in Countdown, where
expressions combine the given positive numbers with binary operators. Numbers with leading
zeros (``07``) are rejected so that the numbers an expression uses are unambiguous.

Limits keep hostile inputs cheap: at most ``MAX_LENGTH`` characters, ``MAX_DIGITS`` digits per
number and ``MAX_DEPTH`` nested parentheses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MAX_LENGTH = 256
MAX_DIGITS = 12
MAX_DEPTH = 32

_TOKEN = re.compile(r"\s*(?:(\d+)|([-+*/()]))")


class ExpressionError(ValueError):
    """An answer that is not a valid arithmetic expression (or divides by zero)."""


@dataclass(frozen=True)
class Expression:
    """A parsed expression: its exact ``value`` and the ``numbers`` it uses, in order."""

    value: Fraction
    numbers: tuple[int, ...]


def _tokenize(text: str) -> list[str]:
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression longer than {MAX_LENGTH} characters ({len(text)})")
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].isspace():
            break
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ExpressionError(f"unexpected character {text[pos]!r} at position {pos}")
        number = match.group(1)
        if number is not None:
            if len(number) > MAX_DIGITS:
                raise ExpressionError(f"number {number[:20]}... has more than {MAX_DIGITS} digits")
            if len(number) > 1 and number[0] == "0":
                raise ExpressionError(f"number {number!r} has a leading zero")
        tokens.append(match.group(1) or match.group(2))
        pos = match.end()
    if not tokens:
        raise ExpressionError("empty expression")
    return tokens


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.numbers: list[int] = []

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ExpressionError("expression ends too early")
        self.pos += 1
        return token

    def expression(self, depth: int) -> Fraction:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            right = self.term(depth)
            value = value + right if op == "+" else value - right
        return value

    def term(self, depth: int) -> Fraction:
        value = self.factor(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            right = self.factor(depth)
            if op == "*":
                value = value * right
            elif right == 0:
                raise ExpressionError("division by zero")
            else:
                value = value / right
        return value

    def factor(self, depth: int) -> Fraction:
        token = self.take()
        if token == "(":
            if depth >= MAX_DEPTH:
                raise ExpressionError(f"parentheses nested deeper than {MAX_DEPTH}")
            value = self.expression(depth + 1)
            if self.take() != ")":
                raise ExpressionError("missing closing parenthesis")
            return value
        if token.isdigit():
            self.numbers.append(int(token))
            return Fraction(int(token))
        raise ExpressionError(f"expected a number or '(', got {token!r}")


def parse_expression(text: str) -> Expression:
    """Parse and evaluate ``text`` exactly; raise :class:`ExpressionError` if it is invalid."""
    parser = _Parser(_tokenize(text))
    value = parser.expression(depth=0)
    if parser.peek() is not None:
        raise ExpressionError(f"unexpected {parser.peek()!r} after a complete expression")
    return Expression(value=value, numbers=tuple(parser.numbers))


def evaluate(text: str) -> Fraction | None:
    """The exact value of ``text``, or ``None`` when it is not a valid expression."""
    try:
        return parse_expression(text).value
    except ExpressionError:
        return None
