"""What the search strategies share: their knobs and their checks, templated text, accounting.

Budget forcing (s1, arXiv 2501.19393), step-level beam search and DVTS (Snell et al. 2024, arXiv
2408.03314; search-and-learn), DORA (arXiv 2506.15707) and self-refinement continue traces the
model has already
written. A continued trace is a new prompt that is the raw templated text: the chat template
applied to the question (with the generation prompt) and the text generated so far appended as it
is. The hf engine encodes such a str prompt without adding special tokens twice; the openai engine
sends it to /v1/completions, so it needs the model's tokenizer locally to apply the template.

Token accounting (docs/tts-run.md): `completion_tokens` counts every generated token of every
call, never the forced text ("Wait", "Final Answer:") nor the re-encoded prompt; that re-encoding
is reported as `prefill_tokens`. `sequential_tokens` is what the batched procedure actually waited
for: the sum over its rounds (engine calls) of the longest segment of the problem in that round.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import click

from ttx.engines.base import Prompt, Trace
from ttx.errors import TtxError
from ttx.options import opt
from ttx.scoring.answers import extract_answer

STEP_SEPARATOR = "\n\n"              # a reasoning step ends at a blank line (search-and-learn)
AGGREGATIONS = ("last", "min", "prod")
TURN_AGGREGATES = ("last", "majority")
PRM_FORMATS = ("tag", "chat", "qwen")


BUDGET_STYLES = ("s1", "ttx")
AUTO_BUDGETS = ("s1", "cpu")
BEAM_STYLES = ("search-and-learn", "ttx")
LOOKAHEAD_SCORING = ("path", "rollout")
DORA_RULES = ("code", "paper")
PRM_INPUTS = ("search-and-learn", "model-card")


def _knob(default, help, **kw):
    return opt(default, help, unset=True, **kw)


_POS = click.IntRange(min=1)
_NONNEG = click.IntRange(min=0)
_POSF = click.FloatRange(min=0, min_open=True)
_DIR = click.Path(exists=True, file_okay=False)


@dataclass
class SearchConfig:
    """The search strategies' knobs (one tts-run option each); a strategy refuses knobs it does
    not read (Strategy.knobs)."""

    # budget forcing (s1)
    budget_style: str = _knob("s1", "budget-forcing: s1's evaluation harness, or ttx's variant "
                              "(remaining budget per round, a minimum, a short forced answer).",
                              type=click.Choice(BUDGET_STYLES))
    min_thinking_tokens: int | None = _knob(None, "budget-forcing: continue a trace that stops "
                                            "before this many tokens (ttx style; s1: the minimum "
                                            "of one round, with --num-ignore 0).", type=_NONNEG)
    max_thinking_tokens: int | None = _knob(None, "budget-forcing: the thinking budget (default: "
                                            "s1: --auto-budget; ttx: --max-new-tokens).",
                                            type=_POS)
    auto_budget: str = _knob("s1", "budget-forcing s1 without --max-thinking-tokens: s1's rule "
                             "(--max-new-tokens less the call's longest prompt, the delimiters "
                             "and 100) or cpu (less the delimiters and min(100, half), for the "
                             "small budgets of CPU runs).", type=click.Choice(AUTO_BUDGETS))
    num_ignore: int = _knob(1, "budget-forcing: stops ignored at most K times per trace.",
                            type=_NONNEG)
    ignore_str: str = _knob("Wait", "budget-forcing: appended when a stop is ignored.")
    think_start: str | None = _knob(None, "budget-forcing s1: the text opening the thinking "
                                    "(default '<|im_start|>think').")
    think_end: str | None = _knob(None, "budget-forcing: end-of-thinking text (s1 default "
                                  "'<|im_start|>answer'; ttx: '</think>' when the model has it, "
                                  "else none).")
    answer_tokens: int = _knob(32, "budget-forcing ttx: tokens of the answer after a forced end.",
                               type=_POS)
    # beam / dvts / dora
    beam_style: str | None = _knob(None, "beam: search-and-learn's algorithm (default with "
                                   "--reward-model) or ttx's expansion (default otherwise).",
                                   type=click.Choice(BEAM_STYLES))
    beam_width: int = _knob(2, "beam/dvts: M; n/M beams (subtrees) kept, each expanded M ways.",
                            type=_POS)
    step_tokens: int | None = _knob(None, "beam/dvts/dora: a step ends at a blank line or after "
                                    "this many tokens (default: --max-new-tokens; ttx beam and "
                                    "dora: 64).", type=_POS)
    max_steps: int = _knob(4, "beam/dvts/dora: iterations; the last runs to EOS.", type=_POS)
    agg: str = _knob("last", "beam/dvts/dora (and PRM best-of-n): step scores -> path score.",
                     type=click.Choice(AGGREGATIONS))
    lookahead: int = _knob(0, "beam (search-and-learn)/dvts: greedy steps rolled out before a "
                           "step is scored (needs --reward-model).", type=_NONNEG)
    lookahead_scoring: str = _knob("path", "beam (search-and-learn) with --lookahead: what the "
                                   "PRM scores: the path alone, the rollout generated but unread "
                                   "(path: search-and-learn's beam_search.py) or the path with "
                                   "its rollout (rollout: Snell et al.'s lookahead search, "
                                   "search-and-learn's DVTS).", type=click.Choice(LOOKAHEAD_SCORING))
    filter_duplicates: bool = _knob(False, "beam (search-and-learn): keep one beam of each text.",
                                    is_flag=True)
    sort_completed: bool = _knob(False, "beam (search-and-learn)/dora: answer from the n best "
                                 "completed beams, not the first n.", is_flag=True)
    dora_tau: float = _knob(0.1, "dora: softmax temperature of the quality weight.", type=_POSF)
    dora_alpha: float = _knob(0.01, "dora: temperature of the similarity row-softmax.",
                              type=_POSF)
    dora_rule: str = _knob("code", "dora: the allocation of DORA's code (code: paths whose "
                           "quality share rounds to 0 dropped first; behind the paper's numbers) "
                           "or the paper's eq. 10-13 over every open path (paper: DORA's "
                           "rebase_diverse module).", type=click.Choice(DORA_RULES))
    embedder: str | None = _knob(None, "dora: a local embedding model folder (default: the "
                                 "policy's hidden states).", type=_DIR)
    # refine
    turns: int = _knob(1, "refine: rounds of check-and-correct.", type=_POS)
    turn_aggregate: str = _knob("last", "refine: the last turn's answer, or a vote over all "
                                "turns.", type=click.Choice(TURN_AGGREGATES))
    # reward model scorer (best-of-n, beam, dvts, dora)
    reward_model: str | None = _knob(None, "best-of-n/beam/dvts/dora: a local outcome or process "
                                     "reward model (replaces --scorer); loaded once per run.",
                                     type=_DIR)
    reward_batch_size: int = _knob(8, "Sequences per reward-model forward.", type=_POS)
    prm_format: str | None = _knob(None, "PRM input: steps followed by a tag (Math-Shepherd), "
                                   "chat turns (RLHFlow) or <extra_0>-joined steps "
                                   "(Qwen2.5-Math-PRM) (default: ttx_reward.json, else by "
                                   "architecture).", type=click.Choice(PRM_FORMATS))
    prm_step_tag: str | None = _knob(None, "PRM: text after each step, scored there (default "
                                     "'ки').")
    prm_good_token: str | None = _knob(None, "PRM: the token whose probability is the score "
                                       "(default '+').")
    prm_bad_token: str | None = _knob(None, "PRM: its opposite; '' scores against the whole "
                                      "vocabulary (default '-').")
    prm_input: str | None = _knob(None, "PRM input built as search-and-learn's PRM classes do "
                                  "(steps split at every blank line, empty ones kept; "
                                  "Math-Shepherd: system prompt first, the blank lines kept) or "
                                  "as the model card (model-card: empty steps dropped) (default: "
                                  "ttx_reward.json's, else search-and-learn for beam's "
                                  "search-and-learn style, dvts and dora, else model-card).",
                                  type=click.Choice(PRM_INPUTS))
    # the run's system message (--system): search-and-learn's Math-Shepherd input opens with it
    prm_system: str | None = opt(None, cli=False)
    # openai engine: the tokenizer that applies the chat template to continued traces
    tokenizer: str | None = opt(None, cli=False)
    # tot (Tree of Thoughts BFS, princeton-nlp/tree-of-thought-llm; defaults: scripts/game24/bfs.sh)
    tot_breadth: int = _knob(5, "tot: b, the states kept at each depth (n_select_sample).",
                             type=_POS)
    tot_evaluations: int = _knob(3, "tot: value prompts sampled per state (n_evaluate_sample).",
                                 type=_POS)
    tot_depth: int = _knob(4, "tot: depths (steps); the last runs to EOS.", type=_POS)
    tot_step_tokens: int = _knob(64, "tot: a step ends at a blank line or after this many "
                                 "tokens.", type=_POS)

    def validate(self, max_new_tokens: int) -> None:
        """Value checks common to every strategy; each error names the option."""
        for name in ("max_thinking_tokens", "answer_tokens", "beam_width", "step_tokens",
                     "max_steps", "turns", "reward_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TtxError(f"--{name.replace('_', '-')} must be positive, got {value}")
        for name in ("num_ignore", "lookahead"):
            if getattr(self, name) < 0:
                raise TtxError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        top = self.max_thinking_tokens or max_new_tokens
        if self.min_thinking_tokens is not None and self.min_thinking_tokens > top:
            raise TtxError(f"--min-thinking-tokens {self.min_thinking_tokens} exceeds the maximum "
                           f"({top}: --max-thinking-tokens, else --max-new-tokens)")
        choices = {"agg": AGGREGATIONS, "turn_aggregate": TURN_AGGREGATES,
                   "budget_style": BUDGET_STYLES, "auto_budget": AUTO_BUDGETS,
                   "dora_rule": DORA_RULES, "lookahead_scoring": LOOKAHEAD_SCORING}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise TtxError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                               f"got {getattr(self, name)!r}")
        if self.beam_style is not None and self.beam_style not in BEAM_STYLES:
            raise TtxError(f"--beam-style must be one of {', '.join(BEAM_STYLES)}")
        optional = {"prm_format": PRM_FORMATS, "prm_input": PRM_INPUTS}
        for name, allowed in optional.items():
            if getattr(self, name) is not None and getattr(self, name) not in allowed:
                raise TtxError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}")
        if self.dora_tau <= 0 or self.dora_alpha <= 0:
            raise TtxError("--dora-tau and --dora-alpha must be positive")
        prm = [k for k in ("prm_format", "prm_step_tag", "prm_good_token", "prm_bad_token",
                           "prm_input") if getattr(self, k) is not None]
        if prm and not self.reward_model:
            raise TtxError(", ".join("--" + k.replace("_", "-") for k in prm)
                           + " set(s) how a process reward model is read: it needs --reward-model")


def local_tokenizer(model: str, strategy: str) -> str:
    """The tokenizer folder that templates continued traces for --engine openai."""
    from ttx.models import resolve_model

    try:
        return str(resolve_model(model))
    except TtxError:
        raise TtxError(f"{strategy} continues traces as raw templated text, which needs the "
                       f"model's chat template: with --engine openai give --model the alias or "
                       f"a local folder of the served model, or use --no-chat") from None


@functools.lru_cache(maxsize=4)
def _tokenizer(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)


def tokenizer_of(engine, search: SearchConfig):
    """The policy's tokenizer: a local engine's own, else the local folder given for it."""
    from ttx.engines.base import local

    policy = local(engine)
    tokenizer = policy.tokenizer if policy else None
    if tokenizer is None:
        if not search.tokenizer:
            raise TtxError("continuing a trace needs the model's tokenizer: give --model the "
                           "alias or a local folder of the served model")
        tokenizer = _tokenizer(search.tokenizer)
    return tokenizer


def templated(engine, prompt: Prompt, search: SearchConfig) -> str:
    """The prompt as the raw text the model sees (a str prompt is that text already)."""
    if isinstance(prompt, str):
        return prompt
    from ttx.models import render_prompt

    return render_prompt(tokenizer_of(engine, search), prompt)


def question_of(prompt: Prompt) -> str:
    """The question text of a prompt (the last user message), for reward models."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else prompt[-1]["content"]


def trace_record(text: str, completion_tokens: int, finish_reason: str, score=None,
                 **extra) -> dict:
    """One trace in the per-trace format of ttx.tts.strategies (what `ttx score` reads)."""
    return {"text": text, "pred": extract_answer(text), "completion_tokens": completion_tokens,
            "finish_reason": finish_reason, "finish_order": None, "score": score, **extra}


def mean(values) -> float | None:
    values = list(values or [])
    return sum(values) / len(values) if values else None


def step_score(trace: Trace, scorer: str) -> float | None:
    """A policy score of one generated segment: the geometric-mean token probability
    exp(mean log p) for `logprob` (so min/prod stay meaningful), mean KL(U || p) otherwise."""
    import math

    if scorer == "logprob":
        m = mean(trace.logprobs)
        return None if m is None else math.exp(m)
    return mean(trace.self_certainty)


def round_seed(seed: int | None, round_index: int) -> int | None:
    """The seed of one engine call within a search (repeatable, different per round)."""
    from ttx.seeds import call_seed

    return call_seed(seed, 7919 * (round_index + 1))


def think_end(engine, search: SearchConfig) -> tuple[str, bool]:
    """(end-of-thinking text, whether the model writes it itself) for budget forcing's ttx
    style.

    --think-end wins; otherwise "</think>" when the model's tokenizer knows it (Qwen3,
    DeepSeek-R1), else none: the thinking of a plain chat model is its whole answer and ends at
    EOS. (s1's own models bracket thinking with <|im_start|>think ... <|im_start|>answer: the s1
    style, ttx.tts.budget.)"""
    if search.think_end is not None:
        return search.think_end, bool(search.think_end.strip())
    from ttx.engines.base import local

    policy = local(engine)
    tokenizer = policy.tokenizer if policy else None
    if tokenizer is None and search.tokenizer:
        tokenizer = _tokenizer(search.tokenizer)
    if tokenizer is not None and "</think>" in tokenizer.get_vocab():
        return "</think>", True
    return "", False


@dataclass
class Account:
    """Token accounting of one problem over the rounds (engine calls) of a search."""

    prompt_tokens: int = 0          # the problem's own prompt, once
    completion: int = 0             # every generated token
    sequential: int = 0             # sum over rounds of the round's longest segment
    prefill: int = 0                # every prompt token of every call (continuations included)
    cached: int = 0                 # of those, the ones whose K/V the engine kept (not computed)
    rounds: int = 0

    def add(self, segments: list[int], prefill: int = 0, cached: int = 0) -> None:
        """One round: the tokens of this problem's segments generated in it, its prompt tokens
        (and how many of them the engine's prefix reuse did not compute again)."""
        self.prefill += prefill
        self.cached += cached
        if segments:
            self.completion += sum(segments)
            self.sequential += max(segments)
            self.rounds += 1

    def extra(self) -> dict:
        return {"prefill_tokens": self.prefill, "cached_prefill_tokens": self.cached,
                "rounds": self.rounds}
