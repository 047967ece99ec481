"""The strategies of tts-run: how many traces, how they are sampled, how they are aggregated.

Each strategy turns a chunk of prompts into one `Outcome` per prompt; token accounting follows
tts-and-score.md: completion_tokens = all tokens generated, sequential_tokens = the longest chain
that had to be waited for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ttx.engines.base import Engine, Generation, SamplingParams, Trace
from ttx.scoring.answers import extract_answer, majority_vote, normalize_answer
from ttx.tts.search import SearchConfig

STRATEGIES = ("greedy", "sample", "majority", "best-of-n", "ffs", "budget-forcing", "beam",
              "dora", "refine")
SCORERS = ("logprob", "self-certainty")


@dataclass
class StrategyConfig:
    strategy: str = "majority"
    n: int = 8
    params: SamplingParams = field(default_factory=SamplingParams)
    scorer: str = "logprob"           # best-of-n
    weighted: bool = False            # best-of-n: sum scores per answer instead of taking the max
    ffs_k: int = 1                    # ffs: wait for k finished traces and vote among them
    search: SearchConfig = field(default_factory=SearchConfig)   # budget forcing, beam, dora,
                                                                 # refine, reward models


@dataclass
class Outcome:
    traces: list[dict]                # [{text, pred, completion_tokens, finish_reason, score}]
    pred: str | None
    completion_tokens: int
    sequential_tokens: int
    prompt_tokens: int
    extra: dict = field(default_factory=dict)     # strategy-specific record fields (added, never
                                                  # replacing the ones above)


def trace_score(trace: Trace, scorer: str) -> float | None:
    """Mean token log-probability, or mean self-certainty, of one trace."""
    values = trace.logprobs if scorer == "logprob" else trace.self_certainty
    if not values:
        return None
    return sum(values) / len(values)


def _record(trace: Trace, score: float | None) -> dict:
    return {"text": trace.text, "pred": extract_answer(trace.text),
            "completion_tokens": trace.completion_tokens, "finish_reason": trace.finish_reason,
            "finish_order": trace.finish_order, "score": score}


def _best_of_n(traces: list[dict], weighted: bool, scorer: str) -> str | None:
    scored = [t for t in traces if t["score"] is not None and t["pred"] is not None]
    if not scored:
        return None
    if not weighted:
        return max(scored, key=lambda t: t["score"])["pred"]   # ties: the earliest trace
    # Weighted best-of-n (Snell et al. 2024): sum per answer of a positive weight per trace;
    # a mean log-probability becomes the geometric-mean token probability exp(score).
    totals: dict[str, float] = {}
    first: dict[str, str] = {}
    for t in scored:
        key = normalize_answer(t["pred"])
        weight = math.exp(t["score"]) if scorer == "logprob" else t["score"]
        totals[key] = totals.get(key, 0.0) + weight
        first.setdefault(key, t["pred"])
    return first[max(totals, key=totals.get)]


def effective_params(cfg: StrategyConfig) -> tuple[int, SamplingParams]:
    """The number of traces and sampling parameters a strategy asks the engine for."""
    params = cfg.params
    if cfg.strategy == "greedy":
        return 1, replace(params, temperature=0.0)
    if cfg.strategy == "best-of-n":
        return cfg.n, replace(params, logprobs=True)
    if cfg.strategy == "ffs":
        if not 1 <= cfg.ffs_k <= cfg.n:
            raise ValueError(f"--ffs-k must be between 1 and --n ({cfg.n}), got {cfg.ffs_k}")
        return cfg.n, replace(params, stop_after_finished=cfg.ffs_k)
    return cfg.n, params


def aggregate(cfg: StrategyConfig, gen: Generation) -> Outcome:
    """Turn one prompt's traces into its prediction and token accounting."""
    scorer = cfg.scorer if cfg.strategy == "best-of-n" else None
    traces = [_record(t, trace_score(t, scorer) if scorer else None) for t in gen.traces]
    completion = sum(t.completion_tokens for t in gen.traces)
    sequential = max((t.completion_tokens for t in gen.traces), default=0)
    preds = [t["pred"] for t in traces]
    if cfg.strategy in ("greedy", "sample"):
        pred = preds[0] if preds else None     # sample: a single trace's answer; use pass@k on all
    elif cfg.strategy == "majority":
        pred = majority_vote(preds)
    elif cfg.strategy == "best-of-n":
        pred = _best_of_n(traces, cfg.weighted, cfg.scorer)
    elif cfg.strategy == "ffs":
        done = [(t, r) for t, r in zip(gen.traces, traces) if t.finish_reason != "cancelled"]
        done.sort(key=lambda tr: tr[0].finish_order if tr[0].finish_order is not None else 1 << 30)
        first_k = done[:cfg.ffs_k] or list(zip(gen.traces, traces))
        pred = majority_vote([r["pred"] for _, r in first_k])
        # FFS waits only for the k-th finished trace; the cancelled ones stopped with it.
        sequential = max(t.completion_tokens for t, _ in first_k)
    else:
        raise ValueError(f"unknown strategy {cfg.strategy!r}")
    return Outcome(traces=traces, pred=pred, completion_tokens=completion,
                   sequential_tokens=sequential, prompt_tokens=gen.prompt_tokens)


def run_strategy(engine: Engine, prompts: list, cfg: StrategyConfig) -> list[Outcome]:
    """Generate and aggregate for a chunk of prompts (one batched engine call; a search
    strategy makes one batched call per round)."""
    if cfg.strategy == "budget-forcing":
        from ttx.tts.budget import run_budget_forcing
        return run_budget_forcing(engine, prompts, cfg)
    if cfg.strategy in ("beam", "dora"):
        from ttx.tts.beam import run_beam
        return run_beam(engine, prompts, cfg)
    if cfg.strategy == "refine":
        from ttx.tts.refine import run_refine
        return run_refine(engine, prompts, cfg)
    if cfg.strategy == "best-of-n" and cfg.search.reward_model:
        from ttx.tts.reward import run_best_of_n_reward
        return run_best_of_n_reward(engine, prompts, cfg)
    n, params = effective_params(cfg)
    return [aggregate(cfg, g) for g in engine.generate(prompts, n, params)]
