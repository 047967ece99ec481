"""Budget forcing (s1: Muennighoff et al. 2025, arXiv 2501.19393, section 3.1), in two styles.

`--budget-style s1` (default) is the procedure behind the paper's numbers, s1's
lm-evaluation-harness fork (simplescaling/s1@77272c6 eval/lm-evaluation-harness/lm_eval/models/
vllm_causallms.py, "VC" below), request for request:
  - every request is token ids (TokenPrompt), as the harness sends vLLM: the prompt encoded
    without special tokens, then `<|im_start|>think`'s ids (VC:283), then the thinking's sampled
    ids; text is never encoded again (a non-canonical split stays as sampled);
  - thinking stops at the stop token ids of `<|im_start|>`, each --stop string and EOS's text
    (VC:246-250, 278-280: one token each, or the run is refused), with min_tokens 1 whenever
    --num-ignore is given, 0 included (VC:273-275);
  - K + 1 rounds (VC:334), every round with the full thinking budget B; a round that stopped (not
    the last) loses a trailing stop id (VC:362-364) and gets the ignore string's ids ("Wait")
    with no separator (VC:366-368); a round that hit the length, or the last, is kept as it came;
  - the ids are then cut to B (VC:381-384: "Wait" tokens count) and lose a trailing stop id
    (EOS too) (VC:397-399); the text is not cut: the graded output holds the whole thinking;
  - a final round that ended by length gets ["\\n"] `<|im_start|>answer\\nFinal Answer:`, the
    newline decided on the uncut text; one that stopped gets `<|im_start|>answer` (VC:401-412);
  - the answer gets the whole generation budget, --max-new-tokens, and the task's stops plus
    EOS's text (VC:414, 559-564).
  B is --max-thinking-tokens, or s1's "auto" rule (VC:262-264): --max-new-tokens less the call's
  longest prompt, the delimiters and 100 (a run where that is below 1 is refused). --auto-budget
  cpu is ttx's rule for the small budgets of CPU models instead: --max-new-tokens less the
  delimiters and min(100, half the budget), no prompt. With --min-thinking-tokens and
  --num-ignore 0, one thinking round with that minimum (s1's min_tokens_thinking, VC:276-277).
  On the openai engine the sampled ids come from vLLM's return_token_ids; a server without it
  gets the text encoded again (a warning, and `ids_from_text` in the record).

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

import sys
from dataclasses import dataclass, replace

from ttx.engines.base import SamplingParams, TokenPrompt, Trace
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
    raw: str = ""                    # s1: the thinking's text, uncut (what s1 grades)
    answer_ids: list | None = None   # s1: the answer request's token ids

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

    def begin(self, prefixes: list[str]) -> None:
        pass

    def first_request(self, i: int, prefix: str) -> str:
        return prefix

    def request(self, prefix: str, t: Thought) -> str:
        return prefix + t.text

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
    """The s1 style (module docstring): rounds of the full budget over token ids, a cut, the s1
    delimiters; every request as the harness builds it."""

    def __init__(self, engine, cfg):
        s = cfg.search
        self.params: SamplingParams = cfg.params
        self.search = s
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
        # VC:246-250 with VC:559-564: thinking stops at <|im_start|>, the task's stops and EOS's
        # text, each sent as one stop token id (one token each: VC:278 asserts it)
        eos = self.tokenizer.eos_token_id
        self.eos_text = self.tokenizer.decode([eos]) if eos is not None else None
        until = [S1_STOP] if known else []
        until += list(self.params.stop) + ([self.eos_text] if self.eos_text else [])
        self.until: list[list[int]] = []
        for text in until:
            ids = self._ids(text)
            if len(ids) != 1:
                raise TtxError(f"--budget-style s1 stops thinking at single tokens (s1's harness "
                               f"asserts it, VC:278): --stop {text!r} is {len(ids)} tokens; use "
                               f"--budget-style ttx")
            self.until.append(ids)
        self.stop_ids = tuple(ids[0] for ids in self.until)
        self.num_ignore = s.num_ignore
        self.ignore_str = s.ignore_str
        self.ignore_ids = self._ids(s.ignore_str)
        # VC:273-277: min_tokens 1 whenever stops are ignored (--num-ignore given, 0 included);
        # --min-thinking-tokens is min_tokens_thinking without ignores (check() refuses both)
        self.minimum = 1 if s.min_thinking_tokens is None else s.min_thinking_tokens
        self.start_ids = self._ids(self.start)
        self.end_ids = self._ids(self.end)
        self.end_max_ids = self._ids(self.end + S1_FINAL)
        self.newline_ids = self._ids("\n")
        self.prompt_ids: list[list[int]] = []
        self.maximum = s.max_thinking_tokens or 0

    def _ids(self, text: str) -> list[int]:
        # lm-eval's tok_encode (VC:196-217): no special tokens added
        return self.tokenizer(text, add_special_tokens=False).input_ids if text else []

    def begin(self, prefixes: list[str]) -> None:
        """A call's prompts as the harness encodes them, and its thinking budget B."""
        self.prompt_ids = [self._ids(p) for p in prefixes]
        s, budget = self.search, self.params.max_new_tokens
        if s.max_thinking_tokens:
            self.maximum = s.max_thinking_tokens
        elif s.auto_budget == "s1":
            # VC:261-264: max_gen_toks less the batch's longest prompt, the delimiters and 100
            longest = max(map(len, self.prompt_ids), default=0)
            self.maximum = (budget - longest - len(self.start_ids) - len(self.end_max_ids)
                            - S1_RESERVE)
            if self.maximum < 1:
                raise TtxError(f"--budget-style s1's auto thinking budget (VC:264) is "
                               f"--max-new-tokens {budget} less the longest prompt ({longest} "
                               f"tokens), the delimiters ({len(self.start_ids)} + "
                               f"{len(self.end_max_ids)}) and {S1_RESERVE}: {self.maximum}; raise "
                               f"--max-new-tokens, give --max-thinking-tokens, or --auto-budget cpu")
        else:
            # ttx's CPU rule: no prompt, and at most half the budget kept for the answer
            delimiters = len(self.start_ids) + len(self.end_max_ids) + 1
            self.maximum = max(1, budget - delimiters - min(S1_RESERVE, budget // 2))

    def first_request(self, i: int, prefix: str) -> TokenPrompt:
        return TokenPrompt(self.prompt_ids[i] + self.start_ids)      # VC:283

    def request(self, prefix: str, t: Thought) -> TokenPrompt:
        if t.phase == "answer":
            return TokenPrompt(t.answer_ids)
        return TokenPrompt(self.prompt_ids[t.problem] + self.start_ids + t.ids)   # VC:377

    def first_params(self) -> SamplingParams:
        return self.think_params()

    def think_params(self) -> SamplingParams:
        return replace(self.params, max_new_tokens=self.maximum,
                       min_new_tokens=min(self.minimum, self.maximum), stop=(),
                       stop_token_ids=self.stop_ids)

    def _strip(self, ids: list[int]) -> list[int]:
        """VC:362-364 and 397-399: drop a stop token that ends the ids (each stop in turn)."""
        for toks in self.until:
            if ids[-len(toks):] == toks:
                ids = ids[:-len(toks)]
        return ids

    def after_thinking(self, t: Thought, trace: Trace) -> None:
        if t.ids is None:
            t.ids, t.raw = [], ""
        t.rounds += 1
        t.generated += trace.completion_tokens
        cont = list(trace.token_ids)
        if not cont and trace.completion_tokens:
            cont = self._ids(trace.text)        # a server without return_token_ids: inexact
            if not self.inexact:
                print("ttx tts-run: warning: the server returned no token ids (vLLM: "
                      "return_token_ids); s1 continues from the text encoded again, not the "
                      "sampled ids", file=sys.stderr)
            self.inexact = True
        if trace.finish_reason != "length" and t.rounds <= self.num_ignore:
            t.ignored += 1                      # VC:360-378: drop the stop, append "Wait"
            t.ids += self._strip(cont) + self.ignore_ids
            t.raw += trace.text + self.ignore_str
            return
        t.ids += cont                           # VC:351-359: the final round, as it came
        t.raw += trace.text
        if len(t.ids) > self.maximum:           # VC:381-384: cut the ids (not the text)
            t.cut = True
            t.ids = t.ids[:self.maximum]
        ids = self._strip(t.ids)                # VC:393-399
        t.thinking_tokens = len(ids)
        if trace.finish_reason == "length":     # VC:401-409: forced end, "Final Answer:"
            t.forced_end = True
            # the newline is decided on the uncut text (VC:404)
            newline = t.raw.endswith("\n") or self.start.startswith("\n")
            tail = ([] if newline else self.newline_ids) + self.end_max_ids
            t.text = self.start + t.raw + ("" if newline else "\n") + self.end + S1_FINAL
        else:                                   # VC:410-412: it ended its thinking itself
            tail = self.end_ids
            t.text = self.start + t.raw + self.end
        t.answer_ids = self.prompt_ids[t.problem] + self.start_ids + ids + tail
        t.finish_reason = trace.finish_reason
        t.phase = "answer"

    def after_answer(self, t: Thought, trace: Trace) -> None:
        t.text += trace.text                    # VC:461: graded text = thinking + answer
        t.answer_tokens += trace.completion_tokens
        t.generated += trace.completion_tokens
        t.finish_reason = trace.finish_reason
        t.phase = "done"

    def next_params(self, t: Thought) -> SamplingParams:
        if t.phase == "answer":                 # VC:414: the whole budget, the task's stops
            stops = tuple(self.params.stop) + ((self.eos_text,) if self.eos_text else ())
            return replace(self.params, min_new_tokens=0, stop=stops, stop_token_ids=())
        return self.think_params()

    def advance(self, t: Thought, trace: Trace) -> None:
        (self.after_answer if t.phase == "answer" else self.after_thinking)(t, trace)

    inexact = False                             # some round's ids came back as text only


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
        gens = engine.generate([rules.request(prefix_of(t), t) for t in pending], 1, params)
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


@register
class BudgetForcing(Strategy):
    name = "budget-forcing"
    rank = 7
    summary = ("s1 budget forcing: ignore early stops with 'Wait', cut at the thinking budget, "
               "then answer; n traces vote.")
    knobs = ("budget_style", "auto_budget", "min_thinking_tokens", "max_thinking_tokens", "num_ignore",
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
        if s.budget_style == "ttx" and given & {"think_start", "auto_budget"}:
            raise TtxError(f"--{sorted(given & {'think_start', 'auto_budget'})[0].replace('_', '-')} "
                           f"applies to --budget-style s1")
        if "auto_budget" in given and s.max_thinking_tokens is not None:
            raise TtxError("--auto-budget sets the thinking budget when --max-thinking-tokens is "
                           "not given: give one of them")
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
        rules.begin(prefixes)
        # round 0: n traces per prompt from one shared prefill
        first = replace(rules.first_params(), seed=round_seed(seed, 0))
        requests = [rules.first_request(i, p) for i, p in enumerate(prefixes)]
        for i, gen in enumerate(engine.generate(requests, cfg.n, first)):
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
            if isinstance(rules, S1Rules) and rules.inexact:
                summary["ids_from_text"] = True
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
