"""What the search strategies share: their knobs, the checks on combining them, templated text.

Budget forcing (s1, arXiv 2501.19393), step-level beam search (Snell et al. 2024, arXiv
2408.03314), DORA (arXiv 2506.15707) and self-refinement continue traces the model has already
written. A continued trace is a new prompt that is the raw templated text: the chat template
applied to the question (with the generation prompt) and the text generated so far appended as it
is. The hf engine encodes such a str prompt without adding special tokens twice; the openai engine
sends it to /v1/completions, so it needs the model's tokenizer locally to apply the template.

Token accounting (tts-and-score.md): `completion_tokens` counts every generated token of every
call, never the forced text ("Wait", "Final Answer:") nor the re-encoded prompt; that re-encoding
is reported as `prefill_tokens`. `sequential_tokens` is what the batched procedure actually waited
for: the sum over its rounds (engine calls) of the longest segment of the problem in that round.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ttx.engines.base import Prompt, Trace
from ttx.errors import TtxError
from ttx.scoring.answers import extract_answer

SEARCH_STRATEGIES = ("budget-forcing", "beam", "dora", "refine")
STEP_SEPARATOR = "\n\n"              # a reasoning step ends at a blank line (search-and-learn)
AGGREGATIONS = ("last", "min", "prod")
TURN_AGGREGATES = ("last", "majority")
PRM_FORMATS = ("tag", "chat")


@dataclass
class SearchConfig:
    # budget forcing (s1): thinking is continued with `ignore_str` when it stops early
    min_thinking_tokens: int | None = None   # None: every stop is early (s1's "Wait" x K)
    max_thinking_tokens: int | None = None   # None: --max-new-tokens
    num_ignore: int = 1                      # K: at most this many continuations per trace
    ignore_str: str = "Wait"
    think_end: str | None = None             # None: "</think>" if the model knows it, else none
    answer_tokens: int = 32                  # the short answer after "Final Answer:"
    # beam / dora
    beam_width: int = 2                      # M: keep n/M beams, expand each M ways
    step_tokens: int = 64                    # a step ends at a blank line or after this many
    max_steps: int = 4                       # the last iteration runs to EOS
    agg: str = "last"                        # step scores -> a path score: last, min or prod
    dora_tau: float = 0.1                    # softmax temperature of the quality weight
    dora_alpha: float = 0.01                 # temperature of the similarity row-softmax
    embedder: str | None = None              # dora: an embedding model folder (default: policy)
    # refine
    turns: int = 1
    turn_aggregate: str = "last"
    # reward model scorer (best-of-n, beam, dora)
    reward_model: str | None = None
    prm_format: str = "tag"                  # causal-LM PRMs: step tags (Math-Shepherd) or chat
    prm_step_tag: str = "ки"                 # the text after each step whose position is scored
    prm_good_token: str = "+"
    prm_bad_token: str = "-"                 # "" : P(good) over the whole vocabulary
    # openai engine: the tokenizer that applies the chat template to continued traces
    tokenizer: str | None = None


def build_search(*, strategy: str, n: int, engine: str, model: str, chat: bool, scorer: str,
                 max_new_tokens: int, levels=None, **knobs) -> SearchConfig:
    """A SearchConfig from CLI values (None: not given), refusing combinations that make no sense.

    Every error names the option, so a run fails before a model is loaded."""
    given = {k: v for k, v in knobs.items() if v is not None}
    cfg = SearchConfig(**given)
    budget_knobs = [k for k in ("min_thinking_tokens", "max_thinking_tokens", "num_ignore",
                                "ignore_str", "think_end", "answer_tokens") if k in given]
    beam_knobs = [k for k in ("beam_width", "step_tokens", "max_steps", "agg") if k in given]
    dora_knobs = [k for k in ("dora_tau", "dora_alpha", "embedder") if k in given]
    prm_knobs = [k for k in ("prm_format", "prm_step_tag", "prm_good_token", "prm_bad_token")
                 if k in given]

    def refuse(names, allowed):
        if names:
            opts = ", ".join("--" + k.replace("_", "-") for k in names)
            raise TtxError(f"{opts} applies to --strategy {allowed}, not {strategy}")

    uses_thinking = strategy in ("budget-forcing", "beam", "dora")
    refuse(budget_knobs if not uses_thinking else [], "budget-forcing (or inside beam/dora)")
    refuse(beam_knobs if strategy not in ("beam", "dora") else [], "beam or dora")
    refuse(dora_knobs if strategy != "dora" else [], "dora")
    refuse([k for k in ("turns", "turn_aggregate") if k in given] if strategy != "refine" else [],
           "refine (refine --n N votes over N traces per turn)")
    if cfg.reward_model and strategy not in ("best-of-n", "beam", "dora"):
        raise TtxError(f"--reward-model scores traces for best-of-n, beam or dora, not {strategy}")
    if prm_knobs and not cfg.reward_model:
        raise TtxError(", ".join("--" + k.replace("_", "-") for k in prm_knobs)
                       + " set(s) how a process reward model is read: it needs --reward-model")
    if scorer == "self-certainty" and engine == "openai" and strategy in ("beam", "dora"):
        raise TtxError("--scorer self-certainty needs the full token distribution, which a "
                       "server does not return: use --scorer logprob with --engine openai")
    for name in ("max_thinking_tokens", "answer_tokens", "beam_width", "step_tokens",
                 "max_steps", "turns"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise TtxError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if cfg.num_ignore < 0:
        raise TtxError(f"--num-ignore must be >= 0, got {cfg.num_ignore}")
    top = cfg.max_thinking_tokens or max_new_tokens
    if cfg.min_thinking_tokens is not None and cfg.min_thinking_tokens > top:
        raise TtxError(f"--min-thinking-tokens {cfg.min_thinking_tokens} exceeds the maximum "
                       f"({top}: --max-thinking-tokens, else --max-new-tokens)")
    if cfg.agg not in AGGREGATIONS:
        raise TtxError(f"--agg must be one of {', '.join(AGGREGATIONS)}, got {cfg.agg!r}")
    if cfg.turn_aggregate not in TURN_AGGREGATES:
        raise TtxError(f"--turn-aggregate must be last or majority, got {cfg.turn_aggregate!r}")
    if cfg.prm_format not in PRM_FORMATS:
        raise TtxError(f"--prm-format must be tag or chat, got {cfg.prm_format!r}")
    if cfg.dora_tau <= 0 or cfg.dora_alpha <= 0:
        raise TtxError("--dora-tau and --dora-alpha must be positive")
    if strategy in ("beam", "dora"):
        sizes = [n] if levels is None or levels.key != "n" else list(levels.values)
        for size in sizes:
            if size < cfg.beam_width or size % cfg.beam_width:
                raise TtxError(f"{strategy}: --n {size} must be a multiple of --beam-width "
                               f"{cfg.beam_width} (n beams, n/M survivors, each expanded M ways)")
    if strategy == "dora" and engine == "openai" and not cfg.embedder:
        raise TtxError("dora on --engine openai needs --embedder PATH (a local embedding model): "
                       "the policy's hidden states are not reachable through a server")
    continues = strategy in ("budget-forcing", "beam", "dora")
    if continues and engine == "openai" and chat:
        cfg.tokenizer = _local_tokenizer_folder(model, strategy)
    return cfg


def _local_tokenizer_folder(model: str, strategy: str) -> str:
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

    return AutoTokenizer.from_pretrained(folder)


def templated(engine, prompt: Prompt, search: SearchConfig) -> str:
    """The prompt as the raw text the model sees (a str prompt is that text already)."""
    if isinstance(prompt, str):
        return prompt
    from ttx.models import render_prompt

    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is None:
        if not search.tokenizer:
            raise TtxError("continuing a chat trace needs the model's tokenizer (--model)")
        tokenizer = _tokenizer(search.tokenizer)
    return render_prompt(tokenizer, prompt)


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
    if seed is None:
        return None
    return (seed * 1_000_003 + 7919 * (round_index + 1)) % (1 << 63)


def think_end(engine, search: SearchConfig) -> tuple[str, bool]:
    """(end-of-thinking text, whether the model writes it itself) for budget forcing.

    --think-end wins; otherwise "</think>" when the model's tokenizer knows it (Qwen3, DeepSeek-R1
    and s1-style models), else none: the thinking of a plain chat model is its whole answer and
    ends at EOS."""
    if search.think_end is not None:
        return search.think_end, bool(search.think_end.strip())
    tokenizer = getattr(engine, "tokenizer", None)
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
    prefill: int = 0                # every prompt token encoded (continuations re-encode)
    rounds: int = 0

    def add(self, segments: list[int], prefill: int = 0) -> None:
        """One round: the tokens of this problem's segments generated in it, its prompt tokens."""
        self.prefill += prefill
        if segments:
            self.completion += sum(segments)
            self.sequential += max(segments)
            self.rounds += 1

    def extra(self) -> dict:
        return {"prefill_tokens": self.prefill, "rounds": self.rounds}


# tts-run options that fill a SearchConfig (None: not given on the command line)
SEARCH_KNOBS = ("min_thinking_tokens", "max_thinking_tokens", "num_ignore", "ignore_str",
                "think_end", "answer_tokens", "beam_width", "step_tokens", "max_steps", "agg",
                "dora_tau", "dora_alpha", "embedder", "turns", "turn_aggregate", "reward_model",
                "prm_format", "prm_step_tag", "prm_good_token", "prm_bad_token")
