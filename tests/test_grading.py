"""Grading conformance: the path tts-run and score take (`answers_equal(extract_answer(output),
extract_answer(gold))`) against the field's public suites and realistic GSM8K-style outputs.

tests/data/grading/conformance.jsonl holds the cases of Math-Verify's tests/test_all.py and
tests/test_yujianll.py, Hendrycks MATH's modeling/math_equivalence_test.py and the pairs of
Qwen2.5-Math's evaluation/grader.py (sources and licences: tests/data/grading/LICENSES.md). The
cases a reference tests only with non-default options are reported, not asserted. Every case
where ttx deliberately differs is listed below with its reason (and in docs/grading.md): a new
disagreement, or a listed one that now agrees, fails the test.
"""

import json
from pathlib import Path

import pytest

from ttx.scoring.answers import answers_equal, extract_answer

DATA = Path(__file__).parent / "data" / "grading"

DELIBERATE = {
    # Hendrycks' is_equiv compares strings, so "10, 4, -2" != "4, 10, -2"; MATH's "enter all
    # solutions" answers are sets, and ttx (with math-verify) compares them as sets.
    "hendrycks/math:modeling/math_equivalence_test.py:15": "a list of solutions is a set",
    "hendrycks/math:modeling/math_equivalence_test.py:50": "a list of solutions is a set",
    # Qwen's math_equal accepts 2.6667 for 8/3 (relative tolerance 1e-4); ttx, like
    # math-verify's defaults, compares decimals to 6 places.
    "QwenLM/Qwen2.5-Math:evaluation/grader.py:385": "decimals are compared to 6 places",
}
# GSM8K-style outputs where the answer anchor of math-verify ("answer ... <first number>")
# picks another number than the one meant; kept as measured, not patched with more rules.
GSM8K_DELIBERATE = {
    "So the answer is 4 hours and 30 minutes, or 4.5 hours.": "the first number after 'answer'",
    "The answer is 7.\n\nNote: the answer could also be 8 if we count the teacher.":
        "the last 'answer' anchor",
}


def _rows(name):
    with open(DATA / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _verdict(row) -> bool:
    return answers_equal(extract_answer(row["prediction"]), extract_answer(row["gold"]))


def test_conformance_suites_agree_at_least_97_percent():
    rows = [r for r in _rows("conformance.jsonl") if r["needs_options"] is None]
    assert len(rows) == 116
    wrong = {r["source"]: r for r in rows if _verdict(r) != r["expected"]}
    agreement = 1 - len(wrong) / len(rows)
    assert set(wrong) == set(DELIBERATE), sorted(set(wrong) ^ set(DELIBERATE))
    assert agreement >= 0.97
    by_suite = {}
    for r in rows:
        ok = r["source"] not in wrong
        n, k = by_suite.get(r["suite"], (0, 0))
        by_suite[r["suite"]] = (n + 1, k + ok)
    assert by_suite["math-verify"] == (86, 86)        # math-verify's own suite, whole


def test_gsm8k_style_outputs():
    rows = _rows("gsm8k_style.jsonl")
    wrong = [r["prediction"] for r in rows if _verdict(r) != r["expected"]]
    assert set(wrong) == set(GSM8K_DELIBERATE), wrong
    assert len(rows) - len(wrong) >= 0.95 * len(rows)


@pytest.mark.parametrize("text,gold", [
    ("so $x = 1/3$", "\\frac{1}{3}"),                       # an equation, not its last number
    ("so $(p,q)=(3,2)$.", "(3,2)"),                          # a tuple
    ("the probability is 2/3.", "\\frac{2}{3}"),             # a fraction in prose
    ("The answer is \\boxed{3}. Then the final answer is 5", "5"),   # the later anchor wins
    ("We get $\\boxed{2}$ and $\\boxed{3}$", "\\{2, 3\\}"),   # several boxed answers: a set
    ("is $\\boxed{11,\\! 111,\\! 100}$", "11111100"),        # ,\! digit groups
    ("There are 1 000 people.", "1000"),                     # a space as thousands separator
    ("$x \\in [1, 2)$", "[1,2)"),                            # an interval
    ("He has $2 \\frac{1}{2}$ pies.", "2.5"),                # a mixed number
    ("It rose by 25%.", "25\\%"),                            # a percentage
    ("The answer is 10 cm.", "10"),                          # units
    ("$\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}$",
     "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}"),            # a matrix
])
def test_answers_are_compared_as_math(text, gold):
    assert answers_equal(extract_answer(text), extract_answer(gold))


def test_a_leading_point_is_part_of_the_number():
    assert not answers_equal(extract_answer("The answer is .5"), "5")
    assert answers_equal(extract_answer("The answer is .5"), "0.5")


def test_unreduced_fractions_are_equal():
    # MATH accepts 6/8 for 3/4 (PRM800K's grader would not); ttx compares values
    assert answers_equal("\\frac{6}{8}", "\\frac{3}{4}")
