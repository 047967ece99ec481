"""The engine interface every stage that generates text goes through."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, Union, runtime_checkable


@dataclass(frozen=True)
class TokenPrompt:
    """A prompt given as token ids, sent as they are (vLLM's token-id prompt): s1's harness
    continues thinking from the sampled ids, never from text encoded again."""

    ids: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "ids", tuple(int(i) for i in self.ids))


# A prompt is chat messages ([{"role": ..., "content": ...}], templated by the engine), raw text
# sent as it is (already templated, or a base model's plain prompt), or token ids.
Prompt = Union[str, list, TokenPrompt]


CONSTRAINT_KINDS = ("json", "regex", "choice")


@dataclass(frozen=True)
class Constraint:
    """What a completion's whole text must be (structured outputs, as vLLM and SGLang serve them).

    kind "json": spec is a JSON schema (a dict); the text is one JSON value valid for it, written
    compactly (no whitespace between tokens). "regex": spec is a pattern the whole text matches.
    "choice": spec is a tuple of strings and the text is exactly one of them. A row whose
    constraint is complete (nothing but EOS may follow) ends with finish_reason "stop" at once,
    also before min_new_tokens or with ignore_eos; one cut by max_new_tokens is a valid prefix."""

    kind: str
    spec: Any

    def __post_init__(self):
        if self.kind not in CONSTRAINT_KINDS:
            raise ValueError(f"Constraint.kind must be one of {', '.join(CONSTRAINT_KINDS)}, "
                             f"got {self.kind!r}")
        if self.kind == "json":
            try:
                spec = json.loads(self.spec) if isinstance(self.spec, str) else self.spec
            except RecursionError:
                raise ValueError("a json constraint's schema is nested too deeply") from None
            if not isinstance(spec, dict):
                raise ValueError("a json constraint's spec is a JSON schema (an object)")
            object.__setattr__(self, "spec", spec)
        elif self.kind == "regex":
            if not isinstance(self.spec, str) or not self.spec:
                raise ValueError("a regex constraint's spec is a non-empty pattern string")
        else:
            if isinstance(self.spec, str) or not all(isinstance(c, str) and c for c in self.spec):
                raise ValueError("a choice constraint's spec is a list of non-empty strings")
            object.__setattr__(self, "spec", tuple(self.spec))
            if not self.spec:
                raise ValueError("a choice constraint needs at least one choice")

    @classmethod
    def json_schema(cls, schema: dict | str) -> "Constraint":
        return cls("json", schema)

    @classmethod
    def regex(cls, pattern: str) -> "Constraint":
        return cls("regex", pattern)

    @classmethod
    def choice(cls, choices: Sequence[str]) -> "Constraint":
        return cls("choice", tuple(choices))

    def key(self) -> str:
        """A canonical text of the constraint (a cache key)."""
        return json.dumps([self.kind, self.spec], sort_keys=True)


@dataclass(frozen=True)
class ConfidenceStop:
    """DeepConf's per-token confidence (arXiv 2508.15260 eq. 2) and its early stop (Algorithm 2).

    Every generated token i records C_i = -(1/k) * sum of the top-k log-probabilities of the
    distribution it was sampled from (temperature 1) in Trace.confidences. With a threshold, a
    trace whose group confidence (the mean of C over its last `window` tokens, eq. 3) falls below
    it is cancelled in the engine: it stops generating, finish_reason "cancelled", its tokens
    counted (facebookresearch/deepconf deepconf/processors.py:41-54 checks the same full window)."""

    top_k: int = 20
    window: int = 2048
    threshold: float | None = None

    def __post_init__(self):
        if self.top_k < 1 or self.window < 1:
            raise ValueError("ConfidenceStop.top_k and .window must be >= 1")


@dataclass
class SamplingParams:
    max_new_tokens: int = 512
    temperature: float = 0.0          # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()        # stop strings; the text is cut before the first one
    # stop tokens besides EOS (vLLM's `stop_token_ids`): s1 ends thinking at the special token
    # <|im_start|>, which no stop string can see in text decoded without special tokens
    stop_token_ids: tuple[int, ...] = ()
    logprobs: bool = False            # per-token log-probabilities (and self-certainty on hf)
    ignore_eos: bool = False          # generate exactly max_new_tokens (benchmarks)
    # No EOS and no stop string before this many new tokens (vLLM's `min_tokens`): budget forcing
    # continues a trace past a stop without it stopping again at once.
    min_new_tokens: int = 0
    # First Finish Search: once this many traces of a prompt have finished, cancel the rest.
    stop_after_finished: int | None = None
    # The completion must match this (a JSON schema, a regex or a choice list); None: free text.
    constraint: Constraint | None = None
    # DeepConf: record per-token confidence; with a threshold, cancel a trace whose sliding-window
    # confidence falls below it. Per prompt (each prompt has its own threshold).
    confidence: ConfidenceStop | None = None


@dataclass
class Trace:
    text: str
    completion_tokens: int            # tokens generated (all of them, also for cancelled traces)
    finish_reason: str                # "stop" (EOS or stop string), "length", or "cancelled"
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None         # log p(token) under the model (temperature 1)
    self_certainty: list[float] | None = None   # KL(uniform || p) per token (Kang et al. 2025)
    finish_order: int | None = None             # 0 for the first trace of its prompt to finish
    stop_string: str | None = None              # the stop string that ended it (None: EOS/length)
    stop_token: int | None = None               # the stop_token_ids entry that ended it
    confidences: list[float] | None = None      # DeepConf token confidence C_i (ConfidenceStop)


@dataclass
class Generation:
    """The n traces of one prompt."""

    traces: list[Trace]
    prompt_tokens: int
    wall_s: float = 0.0
    cached_prompt_tokens: int = 0     # of prompt_tokens, those whose K/V an earlier call kept


@runtime_checkable
class Engine(Protocol):
    """What every engine offers: generation. Both engines declare every attribute here."""

    name: str            # "hf" or "openai"
    model_name: str      # what records name as `model`
    supports_constraints: bool   # whether generate() honours SamplingParams.constraint

    def generate(self, prompts: list[Prompt], n: int | Sequence[int],
                 params: SamplingParams | Sequence[SamplingParams]) -> list[Generation]:
        """Generate n traces for each prompt; results come back in prompt order.

        `n` and `params` may also be given per prompt (see `per_prompt`)."""
        ...

    def close(self) -> None:
        ...


@runtime_checkable
class LocalEngine(Engine, Protocol):
    """An engine whose model runs in this process (hf), and what it offers beyond generate.

    Code that needs the policy's tokenizer, its context length, its weights, its device or its
    hidden states asks `local(engine)` for this and reads the attributes: no engine is probed
    attribute by attribute."""

    tokenizer: Any                 # the model's tokenizer (transformers)
    model: Any                     # the torch module generating (reward models reuse its device)
    device: Any                    # the torch.device it runs on
    max_positions: int | None      # its context length, where its config says

    def encode(self, prompt: Prompt) -> list[int]:
        """The token ids the engine would feed for this prompt."""
        ...

    def hidden_states(self, texts: Sequence[str], layer: int = -1) -> list[Any]:
        """Each text's hidden states at `layer` ([tokens, hidden] float32 tensors, no special
        tokens added): what embedders and latent-space strategies read."""
        ...


def local(engine) -> LocalEngine | None:
    """The engine as a LocalEngine, or None for one whose model runs elsewhere (openai)."""
    return engine if isinstance(engine, LocalEngine) else None


# Fields that may differ between the prompts of one call; the others are shared by the batch.
PER_PROMPT_FIELDS = ("max_new_tokens", "min_new_tokens", "stop", "stop_token_ids", "ignore_eos",
                     "constraint", "confidence")


def per_prompt(count: int, n: int | Sequence[int],
               params: SamplingParams | Sequence[SamplingParams]
               ) -> tuple[list[int], list[SamplingParams]]:
    """Trace counts and sampling parameters per prompt, from one value for all or one per prompt.

    Search strategies continue traces of different lengths in one call (each with its own token
    budget), and DORA gives each beam its own number of rollouts. Only PER_PROMPT_FIELDS may
    differ between prompts: temperature, top_p, seed, logprobs and FFS are the batch's."""
    counts = [n] * count if isinstance(n, int) else [int(k) for k in n]
    per = [params] * count if isinstance(params, SamplingParams) else list(params)
    if len(counts) != count or len(per) != count:
        raise ValueError(f"{count} prompts but {len(counts)} trace counts and {len(per)} params")
    if any(k < 0 for k in counts):
        raise ValueError(f"trace counts must be >= 0, got {counts}")
    for p in per[1:]:
        for name in ("temperature", "top_p", "seed", "logprobs", "stop_after_finished"):
            if getattr(p, name) != getattr(per[0], name):
                raise ValueError(f"SamplingParams.{name} must be the same for every prompt of a "
                                 f"call (only {', '.join(PER_PROMPT_FIELDS)} may differ)")
    return counts, per
