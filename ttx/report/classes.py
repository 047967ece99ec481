"""Per-problem scaling classes of a run, through `ttx score`'s own functions.

`ttx score` reports how many problems are always correct, always wrong, improved, degraded or
mixed (ttx.scoring.arise.arise_summary), not which. The report needs which, so it rebuilds the
same curves with the same functions (record_correct -> problem_curves -> classify) on the same
loaded run (ttx.score.load_run) and checks its counts against score's.
"""

from __future__ import annotations

from ttx.errors import TtxError
from ttx.scoring import arise as ar
from ttx.scoring.metrics import record_correct

CLASSES = ("always_correct", "always_wrong", "improved", "degraded", "mixed")


def problem_classes(run: dict, answer_field: str = "answer") -> tuple[dict[str, dict], list[bool]]:
    """({problem id: {"class", "levels", "a"}}, the verdict of each record) of a loaded run.

    `a` is the problem's accuracy per level (the mean over its repeats), as ARISE sees it."""
    correct = [record_correct(r, answer_field) for r in run["records"]]
    curves = ar.problem_curves(run["records"], correct, run["levels"], run["ids"])
    return ({pid: {"class": ar.classify(c["a"]), "levels": c["levels"], "a": c["a"]}
             for pid, c in curves.items()}, correct)


def check_counts(name: str, classes: dict[str, dict], arise: dict) -> None:
    """Refuse to draw a report whose classes differ from the counts score reported."""
    mine = {c: sum(1 for p in classes.values() if p["class"] == c) for c in CLASSES}
    theirs = {c: arise.get(c) for c in CLASSES}
    if mine != theirs:
        raise TtxError(f"run {name}: the per-problem classes {mine} differ from score's counts "
                       f"{theirs} (a bug: please report it)")
