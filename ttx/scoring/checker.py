"""math-verify behind a deadline: answer extraction and equivalence in a child process.

math-verify runs sympy, which can take unbounded time (e.g. 9^{9^{9^9}}) inside one C call that
holds the GIL, so neither its signal timeout nor a watchdog thread can stop it. It therefore
runs in a child process that we kill on a deadline; inside the child a SIGALRM deadline (the
child's main thread) ends the usual slow cases without a restart. The parent never imports
math-verify or sympy, so `ttx score --help` stays light.

Requests are one JSON object per line: {"op": "extract", "text": ...} -> the answer span
math-verify finds (or null), {"op": "verify", "g": gold, "p": pred} -> true/false.
"""

from __future__ import annotations

import json
import logging
import signal
import threading

_GRACE_S = 1.0  # beyond the request's deadline before the child is killed
_START_S = 60.0  # first start: the child imports sympy and math-verify (slow on a busy box)


class _Deadline(BaseException):
    """Our SIGALRM; a BaseException so math-verify's `except Exception` lets it through."""


def wrap(s: str) -> str:
    """A bare answer as math-verify's LaTeX extraction expects it: inside $...$."""
    return s if "$" in s or "\\(" in s or "\\[" in s or "\\boxed" in s else f"${s}$"


# --- inside the child -------------------------------------------------------------------------

def _extract(text: str) -> str | None:
    """The span math-verify's default extraction (LaTeX, then plain expressions) settles on,
    as the normalised LaTeX it parsed (or, if none parsed, the first span it matched); a
    percentage keeps its sign. None: nothing matched."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    found = parse(text, [LatexExtractionConfig(), ExprExtractionConfig()],
                  fallback_mode="first_match", parsing_timeout=None)
    # [value, span] when the span parsed, [span] when it matched but did not parse
    if not found or not isinstance(found[-1], str) or not found[-1].strip():
        return None
    span = found[-1].strip()
    # math-verify divides a percentage by 100 in the parsed value but drops the sign from the
    # string; keep it so the span re-parses to the same value.
    value = found[0] if len(found) > 1 else None
    try:
        from sympy import Number

        if isinstance(value, Number) and Number(span.replace(",", "")) == value * 100:
            span += "\\%"
    except Exception:  # noqa: BLE001 - not a plain number: nothing to mend
        pass
    return span


def _verify(gold: str, pred: str) -> bool:
    """math-verify with its own timeouts off (we hold the deadline). Gold goes first."""
    from math_verify import parse, verify

    g = parse(wrap(gold), parsing_timeout=None)
    p = parse(wrap(pred), parsing_timeout=None)
    if not g or not p:
        return False
    return bool(verify(g, p, timeout_seconds=None))


def _answer(req: dict):
    if req["op"] == "extract":
        return _extract(req["text"])
    return _verify(req["g"], req["p"])


def _worker_main() -> None:
    """Child process loop: one JSON request per stdin line, one JSON answer per stdout line."""
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
        answer = None
        try:
            req = json.loads(line)
            signal.setitimer(signal.ITIMER_REAL, float(req["t"]))
            try:
                answer = _answer(req)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except BaseException:  # noqa: BLE001 - deadline or a checker bug: no answer
            answer = None
        out.write(json.dumps(answer) + "\n")
        out.flush()


# --- in the parent ----------------------------------------------------------------------------

class Checker:
    """One math-verify child per process, shared by all threads, restarted after a kill.

    A plain subprocess (not multiprocessing) so the caller's __main__ is never re-imported.
    `available` is False once the child could not start: callers then use ttx's own rules.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._proc = None
        self._buf = b""
        self.available = True
        self.calls = 0

    def _start(self) -> bool:
        import os
        import subprocess
        import sys
        from pathlib import Path

        root = str(Path(__file__).resolve().parents[2])  # the folder holding the ttx package
        code = (f"import sys; sys.path.insert(0, {root!r}); "
                "from ttx.scoring.checker import _worker_main; _worker_main()")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            self._proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                          env=env)
        except OSError:
            self._proc = None
            self.available = False
            return False
        self._buf = b""
        if self._readline(_START_S) != "ready":
            logging.getLogger(__name__).warning("math-verify checker did not start; answers are "
                                                "extracted and compared by ttx's own rules only")
            self._stop()
            self.available = False
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
            chunk = os.read(fd, 1 << 16)
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

    def ask(self, request: dict, timeout_s: float):
        """The child's answer to one request, or None (no answer, a deadline, no child)."""
        with self._lock:
            if not self.available:
                return None
            self.calls += 1
            try:
                if self._proc is None or self._proc.poll() is not None:
                    self._stop()
                    if not self._start():
                        return None
                line = json.dumps({**request, "t": float(timeout_s)}) + "\n"
                self._proc.stdin.write(line.encode())
                self._proc.stdin.flush()
                answer = self._readline(timeout_s + _GRACE_S)
                if answer is not None:
                    return json.loads(answer)
            except (OSError, ValueError):
                pass
            self._stop()  # hung or died: kill it; the next call starts a fresh one
            return None


checker = Checker()
