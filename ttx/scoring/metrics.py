"""Per-run metrics over tts-run records: accuracy, pass@k, maj@k, token and time costs."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

from ttx.scoring import intervals
from ttx.scoring.answers import (
    DEFAULT_INVALID_VOTE,
    answers_equal,
    extract_answer,
    normalize_answer,
    vote_key,
    winner,
)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. 2021 (arXiv 2107.03374, eq. 1): 1 - C(n-c, k) / C(n, k),
    in the numerically stable product form of their Figure 3."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1 (n={n}, c={c}, k={k})")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def maj_at_k(preds: Sequence[str | None], gold: str | None, k: int, bootstrap: int = 0,
             rng: random.Random | None = None, invalid: str = DEFAULT_INVALID_VOTE) -> float:
    """maj@k: 1.0 if the majority vote over the first k predictions equals gold, else 0.0.

    With bootstrap=B > 0: the mean over B random k-subsets (each kept in trace order, so a tie
    still goes to the answer seen first); when C(n, k) <= B, the exact mean over all k-subsets,
    which is what the draws estimate. rng defaults to random.Random(0). `invalid`: how a trace
    without an answer votes (answers.INVALID_VOTES).
    """
    if k < 1 or k > len(preds):
        raise ValueError(f"maj@{k} needs 1 <= k <= {len(preds)} predictions")
    keys = [vote_key(p, invalid) for p in preds]      # normalise once; a vote counts keys
    verdict: dict[str, bool] = {}                     # one equivalence check per answer class

    def correct(idx: Sequence[int]) -> bool:
        i = winner([keys[j] for j in idx])
        if i is None or preds[idx[i]] is None:        # no vote, or "[invalid]" won
            return False
        key = keys[idx[i]]
        if key not in verdict:
            verdict[key] = answers_equal(preds[idx[i]], gold)
        return verdict[key]

    if bootstrap <= 0:
        return float(correct(range(k)))
    if math.comb(len(preds), k) <= bootstrap:  # fewer subsets than draws: the exact mean
        subsets = list(itertools.combinations(range(len(preds)), k))
        return sum(correct(idx) for idx in subsets) / len(subsets)
    rng = rng or random.Random(0)
    hits = sum(correct(sorted(rng.sample(range(len(preds)), k))) for _ in range(bootstrap))
    return hits / bootstrap


def gold_answer(record: dict, answer_field: str = "answer") -> str | None:
    """The record's gold final answer, through the same extractor as predictions."""
    raw = record.get(answer_field)
    return None if raw is None else extract_answer(str(raw))


def trace_preds(record: dict) -> list[str | None]:
    """The extracted answer of each trace (its `pred`, else extracted from its `text`)."""
    out = []
    for trace in record.get("traces") or []:
        if not isinstance(trace, dict):
            out.append(None)
        elif "pred" in trace:
            out.append(trace["pred"])
        else:
            out.append(extract_answer(trace.get("text")))
    return out


def record_correct(record: dict, answer_field: str = "answer") -> bool:
    """Is the record's `pred` right? Always recomputed; a stored `correct` is never trusted."""
    pred = record.get("pred")
    return answers_equal(None if pred is None else str(pred), gold_answer(record, answer_field))


def _traces_correct(preds: Sequence[str | None], gold: str | None) -> list[bool]:
    """Each trace's verdict, one equivalence check per answer class."""
    verdict: dict[str | None, bool] = {}
    out = []
    for p in preds:
        key = normalize_answer(p)
        if key not in verdict:
            verdict[key] = answers_equal(p, gold)
        out.append(verdict[key])
    return out


def default_ks(max_n: int, extra: Sequence[int] = ()) -> list[int]:
    """Powers of two up to max_n, plus the extra k values asked for."""
    ks, k = set(), 1
    while k <= max_n:
        ks.add(k)
        k *= 2
    ks.update(int(x) for x in extra if int(x) >= 1)
    return sorted(ks)


def _mean(values: list, weights: Sequence[float] | None = None) -> float | None:
    """Weighted mean of the numeric values (None and non-numbers skipped)."""
    weights = weights or [1.0] * len(values)
    pairs = [(float(v), w) for v, w in zip(values, weights)
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def problem_weights(ids: Sequence[str] | None, count: int) -> list[float]:
    """1 / (records of that problem): repeats of one problem together weigh as one problem."""
    if ids is None:
        return [1.0] * count
    seen: dict[str, int] = {}
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
    return [1.0 / seen[i] for i in ids]


def summarize(records: Sequence[dict], *, answer_field: str = "answer", ks: Sequence[int] = (),
              bootstrap: int = 0, seed: int = 0, invalid: str = DEFAULT_INVALID_VOTE,
              ci_samples: int = intervals.DEFAULT_SAMPLES,
              correct: Sequence[bool] | None = None, ids: Sequence[str] | None = None) -> dict:
    """A flat summary of one group of records (one run, or one level of a run).

    Keys: n_records, accuracy, pass@k and maj@k for k = 1, 2, 4, ... up to the largest trace
    count plus `ks` (each averaged over the records with at least k traces; None where none
    has), each with `<metric>_ci`, its 95% bootstrap interval over problems (and repeats; see
    ttx.scoring.intervals; None with ci_samples=0); mean_completion_tokens,
    mean_sequential_tokens, mean_prompt_tokens, accuracy_per_1k_tokens (accuracy / mean
    completion tokens * 1000), mean_wall_s, total_wall_s, mean_traces. `correct` (the record
    verdicts, if already computed) saves recomputing them. With `ids` (the problem of each
    record), means are over problems: a problem's repeats are averaged first, as the spec's
    "averaged over problems" asks. `per_problem` holds each metric's per-record values grouped
    by problem, for paired comparisons (not part of the JSON summary).
    """
    if correct is None:
        correct = [record_correct(r, answer_field) for r in records]
    ids = list(ids) if ids is not None else [str(i) for i in range(len(records))]
    weights = problem_weights(ids, len(records))
    rng = random.Random(seed)
    golds = [gold_answer(r, answer_field) for r in records]
    preds = [trace_preds(r) for r in records]
    trace_ok = [_traces_correct(ps, g) for ps, g in zip(preds, golds)]
    max_n = max((len(p) for p in preds), default=0)

    out: dict = {"n_records": len(records)}
    values: dict[str, tuple[list[float], list[str]]] = {
        "accuracy": ([float(c) for c in correct], ids)}
    for k in default_ks(max_n, ks):
        eligible = [i for i, p in enumerate(preds) if len(p) >= k]
        values[f"pass@{k}"] = ([pass_at_k(len(preds[i]), sum(trace_ok[i]), k) for i in eligible],
                               [ids[i] for i in eligible])
    for k in default_ks(max_n, ks):
        eligible = [i for i, p in enumerate(preds) if len(p) >= k]
        values[f"maj@{k}"] = ([maj_at_k(preds[i], golds[i], k, bootstrap, rng, invalid)
                               for i in eligible], [ids[i] for i in eligible])
    per_problem = {}
    for j, (name, (vals, vids)) in enumerate(values.items()):
        groups = intervals.group(vals, vids)
        per_problem[name] = groups
        out[name] = (sum(sum(g) / len(g) for g in groups.values()) / len(groups)
                     if groups else None)
        out[f"{name}_ci"] = intervals.bootstrap_ci(groups, samples=ci_samples, seed=seed + j)
    out["mean_traces"] = _mean([len(p) for p in preds], weights)
    for field in ("completion_tokens", "sequential_tokens", "prompt_tokens"):
        out[f"mean_{field}"] = _mean([r.get(field) for r in records], weights)
    tokens = out["mean_completion_tokens"]
    out["accuracy_per_1k_tokens"] = (out["accuracy"] / tokens * 1000.0
                                     if tokens and out["accuracy"] is not None else None)
    out["mean_wall_s"] = _mean([r.get("wall_s") for r in records])
    walls = [r["wall_s"] for r in records if isinstance(r.get("wall_s"), (int, float))]
    out["total_wall_s"] = sum(walls) if walls else None
    out["per_problem"] = per_problem
    return out
