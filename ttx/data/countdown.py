"""Countdown-style problems with a continuous score: reach a target T with a few given numbers.

A problem gives k numbers and a target T; an answer is an arithmetic expression over + − × ÷ and
parentheses that uses each given number at most once (found as the response's last `Answer: …`,
`<answer>…</answer>` or `\\boxed{…}`, else as a last line that is nothing but an expression). Its
score is how close its value comes to T,

    d = |value − T|,   reward = 1 / (1 + d)      (1 for an exact hit, toward 0 far away)

and an answer that does not parse, uses a number it was not given (or one too often), or divides by
zero is invalid and scores 0, below every valid answer, as TTT-Discover scores an invalid
construction (test-time-training/discover, tinker_cookbook/recipes/ttt/env_erdos.py:203 and
env_denoising.py:234: `1/metric if correctness > 0 ... else 0.0`). The reference's 1/metric is
undefined at metric 0 (an exact hit here), hence 1/(1 + d). The targets are built from the numbers
by a random expression, so every problem has an exact solution (kept as `solution`).
Run: python -m ttx.data.countdown --n 30 --seed 0 -o countdown.jsonl
"""

from __future__ import annotations

import ast
import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

from ttx.errors import TtxError

INSTRUCTION = ("Use each number at most once, with + - * / and parentheses. "
               "End with one line 'Answer: <expression>'.")


def _target(r: random.Random, numbers: list[int]) -> tuple[int, str]:
    """A positive integer reachable from all the numbers, and the expression reaching it."""
    order = numbers[:]
    r.shuffle(order)
    value, expr = order[0], str(order[0])
    for x in order[1:]:
        ops = ["+", "*"] + (["-"] if value - x > 0 else []) + (["/"] if value % x == 0 else [])
        op = r.choice(ops)
        value = {"+": value + x, "-": value - x, "*": value * x, "/": value // x}[op]
        expr = f"({expr} {op} {x})"
    return value, expr[1:-1] if expr.startswith("(") else expr


def generate(n: int = 30, seed: int = 0, k: int = 4, low: int = 1, high: int = 25,
             max_target: int = 999) -> list[dict]:
    """`n` problems `{id, question, numbers, target, solution}`; the same arguments give the same list."""
    if k < 2:
        raise ValueError("a Countdown problem needs at least two numbers")
    r = random.Random(seed)
    problems = []
    for i in range(n):
        while True:
            numbers = [r.randint(low, high) for _ in range(k)]
            target, solution = _target(r, numbers)
            if 1 < target <= max_target and target not in numbers:
                break
        assert score_expression(solution, numbers, target).distance == 0
        question = (f"Using the numbers {', '.join(map(str, numbers))}, write an arithmetic expression "
                    f"whose value is as close as possible to {target}. {INSTRUCTION}")
        problems.append({"id": f"countdown-{seed}-{i}", "question": question, "numbers": numbers,
                         "target": target, "solution": solution})
    return problems


@dataclass
class Score:
    expression: str | None       # the expression found in the response (None: none found)
    value: float | None          # its value (None: invalid)
    distance: float | None       # |value − T| (None: invalid)
    reward: float                # 1/(1 + d); 0 when invalid
    error: str | None = None     # why it is invalid

    @property
    def valid(self) -> bool:
        return self.value is not None


_ANSWER = re.compile(r"<answer>(.*?)</answer>|\\boxed\{([^{}]*)\}|answer\s*[:=]\s*([^\n]*)", re.I | re.S)
_BARE = re.compile(r"[\d\s+\-*/×÷−().]*\d[\d\s+\-*/×÷−().]*")
_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b}


def extract_expression(text: str) -> str | None:
    """The last `<answer>…</answer>` (TinyZero's Countdown format), `\\boxed{…}` or `Answer: …` line;
    without any, the last line when it is nothing but an arithmetic expression."""
    found = None
    for m in _ANSWER.finditer(text):
        found = next(g for g in m.groups() if g is not None)
    if found is None:
        lines = [line for line in text.strip().splitlines() if line.strip()]
        if not lines or not _BARE.fullmatch(lines[-1].strip()):
            return None
        found = lines[-1]
    expr = found.strip().rstrip(".").strip()
    if "=" in expr:              # "3 + 4 = 7": the left side is the expression
        expr = expr.split("=")[0].strip()
    return expr.replace("×", "*").replace("÷", "/").replace("−", "-") or None


def _evaluate(node: ast.AST, used: list[int]) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, used)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        a, b = _evaluate(node.left, used), _evaluate(node.right, used)
        if isinstance(node.op, ast.Div) and b == 0:
            raise ValueError("division by zero")
        return _OPS[type(node.op)](a, b)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    raise ValueError(f"not allowed: {ast.dump(node)[:40]}")


def score_expression(expr: str | None, numbers: list[int], target: int) -> Score:
    """Score one expression against (numbers, target); invalid expressions score 0."""
    if expr is None:
        return Score(None, None, None, 0.0, "no answer")
    try:
        used: list[int] = []
        value = _evaluate(ast.parse(expr, mode="eval"), used)
    except (SyntaxError, ValueError, RecursionError) as e:
        return Score(expr, None, None, 0.0, str(e) or type(e).__name__)
    extra = Counter(used) - Counter(numbers)
    if extra:
        return Score(expr, None, None, 0.0, f"uses {sorted(extra.elements())} beyond the given numbers")
    distance = float(abs(value - target))
    return Score(expr, float(value), distance, 1.0 / (1.0 + distance))


def score_response(text: str, numbers: list[int], target: int) -> Score:
    """Score a model's response: its last answer expression against (numbers, target)."""
    return score_expression(extract_expression(text), numbers, target)


def check_finite(reward: float, where: str) -> float:
    """A continuous reward must be a finite number: anything else is a named error."""
    if not isinstance(reward, (int, float)) or not math.isfinite(reward):
        raise TtxError(f"the reward of {where} is {reward!r}, not a finite number", field="reward")
    return float(reward)


def problem_fields(record: dict, path: str | None = None, line: int | None = None) -> tuple[list[int], int]:
    """(numbers, target) of a record, or a TtxError naming the file, line and field."""
    numbers, target = record.get("numbers"), record.get("target")
    if not (isinstance(numbers, list) and numbers and all(type(x) is int for x in numbers)):
        raise TtxError("expected a list of integers (ttx.data.countdown's format)", path=path, line=line,
                       field="numbers")
    if type(target) is not int:
        raise TtxError("expected an integer (ttx.data.countdown's format)", path=path, line=line,
                       field="target")
    return numbers, target


def main(argv=None) -> None:
    import argparse

    from ttx.io import write_jsonl

    parser = argparse.ArgumentParser(description="Generate Countdown problems (continuous score) as JSONL.")
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=4, help="numbers per problem")
    parser.add_argument("-o", "--output", default="-")
    args = parser.parse_args(argv)
    write_jsonl(args.output, generate(args.n, args.seed, args.k))


if __name__ == "__main__":
    main()
