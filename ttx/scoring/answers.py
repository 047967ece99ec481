"""Answer normalisation, equivalence and majority voting (extraction: ttx.scoring.extract).

`answers_equal(pred, gold)`: the normalised strings are equal, or both are numbers of equal
value, or math-verify (in a child process with a deadline, ttx.scoring.checker) finds them equal
as math: equations, tuples, intervals, sets, matrices and expressions.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from ttx.scoring.checker import checker
from ttx.scoring.extract import _LEADING_NUM_RE, _plain_number, extract_answer, strip_wrappers

__all__ = ["answers_equal", "extract_answer", "majority_vote", "normalize_answer", "vote_key",
           "winner", "INVALID_VOTES", "DEFAULT_INVALID_VOTE"]

_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([-+]?\d+)\s*\}\s*\{\s*([-+]?\d+)\s*\}")
_FRAC_SHORT_RE = re.compile(r"\\[dt]?frac(\d)(\d)")
# "x = 5", "(p, q) = (3, 2)": an answer stated as an assignment to named unknowns votes with
# its value (math-verify compares them equal too)
_ASSIGNMENT_RE = re.compile(r"^\(?\s*[a-z](?:_\{?\w+\}?)?(?:\s*,\s*[a-z](?:_\{?\w+\}?)?)*\s*\)?"
                            r"\s*=\s*(?!=)(.+)$")
_PUNCT = " \t\n.,;:!?'\"`"


def _as_fraction(s: str) -> Fraction | None:
    """The exact value of a plain number string (already without commas), else None."""
    try:
        if "/" in s:
            p, q = s.split("/")
            return Fraction(Decimal(p)) / Fraction(Decimal(q))
        return Fraction(Decimal(s))
    except (InvalidOperation, ValueError, ZeroDivisionError):
        return None


def _canonical_number(s: str) -> str | None:
    """`18.0` -> `18`, `-0` -> `0`, `6/8` -> `3/4`, `0.50` -> `0.5`; None if not a number."""
    if not re.fullmatch(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?:/[-+]?\d+)?", s):
        return None
    value = _as_fraction(s)
    if value is None or abs(value) > 10 ** 30:
        return None
    if value.denominator == 1:
        return str(value.numerator)
    if "/" in s:
        return f"{value.numerator}/{value.denominator}"
    text = format(Decimal(s.lstrip("+")).normalize(), "f")
    return text.lstrip("-") if Decimal(text) == 0 else text


def normalize_answer(ans: str | None) -> str | None:
    """Canonical key for voting and exact match: numbers canonicalised, strings lowercased."""
    return None if ans is None else _normalize(str(ans))


@functools.lru_cache(maxsize=1 << 16)  # votes and bootstraps normalise the same strings often
def _normalize(ans: str) -> str | None:
    s = strip_wrappers(ans)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = _FRAC_RE.sub(r"\1/\2", s)
    s = _FRAC_SHORT_RE.sub(r"\1/\2", s)
    m = _ASSIGNMENT_RE.match(s)
    if m and "=" not in m.group(1):
        s = m.group(1).strip()
    m = _LEADING_NUM_RE.match(s)
    if m:
        num = _canonical_number(_plain_number(m.group(1)))
        if num is not None:
            return num
    s = re.sub(r"\s+", " ", s).strip(_PUNCT).lower()
    s = re.sub(r"\s*,\s*", ", ", s)
    if re.fullmatch(r"\(\s*[a-z0-9]+\s*\)", s):  # "(B)" -> "b"
        s = s[1:-1].strip()
    return s or None


VERIFY_TIMEOUT_S = 2.0


def answers_equal(pred: str | None, gold: str | None, timeout_s: float = VERIFY_TIMEOUT_S) -> bool:
    """Normalised exact match, then numbers numerically (rel tol 1e-6), then math-verify."""
    if pred is None or gold is None:
        return False
    pred, gold = str(pred), str(gold)
    np_, ng = normalize_answer(pred), normalize_answer(gold)
    if np_ is None or ng is None:
        return False
    if np_ == ng:
        return True
    a, b = _as_fraction(np_), _as_fraction(ng)
    if a is not None and b is not None:
        return a == b or math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)
    if len(pred) > 1000 or len(gold) > 1000:
        return False  # not an answer but a whole trace; sympy would only burn time
    return _verify(gold.strip(), pred.strip(), timeout_s)


@functools.lru_cache(maxsize=1 << 14)
def _verify(gold: str, pred: str, timeout_s: float) -> bool:
    return checker.ask({"op": "verify", "g": gold, "p": pred}, timeout_s) is True


# How a trace with no extractable answer takes part in a vote (maj@k, majority, FFS):
#   lm-eval  it votes for "[invalid]" (lm-eval's RegexFilter fallback, counted by its
#            MajorityVoteFilter), a class that is never correct and can win;
#   skip     it casts no vote (ttx before 0.2).
INVALID_VOTES = ("lm-eval", "skip")
DEFAULT_INVALID_VOTE = "lm-eval"
_INVALID = "\x00[invalid]"     # the key of the no-answer class (no answer normalises to it)


def vote_key(pred: str | None, invalid: str = DEFAULT_INVALID_VOTE) -> str | None:
    """The class a prediction votes for; None: it casts no vote."""
    key = normalize_answer(pred) if pred is not None else None
    if key is None and invalid == "lm-eval":
        return _INVALID
    return key


def winner(keys: Sequence[str | None]) -> int | None:
    """Index of the first member of the most frequent class (ties: the class seen first, as
    collections.Counter.most_common keeps insertion order); None if no key votes."""
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key is None:
            continue
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, i)
    if not counts:
        return None
    best = max(counts.values())
    return next(i for key, i in first.items() if counts[key] == best)


def majority_vote(preds: Sequence[str | None], invalid: str = DEFAULT_INVALID_VOTE) -> str | None:
    """Self-consistency: the most frequent normalised answer; its first original string is
    returned, or None when no answer (or, with invalid="lm-eval", "[invalid]") wins."""
    if invalid not in INVALID_VOTES:
        raise ValueError(f"invalid must be one of {INVALID_VOTES}, got {invalid!r}")
    i = winner([vote_key(p, invalid) for p in preds])
    return None if i is None else preds[i]
