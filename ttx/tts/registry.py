"""Every tts-run strategy, by name. Adding a strategy: one module with a `@register`ed Strategy
subclass, and its import below."""

from __future__ import annotations

import ttx.tts.particles  # noqa: F401  (particle-filter, particle-gibbs)
from ttx.tts import budget, dora, dvts, refine, sampling  # noqa: F401  (each registers its own)
from ttx.tts.adaptive import AdaptiveConsistency  # noqa: F401
from ttx.tts.beam import Beam  # noqa: F401
from ttx.tts.deepconf import DeepConf  # noqa: F401
from ttx.tts.mcts import MCTS  # noqa: F401
from ttx.tts.strategy import _REGISTRY, Strategy
from ttx.tts.tot import ToT  # noqa: F401

STRATEGIES: tuple[str, ...] = tuple(sorted(_REGISTRY, key=lambda name: _REGISTRY[name].rank))
SCORERS = ("logprob", "self-certainty")


def strategy(name: str) -> type[Strategy]:
    from ttx.errors import TtxError

    if name not in _REGISTRY:
        raise TtxError(f"unknown strategy {name!r} (one of {', '.join(STRATEGIES)})",
                       field="--strategy")
    return _REGISTRY[name]


def table() -> list[tuple[str, str]]:
    """(name, one-line summary) of every strategy, in registry order (the README's table)."""
    return [(name, _REGISTRY[name].summary) for name in STRATEGIES]


def regrade_record(record: dict, invalid: str = "lm-eval") -> dict:
    """The record with every trace's answer re-extracted from its text and its prediction
    recomputed by its strategy's own rule; the stored answers stay as `old_pred`."""
    from ttx.scoring.answers import extract_answer

    traces = [{**t, "old_pred": t.get("pred"), "pred": extract_answer(t.get("text"))}
              for t in record.get("traces") or [] if isinstance(t, dict)]
    out = {**record, "traces": traces, "old_pred": record.get("pred")}
    cls = _REGISTRY.get(str(record.get("strategy")))
    if cls is not None:
        out["pred"] = cls.aggregate(out, [t["pred"] for t in traces], invalid)
    else:                       # records of another tool: a majority over their traces
        from ttx.scoring.answers import majority_vote

        out["pred"] = majority_vote([t["pred"] for t in traces], invalid)
    return out
