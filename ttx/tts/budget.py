"""Budget forcing (s1: Muennighoff et al. 2025, arXiv 2501.19393, section 3.1).

Each trace thinks until it stops. A stop before --min-thinking-tokens (any stop, when no minimum
is given: s1's "Wait" x K) is ignored at most --num-ignore K times: the stop (EOS, or the
end-of-thinking tag) is dropped, the ignore string ("Wait") appended, and the trace continued with
EOS suppressed until the minimum is reached (SamplingParams.min_new_tokens). A trace that reaches
--max-thinking-tokens is cut there: the end-of-thinking text and "Final Answer:" are appended and a
short answer (--answer-tokens) is generated. A model with <think>...</think> that ends its thinking
itself gets "</think>" back and writes its answer after it.

All traces of a chunk advance in rounds; each round is one batched engine call in which every
trace has its own remaining budget. With --n N the N traces of a problem vote (majority).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ttx.engines.base import Engine, SamplingParams, Trace
from ttx.scoring.answers import majority_vote
from ttx.tts.search import Account, round_seed, templated, think_end, trace_record

FINAL_ANSWER = "\n\nFinal Answer:"


@dataclass
class Thought:
    """One budget-forced trace as it grows."""

    problem: int
    text: str = ""
    thinking_tokens: int = 0
    answer_tokens: int = 0
    ignored: int = 0                 # stops ignored (the ignore string appended)
    forced_end: bool = False         # cut at the maximum: end-of-thinking + "Final Answer:"
    phase: str = "think"             # think -> (answer) -> done
    finish_reason: str = "stop"

    def record(self) -> dict:
        return trace_record(self.text, self.thinking_tokens + self.answer_tokens,
                            self.finish_reason,
                            budget_forcing={"ignored": self.ignored, "forced_end": self.forced_end,
                                            "thinking_tokens": self.thinking_tokens,
                                            "answer_tokens": self.answer_tokens})


class BudgetForcing:
    """The s1 rules: what a trace does after each generated segment, and what it asks next."""

    def __init__(self, engine: Engine, cfg):
        s = cfg.search
        self.params: SamplingParams = cfg.params
        self.end, self.tag = think_end(engine, s)
        self.user_stops = tuple(self.params.stop)
        self.stops = self.user_stops + ((self.end,) if self.tag else ())
        self.maximum = s.max_thinking_tokens or self.params.max_new_tokens
        self.minimum = s.min_thinking_tokens
        self.num_ignore = s.num_ignore
        self.ignore_str = s.ignore_str
        self.answer_tokens = s.answer_tokens

    def first_params(self) -> SamplingParams:
        return replace(self.params, max_new_tokens=self.maximum, stop=self.stops)

    def after_thinking(self, t: Thought, trace: Trace) -> None:
        t.text += trace.text
        t.thinking_tokens += trace.completion_tokens
        t.finish_reason = trace.finish_reason
        if trace.stop_string is not None and trace.stop_string in self.user_stops \
                and trace.stop_string != self.end:
            t.phase = "done"                    # the user's own stop string ends the trace
            return
        if trace.finish_reason != "stop":       # reached the maximum: force the end
            self.force_end(t)
            return
        early = self.minimum is None or t.thinking_tokens < self.minimum
        if early and t.ignored < self.num_ignore and t.thinking_tokens < self.maximum:
            t.ignored += 1                      # drop the stop, append "Wait", continue
            t.text += ("" if not t.text or t.text[-1].isspace() else " ") + self.ignore_str
            t.phase = "think"
        elif self.tag:                          # it ended its thinking: let it answer
            t.text += self.end
            t.phase = "answer"
        else:                                   # a plain chat model's thinking is its answer
            t.phase = "done"

    def force_end(self, t: Thought) -> None:
        t.forced_end = True
        t.text += self.end + FINAL_ANSWER
        t.phase = "answer"

    def after_answer(self, t: Thought, trace: Trace) -> None:
        t.text += trace.text
        t.answer_tokens += trace.completion_tokens
        t.finish_reason = trace.finish_reason
        t.phase = "done"

    def next_params(self, t: Thought) -> SamplingParams:
        if t.phase == "answer":
            return replace(self.params, max_new_tokens=self.answer_tokens, min_new_tokens=0,
                           stop=self.user_stops)
        left = self.maximum - t.thinking_tokens
        # after "Wait", EOS (and the end tag) is suppressed until the minimum (at least 1 token)
        deficit = (self.minimum or 0) - t.thinking_tokens
        return replace(self.params, max_new_tokens=left, min_new_tokens=min(left, max(1, deficit)),
                       stop=self.stops)

    def advance(self, t: Thought, trace: Trace) -> None:
        (self.after_answer if t.phase == "answer" else self.after_thinking)(t, trace)


def continue_rounds(engine: Engine, forcing: BudgetForcing, prefixes: list[str],
                    thoughts: list[Thought], accounts: list[Account], seed, first_round: int,
                    prefix_of=None) -> None:
    """Advance every unfinished thought, one batched engine call per round, until all are done.

    `prefix_of(thought)` gives the text a thought continues (default: its problem's prompt)."""
    prefix_of = prefix_of or (lambda t: prefixes[t.problem])
    round_index = first_round
    while True:
        pending = [t for t in thoughts if t.phase != "done"]
        if not pending:
            return
        params = [replace(forcing.next_params(t), seed=round_seed(seed, round_index))
                  for t in pending]
        gens = engine.generate([prefix_of(t) + t.text for t in pending], 1, params)
        segments: dict[int, list[int]] = {}
        prefill: dict[int, int] = {}
        for t, gen in zip(pending, gens):
            trace = gen.traces[0]
            forcing.advance(t, trace)
            segments.setdefault(t.problem, []).append(trace.completion_tokens)
            prefill[t.problem] = prefill.get(t.problem, 0) + gen.prompt_tokens
        for problem, tokens in segments.items():
            accounts[problem].add(tokens, prefill[problem])
        round_index += 1


def run_budget_forcing(engine: Engine, prompts: list, cfg) -> list:
    """Budget-forced traces for a chunk of prompts: n per prompt, majority vote over them."""
    from ttx.tts.strategies import Outcome

    forcing = BudgetForcing(engine, cfg)
    prefixes = [templated(engine, p, cfg.search) for p in prompts]
    seed = cfg.params.seed
    accounts = [Account() for _ in prompts]
    thoughts = [Thought(problem=i) for i in range(len(prompts)) for _ in range(cfg.n)]
    # round 0: n traces per prompt from one shared prefill
    first = replace(forcing.first_params(), seed=round_seed(seed, 0))
    for i, gen in enumerate(engine.generate(prefixes, cfg.n, first)):
        accounts[i].prompt_tokens = gen.prompt_tokens
        mine = thoughts[i * cfg.n:(i + 1) * cfg.n]
        for t, trace in zip(mine, gen.traces):
            forcing.after_thinking(t, trace)
        accounts[i].add([tr.completion_tokens for tr in gen.traces], gen.prompt_tokens)
    continue_rounds(engine, forcing, prefixes, thoughts, accounts, seed, first_round=1)
    outcomes = []
    for i, account in enumerate(accounts):
        mine = thoughts[i * cfg.n:(i + 1) * cfg.n]
        traces = [t.record() for t in mine]
        summary = {"ignored": sum(t.ignored for t in mine),
                   "forced_end": sum(t.forced_end for t in mine),
                   "think_end": forcing.end}
        outcomes.append(Outcome(traces=traces, pred=majority_vote([t["pred"] for t in traces]),
                                completion_tokens=account.completion,
                                sequential_tokens=account.sequential,
                                prompt_tokens=account.prompt_tokens,
                                extra={"budget_forcing": summary, **account.extra()}))
    return outcomes
