"""The Countdown generator and its continuous scorer (ttx.data.countdown)."""

from __future__ import annotations

import math

import pytest

from ttx.data.countdown import (
    check_finite,
    extract_expression,
    generate,
    problem_fields,
    score_expression,
    score_response,
)
from ttx.errors import TtxError


def test_generator_is_seeded_and_solvable():
    a, b = generate(20, seed=3), generate(20, seed=3)
    assert a == b and a != generate(20, seed=4)
    for p in a:
        assert len(p["numbers"]) == 4 and 1 < p["target"] <= 999
        assert score_expression(p["solution"], p["numbers"], p["target"]).reward == 1.0
        assert str(p["target"]) in p["question"]
    assert len({p["id"] for p in a}) == 20


@pytest.mark.parametrize("expr, value, distance", [
    ("3 * 25 + 7", 82.0, 1.0),
    ("(25 - 4) * 3", 63.0, 20.0),
    ("25 / 4", 6.25, 76.75),
    ("7", 7.0, 76.0),
])
def test_distance_and_reward(expr, value, distance):
    s = score_expression(expr, [3, 7, 25, 4], 83)
    assert s.valid and s.value == value and s.distance == distance
    assert s.reward == 1.0 / (1.0 + distance)


@pytest.mark.parametrize("expr, why", [
    ("3 * 3", "beyond"),              # 3 given once
    ("3 * 8", "beyond"),              # 8 not given
    ("25 / 4 / 4", "beyond"),         # 4 given once
    ("7 * 7 + 25", "beyond"),
    ("25 ** 3", "not allowed"),
    ("-3 + 25", "not allowed"),
    ("3.5 * 4", "not allowed"),
    ("3 +", "invalid syntax"),
    ("__import__('os')", "not allowed"),
])
def test_invalid_answers_score_zero(expr, why):
    s = score_expression(expr, [3, 7, 25, 4], 83)
    assert not s.valid and s.reward == 0.0 and why in s.error


def test_division_by_zero_is_invalid():
    s = score_expression("7 / (4 - 4)", [7, 4, 4], 10)
    assert s.reward == 0.0 and "division by zero" in s.error


def test_extraction_forms():
    assert extract_expression("so ... Answer: 3 * 25 + 7.") == "3 * 25 + 7"
    assert extract_expression("<answer>(25-4)*3</answer>") == "(25-4)*3"
    assert extract_expression("\\boxed{25 + 7 × 3} and Answer: 4 + 3") == "4 + 3"   # the last one
    assert extract_expression("answer: 3 + 4 = 7") == "3 + 4"
    assert extract_expression("no expression here") is None
    assert extract_expression("let me see\n (3 + 4) * 25 ") == "(3 + 4) * 25"   # a bare last line
    assert extract_expression("3 + 4 apples") is None and extract_expression("+ -") is None
    assert score_response("I think\nAnswer: 3*25+7", [3, 7, 25, 4], 83).distance == 1.0
    assert score_response("nothing", [3, 7, 25, 4], 83).reward == 0.0


def test_finite_check_and_fields():
    assert check_finite(0.5, "x") == 0.5
    for bad in (math.nan, math.inf, -math.inf, None):
        with pytest.raises(TtxError, match="reward"):
            check_finite(bad, "record 3, sample 1")
    assert problem_fields({"numbers": [1, 2], "target": 3}) == ([1, 2], 3)
    with pytest.raises(TtxError, match="q.jsonl:4: field 'numbers'"):
        problem_fields({"target": 3}, "q.jsonl", 4)
    with pytest.raises(TtxError, match="field 'target'"):
        problem_fields({"numbers": [1, 2], "target": "3"})
