"""The per-problem data of a report: each run's records of each problem, with verdicts, votes
and the strategy's own fields, as plain JSON for the page to render on demand.

Verdicts use score's functions (gold_answer, record_correct, trace_preds, answers_equal,
vote_key); nothing is graded differently from `ttx score`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ttx.report.tree import kept_tree, search_tree
from ttx.scoring.answers import answers_equal, normalize_answer, vote_key
from ttx.scoring.metrics import gold_answer, trace_preds

# record fields the page shows in their own place; everything else goes to "other fields"
RECORD_FIELDS = {"id", "question", "strategy", "n", "level_key", "level", "repeat", "traces",
                 "pred", "completion_tokens", "sequential_tokens", "prompt_tokens", "wall_s",
                 "model", "prefill_tokens", "rounds", "memory_ids", "budget_forcing", "refine",
                 "old_pred"}
TRACE_FIELDS = {"text", "pred", "completion_tokens", "finish_reason", "score", "old_pred"}
STATUS = {"root": 0, "expanded": 1, "complete": 2, "pruned": 3}


def plain(obj):
    """JSON-able: non-finite floats become None, tuples lists, other objects their repr."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return repr(obj)


def _num(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


class Grader:
    """answers_equal against one gold answer, one check per normalised answer."""

    def __init__(self, gold: str | None):
        self.gold, self._seen = gold, {}

    def __call__(self, pred) -> bool:
        if pred is None or self.gold is None:
            return False
        key = normalize_answer(str(pred))
        if key not in self._seen:
            self._seen[key] = answers_equal(str(pred), self.gold)
        return self._seen[key]


def votes(preds: Sequence, chosen, grade: Grader, invalid: str) -> list[dict]:
    """One row per answer class (vote_key, as maj@k and majority count them), most votes first,
    ties in the order first seen: the first answer string, its votes, its verdict, the traces
    that gave it, and whether it is the record's `pred`. Traces that cast no vote (no answer
    with --invalid-votes skip) are a row of their own with key None."""
    rows: dict = {}
    for i, p in enumerate(preds):
        key = vote_key(p, invalid) if p is None or isinstance(p, str) else vote_key(str(p), invalid)
        row = rows.setdefault(key, {"answer": p, "votes": 0, "traces": [], "novote": key is None})
        row["votes"] += 1
        row["traces"].append(i)
    chosen_key = normalize_answer(str(chosen)) if chosen is not None else None
    out = []
    for row in rows.values():
        ans = row["answer"]
        row["ok"] = grade(ans)
        row["chosen"] = ans is not None and normalize_answer(str(ans)) == chosen_key
        row["answer"] = None if ans is None else str(ans)
        out.append(row)
    out.sort(key=lambda r: -r["votes"])           # stable: ties keep first-seen order
    return out


def _trace(t, pred, grade: Grader) -> dict:
    if not isinstance(t, dict):
        return {"text": None, "pred": None, "ok": False, "x": {"value": plain(t)}}
    return {"text": t.get("text") if isinstance(t.get("text"), str) else plain(t.get("text")),
            "pred": None if pred is None else str(pred), "ok": grade(pred),
            "ct": _num(t.get("completion_tokens")), "fr": plain(t.get("finish_reason")),
            "score": _num(t.get("score")),
            **({"old": plain(t["old_pred"])} if "old_pred" in t else {}),
            "x": {k: plain(v) for k, v in t.items() if k not in TRACE_FIELDS}}


def _search(rec: dict, kind: str, traces: list) -> dict | None:
    block = rec.get(kind)
    if isinstance(block, dict) and isinstance(block.get("nodes"), list):
        return _kept(block, kind, traces)
    if not isinstance(block, dict) or not isinstance(block.get("iterations"), list):
        return None
    agg = block.get("agg") if block.get("agg") in ("last", "min", "prod") else "last"
    tree = search_tree(block["iterations"], traces, agg, tokens=_num(rec.get("completion_tokens")))
    out = {"kind": kind, "params": {k: plain(v) for k, v in block.items() if k != "iterations"},
           "iterations": plain(block["iterations"])}
    if tree is not None:
        if tree["nodes"]:
            out["tree"] = [[n["parent"], n["depth"], n["score"], n["path"], STATUS[n["status"]],
                            n["trace"]] for n in tree["nodes"]]
        out["consistent"], out["note"] = tree["consistent"], tree["note"]
        if not tree["consistent"]:                 # the sentence the page shows
            what = "only the recorded paths are drawn" if tree["nodes"] else "no tree is drawn"
            out["warn"] = (f"The search tree is not drawn whole: {tree['note']}; {what}."
                           if tree["limited"] else f"The iteration log and the traces disagree "
                           f"({tree['note']}): {what}.")
    return out


def _kept(block: dict, kind: str, traces: list) -> dict:
    """A search whose record keeps its tree whole (mcts): nodes with visits and values."""
    tree = kept_tree(block["nodes"], traces)
    out = {"kind": kind, "iterations": [],
           "params": {k: plain(v) for k, v in block.items() if k not in ("nodes", "paths")}}
    if tree is not None:
        if tree["nodes"]:
            out["tree"] = [[n["parent"], n["depth"], n["score"], n["path"], STATUS[n["status"]],
                            n["trace"], n["visits"]] for n in tree["nodes"]]
        out["consistent"], out["note"] = tree["consistent"], tree["note"]
        if not tree["consistent"]:
            out["warn"] = f"The search tree is not drawn: {tree['note']}."
    return out


def record_view(rec: dict, ok: bool, where: str, level: int, *, answer_field: str,
                invalid: str, level_key: str | None) -> dict:
    """One record as the page shows it."""
    gold = gold_answer(rec, answer_field)
    grade = Grader(gold)
    raw = rec.get("traces") if isinstance(rec.get("traces"), list) else []
    preds = trace_preds(rec)
    traces = [_trace(t, p, grade) for t, p in zip(raw, preds)]
    out = {"level": level, "repeat": plain(rec.get("repeat", 0)), "at": where,
           "pred": None if rec.get("pred") is None else str(rec["pred"]), "ok": ok,
           "ct": _num(rec.get("completion_tokens")), "st": _num(rec.get("sequential_tokens")),
           "pt": _num(rec.get("prompt_tokens")), "wall": _num(rec.get("wall_s")),
           "strategy": plain(rec.get("strategy")), "n": plain(rec.get("n")),
           "traces": traces, "votes": votes(preds, rec.get("pred"), grade, invalid) if raw else []}
    if "old_pred" in rec:
        out["old"] = plain(rec["old_pred"])
    for k in ("prefill_tokens", "rounds"):
        if _num(rec.get(k)) is not None:
            out[k] = rec[k]
    shown = (RECORD_FIELDS - {"budget_forcing", "refine", "memory_ids"}) | {answer_field}
    if level_key:
        shown.add(level_key)
        if level_key in rec:
            out["level_value"] = plain(rec[level_key])
    if isinstance(rec.get("budget_forcing"), dict):
        out["bf"] = plain(rec["budget_forcing"])
        shown.add("budget_forcing")
    searches = []
    for key, value in rec.items():       # beam, dora, and any later strategy with the same log
        if key not in shown and isinstance(value, dict):
            s = _search(rec, key, raw)
            if s is not None:
                searches.append(s)
                shown.add(key)
    if searches:
        out["search"] = searches
    refine = rec.get("refine")
    if isinstance(refine, dict) and isinstance(refine.get("turns"), list):
        out["refine"] = {"agg": plain(refine.get("turn_aggregate")),
                         "turns": [_turn(t, grade) for t in refine["turns"]],
                         "x": {k: plain(v) for k, v in refine.items()
                               if k not in ("turns", "turn_aggregate")}}
        shown.add("refine")
    if isinstance(rec.get("memory_ids"), list):
        out["memory"] = [str(i) for i in rec["memory_ids"]]
        shown.add("memory_ids")
    out["x"] = {k: plain(v) for k, v in rec.items() if k not in shown}
    return out


def _turn(t, grade: Grader) -> dict:
    if not isinstance(t, dict):
        return {"x": plain(t)}
    preds = t.get("preds") if isinstance(t.get("preds"), list) else []
    return {"turn": plain(t.get("turn")), "pred": plain(t.get("pred")), "ok": grade(t.get("pred")),
            "preds": [[plain(p), grade(p)] for p in preds],
            "ct": _num(t.get("completion_tokens")), "st": _num(t.get("sequential_tokens")),
            "x": {k: plain(v) for k, v in t.items()
                  if k not in ("turn", "pred", "preds", "completion_tokens", "sequential_tokens")}}
