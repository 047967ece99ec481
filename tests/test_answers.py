"""Answer extraction, normalisation, equivalence (incl. math-verify) and majority voting."""

import json
import threading
from pathlib import Path

import pytest

from ttx.scoring.answers import answers_equal, extract_answer, majority_vote, normalize_answer

GSM8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def _gsm8k_lines(n=None):
    if not GSM8K.is_file():
        pytest.skip(f"{GSM8K} not present")
    with open(GSM8K, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows if n is None else rows[:n]


def test_gsm8k_gold_strings():
    rows = _gsm8k_lines(40)
    for row in rows:
        want = row["answer"].split("####")[-1].strip().replace(",", "")
        assert extract_answer(row["answer"]) == want
    assert extract_answer(rows[0]["answer"]) == "18"  # Janet's ducks


def test_gsm8k_gold_with_thousands_commas():
    with_commas = [r for r in _gsm8k_lines() if "," in r["answer"].split("####")[-1]][:5]
    assert with_commas
    for row in with_commas:
        raw = row["answer"].split("####")[-1].strip()
        assert extract_answer(row["answer"]) == raw.replace(",", "")
        assert answers_equal(raw, row["answer"].split("####")[-1])


@pytest.mark.parametrize("text,want", [
    ("so the total is \\boxed{42}.", "42"),
    ("first \\boxed{1}. Checking again, we find a mistake: the answer is \\boxed{\\frac{\\sqrt{2}}{2}}",
     "\\frac{\\sqrt{2}}{2}"),
    ("\\boxed{\\text{\\{1, 2\\}}}", "\\{1, 2\\}"),
    ("thus \\boxed{1,000}.", "1000"),
    ("The answer is 18.", "18"),
    ("The answer is $1,234.", "1234"),
    ("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", "\\frac{3}{4}"),
    ("answer: (B)", "(B)"),
    ("The answer is 18 eggs per day.", "18"),
    ("She sells 16 - 3 - 4 = 9 eggs and makes $18.", "18"),
    ("It costs $1,000.", "1000"),
    ("The temperature fell to -5 degrees", "-5"),
    ("half of it: 3.5", "3.5"),
    ("#### 1,450,000", "1450000"),
    ("\\frac{3}{4}", "\\frac{3}{4}"),
    ("Yes", "Yes"),
    ("x = 5", "x = 5"),             # an equation stays whole; it votes and compares as 5
    ("12 + 5 = 17", "17"),
    ("The answer is the red car.", "the red car"),
    ("Answer: let me think step by step. 3 + 4 = 7, so 7 apples.", "7"),
    ("no numbers here at all", None),
    ("", None),
    (None, None),
])
def test_extract_answer(text, want):
    assert extract_answer(text) == want


def test_truncated_boxed_is_not_an_earlier_number():
    got = extract_answer("we get 7 so \\boxed{\\frac{1}{")
    assert got != "7" and not answers_equal(got, "7") and not answers_equal(got, "1/2")


@pytest.mark.parametrize("raw,want", [
    ("18.0", "18"), ("1,000", "1000"), ("-0", "0"), ("-0.0", "0"), ("+5", "5"),
    ("0.50", "0.5"), ("3/4", "3/4"), ("6/8", "3/4"), ("\\frac{1}{2}", "1/2"),
    ("\\dfrac34", "3/4"), ("$18", "18"), ("18 dollars", "18"), ("50%", "50"),
    ("\\text{Yes}.", "yes"), ("  B ", "b"), ("(B)", "b"), (None, None), ("", None),
])
def test_normalize_answer(raw, want):
    assert normalize_answer(raw) == want


@pytest.mark.parametrize("pred,gold,want", [
    ("18", "18.0", True),
    ("1,000", "1000", True),
    ("0.5", "1/2", True),
    ("18", "18.0000001", True),      # relative tolerance 1e-6
    ("18", "18.001", False),
    ("18", "19", False),
    ("yes", "Yes", True),
    (None, "1", False),
    ("1", None, False),
    ("\\frac{1}{2}", "0.5", True),
    (18, "18.0", True),               # numbers stored as JSON numbers
])
def test_answers_equal(pred, gold, want):
    assert answers_equal(pred, gold) is want


def test_math_verify_cases():
    # no plain-number route: only math-verify can see these are equal
    assert answers_equal("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}")
    assert answers_equal("2\\pi", "6.283185")
    assert not answers_equal("\\sqrt{3}", "\\frac{\\sqrt{2}}{2}")


def test_math_verify_in_a_thread():
    """math-verify's signal timeout fails off the main thread; ours must not."""
    out = []
    t = threading.Thread(target=lambda: out.append(
        answers_equal("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}")))
    t.start()
    t.join(30)
    assert out == [True]


def test_math_verify_never_hangs(monkeypatch):
    """A check past its deadline is False, and the killed checker is replaced."""
    import time

    from ttx.scoring import checker

    monkeypatch.setattr(checker, "_GRACE_S", -0.45)  # parent gives up after 0.05 s
    start = time.monotonic()
    assert answers_equal("9^{9^{9^{9}}}", "9^{9^{9^{8}}}", timeout_s=0.5) is False
    assert time.monotonic() - start < 5
    monkeypatch.setattr(checker, "_GRACE_S", 1.0)
    assert answers_equal("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}")


def test_garbage_never_crashes():
    for pred in ["\\frac{", "}{", "\\boxed{", "$$", "\\sqrt{-}", "x" * 5000, "1/0", "0/0"]:
        assert answers_equal(pred, "\\frac{1}{2}") is False


def test_majority_vote():
    assert majority_vote(["18", "18.0", "7", "7", None]) == "18"  # tie: seen first
    assert majority_vote(["7", "18", "18.0", "7"]) == "7"
    assert majority_vote(["7", "18", "18.0"]) == "18"  # "18" and "18.0" are one class
    assert majority_vote([None, "$1,000", "1000", "999"]) == "$1,000"
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None
