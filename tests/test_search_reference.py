"""The search strategies against their reference algorithms, on a scripted world (tests/
search_script.py): the reference's rule is written out here from its code (file and line cited)
and driven with the same scripted steps and scores; ttx's strategy must make the same choices,
iteration by iteration, and give the same answer."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from tests.search_script import SEP, ScriptedEngine, ScriptedPRM, step_scores, unit
from ttx.engines.base import Generation, SamplingParams, Trace
from ttx.tts.search import SearchConfig
from ttx.tts.strategy import StrategyConfig


def aggregate(scores, agg):
    """search-and-learn@6f81cac src/sal/utils/score.py:33-43."""
    return {"last": lambda s: s[-1], "min": min, "prod": lambda s: float(np.prod(s))}[agg](scores)


def _cfg(strategy, n, **search):
    return StrategyConfig(strategy=strategy, n=n,
                          params=SamplingParams(max_new_tokens=64, temperature=1.0, seed=0),
                          search=SearchConfig(**search))


def _run(cls, engine, cfg):
    runner = cls(cfg)
    runner.scorer = ScriptedPRM()
    [out] = runner.run(engine, ["P|"], cfg)
    return out


def _actives(engine) -> list[Counter]:
    """Each engine call's prompts, as a multiset of the path texts it continued."""
    out = []
    for call in engine.calls:
        c = Counter()
        for prompt, k, _ in call:
            c[prompt[len(engine.prefix):]] += k
        out.append(c)
    return out


# --- search-and-learn beam search ------------------------------------------------------------

def sal_beam(engine, n, m, iterations, agg="last", filter_duplicates=False,
             sort_completed=False):
    """huggingface/search-and-learn@6f81cac src/sal/search/beam_search.py:43-197, written out."""
    active, completed, per_iteration = [""] * n, [], []
    for i in range(iterations):                                      # BS:65
        if len(active) != n:                                         # BS:71-84
            active = (active * (n // len(active) + 1))[:n]
        per_iteration.append(Counter(active))
        last = i == iterations - 1                                   # BS:86-93: no stop
        new = []
        for text in active:                                          # BS:112-131
            step, eos = engine.step(text)
            done = last or eos or step == ""
            new.append((text + step + ("" if done else SEP), done))
        scores = [aggregate(step_scores(t), agg) for t, _ in new]    # BS:135-140
        completed += [t for t, done in new if done]                  # BS:129-131
        open_ = [(t, s) for (t, done), s in zip(new, scores) if not done]   # BS:145-149
        if not open_:                                                # BS:151-153
            break
        if filter_duplicates:                                        # BS:155-165
            first = {}
            for k, (t, _) in enumerate(open_):
                first.setdefault(t, k)
            open_ = [open_[k] for k in first.values()]
        top = np.argsort(np.array([s for _, s in open_]))[-(n // m):]   # BS:167-170
        active = [t for k, (t, _) in enumerate(open_) if k in top]  # BS:172-174
    if sort_completed:                                               # BS:176-184
        final = sorted(completed, key=lambda t: aggregate(step_scores(t), agg), reverse=True)[:n]
    else:
        final = completed[:n]
    if len(final) != n:                                              # BS:186-195
        final = (final * (n // len(final) + 1))[:n]
    best = int(np.argmax([aggregate(step_scores(t), agg) for t in final]))   # BS:214-217
    return per_iteration, final, final[best]


@pytest.mark.parametrize("n,m,iterations,agg,dup,sort,eos_rate", [
    (8, 2, 4, "last", False, False, 0.0),
    (8, 4, 5, "min", False, False, 0.15),
    (6, 3, 4, "prod", False, True, 0.2),
    (8, 2, 6, "last", True, False, 0.1),
    (4, 4, 3, "last", False, False, 0.3),
])
def test_beam_search_follows_search_and_learn(n, m, iterations, agg, dup, sort, eos_rate):
    from ttx.tts.beam import Beam

    ref_engine = ScriptedEngine(eos_rate=eos_rate)
    per_iteration, final, best = sal_beam(ref_engine, n, m, iterations, agg, dup, sort)
    engine = ScriptedEngine(eos_rate=eos_rate)
    cfg = _cfg("beam", n, beam_style="search-and-learn", beam_width=m, max_steps=iterations,
               agg=agg, filter_duplicates=dup, sort_completed=sort)
    out = _run(Beam, engine, cfg)
    assert _actives(engine) == per_iteration                 # the same beams, every iteration
    assert [t["text"] for t in out.traces] == final          # the same n final beams, in order
    scores = [t["score"] for t in out.traces]
    assert out.traces[int(np.argmax(scores))]["text"] == best
    assert out.traces[int(np.argmax(scores))]["pred"] == out.pred
    assert len(out.extra["beam"]["iterations"]) == len(per_iteration)


# --- DVTS -----------------------------------------------------------------------------------

def sal_dvts(engine, n, m, iterations, agg="last"):
    """search-and-learn@6f81cac src/sal/search/diverse_verifier_tree_search.py:46-187."""
    trees = [{"text": "", "pruned": False, "siblings": []} for _ in range(n // m)]   # DV:46-62
    calls = []
    for i in range(iterations):
        live = [t for t in trees if not t["pruned"]]                 # DV:66-68
        if not live:
            break
        calls.append(Counter(t["text"] for t in live for _ in range(m)))
        last = i == iterations - 1                                   # DV:70-77
        for t in live:
            cands = []
            for _ in range(m):                                       # DV:97-99
                step, eos = engine.step(t["text"])
                done = last or eos
                cands.append((step + ("" if done else SEP), done))
            scores = [aggregate(step_scores(t["text"] + s), agg) for s, _ in cands]   # DV:113-117
            best = int(np.argmax(scores))                            # DV:119-121
            t["siblings"] = [(t["text"] + s, sc) for (s, _), sc in zip(cands, scores)]
            t["text"] += cands[best][0]                              # DV:122-126
            if cands[best][1] or cands[best][0] == "":               # DV:127-132
                t["pruned"] = True
            if "boxed{" in t["text"]:                                # DV:135-137
                t["pruned"] = True
    outputs = [s for t in trees for s in t["siblings"]]              # DV:139-159
    best = int(np.argmax([sc for _, sc in outputs]))                 # DV:173-187
    return calls, [text for text, _ in outputs], outputs[best][0]


@pytest.mark.parametrize("n,m,iterations,eos_rate", [(8, 2, 4, 0.0), (8, 4, 5, 0.2),
                                                     (6, 2, 6, 0.15), (4, 4, 3, 0.0)])
def test_dvts_follows_search_and_learn(n, m, iterations, eos_rate):
    from ttx.tts.dvts import DVTS

    calls, outputs, best = sal_dvts(ScriptedEngine(eos_rate=eos_rate), n, m, iterations)
    engine = ScriptedEngine(eos_rate=eos_rate)
    out = _run(DVTS, engine, _cfg("dvts", n, beam_width=m, max_steps=iterations))
    assert _actives(engine) == calls
    assert [t["text"] for t in out.traces] == outputs
    assert len(out.traces) == n
    scores = [t["score"] for t in out.traces]
    assert out.traces[int(np.argmax(scores))]["text"] == best


def test_dvts_stops_a_subtree_at_boxed():
    from ttx.tts.dvts import DVTS

    class Boxing(ScriptedEngine):
        def step(self, text):
            step, eos = super().step(text)
            return ("\\boxed{7}" if text.count(SEP) == 1 else step), eos

    engine = Boxing()
    out = _run(DVTS, engine, _cfg("dvts", 4, beam_width=2, max_steps=6))
    assert len(engine.calls) == 2                   # the boxed answer ends every subtree
    assert all("boxed{7}" in t["text"] for t in out.traces)
    assert out.pred == "7"


# --- DORA -----------------------------------------------------------------------------------

def dora_reference(scores, embeddings, n, tau=0.1, alpha=0.01):
    """WangXinglin/DORA@eda87c0 scripts/sal/search/dora.py:289-308 (with its helpers 52-98),
    written out with the intended sub-matrix at line 302 (the published line reads the
    undefined `all_cos_matrix` and `choose_indices` before they are set)."""
    def softmax(x, t):                                               # dora.py:80-92
        x = np.asarray(x, dtype=np.float64) / t
        e = np.exp(x - np.max(x, axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    e = np.asarray(embeddings, dtype=np.float32)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)   # dora.py:52-58
    cos = e @ e.T                                                    # dora.py:291
    q = softmax(scores, tau)                                         # dora.py:294
    allocate = [int(x) for x in np.round(q * n)]                     # dora.py:296
    keep = [i for i, a in enumerate(allocate) if a > 0]              # dora.py:298-300
    q = softmax([scores[i] for i in keep], tau)
    d = np.diag(softmax(cos[np.ix_(keep, keep)], alpha))             # dora.py:302-303, 95-98
    final = d * q / np.sum(d * q)                                    # dora.py:305-306
    out = [0] * len(scores)
    for i, b in zip(keep, np.round(final * n)):                      # dora.py:308
        out[i] = int(b)
    return out


def test_dora_allocation_prunes_zero_allocations_first():
    from ttx.tts.dora import dora_allocation

    # a low-quality duplicate of a good candidate (c2 = c1): pruned before diversity counts
    scores, emb = [0.9, 0.9, 0.5], [[1, 0], [0, 1], [0, 1]]
    assert dora_reference(scores, emb, 4) == [2, 2, 0]
    assert dora_allocation(scores, emb, 4) == [2, 2, 0]   # the paper's eq. 12 alone: [3, 1, 0]
    scores, emb = [0.9, 0.85, 0.3, 0.88], [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0.6, 0.8, 0]]
    assert dora_allocation(scores, emb, 4) == dora_reference(scores, emb, 4) == [1, 1, 0, 2]
    rng = random.Random(7)
    for _ in range(300):
        k = rng.randint(1, 7)
        scores = [rng.random() for _ in range(k)]
        emb = [[rng.gauss(0, 1) for _ in range(4)] for _ in range(k)]
        n = rng.choice([2, 4, 8, 16])
        assert dora_allocation(scores, emb, n) == dora_reference(scores, emb, n)


def test_dora_population_is_the_allocation_refilled_to_n():
    from ttx.tts.dora import DORA

    engine = ScriptedEngine(eos_rate=0.1)
    cfg = _cfg("dora", 4, max_steps=4, step_tokens=8)
    runner = DORA(cfg)
    runner.scorer = ScriptedPRM()
    runner.embed = lambda texts: np.array([[unit(t), unit(t + "x"), 1.0] for t in texts])
    [out] = runner.run(engine, ["P|"], cfg)
    log = out.extra["dora"]["iterations"]
    sizes = [sum(k for _, k, _ in call) for call in engine.calls]
    assert sizes[0] == 4
    for it, size in zip(log[:-1], sizes[1:]):
        assert size == 4                                    # refilled to n (dora.py:189-202)
        assert sum(k > 0 for k in it["rollouts"]) == it["survivors"]
    assert len(out.traces) == 4


# --- s1 budget forcing ------------------------------------------------------------------------

class Rounds:
    """An engine that answers each call from a script of (completion tokens, finish reason)."""

    name, model_name = "rounds", "rounds"

    def __init__(self, tokenizer, script):
        self.tokenizer, self.script, self.calls = tokenizer, list(script), []

    def generate(self, prompts, n, params):
        per = params if isinstance(params, (list, tuple)) else [params] * len(prompts)
        out = []
        for prompt, p in zip(prompts, per):
            self.calls.append((prompt, p))
            k, reason = self.script.pop(0)
            ids = self.tokenizer(" ok" * k, add_special_tokens=False).input_ids[:k]
            traces = [Trace(text=self.tokenizer.decode(ids), completion_tokens=k,
                            finish_reason=reason, token_ids=ids)
                      for _ in range(n if isinstance(n, int) else 1)]
            out.append(Generation(traces=traces, prompt_tokens=5))
        return out


@pytest.mark.parametrize("script,last_reason", [
    ([(40, "stop"), (50, "stop"), (30, "stop"), (7, "stop")], "stop"),     # cut, then answer
    ([(40, "stop"), (100, "length"), (9, "stop")], "length"),              # a round hits B
    ([(20, "stop"), (20, "stop"), (20, "stop"), (9, "stop")], "stop"),     # within B
])
def test_s1_rounds_follow_the_harness(tiny_model_dir, script, last_reason):
    """simplescaling/s1@77272c6 eval/lm-evaluation-harness/lm_eval/models/vllm_causallms.py
    ("VC"): K+1 rounds of the full budget B with min_tokens 1 (VC:273-275, 333-343), "Wait"
    appended with no separator (VC:366-368), the ids cut to B (VC:381-384), the end text by the
    last round's finish reason (VC:401-412), the answer with the whole budget (VC:414)."""
    from transformers import AutoTokenizer

    from ttx.tts.budget import BudgetForcing

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = Rounds(tok, script)
    cfg = _cfg("budget-forcing", 1, num_ignore=2, max_thinking_tokens=100)
    cfg.params = SamplingParams(max_new_tokens=300, temperature=0.0, seed=0)
    [out] = BudgetForcing(cfg).run(engine, ["Q"], cfg)
    thinking = engine.calls[:-1]
    answer_prompt, answer = engine.calls[-1]
    for _, p in thinking:
        assert p.max_new_tokens == 100 and p.min_new_tokens == 1             # the full B
        assert p.stop_token_ids == (tok.convert_tokens_to_ids("<|im_start|>"),)
    assert thinking[0][0] == "Q<|im_start|>think"
    for prompt, _ in thinking[1:]:
        assert prompt.endswith("okWait")                                     # no separator
    wait = len(tok("Wait", add_special_tokens=False).input_ids)
    rounds = len(thinking)
    generated = sum(k for k, _ in script[:rounds])
    kept = min(100, generated + wait * (rounds - 1))
    bf = out.traces[0]["budget_forcing"]
    assert bf["thinking_tokens"] == kept and bf["ignored"] == rounds - 1
    assert bf["cut"] == (generated + wait * (rounds - 1) > 100)
    if last_reason == "length":
        assert answer_prompt.endswith("\n<|im_start|>answer\nFinal Answer:") and bf["forced_end"]
    else:
        assert answer_prompt.endswith("<|im_start|>answer")
        assert not answer_prompt.endswith("Final Answer:") and not bf["forced_end"]
    assert answer.max_new_tokens == 300 and answer.stop_token_ids == ()      # the whole budget
    assert out.completion_tokens == sum(k for k, _ in script)


def test_s1_auto_budget_keeps_room_for_the_answer(tiny_model_dir):
    from transformers import AutoTokenizer

    from ttx.tts.budget import S1Rules

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = Rounds(tok, [])
    cfg = _cfg("budget-forcing", 1)
    cfg.params = SamplingParams(max_new_tokens=1000)
    rules = S1Rules(engine, cfg)
    delimiters = (len(tok("<|im_start|>think", add_special_tokens=False).input_ids)
                  + len(tok("<|im_start|>answer\nFinal Answer:", add_special_tokens=False)
                        .input_ids) + 1)
    assert rules.maximum == 1000 - delimiters - 100          # VC:261-264 "auto"
