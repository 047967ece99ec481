"""Issue 32: beam's lookahead, n not a multiple of M, DORA's loop and allocation rules and the
PRM inputs, each against its reference written out here from its code (file and line cited) and
driven on the scripted world of tests/search_script.py, as in test_search_reference.py.

References: huggingface/search-and-learn@6f81cac ("BS": src/sal/search/beam_search.py, "SU":
src/sal/search/utils.py, "RM": src/sal/models/reward_models.py); WangXinglin/DORA@eda87c0
("dora.py": scripts/sal/search/dora.py; "RD": the compiled
scripts/sal/search/__pycache__/rebase_diverse.cpython-310.pyc, its source lines as its line
table gives them)."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from tests.search_script import SEP, ScriptedEngine, ScriptedPRM, step_scores, unit
from tests.test_search_reference import _actives, _cfg, _run, aggregate, sal_beam
from ttx.engines.base import Generation, Trace
from ttx.errors import TtxError

# --- beam: --lookahead ------------------------------------------------------------------------


def sal_beam_lookahead(engine, n, m, iterations, lookahead, scoring="path", agg="last"):
    """BS:43-197 with generate_k_steps (SU:80-158), written out. Each engine call is recorded
    as the multiset of texts it continued. `scoring="path"` is BS:133-135 (the PRM reads
    current_text alone, the rollout unread); "rollout" scores current_text + the rollout (what
    DVTS does, diverse_verifier_tree_search.py:113-117): ttx's --lookahead-scoring rollout."""
    active, completed, calls = [""] * n, [], []
    for i in range(iterations):
        if len(active) != n:                                         # BS:71-84
            active = (active * (n // len(active) + 1))[:n]
        last = i == iterations - 1                                   # BS:86-93: no stop
        k_steps = 0 if last else lookahead                           # BS:111
        calls.append(Counter(active))
        gens = []
        for text in active:                                          # SU:102-127, i == 0
            step, eos = engine.step(text)
            stopped = not (last or eos)                              # stop_reason "\n\n"
            step += SEP if stopped else ""
            gens.append({"text": text, "first": step, "first_done": not stopped,
                         "look": step, "eos": not stopped})
        for _ in range(k_steps):                                     # SU:102-127, i >= 1
            live = [g for g in gens if not g["eos"]]                 # SU:106-110
            if not live:
                break
            calls.append(Counter(g["text"] + g["look"] for g in live))
            for g in live:                                           # greedy (SU:103-104)
                step, eos = engine.step(g["text"] + g["look"])
                g["look"] += step + ("" if eos else SEP)             # SU:124
                g["eos"] = eos
        new = [(g["text"] + g["first"], g["first_done"] or g["first"] == "")   # BS:122-131
               for g in gens]
        scored = [t if scoring == "path" else g["text"] + g["look"]          # BS:133-135
                  for (t, _), g in zip(new, gens)]
        scores = [aggregate(step_scores(t), agg) for t in scored]
        completed += [t for t, done in new if done]
        open_ = [(t, s) for (t, done), s in zip(new, scores) if not done]    # BS:145-149
        if not open_:
            break
        top = np.argsort(np.array([s for _, s in open_]))[-(n // m):]      # BS:167-170
        active = [t for k, (t, _) in enumerate(open_) if k in top]
    final = completed[:n]                                            # BS:176-195
    if len(final) != n:
        final = (final * (n // len(final) + 1))[:n]
    best = int(np.argmax([aggregate(step_scores(t), agg) for t in final]))   # BS:214-217
    return calls, final, final[best]


@pytest.mark.parametrize("n,m,iterations,lookahead,eos_rate", [
    (4, 2, 4, 1, 0.0), (8, 2, 5, 2, 0.15), (6, 3, 4, 1, 0.2), (8, 4, 4, 3, 0.1)])
def test_beam_lookahead_scores_as_search_and_learn_by_default(n, m, iterations, lookahead,
                                                              eos_rate):
    """search-and-learn generates the rollout (SU:102-127, greedy from the second step on) and
    scores only the beam's current text (BS:133-135); --lookahead-scoring rollout scores the path
    with its rollout. Each rule: the same requests every call and the same final beams."""
    from ttx.tts.beam import Beam

    outcomes = {}
    for scoring in ("path", "rollout"):
        calls, final, best = sal_beam_lookahead(ScriptedEngine(eos_rate=eos_rate), n, m,
                                                iterations, lookahead, scoring)
        engine = ScriptedEngine(eos_rate=eos_rate)
        extra = {} if scoring == "path" else {"lookahead_scoring": "rollout"}
        cfg = _cfg("beam", n, beam_style="search-and-learn", beam_width=m, max_steps=iterations,
                   lookahead=lookahead, **extra)
        out = _run(Beam, engine, cfg)
        assert _actives(engine) == calls                     # every request, rollouts included
        assert [t["text"] for t in out.traces] == final
        scores = [t["score"] for t in out.traces]
        assert out.traces[int(np.argmax(scores))]["text"] == best
        greedy = [call for call in engine.calls if call[0][2].temperature == 0.0]
        assert len(greedy) == len(calls) - len(out.extra["beam"]["iterations"])   # SU:103-104
        outcomes[scoring] = (calls, final)
    assert outcomes["path"] != outcomes["rollout"]           # the two rules choose differently


# --- beam: n not a multiple of M --------------------------------------------------------------

@pytest.mark.parametrize("n,m,iterations,eos_rate", [
    (6, 4, 4, 0.1), (5, 2, 5, 0.15), (7, 3, 4, 0.0), (3, 4, 4, 0.2), (2, 8, 3, 0.0)])
def test_beam_search_and_learn_runs_any_n(n, m, iterations, eos_rate):
    """BS:167-170 keeps the n // M best open beams (with n < M the slice [-0:]: all of them)
    and BS:71-84 refills them to n: no multiple of M is needed under the search-and-learn style;
    the ttx style still asks for one."""
    from ttx.tts.beam import Beam
    from ttx.tts.search import SearchConfig
    from ttx.tts.strategy import StrategyConfig

    per_iteration, final, best = sal_beam(ScriptedEngine(eos_rate=eos_rate), n, m, iterations)
    engine = ScriptedEngine(eos_rate=eos_rate)
    cfg = _cfg("beam", n, beam_style="search-and-learn", beam_width=m, max_steps=iterations)
    out = _run(Beam, engine, cfg)
    assert _actives(engine) == per_iteration
    assert [t["text"] for t in out.traces] == final
    assert out.traces[int(np.argmax([t["score"] for t in out.traces]))]["text"] == best

    sal = StrategyConfig(strategy="beam", n=n, search=SearchConfig(reward_model="prm",
                                                                   beam_width=m))
    Beam.check(sal, engine="hf", given={"reward_model", "beam_width"})
    assert Beam.at_level(sal, "n", n + 1).n == n + 1
    ttx = StrategyConfig(strategy="beam", n=n, search=SearchConfig(beam_width=m))
    with pytest.raises(TtxError, match="multiple of --beam-width"):
        Beam.check(ttx, engine="hf", given={"beam_width"})


# --- DORA: the allocation ---------------------------------------------------------------------

def _cos(embeddings):
    """dora.py:52-58 (RD:90-96 the same)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    norms = np.where(norms < 1e-12, 1e-12, norms)
    normalized = embeddings / norms
    cosine_sim = np.dot(normalized, normalized.T)
    return cosine_sim.astype(np.float32)


def _softmax_rows(matrix, temperature):
    """dora.py:80-85 (RD:122-127)."""
    matrix = matrix.astype(np.float64)
    scaled = matrix / temperature
    shifted = scaled - np.max(scaled, axis=1, keepdims=True)
    exp_values = np.exp(shifted)
    return (exp_values / exp_values.sum(axis=1, keepdims=True)).astype(np.float32)


def _softmax(agg_scores, temperature):
    """dora.py:87-92 (RD:129-135)."""
    scores = np.array([score[0] for score in agg_scores], dtype=np.float64)
    scaled_scores = scores / temperature
    exp_scores = np.exp(scaled_scores - np.max(scaled_scores))
    softmax_scores = exp_scores / np.sum(exp_scores)
    return [float(score) for score in softmax_scores]


def _diversity(matrix, temperature):
    """dora.py:95-98 (RD:138-143)."""
    n = _softmax_rows(matrix, temperature)
    return [n[i][i] for i in range(len(n))]


def dora_code(scores, embeddings, n, tau=0.1, alpha=0.01):
    """dora.py:289-308, line 302 repaired to the sub-matrix of the paths kept at 298 (the file
    reads the undefined `all_cos_matrix` and `choose_indices` there)."""
    agg_scores = [[s] for s in scores]
    cos_matrix = _cos(embeddings)                                                # 291
    softmax_agg_scores = _softmax(agg_scores, tau)                               # 294
    allocate_num = [int(item) for item in np.round(np.array(softmax_agg_scores) * n)]   # 296
    choose_indices = [j for j in range(len(allocate_num)) if allocate_num[j] > 0]
    agg_scores = [agg_scores[j] for j in range(len(agg_scores)) if allocate_num[j] > 0]  # 299
    softmax_agg_scores = _softmax(agg_scores, tau)                               # 300
    cos_matrix = cos_matrix[np.ix_(choose_indices, choose_indices)]              # 302
    diversity_score_list = _diversity(cos_matrix, alpha)                         # 303
    balance_score = [diversity_score_list[j] * softmax_agg_scores[j]
                     for j in range(len(softmax_agg_scores))]                    # 305
    final_score = [item / sum(balance_score) for item in balance_score]          # 306
    allocate_num = [int(item) for item in np.round(np.array(final_score) * n)]   # 308
    out = [0] * len(scores)
    for j, b in zip(choose_indices, allocate_num):
        out[j] = b
    return out


def dora_paper(scores, embeddings, n, tau=0.1, alpha=0.01):
    """The paper's eq. 10-13 as DORA's rebase_diverse computes them (RD:336-348): no zero
    shares dropped first."""
    agg_scores = [[s] for s in scores]
    softmax_agg_scores = _softmax(agg_scores, tau)                               # RD:336
    cos_matrix = _cos(embeddings)                                                # RD:339
    diversity_score_list = _diversity(cos_matrix, alpha)                         # RD:341
    balance_score = [diversity_score_list[j] * softmax_agg_scores[j]
                     for j in range(len(softmax_agg_scores))]                    # RD:344
    final_score = [item / sum(balance_score) for item in balance_score]          # RD:346
    return [int(item) for item in np.round(np.array(final_score) * n)]           # RD:348


def test_dora_rounding_ties_follow_the_code_in_float32():
    """dora.py:58 and 85 cast to float32: d = [0.5, 0.5, 1.0] exactly, so n w = [0.75, 0.75,
    1.5] and 1.5 rounds to 2 (half to even); in float64 d_3 < 1 and it rounds to 1."""
    from ttx.tts.dora import dora_allocation

    scores, emb = [0.9, 0.9, 0.9], [[1, 0], [1, 0], [1, 1]]
    assert dora_code(scores, emb, 3) == dora_allocation(scores, emb, 3) == [1, 1, 2]
    assert dora_paper(scores, emb, 3) == dora_allocation(scores, emb, 3, rule="paper") == [1, 1, 2]


def test_dora_rules_code_and_paper():
    """The code drops the zero shares first (dora.py:296-300) and renormalises; the paper's eq.
    10-13 (RD:336-348) weigh every open path."""
    from ttx.tts.dora import dora_allocation

    scores, emb = [0.9, 0.9, 0.7], [[1, 0]] * 3
    assert dora_code(scores, emb, 3) == dora_allocation(scores, emb, 3) == [2, 2, 0]
    assert dora_paper(scores, emb, 3) == dora_allocation(scores, emb, 3, rule="paper") == [1, 1, 0]
    rng = random.Random(32)
    for trial in range(400):
        n = rng.choice([2, 3, 4, 5, 6, 8, 16])
        k = rng.randint(1, min(n, 8))             # at most n open paths (the population is n)
        if trial % 2:            # tie-prone: repeated scores, small integer directions
            scores = [rng.choice([0.9, 0.7, 0.5]) for _ in range(k)]
            emb = [[rng.choice([0, 1]), rng.choice([0, 1]), 1] for _ in range(k)]
        else:
            scores = [rng.random() for _ in range(k)]
            emb = [[rng.gauss(0, 1) for _ in range(5)] for _ in range(k)]
        tau, alpha = rng.choice([(0.1, 0.01), (0.5, 0.1), (1.0, 1.0)])
        assert dora_allocation(scores, emb, n, tau, alpha) == dora_code(scores, emb, n, tau, alpha)
        assert dora_allocation(scores, emb, n, tau, alpha, "paper") == \
            dora_paper(scores, emb, n, tau, alpha)


# --- DORA: the loop ---------------------------------------------------------------------------

class Steps(ScriptedEngine):
    """The scripted engine with token counts: step s<depth>.<j> of `text` has count(text, step)
    tokens and ends with EOS when eos(text, step); a call's max_new_tokens cuts it (finish
    "length", no stop)."""

    def __init__(self, count, eos):
        super().__init__()
        self.count, self.ends = count, eos

    def draw(self, text, max_tokens, stop_at_blank_line):
        """(step text, its blank line kept; tokens; "sep" | "eos" | "length")."""
        step, _ = self.step(text)
        tokens = self.count(text, step)
        if tokens > max_tokens:
            return step, max_tokens, "length"
        if self.ends(text, step) or not stop_at_blank_line:
            return step, tokens, "eos"
        return step + SEP, tokens, "sep"

    def generate(self, prompts, n, params):
        counts = [n] * len(prompts) if isinstance(n, int) else list(n)
        per = [params] * len(prompts) if not isinstance(params, (list, tuple)) else list(params)
        self.calls.append([(p, k, q) for p, k, q in zip(prompts, counts, per)])
        out = []
        for prompt, k, p in zip(prompts, counts, per):
            traces = []
            for _ in range(k):
                step, tokens, how = self.draw(prompt[len(self.prefix):], p.max_new_tokens,
                                              SEP in p.stop)
                traces.append(Trace(text=step[:-len(SEP)] if how == "sep" else step,
                                    completion_tokens=tokens,
                                    finish_reason="length" if how == "length" else "stop",
                                    stop_string=SEP if how == "sep" else None))
            out.append(Generation(traces=traces, prompt_tokens=len(prompt)))
        return out


def dora_loop(engine, n, iterations, cap, total, embed, rule="code", agg="last",
              prm=step_scores):
    """dora.py:179-345 (the loop), written out, one problem: each iteration's requests and
    allocations (over the open paths, 0 for the pruned), the final paths and the answer."""
    allocation = dora_code if rule == "code" else dora_paper
    active = [{"text": "", "tokens": 0} for _ in range(n)]
    completed, calls, allocations, allocate = [], [], [], []
    for i in range(iterations):
        if i > 0:                                                    # 183-187
            active = [dict(b) for k, b in enumerate(active) for _ in range(allocate[k])]
        if len(active) != n:                                         # 190-202
            active = [dict(b) for b in (active * (n // len(active) + 1))[:n]]
        last = i == iterations - 1                                   # 204-211
        calls.append(Counter(b["text"] for b in active))
        for b in active:                                             # 217-247, SU:107-145
            left = total - b["tokens"]
            step, tokens, how = engine.draw(b["text"], left if last else min(left, cap),
                                            not last)
            b["text"] += step
            b["tokens"] += tokens
            b["done"] = how != "sep" or step == "" or b["tokens"] >= total   # 249-254
            if b["done"] and (last or tokens != cap):                # 255-264: == cap, pruned
                completed.append(b)
        scores = [aggregate(prm(b["text"]), agg) for b in active]    # 268-276
        open_ = [(b, s) for b, s in zip(active, scores) if not b["done"]]   # 279-282
        if not open_:                                                # 285-286
            break
        active = [b for b, _ in open_]
        full = allocation([s for _, s in open_], embed([b["text"] for b in active]), n)
        allocations.append(full)
        active = [b for b, k in zip(active, full) if k > 0]          # 298, 317-319
        allocate = [k for k in full if k > 0]
        if len(completed) >= n:                                      # 321-322
            break
    final = [b["text"] for b in completed[:n]]                       # 325-343
    final = (final * (n // len(final) + 1))[:n]
    best = int(np.argmax([aggregate(prm(t), agg) for t in final]))   # 366
    return calls, allocations, final, final[best]


def _dora_run(engine, n, iterations, cap, total, embed, rule="code", prm=None):
    from ttx.tts.dora import DORA
    from ttx.tts.strategy import StrategyConfig

    cfg = _cfg("dora", n, max_steps=iterations, step_tokens=cap, dora_rule=rule)
    cfg = StrategyConfig(strategy="dora", n=n, search=cfg.search,
                         params=type(cfg.params)(max_new_tokens=total, temperature=1.0, seed=0))
    runner = DORA(cfg)
    runner.scorer = prm or ScriptedPRM()
    runner.embed = lambda texts: np.array(embed(texts), dtype=np.float64)
    [out] = runner.run(engine, ["P|"], cfg)
    rounds: list[Counter] = []                       # the calls of one iteration share a seed
    seeds = []
    for call in engine.calls:
        seed = call[0][2].seed
        if not seeds or seeds[-1] != seed:
            seeds.append(seed)
            rounds.append(Counter())
        for prompt, k, _ in call:
            rounds[-1][prompt[len(engine.prefix):]] += k
    allocations = [it["rollouts"] for it in out.extra["dora"]["iterations"] if it["rollouts"]]
    return out, rounds, allocations


def _hashed(texts):
    return [[unit(t), unit(t + "x"), 1.0] for t in texts]


def test_dora_drops_a_finished_step_of_the_cap_length_whatever_ended_it():
    """dora.py:259-261: a step that finished (here with EOS) at its 5th token of a cap of 5 is
    pruned, not completed (n=2, cap 5)."""
    def count(text, step):
        return 5 if (text, step) == ("", "s1.0") else 3

    def eos(text, step):
        return (text, step) == ("", "s1.0") or text.count(SEP) >= 3

    args = dict(n=2, iterations=4, cap=5, total=64, embed=_hashed)
    calls, allocations, final, best = dora_loop(Steps(count, eos), **args)
    out, rounds, got = _dora_run(Steps(count, eos), **args)
    assert rounds == calls and got == allocations
    assert [t["text"] for t in out.traces] == final and out.traces[
        int(np.argmax([t["score"] for t in out.traces]))]["text"] == best
    assert not any(t.startswith("s1.0") for t in final)       # the EOS step of 5 tokens: gone
    assert out.extra["dora"]["iterations"][0]["runaway"] == 1


def test_dora_loop_ties_in_float32():
    """Three open paths of equal score, embeddings [1,0], [1,0], [1,1] (n=3): the code's float32
    allocation [1, 1, 2] (float64 would give [1, 1, 1])."""
    class Flat(ScriptedPRM):
        def score_paths(self, paths):
            self.paths += len(paths)
            return [[0.9] * max(1, len([s for s in steps if s.strip()])) for _, steps in paths]

    def embed(texts):
        return [[1.0, 1.0] if t.startswith("s1.2") else [1.0, 0.0] for t in texts]

    def flat(text):
        return [0.9] * max(1, len([s for s in text.split(SEP) if s.strip()]))

    args = dict(n=3, iterations=3, cap=8, total=64, embed=embed)
    calls, allocations, final, _ = dora_loop(Steps(lambda t, s: 3, lambda t, s: False),
                                             prm=flat, **args)
    out, rounds, got = _dora_run(Steps(lambda t, s: 3, lambda t, s: False), prm=Flat(), **args)
    assert allocations[0] == got[0] == [1, 1, 2]
    assert rounds == calls and got == allocations
    assert [t["text"] for t in out.traces] == final


@pytest.mark.parametrize("rule", ["code", "paper"])
@pytest.mark.parametrize("n,iterations,cap,total,eos_rate", [
    (4, 4, 4, 64, 0.15), (6, 5, 3, 14, 0.1), (3, 4, 5, 40, 0.25), (8, 3, 4, 64, 0.0)])
def test_dora_loop_follows_the_code(rule, n, iterations, cap, total, eos_rate):
    def count(text, step):
        return 1 + int(unit(text + step + "#") * (cap + 1))      # sometimes the whole cap

    def eos(text, step):
        return unit(text + step) < eos_rate

    args = dict(n=n, iterations=iterations, cap=cap, total=total, embed=_hashed, rule=rule)
    calls, allocations, final, best = dora_loop(Steps(count, eos), **args)
    out, rounds, got = _dora_run(Steps(count, eos), **args)
    assert rounds == calls and got == allocations
    assert [t["text"] for t in out.traces] == final
    assert out.traces[int(np.argmax([t["score"] for t in out.traces]))]["text"] == best


# --- PRM inputs -------------------------------------------------------------------------------

QUESTION = "Tom has 3 apples and buys 5 more. How many?"
OPEN = "Tom starts with 3.\n\n3 + 5 = 8.\n\n"          # an open beam: it ends at a blank line
SYSTEM = "Solve the following math problem efficiently and clearly."


def _prm(folder, fmt, construction, system=None):
    from ttx.tts.reward import RewardModel
    from ttx.tts.search import SearchConfig

    return RewardModel(str(folder), SearchConfig(prm_format=fmt, reward_model="x",
                                                 prm_input=construction, prm_system=system))


@pytest.mark.parametrize("text", [OPEN, "Tom starts with 3.\n\n3 + 5 = 8.", "", "a\n\n\n\nb\n\n"])
def test_rlhflow_input_as_search_and_learn_builds_it(tiny_model_dir, text):
    """RM:225-243: the path split at "\\n\\n" as it is (an open beam's empty last piece kept, no
    stripping), the first user turn question + " " + piece 0, each answered by "+"; one score
    per turn, read where its "+" is predicted (RM:257-266)."""
    from ttx.reward_inputs import steps_of

    rm = _prm(tiny_model_dir, "chat", "search-and-learn")
    conversation = []
    ans_list = text.split("\n\n")                                    # RM:229
    for k in range(len(ans_list)):                                   # RM:230-236
        content = QUESTION + " " + ans_list[0] if k == 0 else ans_list[k]
        conversation.append({"content": content, "role": "user"})
        conversation.append({"content": "+", "role": "assistant"})
    want = rm.tokenizer.apply_chat_template(conversation)            # RM:249-251
    want = want["input_ids"] if hasattr(want, "keys") else want
    steps = steps_of(text, "search-and-learn")
    ids, positions = rm._process_input(QUESTION, steps)
    assert ids == list(want)
    plus = rm.tokenizer("+", add_special_tokens=False).input_ids[-1]
    assert len(positions) == len(ans_list) and all(ids[p + 1] == plus for p in positions)
    [scores] = rm.score_paths([(QUESTION, steps)])
    assert len(scores) == len(ans_list)
    if text == OPEN:                  # the model card drops the empty turn: other inputs
        card = _prm(tiny_model_dir, "chat", "model-card")
        ids_card, _ = card._process_input(QUESTION, steps_of(text, "model-card"))
        assert len(ans_list) == 3 and ids_card != ids
        assert len(card.score_paths([(QUESTION, steps_of(text, "model-card"))])[0]) == 2


@pytest.mark.parametrize("text,tags", [(OPEN, 2), ("Tom starts with 3.\n\n3 + 5 = 8.", 2),
                                       ("", 1), ("a\n\n\n\nb\n\n", 3), ("a\n\n\n", 1)])
def test_math_shepherd_input_as_search_and_learn_builds_it(tiny_model_dir, text, tags):
    """RM:110-115: system prompt + "\\n" + question + "\\n", then " " and the path with " ки"
    before each blank line (kept) and one at the end unless it ends with a blank line; BOS first
    (RM:49); every tag scored (RM:55)."""
    from ttx.reward_inputs import steps_of

    rm = _prm(tiny_model_dir, "tag", "search-and-learn", system=SYSTEM)
    prompt = SYSTEM + "\n" + QUESTION + "\n"                         # RM:110
    o = text.replace("\n\n", " ки\n\n")                              # RM:111
    o = o + " ки" if o[-2:] != "\n\n" else o                         # RM:112-114
    want = rm.tokenizer(f"{prompt} {o}").input_ids                   # RM:115, 49
    ids, positions = rm._process_input(QUESTION, steps_of(text, "search-and-learn"))
    assert ids == want
    tag = rm.tokenizer("ки", add_special_tokens=False).input_ids[-1]
    assert len(positions) == tags and all(ids[p] == tag for p in positions)
    [scores] = rm.score_paths([(QUESTION, steps_of(text, "search-and-learn"))])
    assert len(scores) == tags
    if text == OPEN:                  # the card: no system prompt, steps one per line
        card = _prm(tiny_model_dir, "tag", "model-card", system=SYSTEM)
        ids_card, _ = card._process_input(QUESTION, steps_of(text, "model-card"))
        assert ids_card == rm.tokenizer(QUESTION + " Tom starts with 3. ки\n3 + 5 = 8. ки").input_ids


class Recording(ScriptedPRM):
    def __init__(self):
        super().__init__()
        self.seen = []

    def score_paths(self, paths):
        self.seen += [steps for _, steps in paths]
        return super().score_paths(paths)


@pytest.mark.parametrize("strategy,style,construction", [
    ("beam", "search-and-learn", "search-and-learn"), ("beam", "ttx", "model-card"),
    ("dvts", None, "search-and-learn"), ("dora", None, "search-and-learn")])
def test_searches_pass_the_prm_their_construction(strategy, style, construction):
    """Under search-and-learn's searches an open beam reaches the PRM with its empty last piece
    (RM:229); beam's ttx style keeps the model card's steps; --prm-input overrides either."""
    from ttx.tts.registry import strategy as strategy_class

    cls = strategy_class(strategy)
    for given in (None, "model-card", "search-and-learn"):
        extra = {"beam_style": style} if style else {}
        if given:
            extra["prm_input"] = given
        cfg = _cfg(strategy, 4, beam_width=2, max_steps=3, step_tokens=8, **extra)
        runner = cls(cfg)
        runner.scorer = prm = Recording()
        runner.embed = lambda texts: np.array(_hashed(texts))
        runner.run(ScriptedEngine(), ["P|"], cfg)
        expected = given or construction
        open_pieces = [s for s in prm.seen if s and s[-1] == ""]
        assert bool(open_pieces) == (expected == "search-and-learn")
        if expected == "model-card":
            assert all(s == [p.strip() for p in s if p.strip()] for s in prm.seen)


def test_reward_model_construction_default_and_reading_file(tmp_path, tiny_model_dir):
    """--prm-input wins, then ttx_reward.json's `prm_input` (verifier-train writes model-card),
    then the strategy's default; a bad value in the file is one line naming it."""
    import json
    import shutil

    from ttx.tts.reward import RewardModel
    from ttx.tts.search import SearchConfig

    search = SearchConfig(prm_format="chat", reward_model="x")
    assert RewardModel(str(tiny_model_dir), search, "cpu", "search-and-learn").prm_input == \
        "search-and-learn"
    assert RewardModel(str(tiny_model_dir), search).prm_input == "model-card"
    folder = tmp_path / "prm"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "ttx_reward.json").write_text(json.dumps({"kind": "prm", "prm_input": "model-card"}))
    assert RewardModel(str(folder), search, "cpu", "search-and-learn").prm_input == "model-card"
    forced = SearchConfig(prm_format="chat", reward_model="x", prm_input="search-and-learn")
    assert RewardModel(str(folder), forced).prm_input == "search-and-learn"
    (folder / "ttx_reward.json").write_text(json.dumps({"kind": "prm", "prm_input": "sal"}))
    with pytest.raises(TtxError, match="ttx_reward.json"):
        RewardModel(str(folder), search)


# --- options ----------------------------------------------------------------------------------

def _build(tmp_path, *args):
    from ttx.cli.tts_run import command
    from ttx.tts.launch import build_run

    problems = tmp_path / "p.jsonl"
    problems.write_text('{"question": "1+1?", "answer": "2"}\n')
    ctx = command.make_context("tts-run", ["-i", str(problems), "-o", str(tmp_path / "o.jsonl"),
                                           *args])
    return build_run(ctx.params)


def test_options_check_before_a_model_loads(tmp_path):
    prm = str(tmp_path)
    cfg, _, _ = _build(tmp_path, "--strategy", "beam", "--n", "6", "--beam-width", "4",
                       "--reward-model", prm, "--system", SYSTEM)
    assert cfg.strategy.search.prm_system == SYSTEM                # the Math-Shepherd input's head
    assert cfg.strategy.search.lookahead_scoring == "path" and cfg.strategy.search.dora_rule == "code"
    for strategy in ("beam", "dvts", "dora", "best-of-n"):      # every PRM reader takes it
        cfg, _, _ = _build(tmp_path, "--strategy", strategy, "--reward-model", prm,
                           "--prm-input", "model-card", "--n", "4")
        assert cfg.strategy.search.prm_input == "model-card"
    for args, message in [
            (["--strategy", "beam", "--reward-model", prm, "--lookahead-scoring", "rollout"],
             "needs --lookahead"),
            (["--strategy", "beam", "--beam-style", "ttx", "--reward-model", prm, "--lookahead",
              "1", "--lookahead-scoring", "rollout"], "applies to --beam-style search-and-learn"),
            (["--strategy", "dvts", "--reward-model", prm, "--lookahead", "1",
              "--lookahead-scoring", "rollout"], "does not apply to --strategy dvts"),
            (["--strategy", "beam", "--dora-rule", "paper"], "(it applies to dora)"),
            (["--strategy", "beam", "--prm-input", "model-card"], "needs --reward-model"),
            (["--strategy", "beam", "--n", "6", "--beam-width", "4"], "multiple of --beam-width")]:
        with pytest.raises(TtxError, match=message.replace("(", r"\(").replace(")", r"\)")):
            _build(tmp_path, *args)


def test_end_to_end_on_a_tiny_model(tmp_path, tiny_model_dir):
    """The new options through tts-run: beam with a PRM, a rollout and n = 3, M = 2; DORA by
    the paper's rule with search-and-learn's PRM inputs; a tiny model is both policy and PRM."""
    import json

    from tests.conftest import run_cli
    from ttx.data.arith import generate

    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in generate(2, 3)))
    common = ["--model", str(tiny_model_dir), "-i", str(problems), "--temperature", "1.0",
              "--no-progress", "--max-new-tokens", "12", "--step-tokens", "3", "--max-steps", "3",
              "--reward-model", str(tiny_model_dir), "--prm-format", "tag"]
    runs = {"beam": ["--n", "3", "--beam-width", "2", "--lookahead", "1"],
            "dora": ["--n", "3", "--dora-rule", "paper", "--embedder", str(tiny_model_dir)]}
    for strategy, extra in runs.items():
        out = tmp_path / f"{strategy}.jsonl"
        result = run_cli(["tts-run", *common, "-o", str(out), "--strategy", strategy, *extra])
        assert result.exit_code == 0, result.output
        for record in map(json.loads, out.read_text().splitlines()):
            assert len(record["traces"]) == 3
            if strategy == "beam":
                assert record["beam"]["lookahead_scoring"] == "path"
                assert record["beam"]["style"] == "search-and-learn"
            else:
                assert record["dora"]["rule"] == "paper"
