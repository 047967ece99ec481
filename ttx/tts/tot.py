"""Tree of Thoughts BFS (Yao et al. 2023, arXiv 2305.10601): princeton-nlp/tree-of-thought-llm@
ab40034 src/tot/methods/bfs.py ("BFS"), with method_generate=sample, method_evaluate=value and
method_select=greedy.

From the question (the state ''), at each depth every kept state gets k = --n sampled next steps
(BFS:58-59, get_samples BFS:39-47; a step as ttx's beam defines it: up to a blank line or
--tot-step-tokens, continued as raw templated text); each new state is valued by the model's own
judgements (get_values BFS:16-26: --tot-evaluations value prompts per state, ttx.tts.tot_value;
a state seen before in the same depth is worth 0, BFS:20-21; a value prompt asked before returns
its first value, BFS:8-9); the b = --tot-breadth best are kept (sorted by value, stable,
BFS:74-76). The last depth runs to EOS. The answer is the top kept state's (BFS:86-88, ys[0]).

ttx's additions, which the reference's fixed-length tasks never meet: a state that finished
(EOS, a --stop string, the path's --max-new-tokens) is not expanded again but stays a candidate
at the next depths with its value (its value prompt is asked once, BFS:8-9), and the search stops
early once every kept state has finished.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from ttx.engines.base import Constraint
from ttx.errors import TtxError
from ttx.tts.paths import Path, grow
from ttx.tts.search import STEP_SEPARATOR, Account, question_of, round_seed, templated
from ttx.tts.strategy import Outcome, Strategy, register
from ttx.tts.tot_value import value_of, value_prompt, words

TOT_KNOBS = ("tot_breadth", "tot_evaluations", "tot_depth", "tot_step_tokens")


def _value_request(prompt, question: str, path: Path):
    """The value prompt of a state, shaped as the problem's prompt (chat messages: the last user
    turn replaced, the system turn kept; raw text: the text)."""
    text = value_prompt(question, path.text, path.completed)
    if isinstance(prompt, str):
        return text, text
    return text, [m for m in prompt[:-1]] + [{"role": "user", "content": text}]


@register
class ToT(Strategy):
    name = "tot"
    rank = 14
    summary = ("Tree of Thoughts BFS: k = n sampled next steps per kept state, valued by the "
               "model's own sure/likely/impossible judgements, the b best kept "
               "(princeton-nlp/tree-of-thought-llm).")
    continues = True
    knobs = TOT_KNOBS

    @classmethod
    def rows(cls, cfg) -> int:
        return cfg.n * cfg.search.tot_breadth

    @classmethod
    def check(cls, cfg, *, engine, given):
        super().check(cfg, engine=engine, given=given)
        for name in TOT_KNOBS:
            if getattr(cfg.search, name) < 1:
                raise TtxError(f"--{name.replace('_', '-')} must be positive, got "
                               f"{getattr(cfg.search, name)}")

    @classmethod
    def aggregate(cls, record, preds, invalid):
        """The top kept state's answer (BFS ys[0]): the trace of rank 0."""
        for t, p in zip(record["traces"], preds):
            if isinstance(t, dict) and t.get("rank") == 0:
                return p
        return None

    def run(self, engine, prompts, cfg):
        s, params, k = cfg.search, cfg.params, cfg.n
        prefixes = [templated(engine, p, s) for p in prompts]
        questions = [question_of(p) for p in prompts]
        accounts = [Account() for _ in prompts]
        cache: list[dict[str, float]] = [{} for _ in prompts]           # BFS:8-13
        kept: list[list[Path]] = [[Path(problem=i)] for i in range(len(prompts))]
        done: list[list[Path]] = [[] for _ in prompts]                  # every finished state
        log: list[list[dict]] = [[] for _ in prompts]
        spent = [{"value_prompts": 0, "value_prompt_tokens": 0, "value_completion_tokens": 0}
                 for _ in prompts]
        made = [1 for _ in prompts]             # open nodes of the depth before (the root)
        nodes = {id(p): [] for states in kept for p in states}   # node ids along each path
        serial = itertools.count(1)
        rounds = 0
        for depth in range(s.tot_depth):
            last = depth == s.tot_depth - 1
            parents = [p for states in kept for p in states if not p.completed]
            if not parents:
                break
            call = []
            for p in parents:
                left = params.max_new_tokens - p.tokens
                call.append(replace(params, max_new_tokens=left if last
                                    else min(s.tot_step_tokens, left),
                                    stop=tuple(params.stop) if last
                                    else (STEP_SEPARATOR,) + tuple(params.stop)))
            kids = grow(engine, prefixes, parents, [k] * len(parents), call, params.seed, rounds,
                        accounts, last)
            rounds += 1
            if depth == 0:
                for i in range(len(prompts)):
                    accounts[i].prompt_tokens = accounts[i].prefill
            children = iter(kids)
            candidates: list[list[Path]] = [[] for _ in prompts]
            for i, states in enumerate(kept):
                if all(p.completed for p in states):
                    continue                            # this problem's search has ended
                for state in states:                                   # BFS:59, 62: in order
                    if state.completed:
                        candidates[i].append(state)
                        continue
                    for child in next(children):
                        nodes[id(child)] = nodes[id(state)] + [next(serial)]
                        trace = child.segment
                        # open: a step that ended at the blank line or at the step's cap
                        child.completed = last or child.tokens >= params.max_new_tokens or not (
                            trace.stop_string == STEP_SEPARATOR or trace.finish_reason == "length")
                        if child.completed:
                            done[i].append(child)
                        candidates[i].append(child)
            values = self._values(engine, prompts, questions, candidates, cache, accounts, spent,
                                  s.tot_evaluations, params, rounds)
            rounds += 1
            for i, (cands, vals) in enumerate(zip(candidates, values)):
                if not cands:
                    continue
                ids = sorted(range(len(cands)), key=lambda j: vals[j], reverse=True)   # BFS:75
                select = ids[:s.tot_breadth]
                expanded = [p for p in kept[i] if not p.completed]
                log[i].append({"step": depth + 1, "candidates": made[i],
                               "survivors": len(expanded), "rollouts": [k] * len(expanded),
                               "values": vals, "kept": select})
                kept[i] = [cands[j] for j in select]
                made[i] = sum(1 for p in cands if not p.completed)
        outcomes = []
        for i in range(len(prompts)):
            rank = {id(p): r for r, p in enumerate(kept[i])}
            traces = [p.trace("last", rank=rank.get(id(p)), nodes=nodes[id(p)]) for p in done[i]]
            top = kept[i][0] if kept[i] else None
            pred = traces[[id(p) for p in done[i]].index(id(top))]["pred"] \
                if top is not None and top.completed else None
            extra = {"tot": {"samples": k, "breadth": s.tot_breadth,
                             "evaluations": s.tot_evaluations, "depth": s.tot_depth,
                             "agg": "last", **spent[i], "iterations": log[i]},
                     **accounts[i].extra()}
            outcomes.append(Outcome(traces=traces, pred=pred,
                                    completion_tokens=accounts[i].completion,
                                    sequential_tokens=accounts[i].sequential,
                                    prompt_tokens=accounts[i].prompt_tokens, extra=extra))
        return outcomes

    def _values(self, engine, prompts, questions, candidates, cache, accounts, spent, evaluations,
                params, round_index) -> list[list[float]]:
        """get_values (BFS:16-26) for every problem's candidates in one engine call: a state
        already seen in this depth is 0 (BFS:20-21), a cached prompt its value (BFS:8-9), the
        rest asked `evaluations` times (BFS:10) and valued by ttx.tts.tot_value.value_of."""
        values: list[list[float | None]] = [[None] * len(c) for c in candidates]
        asks, requests, call = [], [], []
        for i, cands in enumerate(candidates):
            seen: set[str] = set()
            for j, path in enumerate(cands):
                if path.text in seen:
                    values[i][j] = 0
                    continue
                seen.add(path.text)
                key, request = _value_request(prompts[i], questions[i], path)
                if key in cache[i]:
                    values[i][j] = cache[i][key]
                    continue
                choice = Constraint.choice(words(path.completed)) \
                    if engine.supports_constraints else None
                asks.append((i, j, key))
                requests.append(request)
                call.append(replace(params, stop=(), stop_token_ids=(), min_new_tokens=0,
                                    logprobs=False, constraint=choice,
                                    seed=round_seed(params.seed, round_index)))
        gens = engine.generate(requests, evaluations, call) if requests else []
        tally: dict[int, list] = {}
        for (i, j, key), gen in zip(asks, gens):
            path = candidates[i][j]
            value = value_of([t.text for t in gen.traces], path.completed, path.text)
            cache[i][key] = value
            values[i][j] = value
            segs, pre = tally.setdefault(i, ([], [0, 0]))
            segs.extend(t.completion_tokens for t in gen.traces)
            pre[0] += gen.prompt_tokens
            pre[1] += gen.cached_prompt_tokens
        for i, (segs, pre) in tally.items():
            accounts[i].add(segs, pre[0], pre[1])
            spent[i]["value_prompts"] += len(segs) // evaluations
            spent[i]["value_prompt_tokens"] += pre[0]
            spent[i]["value_completion_tokens"] += sum(segs)
        for i, cands in enumerate(candidates):          # the new states' values along the path
            for j, path in enumerate(cands):
                if len(path.step_scores) < len(path.steps):
                    path.step_scores.append(values[i][j])
        return values
