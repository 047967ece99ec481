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
from ttx.engines.base import SamplingParams
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
    undefined `all_cos_matrix` and `choose_indices` before they are set). Its softmaxes run in
    float64, so it agrees with the code away from rounding ties only; the exact transcription,
    float32 casts included (dora.py:58, 85), is tests/test_search_reference_32.py's."""
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
