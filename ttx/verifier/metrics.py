"""How good a verifier is on held-out traces: AUC, accuracy, and best-of-n selection.

AUC is the Mann-Whitney statistic: the probability that a randomly drawn positive scores above a
randomly drawn negative, ties counting one half, computed from mid-ranks in O(n log n).
"""

from __future__ import annotations

from collections.abc import Sequence


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve; None when only one class is present."""
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    pos = sum(1 for y in labels if y)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):                 # tied scores share the mean of their ranks
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels) if y)
    # U = R_pos - n_pos (n_pos + 1) / 2 pairs won by a positive; AUC = U / (n_pos n_neg)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def accuracy(scores: Sequence[float], labels: Sequence[bool], threshold: float = 0.5) -> float | None:
    """Share of traces whose score is on the right side of the threshold (score >= t: correct)."""
    if not scores:
        return None
    return sum((s >= threshold) == bool(y) for s, y in zip(scores, labels)) / len(scores)


def selection(groups: dict[str, list[tuple[float, bool]]]) -> dict:
    """Best-of-n on the held-out pools: per problem, is the top-scored trace correct (ties: the
    first)? Next to it, a random trace's chance (mean correctness) and the oracle (pass@n)."""
    if not groups:
        return {"best_of_n": None, "random": None, "oracle": None, "problems": 0}
    best = oracle = rand = 0.0
    for pool in groups.values():
        top = max(range(len(pool)), key=lambda i: (pool[i][0], -i))
        best += pool[top][1]
        oracle += any(y for _, y in pool)
        rand += sum(y for _, y in pool) / len(pool)
    n = len(groups)
    return {"best_of_n": best / n, "random": rand / n, "oracle": oracle / n, "problems": n}


def rounded(d: dict, digits: int = 4) -> dict:
    return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in d.items()}
