"""Budget forcing (s1: Muennighoff et al. 2025, arXiv 2501.19393, section 3.1), in two styles.

`--budget-style s1` (default) is the procedure behind the paper's numbers, s1's
lm-evaluation-harness fork (simplescaling/s1@77272c6 eval/lm-evaluation-harness/lm_eval/models/
vllm_causallms.py, "VC" below):
  - the assistant turn opens with `<|im_start|>think` (VC:283); thinking stops at the
    `<|im_start|>` token or EOS (VC:246, a stop token, not a string) or a --stop string;
  - K + 1 rounds (VC:333), every round with the full thinking budget B and min_tokens = 1 when
    K > 0 (VC:273-275); a round that stopped (not the last) gets the ignore string ("Wait")
    appended with no separator (VC:366-368); a round that hit the length, or the last, is final;
  - the thinking is then cut to B tokens (VC:381-384: "Wait" tokens count);
  - a final round that ended by length gets ["\\n"] `<|im_start|>answer\\nFinal Answer:`, one that
    stopped gets `<|im_start|>answer` (VC:401-412);
  - the answer gets the whole generation budget, --max-new-tokens (VC:414).
  B is --max-thinking-tokens, or s1's "auto" rule (VC:261-264): --max-new-tokens less the
  delimiters less a reserve kept for the answer (100 tokens, or half the budget when that is
  smaller: budgets of a CPU model are far below s1's 32768). With --min-thinking-tokens and
  --num-ignore 0, one thinking round with that minimum (VC:276-277).

`--budget-style ttx` is s1's README procedure (README.md:130-144: each round gets what is left of
the budget) with two additions: a stop before --min-thinking-tokens (any stop, when no minimum is
given) is ignored at most K times, the trace continuing with EOS held back until the minimum; a
trace cut at the maximum gets the end-of-thinking text (--think-end, "</think>" when the model
knows it, else none) and "Final Answer:", then a short answer of --answer-tokens. A model that
ends its own thinking (`</think>`) answers with what is left of --max-new-tokens.

All traces of a chunk advance in rounds; each round is one batched engine call. With --n N the
N traces of a problem vote (majority).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ttx.engines.base import SamplingParams, Trace
from ttx.errors import TtxError
from ttx.scoring.answers import majority_vote
from ttx.tts.search import Account, round_seed, templated, think_end, tokenizer_of, trace_record
from ttx.tts.strategy import Outcome, Strategy, register

FINAL_ANSWER = "\n\nFinal Answer:"
S1_START, S1_END, S1_FINAL = "<|im_start|>think", "<|im_start|>answer", "\nFinal Answer:"
S1_STOP = "<|im_start|>"
S1_RESERVE = 100


@dataclass
class Thought:
    """One budget-forced trace as it grows."""

    problem: int
    text: str = ""                   # the assistant text after the prompt (delimiters included)
    thinking_tokens: int = 0
    answer_tokens: int = 0
    generated: int = 0               # every token generated (also what a cut threw away)
    ignored: int = 0                 # stops ignored (the ignore string appended)
    forced_end: bool = False         # the thinking ended by its budget
    cut: bool = False                # s1: thinking past the budget was cut
    phase: str = "think"             # think -> answer -> done
    finish_reason: str = "stop"
    rounds: int = 0
    ids: list | None = None          # s1: the thinking's token ids (the ignore strings' too)

    def record(self) -> dict:
        return trace_record(self.text, self.generated, self.finish_reason,
                            budget_forcing={"ignored": self.ignored, "forced_end": self.forced_end,
                                            "thinking_tokens": self.thinking_tokens,
                                            "answer_tokens": self.answer_tokens,
                                            **({"cut": self.cut} if self.ids is not None else {})})


class TtxRules:
    """The ttx style: what a trace does after each generated segment, and what it asks next."""

    def __init__(self, engine, cfg):
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
        t.generated += trace.completion_tokens
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
        t.generated += trace.completion_tokens
        t.finish_reason = trace.finish_reason
        t.phase = "done"

    def next_params(self, t: Thought) -> SamplingParams:
        if t.phase == "answer":
            budget = (self.answer_tokens if t.forced_end
                      else max(1, self.params.max_new_tokens - t.thinking_tokens))
            return replace(self.params, max_new_tokens=budget, min_new_tokens=0,
                           stop=self.user_stops)
        left = self.maximum - t.thinking_tokens
        # after "Wait", EOS (and the end tag) is suppressed until the minimum (at least 1 token)
        deficit = (self.minimum or 0) - t.thinking_tokens
        return replace(self.params, max_new_tokens=left, min_new_tokens=min(left, max(1, deficit)),
                       stop=self.stops)

    def advance(self, t: Thought, trace: Trace) -> None:
        (self.after_answer if t.phase == "answer" else self.after_thinking)(t, trace)


class S1Rules:
    """The s1 style (module docstring): rounds of the full budget, a cut, the s1 delimiters."""

    def __init__(self, engine, cfg):
        s = cfg.search
        self.params: SamplingParams = cfg.params
        self.tokenizer = tokenizer_of(engine, s)
        self.start = S1_START if s.think_start is None else s.think_start
        self.end = S1_END if s.think_end is None else s.think_end
        stop_id = self.tokenizer.convert_tokens_to_ids(S1_STOP)
        known = stop_id is not None and stop_id != self.tokenizer.unk_token_id
        if not known and (s.think_start is None or s.think_end is None):
            raise TtxError("--budget-style s1 brackets thinking with <|im_start|>think ... "
                           "<|im_start|>answer (s1's ChatML models), and this tokenizer has no "
                           "<|im_start|> token: give --think-start and --think-end, or use "
                           "--budget-style ttx")
        self.stop_ids = (stop_id,) if known else ()
        self.num_ignore = s.num_ignore
        self.ignore_str = s.ignore_str
        self.ignore_ids = self._ids(s.ignore_str)
        self.minimum = s.min_thinking_tokens
        budget = self.params.max_new_tokens
        delimiters = len(self._ids(self.start)) + len(self._ids(self.end + S1_FINAL)) + 1
        reserve = min(S1_RESERVE, budget // 2)
        self.maximum = s.max_thinking_tokens or max(1, budget - delimiters - reserve)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids if text else []

    def prefix_text(self) -> str:
        return self.start

    def first_params(self) -> SamplingParams:
        return self.think_params()

    def think_params(self) -> SamplingParams:
        minimum = 1 if self.num_ignore > 0 else (self.minimum or 0)
        return replace(self.params, max_new_tokens=self.maximum,
                       min_new_tokens=min(minimum, self.maximum), stop=tuple(self.params.stop),
                       stop_token_ids=self.stop_ids)

    def after_thinking(self, t: Thought, trace: Trace) -> None:
        if t.ids is None:
            t.ids, t.text = [], self.start
        t.rounds += 1
        ids = list(trace.token_ids) or self._ids(trace.text)
        if trace.stop_token is not None and ids and ids[-1] == trace.stop_token:
            ids = ids[:-1]                      # the stop token itself is not thinking
        t.ids += ids
        t.generated += trace.completion_tokens
        body = t.text + trace.text
        final = trace.finish_reason != "stop" or t.rounds > self.num_ignore
        if not final:                           # rounds remain: ignore the stop, append "Wait"
            t.ignored += 1
            t.ids += self.ignore_ids
            t.text = body + self.ignore_str
            return
        if len(t.ids) > self.maximum:           # VC:381-384: cut the thinking to the budget
            t.cut = True
            t.ids = t.ids[:self.maximum]
            body = self.start + self.tokenizer.decode(t.ids, skip_special_tokens=False)
        t.thinking_tokens = len(t.ids)
        if trace.finish_reason == "length":     # VC:401-409: forced end, "Final Answer:"
            t.forced_end = True
            body += ("" if body.endswith("\n") else "\n") + self.end + S1_FINAL
        else:                                   # VC:410-412: it ended its thinking itself
            body += self.end
        t.text = body
        t.finish_reason = trace.finish_reason
        t.phase = "answer"

    def after_answer(self, t: Thought, trace: Trace) -> None:
        t.text += trace.text
        t.answer_tokens += trace.completion_tokens
        t.generated += trace.completion_tokens
        t.finish_reason = trace.finish_reason
        t.phase = "done"

    def next_params(self, t: Thought) -> SamplingParams:
        if t.phase == "answer":                 # VC:414: the whole generation budget
            return replace(self.params, min_new_tokens=0, stop=tuple(self.params.stop))
        return self.think_params()

    def advance(self, t: Thought, trace: Trace) -> None:
        (self.after_answer if t.phase == "answer" else self.after_thinking)(t, trace)


def continue_rounds(engine, rules, prefixes: list[str], thoughts: list[Thought],
                    accounts: list[Account], seed, first_round: int, prefix_of=None) -> None:
    """Advance every unfinished thought, one batched engine call per round, until all are done.

    `prefix_of(thought)` gives the text a thought continues (default: its problem's prompt)."""
    prefix_of = prefix_of or (lambda t: prefixes[t.problem])
    round_index = first_round
    while True:
        pending = [t for t in thoughts if t.phase != "done"]
        if not pending:
            return
        params = [replace(rules.next_params(t), seed=round_seed(seed, round_index))
                  for t in pending]
        gens = engine.generate([prefix_of(t) + (t.text or _opening(rules)) for t in pending],
                               1, params)
        segments: dict[int, list[int]] = {}
        prefill: dict[int, list[int]] = {}
        for t, gen in zip(pending, gens):
            trace = gen.traces[0]
            rules.advance(t, trace)
            segments.setdefault(t.problem, []).append(trace.completion_tokens)
            counts = prefill.setdefault(t.problem, [0, 0])
            counts[0] += gen.prompt_tokens
            counts[1] += gen.cached_prompt_tokens
        for problem, tokens in segments.items():
            accounts[problem].add(tokens, *prefill[problem])
        round_index += 1


def _opening(rules) -> str:
    return rules.prefix_text() if isinstance(rules, S1Rules) else ""


@register
class BudgetForcing(Strategy):
    name = "budget-forcing"
    rank = 5
    summary = ("s1 budget forcing: ignore early stops with 'Wait', cut at the thinking budget, "
               "then answer; n traces vote.")
    knobs = ("budget_style", "min_thinking_tokens", "max_thinking_tokens", "num_ignore",
             "ignore_str", "think_start", "think_end", "answer_tokens")
    axes = ("n", "max_new_tokens", "max_thinking_tokens")
    continues = True

    @classmethod
    def check(cls, cfg, *, engine, given):
        super().check(cfg, engine=engine, given=given)
        s = cfg.search
        if s.budget_style == "s1" and given & {"answer_tokens"}:
            raise TtxError("--answer-tokens applies to --budget-style ttx: s1 answers with the "
                           "whole --max-new-tokens")
        if s.budget_style == "ttx" and given & {"think_start"}:
            raise TtxError("--think-start applies to --budget-style s1")
        if s.budget_style == "s1" and s.min_thinking_tokens is not None and s.num_ignore > 0:
            raise TtxError("--min-thinking-tokens with --budget-style s1 is s1's "
                           "min_tokens_thinking, which its harness drops when stops are ignored "
                           "(--num-ignore > 0): give --num-ignore 0, or use --budget-style ttx")

    def run(self, engine, prompts, cfg):
        rules = (S1Rules if cfg.search.budget_style == "s1" else TtxRules)(engine, cfg)
        prefixes = [templated(engine, p, cfg.search) for p in prompts]
        seed = cfg.params.seed
        accounts = [Account() for _ in prompts]
        thoughts = [Thought(problem=i) for i in range(len(prompts)) for _ in range(cfg.n)]
        # round 0: n traces per prompt from one shared prefill
        first = replace(rules.first_params(), seed=round_seed(seed, 0))
        opening = _opening(rules)
        for i, gen in enumerate(engine.generate([p + opening for p in prefixes], cfg.n, first)):
            accounts[i].prompt_tokens = gen.prompt_tokens
            mine = thoughts[i * cfg.n:(i + 1) * cfg.n]
            for t, trace in zip(mine, gen.traces):
                rules.after_thinking(t, trace)
            accounts[i].add([tr.completion_tokens for tr in gen.traces], gen.prompt_tokens,
                            gen.cached_prompt_tokens)
        continue_rounds(engine, rules, prefixes, thoughts, accounts, seed, first_round=1)
        outcomes = []
        for i, account in enumerate(accounts):
            mine = thoughts[i * cfg.n:(i + 1) * cfg.n]
            traces = [t.record() for t in mine]
            summary = {"style": cfg.search.budget_style,
                       "ignored": sum(t.ignored for t in mine),
                       "forced_end": sum(t.forced_end for t in mine),
                       "thinking_budget": rules.maximum, "think_end": rules.end}
            outcomes.append(Outcome(traces=traces,
                                    pred=majority_vote([t["pred"] for t in traces],
                                                       cfg.invalid_votes),
                                    completion_tokens=account.completion,
                                    sequential_tokens=account.sequential,
                                    prompt_tokens=account.prompt_tokens,
                                    extra={"budget_forcing": summary, **account.extra()}))
        return outcomes

    @classmethod
    def aggregate(cls, record, preds, invalid):
        return majority_vote(preds, invalid)
