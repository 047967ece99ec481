"""95% confidence intervals by bootstrap over problems (and, with repeats, over their repeats).

A problem's value is the mean over its repeats. One bootstrap sample draws P problems with
replacement and, for each drawn problem, its R repeats with replacement (a two-stage, or
hierarchical, bootstrap: both sources of noise in a test-time-scaling run are resampled); the
statistic is the mean over the drawn problems. The interval is the percentile interval of B such
samples. `paired` resamples the same problems for two runs (each run's repeats independently),
so the interval of their difference excludes the between-problem variance both share.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_SAMPLES = 1000
_CHUNK = 128          # bootstrap samples per vectorised block (bounds memory at P x R x _CHUNK)


def group(values: Sequence[float], ids: Sequence[str]) -> dict[str, list[float]]:
    """Per-record values -> {problem id: [values of its repeats]}, in first-seen order."""
    out: dict[str, list[float]] = {}
    for v, pid in zip(values, ids):
        out.setdefault(pid, []).append(float(v))
    return out


def _padded(groups: Sequence[Sequence[float]]):
    import numpy as np

    lengths = np.array([len(g) for g in groups], dtype=np.int64)
    table = np.zeros((len(groups), max(lengths, default=1)), dtype=np.float64)
    for i, g in enumerate(groups):
        table[i, :len(g)] = g
    return table, lengths


def _sample_means(table, lengths, picks, rng):
    """Mean over the picked problems of a resample of each one's repeats: [len(picks)] values."""
    import numpy as np

    chosen = lengths[picks]                                   # [b, P] repeats of each pick
    if int(lengths.max()) == 1:
        return table[picks, 0].mean(axis=1)
    width = table.shape[1]
    draws = np.floor(rng.random((*picks.shape, width)) * chosen[..., None]).astype(np.int64)
    values = table[picks[..., None], draws]                   # [b, P, R]
    used = np.arange(width) < chosen[..., None]
    return ((values * used).sum(-1) / chosen).mean(axis=1)


def _percentiles(stats, level: float) -> list[float]:
    import numpy as np

    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(stats, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def bootstrap_ci(groups: dict[str, list[float]], *, samples: int = DEFAULT_SAMPLES,
                 seed: int = 0, level: float = 0.95) -> list[float] | None:
    """[lo, hi] of the mean over problems; None without problems or samples."""
    import numpy as np

    if not groups or samples <= 0:
        return None
    table, lengths = _padded(list(groups.values()))
    rng = np.random.default_rng(seed)
    stats = []
    for start in range(0, samples, _CHUNK):
        picks = rng.integers(0, len(lengths), (min(_CHUNK, samples - start), len(lengths)))
        stats.append(_sample_means(table, lengths, picks, rng))
    return _percentiles(np.concatenate(stats), level)


def paired_ci(base: dict[str, list[float]], other: dict[str, list[float]], *,
              samples: int = DEFAULT_SAMPLES, seed: int = 0, level: float = 0.95) -> dict | None:
    """The difference other - base over the problems both have: its mean, [lo, hi] and the
    number of shared problems; None when they share none."""
    import numpy as np

    shared = [pid for pid in base if pid in other]
    if not shared:
        return None
    ta, la = _padded([base[p] for p in shared])
    tb, lb = _padded([other[p] for p in shared])
    mean_a = float(np.mean([np.mean(base[p]) for p in shared]))
    mean_b = float(np.mean([np.mean(other[p]) for p in shared]))
    out = {"difference": mean_b - mean_a, "ci": None, "n_problems": len(shared)}
    if samples <= 0:
        return out
    rng = np.random.default_rng(seed)
    stats = []
    for start in range(0, samples, _CHUNK):
        picks = rng.integers(0, len(shared), (min(_CHUNK, samples - start), len(shared)))
        stats.append(_sample_means(tb, lb, picks, rng) - _sample_means(ta, la, picks, rng))
    out["ci"] = _percentiles(np.concatenate(stats), level)
    return out
