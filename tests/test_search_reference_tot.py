"""--strategy tot against princeton-nlp/tree-of-thought-llm@ab40034 ("BFS": src/tot/methods/
bfs.py; "G24": src/tot/tasks/game24.py), on the scripted world of tests/search_script.py with
scripted value answers: the reference's solve / get_values / get_value / value_outputs_unwrap
are written out here and driven with the same steps and judgements; ttx must ask the same value
prompts, find the same values, keep the same states at every depth and answer with the same one.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.search_script import SEP, ScriptedEngine, unit
from ttx.engines.base import Generation, SamplingParams, Trace
from ttx.scoring.answers import extract_answer
from ttx.tts.search import SearchConfig
from ttx.tts.strategy import StrategyConfig
from ttx.tts.tot_value import FINAL_PROMPT, value_prompt

VALUE_MAP = {"impossible": 0.001, "likely": 1, "sure": 20}          # G24:90, as written there
# what an unconstrained judge writes: the words, other casings, reasoning before the word
# (the last line counts, G24:89) and words the map does not know (they count 0)
FREE = ("sure", "likely", "impossible", "Sure", "likely.", "12 - 2 = 10\nsure",
        "hard to say\nlikely", "maybe", "impossible\n")


class ToTWorld(ScriptedEngine):
    """Scripted steps (some ending with a boxed answer) and scripted judgements: the j-th
    answer to a value prompt is a fixed function of the prompt and j, within the words the
    choice constraint allows when the engine enforces constraints."""

    def __init__(self, constrained: bool = True, **kw):
        super().__init__(**kw)
        self.supports_constraints = constrained
        self.value_calls: list[list[str]] = []

    def step(self, text):
        step, eos = super().step(text)
        head, j = step.rsplit(".", 1)
        step = f"{head}.{int(j) // 2}"              # samples 2j and 2j+1 agree: duplicates
        u = unit(text + step + "#answer")
        return (step + f" so x = \\boxed{{{int(u * 4)}}}" if u > 0.35 else step), eos

    def judge(self, prompt: str, j: int, allowed=None) -> str:
        final = prompt.startswith(FINAL_PROMPT.split("\n")[0])
        words = allowed or (FREE if self.supports_constraints is False else
                            (("sure", "impossible") if final else ("sure", "likely", "impossible")))
        return words[int(unit(f"{prompt}#{j}") * len(words))]

    def generate(self, prompts, n, params):
        per = [params] * len(prompts) if not isinstance(params, (list, tuple)) else list(params)
        if all(p.startswith(self.prefix) for p in prompts):
            return super().generate(prompts, n, params)
        self.value_calls.append(list(prompts))
        out = []
        for prompt, p in zip(prompts, per):
            allowed = p.constraint.spec if p.constraint is not None else None
            assert (allowed is not None) == bool(self.supports_constraints)
            traces = [Trace(text=self.judge(prompt, j, allowed), completion_tokens=1 + j % 2,
                            finish_reason="stop") for j in range(n)]
            out.append(Generation(traces=traces, prompt_tokens=len(prompt) // 10))
        return out


def unwrap(y: str, final: bool, outputs: list[str]) -> float:
    """G24:86-92 (value_outputs_unwrap); its line 87 (a last-depth trajectory without an answer
    line is 0) read for GSM8K as: a finished state with no extractable answer is 0."""
    if final and extract_answer(y) is None:
        return 0
    value_names = [o.split("\n")[-1] for o in outputs]
    return sum(value * value_names.count(name) for name, value in VALUE_MAP.items())


def reference_bfs(world: ToTWorld, x: str, k: int, b: int, e: int, steps: int):
    """BFS:49-88 solve() with method_generate=sample, method_evaluate=value,
    method_select=greedy. `finished` holds ttx's addition for states that end early (EOS): they
    are carried, not sampled again; with no early EOS that branch never runs."""
    value_cache: dict[str, float] = {}                               # G24:34 task.value_cache
    finished: set[str] = set()
    asked: list[str] = []

    def get_value(y):                                                # BFS:6-14
        prompt = value_prompt(x, y, y in finished)
        if prompt in value_cache:                                    # BFS:8-9
            return value_cache[prompt]
        asked.append(prompt)
        outputs = [world.judge(prompt, j) for j in range(e)]         # BFS:10 gpt(n=e)
        value = unwrap(y, y in finished, outputs)                    # BFS:11
        value_cache[prompt] = value                                  # BFS:12-13
        return value

    ys, infos = [""], []                                             # BFS:54-55
    for step in range(steps):                                        # BFS:56
        if all(y in finished for y in ys):                           # (ttx: all ended)
            break
        last = step == steps - 1
        new_ys = []
        for y in ys:                                                 # BFS:59 get_samples
            if y in finished:
                new_ys.append(y)
                continue
            for _ in range(k):                                       # gpt(n=k), BFS:46-47
                s, eos = world.step(y)
                child = y + s + ("" if last or eos else SEP)
                if last or eos:
                    finished.add(child)
                new_ys.append(child)
        values, local_value_cache = [], {}                           # BFS:16-26 get_values
        for y in new_ys:
            if y in local_value_cache:                               # BFS:20-21
                value = 0
            else:
                value = get_value(y)
                local_value_cache[y] = value
            values.append(value)
        ids = list(range(len(new_ys)))                               # BFS:63
        select_ids = sorted(ids, key=lambda i: values[i], reverse=True)[:b]   # BFS:74-75
        infos.append({"new_ys": new_ys, "values": values, "select_ids": select_ids})
        ys = [new_ys[i] for i in select_ids]                         # BFS:76, 84
    return ys, infos, asked


def _run_tot(world, k, b, e, steps):
    from ttx.tts.tot import ToT

    cfg = StrategyConfig(strategy="tot", n=k,
                         params=SamplingParams(max_new_tokens=64, temperature=0.7, seed=0),
                         search=SearchConfig(tot_breadth=b, tot_evaluations=e, tot_depth=steps))
    [out] = ToT(cfg).run(world, ["P|"], cfg)
    return out


@pytest.mark.parametrize("k,b,e,steps,eos_rate,constrained", [
    (3, 2, 3, 3, 0.0, True),
    (2, 5, 3, 4, 0.0, True),        # the reference's b and e (scripts/game24/bfs.sh)
    (4, 1, 1, 3, 0.0, False),       # run.py's defaults b = e = 1, free-text judgements
    (3, 3, 5, 4, 0.0, False),
    (3, 2, 3, 4, 0.3, True),        # early EOS: ttx's carried finished states
    (2, 3, 2, 5, 0.25, False),
])
def test_tot_follows_the_reference_bfs(k, b, e, steps, eos_rate, constrained):
    ref_world = ToTWorld(constrained, eos_rate=eos_rate)
    ys, infos, asked = reference_bfs(ref_world, "P|", k, b, e, steps)
    world = ToTWorld(constrained, eos_rate=eos_rate)
    out = _run_tot(world, k, b, e, steps)
    log = out.extra["tot"]["iterations"]
    assert len(log) == len(infos)
    for entry, info in zip(log, infos):                 # the same values, the same states kept
        assert entry["values"] == info["values"]
        assert entry["kept"] == info["select_ids"]
    # the same value prompts asked (the cache and the duplicate rule skip the same ones)
    assert Counter(p for call in world.value_calls for p in call) == Counter(asked)
    ranked = sorted((t for t in out.traces if t["rank"] is not None), key=lambda t: t["rank"])
    assert [t["text"] for t in ranked] == ys            # the final kept states, in order
    assert out.pred == extract_answer(ys[0])            # BFS:86-88: the top state
    for t in out.traces:                                # each state's value is its trace's score
        assert t["score"] == t["step_scores"][-1] and len(t["step_scores"]) == t["steps"]


def test_tot_accounts_for_value_prompts():
    """completion_tokens: every step and every judgement; prefill: every prompt of every call,
    the value prompts included; sequential: the longest segment of each round."""
    world = ToTWorld(True)
    out = _run_tot(world, 3, 2, 3, 3)
    tot = out.extra["tot"]
    steps = sum(k for call in world.calls for _, k, _ in call)
    judged = sum(len(call) for call in world.value_calls)
    assert tot["value_prompts"] == judged
    value_tokens = judged * (1 + 2 + 1)                 # e = 3 answers of 1, 2, 1 tokens
    assert tot["value_completion_tokens"] == value_tokens
    assert out.completion_tokens == 3 * steps + value_tokens
    assert tot["value_prompt_tokens"] == sum(len(p) // 10 for c in world.value_calls for p in c)
    assert out.extra["prefill_tokens"] == tot["value_prompt_tokens"] + sum(
        len(p) for call in world.calls for p, _, _ in call)
    # 3 generation rounds (3 tokens each) and 3 value rounds (the longest answer: 2 tokens)
    assert out.sequential_tokens == 3 * 3 + 3 * 2 and out.extra["rounds"] == 6
    assert out.prompt_tokens == len("P|")


@pytest.mark.parametrize("k,b,e,steps,eos_rate", [(3, 2, 2, 3, 0.0), (2, 5, 3, 4, 0.0),
                                                   (3, 2, 3, 4, 0.3)])
def test_tot_tree_is_drawn_from_the_record(k, b, e, steps, eos_rate):
    """The record's iteration log and traces rebuild the whole search tree (ttx.report.tree):
    one node per generated state, the kept open ones expanded, every finished one a leaf; the
    traces' node ids keep apart kept siblings of equal value (the first case has two)."""
    from ttx.report.tree import search_tree

    world = ToTWorld(True, eos_rate=eos_rate)
    out = _run_tot(world, k, b, e, steps)
    tot = out.extra["tot"]
    tree = search_tree(tot["iterations"], out.traces, "last", tokens=out.completion_tokens)
    assert tree["consistent"], tree["note"]
    made = sum(k for call in world.calls for _, k, _ in call)
    assert len(tree["nodes"]) == 1 + made
    assert sum(n["status"] == "complete" for n in tree["nodes"]) == len(out.traces)
    expanded = sum(n["status"] in ("root", "expanded") for n in tree["nodes"])
    assert expanded == sum(it["survivors"] for it in tot["iterations"])


def test_tot_aggregate_is_the_top_state():
    from ttx.tts.registry import regrade_record

    world = ToTWorld(True)
    out = _run_tot(world, 3, 2, 2, 3)
    record = {"strategy": "tot", "traces": out.traces, "pred": out.pred}
    assert regrade_record(record)["pred"] == out.pred
