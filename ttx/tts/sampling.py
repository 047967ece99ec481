"""Strategies that sample n traces in one engine call and aggregate them: greedy, sample,
majority (self-consistency), best-of-n (policy score or a reward model), FFS."""

from __future__ import annotations

import math
from dataclasses import replace

from ttx.engines.base import Generation, Trace
from ttx.errors import TtxError
from ttx.scoring.answers import extract_answer, majority_vote, normalize_answer
from ttx.tts.strategy import Outcome, Strategy, StrategyConfig, register

REWARD_KNOBS = ("reward_model", "reward_batch_size", "prm_format", "prm_step_tag",
                "prm_good_token", "prm_bad_token", "prm_input", "agg",
                "judge_scale")


def trace_score(trace: Trace, scorer: str) -> float | None:
    """Mean token log-probability, or mean self-certainty, of one trace."""
    values = trace.logprobs if scorer == "logprob" else trace.self_certainty
    if not values:
        return None
    return sum(values) / len(values)


def trace_dict(trace: Trace, score: float | None = None) -> dict:
    return {"text": trace.text, "pred": extract_answer(trace.text),
            "completion_tokens": trace.completion_tokens, "finish_reason": trace.finish_reason,
            "finish_order": trace.finish_order, "score": score}


def outcome_of(gen: Generation, traces: list[dict], pred: str | None,
               sequential: int | None = None) -> Outcome:
    return Outcome(traces=traces, pred=pred,
                   completion_tokens=sum(t.completion_tokens for t in gen.traces),
                   sequential_tokens=(max((t.completion_tokens for t in gen.traces), default=0)
                                      if sequential is None else sequential),
                   prompt_tokens=gen.prompt_tokens)


def best_of(traces: list[dict], weighted: bool, as_weight) -> str | None:
    """The answer of the best-scored trace, or (weighted, Snell et al. 2024) the answer whose
    traces' weights sum highest; traces without a score or an answer take no part."""
    scored = [t for t in traces if t.get("score") is not None and t.get("pred") is not None]
    if not scored:
        return None
    if not weighted:
        return max(scored, key=lambda t: t["score"])["pred"]   # ties: the earliest trace
    totals: dict[str, float] = {}
    first: dict[str, str] = {}
    for t in scored:
        key = normalize_answer(t["pred"])
        totals[key] = totals.get(key, 0.0) + as_weight(t["score"])
        first.setdefault(key, t["pred"])
    return first[max(totals, key=totals.get)]


class _Sampling(Strategy):
    """One engine call of n traces per prompt, then `pick`."""

    def params(self, cfg: StrategyConfig):
        return cfg.params

    def run(self, engine, prompts, cfg):
        gens = engine.generate(prompts, cfg.n if self.samples else 1, self.params(cfg))
        return [self.outcome(gen, cfg) for gen in gens]

    def outcome(self, gen: Generation, cfg: StrategyConfig) -> Outcome:
        traces = [trace_dict(t) for t in gen.traces]
        return outcome_of(gen, traces, self.aggregate({}, [t["pred"] for t in traces],
                                                      cfg.invalid_votes))


@register
class Greedy(_Sampling):
    name = "greedy"
    rank = 0
    summary = "One greedy trace (temperature 0)."
    samples = False
    axes = ("max_new_tokens",)

    def params(self, cfg):
        return replace(cfg.params, temperature=0.0)

    @classmethod
    def aggregate(cls, record, preds, invalid):
        return preds[0] if preds else None


@register
class Sample(Greedy):
    name = "sample"
    rank = 1
    summary = "n sampled traces; pred is the first one's answer (use pass@k on all)."
    samples = True
    axes = ("n", "max_new_tokens")

    def params(self, cfg):
        return cfg.params


@register
class Majority(_Sampling):
    name = "majority"
    rank = 2
    summary = "n traces, majority vote over their answers (self-consistency)."

    @classmethod
    def aggregate(cls, record, preds, invalid):
        return majority_vote(preds, invalid)


@register
class FirstFinish(_Sampling):
    name = "ffs"
    rank = 4
    summary = "First Finish Search: stop once k of n traces finish; vote among those k."

    @classmethod
    def check(cls, cfg, *, engine, given):
        super().check(cfg, engine=engine, given=given)
        if not 1 <= cfg.ffs_k <= cfg.n:
            raise TtxError(f"--ffs-k {cfg.ffs_k} must be between 1 and --n ({cfg.n})")

    @classmethod
    def at_level(cls, cfg, key, value):
        if key == "n" and cfg.ffs_k > value:
            raise TtxError(f"--levels n={value} is below --ffs-k {cfg.ffs_k}")
        return super().at_level(cfg, key, value)

    def params(self, cfg):
        return replace(cfg.params, stop_after_finished=cfg.ffs_k)

    def outcome(self, gen, cfg):
        traces = [trace_dict(t) for t in gen.traces]
        first = _first_finished(traces, cfg.ffs_k)
        pred = majority_vote([traces[i]["pred"] for i in first], cfg.invalid_votes)
        # FFS waits only for the k-th finished trace; the cancelled ones stopped with it.
        outcome = outcome_of(gen, traces, pred,
                             sequential=max(traces[i]["completion_tokens"] for i in first))
        outcome.extra = {"ffs_k": cfg.ffs_k}
        return outcome

    @classmethod
    def aggregate(cls, record, preds, invalid):
        k = int(record.get("ffs_k") or 1)
        return majority_vote([preds[i] for i in _first_finished(record["traces"], k)], invalid)


def _first_finished(traces: list[dict], k: int) -> list[int]:
    """The first k finished traces (by finish_order); all of them if none finished."""
    done = [i for i, t in enumerate(traces) if t.get("finish_reason") != "cancelled"]
    done.sort(key=lambda i: traces[i].get("finish_order")
              if traces[i].get("finish_order") is not None else 1 << 30)
    return done[:k] or list(range(len(traces)))


@register
class BestOfN(_Sampling):
    name = "best-of-n"
    rank = 3
    summary = ("n traces, the best by the policy's confidence or a reward model (weighted: "
               "scores summed per answer).")
    knobs = REWARD_KNOBS
    scored = True

    def setup(self, engine):
        from ttx.tts.reward import make_scorer

        self.scorer = make_scorer(engine, self.cfg)

    def close(self):
        self.stats.update(self.scorer.stats())
        self.scorer.close()

    def params(self, cfg):
        return replace(cfg.params, logprobs=True)

    def run(self, engine, prompts, cfg):
        from ttx.tts.search import question_of

        gens = engine.generate(prompts, cfg.n, self.params(cfg))
        traces = [[trace_dict(t) for t in gen.traces] for gen in gens]
        if self.scorer.is_reward_model:
            flat = [(question_of(p), t["text"]) for p, ts in zip(prompts, traces) for t in ts]
            scored = iter(self.scorer.score_texts(flat))
            for ts in traces:
                for t in ts:
                    t["score"], t["step_scores"] = next(scored)
        else:
            for gen, ts in zip(gens, traces):
                for trace, t in zip(gen.traces, ts):
                    t["score"] = trace_score(trace, cfg.scorer)
        out = []
        for gen, ts in zip(gens, traces):
            outcome = outcome_of(gen, ts, best_of(ts, cfg.weighted, self.weight(cfg)))
            outcome.extra = {"best_of_n": {"weighted": cfg.weighted, "scorer": self.scorer.name}}
            out.append(outcome)
        return out

    def weight(self, cfg):
        # a mean log-probability becomes the geometric-mean token probability exp(score)
        return math.exp if not self.scorer.is_reward_model and cfg.scorer == "logprob" else float

    @classmethod
    def aggregate(cls, record, preds, invalid):
        info = record.get("best_of_n") or {}
        traces = [{**t, "pred": p} for t, p in zip(record["traces"], preds)]
        as_weight = math.exp if info.get("scorer") == "logprob" else float
        return best_of(traces, bool(info.get("weighted")), as_weight)
