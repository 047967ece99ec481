"""Seeds of engine calls: every call's seed derives from --seed and where the call stands (level,
chunk, repeat, round), so a resumed or repeated run draws exactly the same samples."""

from __future__ import annotations


def call_seed(seed: int | None, *parts: int) -> int | None:
    """A seed for one engine call from the run's seed and the call's coordinates."""
    if seed is None:
        return None
    for p in parts:
        seed = (seed * 1_000_003 + p) % (1 << 63)
    return seed
