"""Scaling evaluation across levels: ARISE, the slope metric, s1's metrics and TTSPM saturation.

A run is evaluated at scaling levels j = 1..J (ordered by compute: n = 1, 2, 4, 8, or growing
thinking budgets). For problem i, a_i^j is its accuracy at level j (the mean over repeats, so it
can be fractional) and t_i^j its mean completion tokens.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

AXIS_KEYS = ("n", "max_new_tokens", "max_thinking_tokens", "turns")
BUDGET_AXES = ("max_new_tokens", "max_thinking_tokens")
SEVERE_RATIO = 1.5
_ZERO = 1e-12  # |Δa| below this is float noise from averaging repeats, not a change


def _sign(x: float) -> int:
    return 0 if abs(x) < _ZERO else (1 if x > 0 else -1)


def arise_score(acc: Sequence[float], tokens: Sequence[float]) -> float:
    """ARISE_i (arXiv 2510.06014): sum over j = 2..J of Δa · W, with Δa = a^j - a^{j-1} and
    W = (t^{j-1} / t^j) ** sign(Δa).

    A gain bought with more tokens is discounted by the token ratio; a loss that also spent more
    tokens is amplified. Δa = 0 adds nothing; a pair where either token count is <= 0 is
    skipped; fewer than two levels gives 0.
    """
    if len(acc) != len(tokens):
        raise ValueError("acc and tokens need one value per level")
    total = 0.0
    for j in range(1, len(acc)):
        t_prev, t_cur = tokens[j - 1], tokens[j]
        if t_prev <= 0 or t_cur <= 0:
            continue
        delta = acc[j] - acc[j - 1]
        s = _sign(delta)
        if s == 0:
            continue
        total += delta * (t_prev / t_cur) ** s
    return total


def slope_score(acc: Sequence[float], tokens: Sequence[float]) -> float:
    """The slope metric ARISE is compared with: (a_last - a_first) / (t_last - t_first), 0 where
    tokens did not grow (or fewer than two levels)."""
    if len(acc) < 2 or tokens[-1] <= tokens[0]:
        return 0.0
    return (acc[-1] - acc[0]) / (tokens[-1] - tokens[0])


def classify(acc: Sequence[float]) -> str:
    """One of five disjoint classes of a problem's accuracy curve over levels:

    always_correct: a^j = 1 at every level;  always_wrong: a^j = 0 at every level;
    improved: never decreases from one level to the next and a_last > a_first;
    degraded: never increases and a_last < a_first;
    mixed: everything else (ups and downs, or a flat fractional accuracy such as 0.5, 0.5).
    """
    if all(abs(a - 1.0) < _ZERO for a in acc):
        return "always_correct"
    if all(abs(a) < _ZERO for a in acc):
        return "always_wrong"
    steps = [_sign(acc[j] - acc[j - 1]) for j in range(1, len(acc))]
    if steps and all(s >= 0 for s in steps) and _sign(acc[-1] - acc[0]) > 0:
        return "improved"
    if steps and all(s <= 0 for s in steps) and _sign(acc[-1] - acc[0]) < 0:
        return "degraded"
    return "mixed"


SEVERE_RULES = ("reference", "1-to-0")


def severe_degradations(acc: Sequence[float], tokens: Sequence[float],
                        levels: Sequence[int], ratio: float = SEVERE_RATIO,
                        rule: str = "reference") -> list[dict]:
    """Consecutive levels where accuracy fell while tokens grew by more than `ratio`
    (t^j / t^{j-1} > ratio, strictly).

    rule "reference": every drop, fractional ones included, one entry per (problem, transition),
    as ARISE's NegativeScalingAnalyzer (yinzhangyue/ARISE code/arise_metric.py:176-186);
    "1-to-0": only a drop from always right to always wrong (ttx before 0.2)."""
    out = []
    for j in range(1, len(acc)):
        if rule == "1-to-0":
            drop = abs(acc[j - 1] - 1.0) < _ZERO and abs(acc[j]) < _ZERO
        else:
            drop = _sign(acc[j] - acc[j - 1]) < 0
        if drop and tokens[j - 1] > 0:
            r = tokens[j] / tokens[j - 1]
            if r > ratio:
                out.append({"from_level": levels[j - 1], "to_level": levels[j],
                            "acc_from": acc[j - 1], "acc_to": acc[j],
                            "tokens_from": tokens[j - 1], "tokens_to": tokens[j],
                            "token_ratio": r})
    return out


def problem_curves(records: Sequence[dict], correct: Sequence[bool],
                   levels: Sequence[int], ids: Sequence[str],
                   cost: Sequence[float | None] | None = None) -> dict[str, dict]:
    """Per problem, its levels in order with a (mean correctness over repeats), t (mean cost:
    `cost` per record, by default its completion tokens) and s (mean sequential tokens). A
    problem missing at a level simply has no point there; ARISE runs over the levels it has."""
    if cost is None:
        cost = [_number(r.get("completion_tokens")) for r in records]
    cells: dict[str, dict[int, list]] = {}
    for rec, ok, lvl, pid, c in zip(records, correct, levels, ids, cost):
        cells.setdefault(pid, {}).setdefault(lvl, []).append((rec, ok, c))
    curves = {}
    for pid, by_level in cells.items():
        lv = sorted(by_level)
        curve = {"levels": lv, "a": [], "t": [], "s": [], "repeats": []}
        for level in lv:
            rows = by_level[level]
            curve["a"].append(sum(ok for _, ok, _ in rows) / len(rows))
            costs = [c for _, _, c in rows if c is not None]
            curve["t"].append(sum(costs) / len(costs) if costs else 0.0)
            seq = _mean_field([r for r, _, _ in rows], "sequential_tokens", None)
            curve["s"].append(curve["t"][-1] if seq is None else seq)
            curve["repeats"].append(len(rows))
        curves[pid] = curve
    return curves


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _mean_field(rows: Sequence[dict], field: str, default: float | None = 0.0) -> float | None:
    vals = [float(r[field]) for r in rows
            if isinstance(r.get(field), (int, float)) and not isinstance(r.get(field), bool)]
    return sum(vals) / len(vals) if vals else default


def dataset_slope(curves: dict[str, dict]) -> float:
    """The slope baseline as ARISE's reference computes it (code/arise_metric.py:205-215): the
    mean accuracy and mean cost of every problem's first and last level, then
    (acc_last - acc_first) / (t_last - t_first); 0 where the mean cost did not grow."""
    if not curves:
        return 0.0
    first = [(c["a"][0], c["t"][0]) for c in curves.values()]
    last = [(c["a"][-1], c["t"][-1]) for c in curves.values()]
    n = len(first)
    a0, a1 = sum(a for a, _ in first) / n, sum(a for a, _ in last) / n
    t0, t1 = sum(t for _, t in first) / n, sum(t for _, t in last) / n
    return (a1 - a0) / (t1 - t0) if t1 > t0 else 0.0


def arise_summary(curves: dict[str, dict], ratio: float = SEVERE_RATIO) -> dict:
    """Dataset ARISE = the mean of ARISE_i, with ARISE_i per problem (`per_problem`); its
    population std, min, max; the class counts (see `classify`); the severe degradations by
    the reference's rule (`n_severe`, `severe_degradations`) and by the 1 -> 0 rule
    (`n_severe_1_to_0`); the slope metric at dataset level as the reference (`slope`) and as
    the mean of per-problem slopes (`slope_per_problem`)."""
    scores = {pid: arise_score(c["a"], c["t"]) for pid, c in curves.items()}
    values = list(scores.values())
    n = len(values)
    mean = sum(values) / n if n else 0.0
    counts = dict.fromkeys(("always_correct", "always_wrong", "improved", "degraded", "mixed"), 0)
    severe, total_loss = [], 0
    for pid, c in curves.items():
        counts[classify(c["a"])] += 1
        severe += [{"id": pid, **d} for d in severe_degradations(c["a"], c["t"], c["levels"], ratio)]
        total_loss += len(severe_degradations(c["a"], c["t"], c["levels"], ratio, "1-to-0"))
    return {
        "arise": mean,
        "arise_std": math.sqrt(sum((v - mean) ** 2 for v in values) / n) if n else 0.0,
        "arise_min": min(values) if n else 0.0,
        "arise_max": max(values) if n else 0.0,
        "n_problems": n,
        "n_levels": len({lvl for c in curves.values() for lvl in c["levels"]}),
        **counts,
        "slope": dataset_slope(curves),
        "slope_per_problem": (sum(slope_score(c["a"], c["t"]) for c in curves.values()) / n
                              if n else 0.0),
        "n_severe": len(severe),
        "n_severe_1_to_0": total_loss,
        "severe_degradations": severe,
        "per_problem": scores,
    }


def level_means(curves: dict[str, dict]) -> list[dict]:
    """Dataset accuracy and cost per level (the cost the curves were built with: tokens by
    default): means over the problems present at that level (each problem weighs the same,
    whatever its number of repeats)."""
    by_level: dict[int, list] = {}
    for c in curves.values():
        for lvl, a, t, s in zip(c["levels"], c["a"], c["t"], c["s"]):
            by_level.setdefault(lvl, []).append((a, t, s))
    out = []
    for lvl in sorted(by_level):
        rows = by_level[lvl]
        out.append({"level": lvl, "accuracy": sum(r[0] for r in rows) / len(rows),
                    "cost": sum(r[1] for r in rows) / len(rows),
                    "sequential_tokens": sum(r[2] for r in rows) / len(rows),
                    "n_problems": len(rows)})
    return out


def s1_metrics(means: Sequence[dict], axis: str | None,
               values: Sequence[float | None]) -> dict:
    """s1's budget metrics (arXiv 2501.19393, "Metrics"), over levels instead of budgets:

    control: the fraction of levels whose mean sequential tokens stay within the level's
      budget (only when the axis is a token budget, else None);
    scaling: the mean over level pairs i < j of (A_j - A_i) / (T_j - T_i), A the dataset
      accuracy and T the mean cost (tokens unless another cost is chosen; pairs with
      T_j = T_i skipped);
    performance: the best accuracy across levels.
    """
    control = None
    if axis in BUDGET_AXES and means and all(v is not None for v in values):
        control = sum(m["sequential_tokens"] <= v for m, v in zip(means, values)) / len(means)
    slopes = [(means[j]["accuracy"] - means[i]["accuracy"])
              / (means[j]["cost"] - means[i]["cost"])
              for i in range(len(means)) for j in range(i + 1, len(means))
              if means[j]["cost"] != means[i]["cost"]]
    return {"control": control,
            "scaling": sum(slopes) / len(slopes) if slopes else None,
            "performance": max((m["accuracy"] for m in means), default=None)}


def fit_ttspm(ns: Sequence[float], accs: Sequence[float], eps: float = 1e-3) -> dict | None:
    """Fit F(N) = F_max (1 - (1-p)^N) (Scaling over Scaling, arXiv 2505.20522) by least squares.

    For a fixed p the best F_max is closed-form (F is linear in it; clipped to [0, 1]); p is
    found by a log grid then golden-section search. saturation_n is the smallest N whose
    marginal gain F(N+1) - F(N) = F_max p (1-p)^N is below eps. None with < 2 distinct N.
    """
    pts = [(float(n), float(a)) for n, a in zip(ns, accs) if n is not None and n > 0]
    if len({n for n, _ in pts}) < 2:
        return None

    def best_fmax(p: float) -> tuple[float, float]:
        g = [1.0 - (1.0 - p) ** n for n, _ in pts]
        gg = sum(x * x for x in g)
        f = min(1.0, max(0.0, sum(x * a for x, (_, a) in zip(g, pts)) / gg)) if gg > 0 else 0.0
        return f, sum((f * x - a) ** 2 for x, (_, a) in zip(g, pts))

    grid = [10 ** (-4 + 4 * i / 400) for i in range(401)]  # 1e-4 .. 1
    k = min(range(len(grid)), key=lambda i: best_fmax(grid[i])[1])
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        m1, m2 = hi - phi * (hi - lo), lo + phi * (hi - lo)
        if best_fmax(m1)[1] <= best_fmax(m2)[1]:
            hi = m2
        else:
            lo = m1
    p = min((lo, hi, grid[k]), key=lambda q: best_fmax(q)[1])
    f_max, sse = best_fmax(p)
    return {"f_max": f_max, "p": p, "saturation_n": saturation_n(f_max, p, eps), "eps": eps,
            "rmse": math.sqrt(sse / len(pts))}


def saturation_n(f_max: float, p: float, eps: float) -> int:
    """Smallest integer N >= 0 with F_max p (1-p)^N < eps."""
    gain0 = f_max * p
    if gain0 < eps:
        return 0
    if p >= 1.0:
        return 1
    n = math.ceil(math.log(eps / gain0) / math.log(1.0 - p))
    while n > 0 and gain0 * (1.0 - p) ** (n - 1) < eps:  # float edge: step back if N-1 suffices
        n -= 1
    while gain0 * (1.0 - p) ** n >= eps:
        n += 1
    return n


def level_axis(records: Sequence[dict], levels: Sequence[int]) -> tuple[str | None, dict]:
    """The option that the levels scale (`level_key` on the records if given, else the first of
    n / max_new_tokens / max_thinking_tokens / turns that is one number per level and grows with
    it), and its value per level. (None, {}) when no such key exists."""
    explicit = {r.get("level_key") for r in records if r.get("level_key")}
    candidates = list(explicit) if len(explicit) == 1 else list(AXIS_KEYS)
    multi = len(set(levels)) > 1
    for key in candidates:
        per_level: dict[int, set] = {}
        ok = True
        for r, lvl in zip(records, levels):
            v = r.get(key)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                ok = False
                break
            per_level.setdefault(lvl, set()).add(v)
        if not ok or any(len(vs) != 1 for vs in per_level.values()):
            continue
        values = {lvl: next(iter(vs)) for lvl, vs in per_level.items()}
        ordered = [values[lvl] for lvl in sorted(values)]
        if not multi or all(b > a for a, b in itertools.pairwise(ordered)) or explicit:
            return key, values
    return None, {}
