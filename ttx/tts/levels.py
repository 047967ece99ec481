"""Compute levels (`--levels n=1,2,4,8`) and the dynamic repeat rule of ARISE (arXiv 2510.06014).

For each (problem, level) run `repeats_min` repeats, then one more while fewer than
`repeats_max` and CV(acc) + CV(tokens) > threshold, with CV(x) = std(x) / (mean(x) + 1e-8)
and the population std.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

AXES = ("n", "max_new_tokens", "max_thinking_tokens", "turns")


@dataclass(frozen=True)
class Levels:
    key: str                  # which option the levels scale
    values: tuple[int, ...]   # one value per level, level j = values[j-1]


def parse_levels(spec: str) -> Levels:
    """`n=1,2,4,8` -> Levels("n", (1, 2, 4, 8)); ValueError with a readable message otherwise."""
    key, sep, rest = spec.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or key not in AXES:
        raise ValueError(f"expected AXIS=V1,V2,... with AXIS one of {', '.join(AXES)}; got {spec!r}")
    try:
        values = tuple(int(v) for v in rest.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"level values must be integers; got {rest!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"level values must be positive integers; got {rest!r}")
    return Levels(key, values)


def cv(xs: list[float]) -> float:
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))
    return std / (mean + 1e-8)


@dataclass(frozen=True)
class RepeatRule:
    minimum: int = 1
    maximum: int = 1
    cv_threshold: float = 0.5

    @classmethod
    def fixed(cls, k: int) -> "RepeatRule":
        return cls(k, k, 0.0)        # min == max: the threshold is never consulted

    def wants_more(self, accs: list[float], tokens: list[float]) -> bool:
        """Whether a (problem, level) with these outcomes so far needs another repeat."""
        done = len(accs)
        if done < self.minimum:
            return True
        if done >= self.maximum:
            return False
        return cv(accs) + cv(tokens) > self.cv_threshold
