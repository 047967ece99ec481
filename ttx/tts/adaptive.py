"""Adaptive-Consistency (Aggarwal et al. 2023, arXiv 2305.11860): self-consistency that samples
each problem in small batches and stops it once a stopping rule says its majority is settled.

Reference: pranjal2041/AdaptiveConsistency@899ab56, scripts/pal/core/interface.py:289-312 (the
text loop: `step_size` samples per round, all answers so far checked after each round, the
majority of what was drawn returned) with scripts/run_eval.py:107 (step_size 1) and the rules of
adaptive_consistency/stopping_criterias.py (ttx.tts.stopping). `--n` is the reference's
`max_gens`, `--adaptive-batch` its `step_size`. Problems stop independently: every round is one
engine call for the problems still open, each drawing min(batch, n - drawn) traces with the
round's own seed (ttx.tts.search.round_seed). The default rule is the library's, Beta
(adaptive_consistency/main.py:23, README "the default stopping criteria"). its_hub's
BetaSelfConsistency checks after every arriving response (BSC:110-131): --adaptive-batch 1; its
answers without a projection vote as one class, as ttx's default --invalid-votes lm-eval.
"""

from __future__ import annotations

import random
from dataclasses import replace

from ttx.errors import TtxError
from ttx.scoring.answers import majority_vote, vote_key
from ttx.seeds import call_seed
from ttx.tts.sampling import trace_dict
from ttx.tts.search import ADAPTIVE_RULES, Account, round_seed
from ttx.tts.stopping import DEFAULT_THRESHOLDS, decide
from ttx.tts.strategy import Outcome, Strategy, register


def threshold_of(search) -> float:
    t = search.adaptive_threshold
    return DEFAULT_THRESHOLDS[search.adaptive_rule] if t is None else t


@register
class AdaptiveConsistency(Strategy):
    name = "adaptive-consistency"
    rank = 5
    summary = ("Self-consistency in small batches per problem, each stopped once a Beta/"
               "Dirichlet/entropy/majority rule says its majority is settled (--n: the maximum).")
    knobs = ("adaptive_rule", "adaptive_threshold", "adaptive_batch")

    @classmethod
    def check(cls, cfg, *, engine, given):
        super().check(cfg, engine=engine, given=given)
        s = cfg.search
        if s.adaptive_rule not in ADAPTIVE_RULES:
            raise TtxError(f"--adaptive-rule must be one of {', '.join(ADAPTIVE_RULES)}, "
                           f"got {s.adaptive_rule!r}")
        if s.adaptive_batch < 1:
            raise TtxError(f"--adaptive-batch must be positive, got {s.adaptive_batch}")
        t = threshold_of(s)
        # its_hub refuses a threshold outside (0.5, 1] (BSC:54); the reference checks none:
        # a probability or share threshold outside [0, 1] would stop always or never
        low, open_low = {"its-hub-beta": (0.5, True), "entropy": (0.0, False),
                         "random": (0.0, False)}.get(s.adaptive_rule, (0.0, True))
        if not ((t > low if open_low else t >= low) and t <= 1.0):
            raise TtxError(f"--adaptive-threshold {t} is out of range for --adaptive-rule "
                           f"{s.adaptive_rule} (must be in {'(' if open_low else '['}{low}, 1])")

    @classmethod
    def rows(cls, cfg):
        return min(cfg.n, cfg.search.adaptive_batch)

    def run(self, engine, prompts, cfg):
        s, n = cfg.search, cfg.n
        rule, threshold, batch = s.adaptive_rule, threshold_of(s), s.adaptive_batch
        traces: list[list[dict]] = [[] for _ in prompts]
        accounts = [Account() for _ in prompts]
        log: list[list[dict]] = [[] for _ in prompts]
        why = ["max-n"] * len(prompts)
        open_ = list(range(len(prompts)))
        r = 0
        while open_:
            sizes = [min(batch, n - len(traces[i])) for i in open_]
            params = replace(cfg.params, seed=round_seed(cfg.params.seed, r))
            gens = engine.generate([prompts[i] for i in open_], sizes, params)
            still = []
            for i, gen in zip(open_, gens):
                if r == 0:
                    accounts[i].prompt_tokens = gen.prompt_tokens
                accounts[i].add([t.completion_tokens for t in gen.traces], gen.prompt_tokens,
                                gen.cached_prompt_tokens)
                traces[i] += [{**trace_dict(t), "round": r} for t in gen.traces]
                counts = _counts([t["pred"] for t in traces[i]], cfg.invalid_votes)
                rng = random.Random(call_seed(cfg.params.seed, r, i)) \
                    if cfg.params.seed is not None else None
                confidence, stop = decide(rule, counts, threshold, rng)
                log[i].append({"drawn": len(traces[i]), "confidence": confidence})
                if stop:
                    why[i] = "settled"
                elif len(traces[i]) < n:
                    still.append(i)
            open_ = still
            r += 1
        out = []
        for i in range(len(prompts)):
            a = accounts[i]
            out.append(Outcome(
                traces=traces[i],
                pred=majority_vote([t["pred"] for t in traces[i]], cfg.invalid_votes),
                completion_tokens=a.completion, sequential_tokens=a.sequential,
                prompt_tokens=a.prompt_tokens,
                extra={"drawn": len(traces[i]), "stopped": why[i], **a.extra(),
                       "adaptive": {"rule": rule, "threshold": threshold, "batch": batch,
                                    "max_n": n, "rounds": log[i]}}))
        return out

    @classmethod
    def aggregate(cls, record, preds, invalid):
        return majority_vote(preds, invalid)


def _counts(preds: list[str | None], invalid: str) -> list[int]:
    """Vote counts per answer class (a trace without an answer votes per --invalid-votes)."""
    counts: dict[str, int] = {}
    for p in preds:
        key = vote_key(p, invalid)
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    return list(counts.values())
