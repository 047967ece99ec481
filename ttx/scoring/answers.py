"""Final-answer extraction, normalisation, equivalence and majority voting.

One extractor serves predictions and gold answers alike: GSM8K's `#### 18`, the last `\\boxed{..}`,
"The answer is X" / "Final Answer: X", otherwise the last number in the text.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import signal
import threading
from decimal import Decimal, InvalidOperation
from fractions import Fraction

# A number as written in prose: 1,000,000 / -3.5 / .5 / 3/4 / 1e-3 (commas only in groups of three).
_NUM = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?:/\d+)?|[-+]?\.\d+"
# The last-number fallback: 1,000 / -5 / 3.5 / .5 (a minus right after a digit is subtraction).
_ANY_NUM_RE = re.compile(r"(?:(?<![\d)])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<!\d)\.\d+")
_GSM8K_RE = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)
_ANSWER_IS_RE = re.compile(
    r"(?:final\s+answer\s*(?:is|:)|the\s+answer\s+is|answer\s*:)\s*:?\s*", re.IGNORECASE)
_UNIT_TAIL = r"(?:\s*%|\s+[a-zA-Z][a-zA-Z.\s]{0,30})?"
_LEADING_NUM_RE = re.compile(rf"^\$?\s*({_NUM})\s*\$?{_UNIT_TAIL}$")
_LATEX_WRAP_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|boxed|fbox|mbox)\s*\{")
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([-+]?\d+)\s*\}\s*\{\s*([-+]?\d+)\s*\}")
_FRAC_SHORT_RE = re.compile(r"\\[dt]?frac(\d)(\d)")
_PUNCT = " \t\n.,;:!?'\"`"


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...} with nested braces; also `\\boxed 5`."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    head = text[start:i] if i >= 0 else text[start:]
    if i < 0 or head.strip() not in ("\\boxed", "\\fbox"):
        m = re.match(r"\\(?:boxed|fbox)\s+([^\s$]+)", text[start:])
        return m.group(1) if m else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None  # unbalanced: a truncated trace


def _unwrap_commands(s: str) -> str:
    """`\\text{a {b}}` -> `a {b}` for \\text, \\mathrm, \\boxed and friends (nested braces)."""
    while True:
        m = _LATEX_WRAP_RE.search(s)
        if not m:
            return s
        depth, j = 0, m.end() - 1  # at the opening brace
        for j in range(m.end() - 1, len(s)):
            depth += {"{": 1, "}": -1}.get(s[j], 0)
            if depth == 0:
                break
        if depth != 0:
            return s  # unbalanced: leave as written
        s = s[:m.start()] + s[m.end():j] + s[j + 1:]


def _strip_wrappers(s: str) -> str:
    """Drop $..$, \\( \\), \\text{} wrappers, latex spacing and surrounding punctuation."""
    s = _unwrap_commands(s.strip())
    for tok in ("\\$", "$", "\\(", "\\)", "\\[", "\\]", "\\!", "\\,", "\\;", "\\left", "\\right"):
        s = s.replace(tok, "" if tok not in ("\\,", "\\;") else " ")
    s = s.strip(_PUNCT)
    if s.endswith("\\"):
        s = s[:-1].rstrip()
    return s


def _clean_number(s: str) -> str:
    return s.replace(",", "")


def _clean_candidate(raw: str) -> str | None:
    """Make an extracted span an answer: a number loses `$`, commas and units; prose keeps its
    last number; a short expression or word stays as written."""
    s = _strip_wrappers(raw)
    if not s:
        return None
    m = _LEADING_NUM_RE.match(s)
    if m:
        return _clean_number(m.group(1))
    words = re.findall(r"[A-Za-z]{2,}", s)
    if len(words) >= 3 and "\\" not in s:  # a sentence, not an expression
        nums = _ANY_NUM_RE.findall(s)
        if nums:
            return _clean_number(nums[-1])
    return s


def extract_answer(text: str | None) -> str | None:
    """The final answer of a solution or gold string, or None when it has none."""
    if text is None:
        return None
    text = str(text)
    if not text.strip():
        return None
    gsm = _GSM8K_RE.findall(text)
    if gsm:
        return _clean_candidate(gsm[-1])
    boxed = _last_boxed(text)
    if boxed is not None and boxed.strip():
        return _clean_candidate(boxed)
    matches = list(_ANSWER_IS_RE.finditer(text))
    if matches:
        tail = text[matches[-1].end():]
        # the answer runs to the end of the line or of the sentence (a period not in a number)
        span = re.split(r"\n|(?<!\d)\.(?!\d)|\.(?=\s|$)", tail, maxsplit=1)[0]
        prose = len(re.findall(r"[A-Za-z]{2,}", span)) >= 3 and "\\" not in span
        # "Answer: let me think. ... 7" opens a solution rather than ending one
        opener = prose and not _ANY_NUM_RE.search(span) and _ANY_NUM_RE.search(tail[len(span):])
        if not opener:
            found = _clean_candidate(span)
            if found:
                return found
    if _is_bare_answer(text):  # a gold like "\\frac{3}{4}", "x = 5" or "Yes" is its own answer
        return _clean_candidate(text)
    nums = _ANY_NUM_RE.findall(text)
    if nums:
        return _clean_number(nums[-1])
    return None


def _is_bare_answer(text: str) -> bool:
    """Short text that is an answer rather than prose: one token, or no words outside latex."""
    s = text.strip()
    if len(s) > 100 or "\n" in s or "=" in s:   # "12 + 5 = 17" answers 17, "x = 5" answers 5
        return False
    if len(s.split()) == 1:
        return True
    return not re.findall(r"[A-Za-z]{2,}", re.sub(r"\\[A-Za-z]+", "", s))


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
    s = _strip_wrappers(ans)
    s = _FRAC_RE.sub(r"\1/\2", s)
    s = _FRAC_SHORT_RE.sub(r"\1/\2", s)
    m = _LEADING_NUM_RE.match(s)
    if m:
        num = _canonical_number(_clean_number(m.group(1)))
        if num is not None:
            return num
    s = re.sub(r"\s+", " ", s).strip(_PUNCT).lower()
    if re.fullmatch(r"\(\s*[a-z0-9]+\s*\)", s):  # "(B)" -> "b"
        s = s[1:-1].strip()
    return s or None


# --- equivalence -------------------------------------------------------------------------------
# math-verify runs sympy, which can take unbounded time (e.g. 9^{9^{9^9}}) inside one C call that
# holds the GIL, so neither its signal timeout nor a watchdog thread can stop it. It therefore
# runs in a child process that we kill on a deadline; inside the child a SIGALRM deadline (the
# child's main thread) ends the usual slow cases without a restart.

_GRACE_S = 1.0  # beyond timeout_s before the child is killed
_START_S = 60.0  # first start: the child imports sympy and math-verify (slow on a busy box)


class _Deadline(BaseException):
    """Our SIGALRM; a BaseException so math-verify's `except Exception` lets it through."""


def _verify_untimed(gold: str, pred: str) -> bool:
    """math-verify with its own timeouts off (we hold the deadline). Gold goes first."""
    from math_verify import parse, verify

    def wrap(s: str) -> str:
        return s if "$" in s or "\\(" in s or "\\[" in s else f"${s}$"

    g = parse(wrap(gold), parsing_timeout=None)
    p = parse(wrap(pred), parsing_timeout=None)
    if not g or not p:
        return False
    return bool(verify(g, p, timeout_seconds=None))


def _worker_main() -> None:
    """Child process loop: one JSON request per stdin line, `1`/`0` per stdout line."""
    import json
    import sys

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # "timeout disabled" warnings

    def on_alarm(signum, frame):
        raise _Deadline

    signal.signal(signal.SIGALRM, on_alarm)
    import math_verify  # noqa: F401  (pay the import before saying ready)

    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        ok = False
        try:
            req = json.loads(line)
            signal.setitimer(signal.ITIMER_REAL, float(req["t"]))
            try:
                ok = _verify_untimed(req["g"], req["p"])
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except BaseException:  # noqa: BLE001 - deadline or a checker bug: not equal
            ok = False
        out.write("1\n" if ok else "0\n")
        out.flush()


class _Checker:
    """One math-verify child per process, shared by all threads, restarted after a kill.

    A plain subprocess (not multiprocessing) so the caller's __main__ is never re-imported.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._proc = None
        self._buf = b""

    def _start(self) -> bool:
        import os
        import subprocess
        import sys
        from pathlib import Path

        root = str(Path(__file__).resolve().parents[2])  # the folder holding the ttx package
        code = (f"import sys; sys.path.insert(0, {root!r}); "
                "from ttx.scoring.answers import _worker_main; _worker_main()")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            self._proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                          env=env)
        except OSError:
            self._proc = None
            return False
        self._buf = b""
        if self._readline(_START_S) != "ready":
            logging.getLogger(__name__).warning("math-verify checker did not start; "
                                                "symbolic answers count as not equal")
            self._stop()
            return False
        return True

    def _readline(self, timeout_s: float) -> str | None:
        import os
        import select
        import time

        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None  # the child died
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode().strip()

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                stream.close()
        self._proc = None

    def check(self, gold: str, pred: str, timeout_s: float) -> bool:
        import json

        with self._lock:
            try:
                if self._proc is None or self._proc.poll() is not None:
                    self._stop()
                    if not self._start():
                        return False
                req = json.dumps({"g": gold, "p": pred, "t": float(timeout_s)}) + "\n"
                self._proc.stdin.write(req.encode())
                self._proc.stdin.flush()
                answer = self._readline(timeout_s + _GRACE_S)
                if answer is not None:
                    return answer == "1"
            except (OSError, ValueError):
                pass
            self._stop()  # hung or died: kill it; the next call starts a fresh one
            return False


_checker = _Checker()


def answers_equal(pred: str | None, gold: str | None, timeout_s: float = 2.0) -> bool:
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
    return _checker.check(gold.strip(), pred.strip(), timeout_s)


def majority_vote(preds: list[str | None]) -> str | None:
    """Self-consistency: the most frequent normalised answer (ties: seen first); its first
    original string is returned. None entries are ignored."""
    counts: dict[str, int] = {}
    first: dict[str, str] = {}
    for p in preds:
        key = normalize_answer(p) if p is not None else None
        if key is None:
            continue
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, p)
    if not counts:
        return None
    best = max(counts.values())
    for key, original in first.items():  # insertion order: the class seen first wins a tie
        if counts[key] == best:
            return original
    return None
