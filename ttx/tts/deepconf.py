"""DeepConf: Deep Think with Confidence (Fu et al. 2025, arXiv 2508.15260; reference code
facebookresearch/deepconf@675529d, cited as utils.py, wrapper.py, processors.py).

Token confidence C_i = -(1/k) sum of the top-k log-probabilities (eq. 2; the engines compute it,
ttx.engines.base.ConfidenceStop); group confidence = mean of C over a sliding window of `window`
tokens (eq. 3); a trace's confidence is its lowest group (utils.py:53-62, 116-136), the mean of
its bottom 10% groups (utils.py:138-143) or the mean of its tail (utils.py:104-113).

Offline: n traces; keep those whose confidence is at least the (100 - eta) percentile
(utils.py:150-179; variant low: eta 10, high: eta 90), then a confidence-weighted vote
(utils.py:76-90).

Online (Algorithm 2): N_init warm-up traces; the threshold s is the (100 - eta) percentile of
their lowest group confidences (wrapper.py:208). Later traces are generated with the engine
cancelling any whose window confidence falls below s (processors.py:41-54). Votes: warm-up traces
with lowest group >= s and later traces with lowest group >= s (wrapper.py:250-252, 309-325; a
cancelled trace never qualifies), weighted by that confidence. The reference code generates every
later trace at once; the paper's consensus stop (Algorithm 2: stop once the weighted majority's
share beta >= tau) is checked here before each round of --deepconf-round traces.

Not rounded: the reference rounds C_i and the window means to 3 decimals (utils.py:49, 61) before
voting; ttx keeps full precision.
"""

from __future__ import annotations

import math
from dataclasses import replace

from ttx.engines.base import ConfidenceStop
from ttx.errors import TtxError
from ttx.scoring.answers import normalize_answer
from ttx.tts.sampling import trace_dict
from ttx.tts.search import round_seed
from ttx.tts.strategy import Outcome, Strategy, register

ETA = {"low": 10.0, "high": 90.0}          # the percent of traces kept (paper sec. 3.2)
ONLINE_ONLY = ("deepconf_warmup", "deepconf_round", "deepconf_consensus")
OFFLINE_ONLY = ("deepconf_measure",)


# --- confidence measures (pure; tests pin them to the reference) -----------------------------

def group_confidences(confs: list[float], window: int) -> list[float]:
    """Means of every full window; a trace shorter than one window: its mean (utils.py:53-62)."""
    if len(confs) < window:
        return [sum(confs) / len(confs)] if confs else [0.0]
    total = sum(confs[:window])
    means = [total / window]
    for i in range(window, len(confs)):
        total += confs[i] - confs[i - window]
        means.append(total / window)
    return means


def trace_confidence(confs: list[float] | None, measure: str, window: int) -> float:
    """A trace's confidence: lowest group, mean of the bottom 10% groups, or the tail's mean."""
    confs = list(confs or [])
    if not confs:
        return 0.0                                            # utils.py:100-101, 145
    if measure == "tail":                                     # utils.py:104-113
        tail = confs[-window:]
        return sum(tail) / len(tail)
    groups = group_confidences(confs, window)
    if measure == "lowest":
        return min(groups)
    bottom = sorted(groups)[:max(1, int(len(groups) * 0.1))]     # utils.py:138-143
    return sum(bottom) / len(bottom)


def percentile(values: list[float], q: float) -> float:
    """numpy's default (linear) percentile, as the reference takes (wrapper.py:208,
    utils.py:171)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def keep_top(confidences: list[float], eta: float) -> list[int]:
    """Indices of the traces at or above the (100 - eta) percentile (utils.py:171-177)."""
    if not confidences:
        return []
    bar = percentile(confidences, 100.0 - eta)
    return [i for i, c in enumerate(confidences) if c >= bar]


def weighted_vote(answers: list[str | None], weights: list[float]) -> tuple[str | None, float]:
    """(the answer whose weights sum highest, its share of all weights) over answered traces;
    ties go to the answer seen first (utils.py:76-90's max over insertion order)."""
    totals: dict[str, float] = {}
    first: dict[str, str] = {}
    for answer, weight in zip(answers, weights):
        if not answer:
            continue
        key = normalize_answer(answer)
        totals[key] = totals.get(key, 0.0) + float(weight)
        first.setdefault(key, answer)
    if not totals:
        return None, 0.0
    best = max(totals, key=lambda k: totals[k])
    whole = sum(totals.values())
    return first[best], (totals[best] / whole if whole > 0 else 0.0)


def online_votes(traces: list[dict], preds: list[str | None], threshold: float) -> list[int]:
    """The traces that vote online: answered, lowest group confidence >= s (wrapper.py:309-325
    with 250-252)."""
    return [i for i, (t, p) in enumerate(zip(traces, preds))
            if p and not t.get("stopped") and t["confidence"] >= threshold]


def offline_votes(traces: list[dict], preds: list[str | None], eta: float) -> list[int]:
    """The answered traces kept by the top-eta% filter (utils.py:185, 150-179)."""
    valid = [i for i, p in enumerate(preds) if p]
    kept = keep_top([traces[i]["confidence"] for i in valid], eta)
    return [valid[j] for j in kept]


# --- the strategy ------------------------------------------------------------------------------

@register
class DeepConf(Strategy):
    name = "deepconf"
    rank = 6
    summary = ("DeepConf: confidence-filtered, confidence-weighted vote; online, warm-up traces "
               "set a threshold below which later traces are cancelled in the engine.")
    knobs = ("deepconf_mode", "deepconf_variant", "deepconf_warmup", "deepconf_round",
             "deepconf_window", "deepconf_top_k", "deepconf_consensus", "deepconf_measure")

    @classmethod
    def check(cls, cfg, *, engine, given):
        super().check(cfg, engine=engine, given=given)
        s = cfg.search
        wrong = ONLINE_ONLY if s.deepconf_mode == "offline" else OFFLINE_ONLY
        bad = sorted(set(given) & set(wrong))
        if bad:
            raise TtxError(f"--{bad[0].replace('_', '-')} does not apply to --deepconf-mode "
                           f"{s.deepconf_mode}")
        for name in ("deepconf_warmup", "deepconf_window", "deepconf_top_k"):
            if getattr(s, name) < 1:
                raise TtxError(f"--{name.replace('_', '-')} must be positive, got "
                               f"{getattr(s, name)}")
        if s.deepconf_round is not None and s.deepconf_round < 1:
            raise TtxError(f"--deepconf-round must be positive, got {s.deepconf_round}")
        if not s.deepconf_consensus > 0:
            raise TtxError(f"--deepconf-consensus must be positive, got {s.deepconf_consensus}")
        if cfg.params.temperature <= 0:
            raise TtxError("--strategy deepconf samples traces: --temperature must be > 0")

    def run(self, engine, prompts, cfg):
        s = cfg.search
        eta = ETA[s.deepconf_variant]
        rule = ConfidenceStop(top_k=s.deepconf_top_k, window=s.deepconf_window)
        online = s.deepconf_mode == "online"
        first = min(s.deepconf_warmup, cfg.n) if online else cfg.n
        measure = "lowest" if online else s.deepconf_measure
        gens = engine.generate(prompts, first, replace(cfg.params, confidence=rule))
        problems = []
        for gen in gens:
            traces = [self._trace(t, "warmup" if online else "sample", measure, rule.window)
                      for t in gen.traces]
            problems.append({"traces": traces, "prompt_tokens": gen.prompt_tokens,
                             "sequential": max((t.completion_tokens for t in gen.traces),
                                               default=0), "rounds": 1})
        if online:
            for p in problems:
                p["threshold"] = percentile([t["confidence"] for t in p["traces"]], 100.0 - eta)
            self._online(engine, prompts, cfg, problems, rule)
        outcomes = []
        for p in problems:
            traces = p["traces"]
            preds = [t["pred"] for t in traces]
            info = {"mode": s.deepconf_mode, "variant": s.deepconf_variant, "eta": eta,
                    "measure": measure, "window": rule.window, "top_k": rule.top_k,
                    "rounds": p["rounds"]}
            if online:
                info.update(warmup=first, threshold=p["threshold"],
                            consensus=s.deepconf_consensus,
                            stopped=sum(bool(t["stopped"]) for t in traces),
                            consensus_stop=p.get("consensus_stop", False))
            votes = self._votes(info, traces, preds)
            for i, t in enumerate(traces):
                t["votes"] = i in votes
            pred, share = weighted_vote([preds[i] for i in votes],
                                        [traces[i]["confidence"] for i in votes])
            info["share"] = share
            outcomes.append(Outcome(traces=traces, pred=pred,
                                    completion_tokens=sum(t["completion_tokens"] for t in traces),
                                    sequential_tokens=p["sequential"],
                                    prompt_tokens=p["prompt_tokens"], extra={"deepconf": info}))
        return outcomes

    def _online(self, engine, prompts, cfg, problems, rule) -> None:
        """Rounds after the warm-up until each prompt has n traces or its consensus (Alg. 2)."""
        s = cfg.search
        size = s.deepconf_round or s.deepconf_warmup
        rounds = 0
        while True:
            live = []
            for i, p in enumerate(problems):
                traces = p["traces"]
                preds = [t["pred"] for t in traces]
                votes = online_votes(traces, preds, p["threshold"])
                _, share = weighted_vote([preds[j] for j in votes],
                                         [traces[j]["confidence"] for j in votes])
                if votes and share >= s.deepconf_consensus:
                    p["consensus_stop"] = len(traces) < cfg.n
                    continue
                if len(traces) < cfg.n:
                    live.append(i)
            if not live:
                return
            rounds += 1
            counts = [min(size, cfg.n - len(problems[i]["traces"])) for i in live]
            params = [replace(cfg.params, seed=round_seed(cfg.params.seed, rounds),
                              confidence=replace(rule, threshold=problems[i]["threshold"]))
                      for i in live]
            gens = engine.generate([prompts[i] for i in live], counts, params)
            for i, gen in zip(live, gens):
                p = problems[i]
                p["traces"] += [self._trace(t, "final", "lowest", rule.window) for t in gen.traces]
                p["sequential"] += max((t.completion_tokens for t in gen.traces), default=0)
                p["rounds"] += 1

    @staticmethod
    def _trace(trace, phase: str, measure: str, window: int) -> dict:
        out = trace_dict(trace)
        out["confidence"] = trace_confidence(trace.confidences, measure, window)
        out["phase"] = phase
        # cancelled in the engine: the only cancellation of a deepconf call
        out["stopped"] = trace.finish_reason == "cancelled"
        return out

    @staticmethod
    def _votes(info: dict, traces: list[dict], preds: list) -> list[int]:
        if info.get("mode") == "online":
            return online_votes(traces, preds, float(info["threshold"]))
        return offline_votes(traces, preds, float(info["eta"]))

    @classmethod
    def aggregate(cls, record, preds, invalid):
        info = record.get("deepconf") or {}
        traces = record["traces"]
        if not info or any(not isinstance(t.get("confidence"), (int, float)) for t in traces):
            return None
        votes = cls._votes(info, traces, preds)
        return weighted_vote([preds[i] for i in votes],
                             [traces[i]["confidence"] for i in votes])[0]
