"""DeepConf (arXiv 2508.15260) against its reference code, facebookresearch/deepconf@675529d.

The reference's rules are written out below with file and line (deepconf/utils.py,
deepconf/wrapper.py, deepconf/processors.py) and driven on the same scripted token confidences as
ttx: the same group confidences, thresholds, survivors, early stops and answers."""

from __future__ import annotations

import json
import random
from collections import deque

import numpy as np
import pytest

from ttx.engines.base import ConfidenceStop, Generation, SamplingParams, Trace
from ttx.tts import deepconf as dc
from ttx.tts.search import SearchConfig
from ttx.tts.strategy import StrategyConfig

# ---------------------------------------------------------------- the reference, written out


def ref_compute_least_grouped(confs, group_size):          # utils.py:53-62
    if len(confs) < group_size:
        return [sum(confs) / len(confs)] if confs else [0]
    return [sum(confs[i:i + group_size]) / group_size
            for i in range(len(confs) - group_size + 1)]   # (utils.py:61 rounds to 3 places)


def ref_tail(confs, tail_tokens=2048):                    # utils.py:104-113
    tail = confs[-tail_tokens:] if len(confs) > tail_tokens else confs
    return float(np.mean(tail)) if tail else 0.0


def ref_bottom_window(confs, window_size=2048, bottom_percent=0.1):   # utils.py:116-147
    if not confs:
        return 0.0
    if len(confs) < window_size:
        return float(np.mean(confs))
    means = [sum(confs[i:i + window_size]) / window_size
             for i in range(len(confs) - window_size + 1)]
    if bottom_percent == -1:
        return min(means)
    num_bottom = max(1, int(len(means) * bottom_percent))
    if num_bottom == 1:
        return min(means)
    return float(np.mean(np.partition(means, num_bottom - 1)[:num_bottom]))


def ref_filter_top(confs, top_percent):                   # utils.py:150-179 (indices kept)
    threshold = np.percentile(confs, (1 - top_percent) * 100)
    return [i for i, c in enumerate(confs) if c >= threshold]


def ref_weighted_vote(answers, weights):                  # utils.py:76-90
    totals = {}
    for a, w in zip(answers, weights):
        if a is not None:
            totals[str(a)] = totals.get(str(a), 0.0) + float(w)
    return max(totals.keys(), key=lambda x: totals[x]) if totals else None


class RefProcessor:                                       # processors.py:15-55 (EOS forced)
    def __init__(self, threshold, group_size):
        self.threshold, self.size = threshold, group_size
        self.group, self.total = deque(maxlen=group_size), 0.0

    def stops(self, conf) -> bool:
        if len(self.group) < self.size:
            self.group.append(conf)
            self.total += conf
        else:
            self.total -= self.group.popleft()
            self.group.append(conf)
            self.total += conf
        return len(self.group) >= self.size and self.total / len(self.group) < self.threshold


def ref_online(warmup, final, answers_w, answers_f, percentile_eta, window):
    """wrapper.py:204-252 and 304-337: conf_bar, the early stops, the vote."""
    min_w = [min(ref_compute_least_grouped(c, window)) for c in warmup]
    conf_bar = float(np.percentile(min_w, 100 - percentile_eta))         # wrapper.py:208
    cut = []
    for confs in final:                                   # processors.py:51: stop at that token
        proc = RefProcessor(conf_bar, window)
        end = next((i + 1 for i, c in enumerate(confs) if proc.stops(c)), len(confs))
        cut.append(confs[:end])
    min_f = [min(ref_compute_least_grouped(c, window)) for c in cut]
    stopped = [m < conf_bar for m in min_f]               # wrapper.py:250-252
    answers, weights = [], []
    for m, a in zip(min_w, answers_w):                    # wrapper.py:312-316
        if m >= conf_bar and a:
            answers.append(a)
            weights.append(m)
    for m, s, a in zip(min_f, stopped, answers_f):   # wrapper.py:319-325
        if not s and a:
            answers.append(a)
            weights.append(m)
    return conf_bar, [len(c) for c in cut], stopped, ref_weighted_vote(answers, weights)


# ---------------------------------------------------------------- scripted worlds


def _confs(rng, length, level):
    return [round(level + rng.uniform(-0.4, 0.4), 3) for _ in range(length)]


@pytest.mark.parametrize("seed", range(6))
def test_trace_confidences_match_the_reference(seed):
    rng = random.Random(seed)
    for _ in range(20):
        window = rng.choice([1, 3, 8, 16])
        confs = _confs(rng, rng.randint(1, 60), rng.uniform(0.5, 3))
        ref_groups = ref_compute_least_grouped(confs, window)
        assert dc.group_confidences(confs, window) == pytest.approx(ref_groups)
        assert dc.trace_confidence(confs, "lowest", window) == pytest.approx(
            ref_bottom_window(confs, window, -1))
        assert dc.trace_confidence(confs, "lowest", window) == pytest.approx(min(ref_groups))
        assert dc.trace_confidence(confs, "bottom10", window) == pytest.approx(
            ref_bottom_window(confs, window, 0.1))
        assert dc.trace_confidence(confs, "tail", window) == pytest.approx(ref_tail(confs, window))
    assert dc.trace_confidence([], "lowest", 4) == 0.0 == ref_bottom_window([], 4)


@pytest.mark.parametrize("seed", range(6))
def test_offline_filter_and_vote_match_the_reference(seed):
    rng = random.Random(100 + seed)
    for _ in range(20):
        k = rng.randint(1, 40)
        confs = [round(rng.uniform(0, 5), 3) for _ in range(k)]
        answers = [rng.choice(["1", "2", "3", "4"]) for _ in range(k)]
        for variant, top in (("low", 0.1), ("high", 0.9)):
            kept = dc.keep_top(confs, dc.ETA[variant])
            assert kept == ref_filter_top(confs, top)
            q = rng.uniform(0, 100)
            assert dc.percentile(confs, q) == pytest.approx(float(np.percentile(confs, q)))
            pred, _ = dc.weighted_vote([answers[i] for i in kept], [confs[i] for i in kept])
            assert pred == ref_weighted_vote([answers[i] for i in kept], [confs[i] for i in kept])


class ScriptedEngine:
    """Traces of scripted token confidences; honours SamplingParams.confidence as the reference's
    logits processor does (processors.py:51), token by token (test-only)."""

    def __init__(self, script):
        self.script = script        # prompt -> list of (confs, answer), taken in order
        self.taken = {}
        self.calls = []

    def generate(self, prompts, n, params):
        counts = [n] * len(prompts) if isinstance(n, int) else list(n)
        per = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        self.calls.append((list(prompts), counts, [p.confidence for p in per]))
        gens = []
        for prompt, k, p in zip(prompts, counts, per):
            traces = []
            for _ in range(k):
                i = self.taken.get(prompt, 0)
                self.taken[prompt] = i + 1
                confs, answer = self.script[prompt][i]
                rule, out, total, reason = p.confidence, [], 0.0, "stop"
                for c in confs:
                    out.append(c)
                    total += c - (out[-rule.window - 1] if len(out) > rule.window else 0.0)
                    if (rule.threshold is not None and len(out) >= rule.window
                            and total / rule.window < rule.threshold and len(out) < len(confs)):
                        reason = "cancelled"
                        break
                text = f"so \\boxed{{{answer}}}" if reason == "stop" else "so"
                traces.append(Trace(text=text, completion_tokens=len(out), finish_reason=reason,
                                    confidences=out))
            gens.append(Generation(traces=traces, prompt_tokens=3))
        return gens


def _world(rng, traces, window):
    out = []
    for _ in range(traces):
        level = rng.uniform(0.5, 3.0)
        confs = _confs(rng, rng.randint(window, 4 * window), level)
        if rng.random() < 0.3:                  # a dip somewhere: a low window
            at = rng.randint(0, len(confs) - window)
            confs[at:at + window] = [round(c - 1.5, 3) for c in confs[at:at + window]]
        answer = "7" if level > 1.6 else rng.choice(["3", "5"])
        out.append((confs, answer))
    return out


@pytest.mark.parametrize("variant", ["low", "high"])
@pytest.mark.parametrize("seed", range(4))
def test_online_matches_the_reference_threshold_stops_and_vote(variant, seed):
    """No consensus stop (tau above 1, as the reference code): one warm-up call, then the rest."""
    rng = random.Random(seed)
    window, warm, n = 4, 6, 20
    script = {"q": _world(rng, n, window)}
    engine = ScriptedEngine(script)
    search = SearchConfig(deepconf_variant=variant, deepconf_warmup=warm, deepconf_round=n,
                          deepconf_window=window, deepconf_consensus=2.0)
    cfg = StrategyConfig(strategy="deepconf", n=n, params=SamplingParams(temperature=0.6),
                         search=search)
    out = dc.DeepConf(cfg).run(engine, ["q"], cfg)[0]
    eta = dc.ETA[variant]
    confs = [c for c, _ in script["q"]]
    answers = [a for _, a in script["q"]]
    bar, lengths, stopped, answer = ref_online(confs[:warm], confs[warm:], answers[:warm],
                                               answers[warm:], eta, window)
    info = out.extra["deepconf"]
    assert info["threshold"] == pytest.approx(bar)
    assert [t["completion_tokens"] for t in out.traces[warm:]] == lengths
    # the engine cancelled exactly the traces the reference's processor cut short
    cut = [n_ < len(c) for n_, c in zip(lengths, confs[warm:])]
    assert [t["stopped"] for t in out.traces[warm:]] == cut
    assert [not t["votes"] for t in out.traces[warm:]] == [s or not a for s, a in
                                                           zip(stopped, answers[warm:])]
    assert out.pred == answer
    assert out.completion_tokens == sum(len(c) for c in confs[:warm]) + sum(lengths)
    assert engine.calls[1][2][0].threshold == pytest.approx(bar)
    assert engine.calls[0][2][0] == ConfidenceStop(top_k=20, window=window)
    # ttx score --regrade recomputes the same prediction from the record
    record = {"strategy": "deepconf", "traces": out.traces, **out.extra}
    assert dc.DeepConf.aggregate(record, [t["pred"] for t in out.traces], "lm-eval") == answer


def test_online_consensus_stops_sampling():
    """Paper Algorithm 2: no more rounds once beta = V(best)/sum V >= tau."""
    good = [([2.0] * 5, "7")] * 12
    engine = ScriptedEngine({"q": good})
    search = SearchConfig(deepconf_warmup=4, deepconf_round=2, deepconf_window=2)
    cfg = StrategyConfig(strategy="deepconf", n=12, params=SamplingParams(temperature=0.6),
                         search=search)
    out = dc.DeepConf(cfg).run(engine, ["q"], cfg)[0]
    assert len(engine.calls) == 1 and len(out.traces) == 4
    assert out.extra["deepconf"]["consensus_stop"] is True and out.pred == "7"
    # split votes: sampling goes on, round by round, to n
    mixed = [([2.0] * 5, str(i % 3)) for i in range(12)]
    engine = ScriptedEngine({"q": mixed})
    out = dc.DeepConf(cfg).run(engine, ["q"], cfg)[0]
    assert [c[1] for c in engine.calls] == [[4], [2], [2], [2], [2]]
    assert len(out.traces) == 12 and out.extra["deepconf"]["consensus_stop"] is False
    assert out.sequential_tokens == 5 * 5


def test_offline_keeps_the_top_eta_and_regrades():
    rng = random.Random(3)
    script = {"q": _world(rng, 10, 3)}
    engine = ScriptedEngine(script)
    search = SearchConfig(deepconf_mode="offline", deepconf_variant="low", deepconf_window=3,
                          deepconf_measure="tail")
    cfg = StrategyConfig(strategy="deepconf", n=10, params=SamplingParams(temperature=0.6),
                         search=search)
    out = dc.DeepConf(cfg).run(engine, ["q"], cfg)[0]
    confs = [ref_tail(c, 3) for c, _ in script["q"]]
    kept = ref_filter_top(confs, 0.1)
    assert [i for i, t in enumerate(out.traces) if t["votes"]] == kept
    answers = [a for _, a in script["q"]]
    assert out.pred == ref_weighted_vote([answers[i] for i in kept], [confs[i] for i in kept])
    assert engine.calls == [(["q"], [10], [ConfidenceStop(window=3)])]
    record = json.loads(json.dumps({"strategy": "deepconf", "traces": out.traces, **out.extra}))
    assert dc.DeepConf.aggregate(record, [t["pred"] for t in out.traces], "lm-eval") == out.pred


# ---------------------------------------------------------------- engines


def _full_forward_confidences(engine, prompt_ids, trace, k):
    """C_i of each generated token from one forward pass over prompt + trace (temperature 1)."""
    import torch

    ids = torch.tensor([prompt_ids + trace.token_ids])
    with torch.no_grad():
        logp = torch.log_softmax(engine.model(ids).logits[0].float(), -1)
    top = logp.topk(k, dim=-1).values
    steps = range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(trace.token_ids))
    return [-top[pos].sum().item() / k for pos in steps]


@pytest.mark.parametrize("packed", [True, False])
def test_hf_engine_records_confidence_and_cancels_below_the_window_threshold(tiny_model_dir,
                                                                             packed):
    """The hf engine (fused CPU path and transformers' forward) records C_i token by token and
    cancels a trace at the first full window whose mean is below the threshold (processors.py:51),
    its tokens counted."""
    from ttx.engines.hf import HFEngine

    engine = HFEngine(model=str(tiny_model_dir), device="cpu", packed_weights=packed)
    prompt = "Tom has 3 apples and buys 5 more."
    ids = engine.encode(prompt)
    rule = ConfidenceStop(5, 4)

    def one(seed, rule):        # one row: the same draws until the cut
        return engine.generate([prompt], 1, SamplingParams(
            max_new_tokens=24, temperature=1.0, seed=seed, confidence=rule))[0].traces[0]
    free = [one(seed, rule) for seed in range(6)]
    for trace in free:
        assert trace.finish_reason in ("stop", "length")
        assert len(trace.confidences) == trace.completion_tokens
        assert trace.confidences == pytest.approx(
            _full_forward_confidences(engine, ids, trace, 5), abs=1e-3)
    # a threshold amid the traces' window means: each trace cut where its window first dips
    means = [m for t in free for m in dc.group_confidences(t.confidences, 4)]
    bar = float(np.median(means))
    stopped = 0
    for seed, full in enumerate(free):
        trace = one(seed, ConfidenceStop(5, 4, threshold=bar))
        groups = dc.group_confidences(full.confidences, 4)
        first_low = next((i + 4 for i, m in enumerate(groups) if m < bar), None)
        assert trace.token_ids == full.token_ids[:len(trace.token_ids)]
        if first_low is not None and first_low < full.completion_tokens:
            assert trace.finish_reason == "cancelled" and trace.finish_order is None
            assert trace.completion_tokens == first_low == len(trace.confidences)
            stopped += 1
        else:
            assert trace.finish_reason == full.finish_reason
            assert trace.token_ids == full.token_ids
    assert stopped >= 1
    engine.close()


def _top_event(index, top, finish=None):
    """One streamed /completions token with its top log-probabilities (vLLM's `logprobs: k`)."""
    return {"choices": [{"index": index, "text": "t", "finish_reason": finish,
                         "logprobs": {"token_logprobs": [top[0]], "tokens": ["t"],
                                      "top_logprobs": [{f"x{j}": v for j, v in enumerate(top)}]}}]}


def test_openai_engine_asks_top_logprobs_and_closes_the_stream_of_a_low_trace():
    from tests.test_openai_faults import FaultServer, stream
    from ttx.engines.openai import OpenAIEngine

    server = FaultServer()
    try:
        high, low = [-0.1, -2.0, -3.0], [-1.0, -1.1, -1.2]        # C = 1.7 and 1.1
        # trace 0 stays confident; trace 1 dips: its window of 2 falls below 1.3 at token 3
        server.steps = [stream([_top_event(0, high)] * 4 + [_top_event(0, high, "stop")]),
                        stream([_top_event(0, high), _top_event(0, low), _top_event(0, low)]
                               + [_top_event(0, high)] * 5 + [_top_event(0, high, "stop")])]
        engine = OpenAIEngine(base_url=server.url, model="m", concurrency=1, max_retries=0)
        rule = ConfidenceStop(top_k=3, window=2, threshold=1.3)
        gen = engine.generate(["q"], 2, SamplingParams(max_new_tokens=16, temperature=0.7,
                                                       seed=1, confidence=rule))[0]
        bodies = server.posts()
        assert [b["n"] for b in bodies] == [1, 1] and all(b["stream"] for b in bodies)
        assert all(b["logprobs"] == 3 for b in bodies)
        first, second = gen.traces
        assert first.finish_reason == "stop" and first.completion_tokens == 5
        assert first.confidences == pytest.approx([1.7] * 5)
        assert second.finish_reason == "cancelled" and second.completion_tokens == 3
        assert second.confidences == pytest.approx([1.7, 1.1, 1.1])
        engine.close()
    finally:
        server.close()


def test_openai_engine_chat_top_logprobs_without_a_threshold_keep_n_per_request():
    from tests.test_openai_faults import FaultServer, stream
    from ttx.engines.openai import OpenAIEngine

    def chat(index, top, finish=None):
        return {"choices": [{"index": index, "delta": {"content": "t"}, "finish_reason": finish,
                             "logprobs": {"content": [{"token": "t", "logprob": top[0],
                                                       "top_logprobs": [{"token": f"x{j}",
                                                                         "logprob": v}
                                                                        for j, v in
                                                                        enumerate(top)]}]}}]}
    server = FaultServer()
    try:
        server.steps = [stream([chat(0, [-0.5, -1.5]), chat(1, [-0.2, -0.4]),
                                chat(0, [-0.5, -1.5], "stop"), chat(1, [-0.2, -0.4], "stop")])]
        engine = OpenAIEngine(base_url=server.url, model="m", max_retries=0)
        gen = engine.generate([[{"role": "user", "content": "q"}]], 2, SamplingParams(
            max_new_tokens=8, temperature=0.7, confidence=ConfidenceStop(top_k=2)))[0]
        body = server.posts()[0]
        assert body["n"] == 2 and body["top_logprobs"] == 2 and body["stream"]
        assert [t.confidences for t in gen.traces] == [pytest.approx([1.0, 1.0]),
                                                       pytest.approx([0.3, 0.3])]
        engine.close()
    finally:
        server.close()


# ---------------------------------------------------------------- tts-run end to end


def _rounded(x):
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def _run(model, problems, out, *extra):
    from tests.conftest import run_cli

    return run_cli(["tts-run", "--model", model, "-i", problems, "-o", out, "--strategy",
                    "deepconf", "--max-new-tokens", "10", "--temperature", "1.0",
                    "--no-progress", *extra])


def test_tts_run_deepconf_levels_resume_and_regrade(tmp_path, tiny_model_dir):
    from tests.conftest import run_cli
    from ttx.data.arith import generate
    from ttx.tts.registry import regrade_record

    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in generate(3, 5)))
    args = ("--levels", "n=2,4", "--deepconf-warmup", "2", "--deepconf-round", "1",
            "--deepconf-window", "3", "--deepconf-top-k", "5", "--deepconf-variant", "low",
            "--batch-rows", "4")
    whole = tmp_path / "whole.jsonl"
    result = _run(tiny_model_dir, problems, whole, *args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in whole.read_text().splitlines()]
    assert len(records) == 3 * 2
    stopped = 0
    for r in records:
        info = r["deepconf"]
        assert info["mode"] == "online" and info["warmup"] == 2 and info["eta"] == 10.0
        warm = [t for t in r["traces"] if t["phase"] == "warmup"]
        assert len(warm) == 2 and 2 <= len(r["traces"]) <= r["n"]
        assert info["threshold"] == pytest.approx(
            float(np.percentile([t["confidence"] for t in warm], 90)))
        for t in r["traces"]:
            assert t["votes"] == bool(t["pred"] and not t["stopped"]
                                      and t["confidence"] >= info["threshold"])
            stopped += t["stopped"]
            assert t["finish_reason"] == ("cancelled" if t["stopped"] else t["finish_reason"])
        assert r["completion_tokens"] == sum(t["completion_tokens"] for t in r["traces"])
        assert r["sequential_tokens"] <= r["completion_tokens"]
        assert regrade_record(r)["pred"] == r["pred"]
    assert stopped >= 1, "a window of 3 on a random model should cut some trace"
    # an interrupted run resumes to the same records
    part = tmp_path / "part.jsonl"
    lines = whole.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:3]) + lines[3][:40])
    (tmp_path / "part.jsonl.manifest.json").write_text(
        (tmp_path / "whole.jsonl.manifest.json").read_text())
    result = _run(tiny_model_dir, problems, part, *args, "--resume")
    assert result.exit_code == 0, result.output
    # (the hf engine's prefix reuse moves confidences by ~1e-8 between sessions: rounded)
    strip = lambda rs: [_rounded({k: v for k, v in r.items() if k != "wall_s"})  # noqa: E731
                        for r in rs]
    assert strip([json.loads(x) for x in part.read_text().splitlines()]) == strip(records)
    score = run_cli(["score", "-i", whole, "--regrade", "--json"])
    assert score.exit_code == 0, score.output


@pytest.mark.parametrize("extra,expected", [
    (("--deepconf-mode", "offline", "--deepconf-warmup", "4"),
     "--deepconf-warmup does not apply to --deepconf-mode offline"),
    (("--deepconf-measure", "tail"), "--deepconf-measure does not apply to --deepconf-mode online"),
    (("--temperature", "0"), "--temperature must be > 0"),
    (("--deepconf-window", "0"), "--deepconf-window"),
    (("--deepconf-variant", "mid"), "--deepconf-variant"),
])
def test_bad_deepconf_options_are_one_line_before_a_model_loads(tmp_path, extra, expected):
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"id": "a", "question": "1+1?", "answer": "2"}) + "\n")
    result = _run(str(tmp_path / "no-such-model"), problems, tmp_path / "o.jsonl", *extra)
    assert result.exit_code == 2, result.output
    assert expected in result.output and "no-such-model" not in result.output


def test_deepconf_knobs_are_refused_by_other_strategies(tmp_path):
    from tests.conftest import run_cli

    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"id": "a", "question": "1+1?", "answer": "2"}) + "\n")
    result = run_cli(["tts-run", "--model", tmp_path / "none", "-i", problems, "-o",
                      tmp_path / "o.jsonl", "--strategy", "majority", "--deepconf-window", "8"])
    assert result.exit_code == 2 and "--deepconf-window does not apply to --strategy majority" \
        in result.output


@pytest.mark.parametrize("seed", range(5))
def test_engine_stop_rules_match_the_reference_processor(seed):
    """Both engines' per-token rule (hf _low_confidence, openai _Partial) stops at the token where
    the reference's logits processor forces EOS (processors.py:36-55), on scripted confidences."""
    from ttx.engines.hf import _low_confidence, _Row
    from ttx.engines.openai import _Partial

    rng = random.Random(seed)
    outcomes = set()
    for _ in range(30):
        window = rng.choice([1, 2, 5, 9])
        confs = [round(rng.uniform(0.2, 3.0), 3) for _ in range(rng.randint(1, 40))]
        bar = rng.uniform(0.8, 2.2)
        proc = RefProcessor(bar, window)
        want = next((i for i, c in enumerate(confs) if proc.stops(c)), None)
        rule = ConfidenceStop(top_k=1, window=window, threshold=bar)
        row = _Row(prompt=0)
        assert next((i for i, c in enumerate(confs) if _low_confidence(row, c, rule)),
                    None) == want
        part = _Partial(100, rule)
        got = None
        for i, c in enumerate(confs):
            part.add({"index": 0, "text": "t", "logprobs": {"token_logprobs": [-c],
                                                            "top_logprobs": [{"t": -c}]}})
            if part.low_confidence():
                got = i
                break
        assert got == want
        assert part.confidences == pytest.approx(confs[:len(part.confidences)])
        outcomes.add(want is None)
    assert outcomes == {True, False}        # both stopped and unstopped traces were checked
