"""What the step-level searches share (beam, dvts, dora): partial solutions grown a step at a
time, their scoring, and search-and-learn's bookkeeping (huggingface/search-and-learn@6f81cac,
src/sal/search/, "SAL" below).

A step ends at a blank line (SAL's stop "\\n\\n", kept in the step's text: include_stop_str_in_output)
or at the step's token cap. A path is complete when its step ended otherwise (EOS, a --stop
string, the cap: SAL's vLLM reports stop_reason None for both EOS and length, utils.py:120-127) or
was empty (beam_search.py:125-131).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ttx.tts.search import STEP_SEPARATOR, Account, question_of, round_seed, trace_record


@dataclass
class Path:
    problem: int
    text: str = ""
    steps: list[str] = field(default_factory=list)
    step_scores: list[float] = field(default_factory=list)
    tokens: int = 0                   # generated tokens along this path
    completed: bool = False
    finish_reason: str = "stop"
    lookahead: str = ""               # a greedy rollout past the last step (rescore: rollout)
    ignored: int = 0                  # (ttx beam) budget forcing inside steps
    waiting: bool = False
    forced_end: bool = False
    segment: object = None            # the Trace of the newest step (the policy scores it)

    def copy(self) -> "Path":
        return replace(self, steps=list(self.steps), step_scores=list(self.step_scores),
                       segment=None)

    def score(self, agg: str) -> float:
        """The path score from step scores (SAL's aggregate_scores, utils/score.py:33-43)."""
        if not self.step_scores:
            return -math.inf
        if agg == "last":
            return self.step_scores[-1]
        if agg == "min":
            return min(self.step_scores)
        return math.prod(self.step_scores)

    def trace(self, agg: str, **extra) -> dict:
        score = self.score(agg)
        return trace_record(self.text, self.tokens, self.finish_reason,
                            score=None if score == -math.inf else score,
                            step_scores=list(self.step_scores), steps=len(self.steps), **extra)


def cyclic(items: list, n: int) -> list:
    """SAL's refill to n (beam_search.py:71-84): (items * (n // len + 1))[:n], deep copies."""
    if not items:
        return []
    return [p.copy() for p in (items * (n // len(items) + 1))[:n]]


def grow(engine, prefixes: list[str], parents: list[Path], counts: list[int], params: list,
         seed, round_index: int, accounts: list[Account], last: bool) -> list[list[Path]]:
    """One step for each parent, `counts[i]` samples of parent i from one shared prefill: the
    children of each parent, in order. A step that stopped at the blank line keeps it; the
    others (EOS, a --stop string, the cap) complete their path, as does an empty step."""
    todo = [(p, k, pa) for p, k, pa in zip(parents, counts, params) if k > 0]
    if not todo:
        return [[] for _ in parents]
    prompts = [prefixes[p.problem] + p.text for p, _, _ in todo]
    call = [replace(pa, seed=round_seed(seed, round_index)) for _, _, pa in todo]
    gens = engine.generate(prompts, [k for _, k, _ in todo], call)
    out, it = [], iter(zip(todo, gens))
    segments: dict[int, list[int]] = {}
    prefill: dict[int, list[int]] = {}
    for parent, k in zip(parents, counts):
        if k <= 0:
            out.append([])
            continue
        _, gen = next(it)
        tally = prefill.setdefault(parent.problem, [0, 0])
        tally[0] += gen.prompt_tokens
        tally[1] += gen.cached_prompt_tokens
        children = []
        for trace in gen.traces:
            step = trace.text + (STEP_SEPARATOR if trace.stop_string == STEP_SEPARATOR else "")
            child = parent.copy()
            child.text, child.tokens = parent.text + step, parent.tokens + trace.completion_tokens
            child.steps.append(step)
            child.finish_reason = trace.finish_reason
            child.lookahead = ""
            child.completed = last or trace.stop_string != STEP_SEPARATOR or not step
            child.segment = trace
            segments.setdefault(parent.problem, []).append(trace.completion_tokens)
            children.append(child)
        out.append(children)
    for problem, tokens in segments.items():
        accounts[problem].add(tokens, *prefill[problem])
    return out


def look_ahead(engine, prefixes: list[str], paths: list[Path], steps: int, params, seed,
               round_index: int, accounts: list[Account]) -> None:
    """SAL's lookahead (utils.py:80-158): up to `steps` more greedy steps from each open path,
    kept in `path.lookahead` (read by rescore with rollout=True); a rollout that ends (EOS) stops."""
    live = [p for p in paths if not p.completed]
    greedy = replace(params, temperature=0.0)
    for r in range(steps):
        if not live:
            return
        gens = engine.generate([prefixes[p.problem] + p.text + p.lookahead for p in live], 1,
                               replace(greedy, seed=round_seed(seed, round_index + r)))
        segments: dict[int, list[int]] = {}
        prefill: dict[int, list[int]] = {}
        still = []
        for p, gen in zip(live, gens):
            trace = gen.traces[0]
            stopped = trace.stop_string == STEP_SEPARATOR
            p.lookahead += trace.text + (STEP_SEPARATOR if stopped else "")
            segments.setdefault(p.problem, []).append(trace.completion_tokens)
            tally = prefill.setdefault(p.problem, [0, 0])
            tally[0] += gen.prompt_tokens
            tally[1] += gen.cached_prompt_tokens
            if stopped:
                still.append(p)
        for problem, tokens in segments.items():
            accounts[problem].add(tokens, *prefill[problem])
        live = still


def rescore(scorer, prompts: list, paths: list[Path], agg: str, construction: str,
            rollout: bool = True) -> list[float]:
    """Each path's score this iteration. A reward model rescores the whole path (with its
    lookahead rollout when `rollout`) in batched forwards, replacing its step scores, as SAL
    does every iteration (beam_search.py:135-143); its steps are split as `construction` builds
    PRM inputs (ttx.reward_inputs.steps_of). The policy scorer appends the new step's own
    score."""
    if scorer.is_reward_model:
        from ttx.reward_inputs import steps_of

        step_lists = scorer.score_paths([
            (question_of(prompts[p.problem]),
             steps_of(p.text + (p.lookahead if rollout else ""), construction)) for p in paths])
        for p, scores in zip(paths, step_lists):
            p.step_scores = list(scores)
    else:
        for p in paths:
            value = scorer.segment(p.segment)
            p.step_scores.append(value if value is not None else 0.0)
    return [p.score(agg) for p in paths]


def final_selection(completed: list[Path], n: int, sort_completed: bool, agg: str) -> list[Path]:
    """SAL's final beams (beam_search.py:176-197): the first n completed (or, with
    sort_completed, the n best), refilled cyclically to n."""
    if sort_completed:
        chosen = sorted(completed, key=lambda p: p.score(agg), reverse=True)[:n]
    else:
        chosen = completed[:n]
    if chosen and len(chosen) != n:
        chosen = cyclic(chosen, n)
    return chosen


def argmax(values: list[float]) -> int:
    """numpy.argmax: the first maximum."""
    return max(range(len(values)), key=lambda i: (values[i], -i))
