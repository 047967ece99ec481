"""The engine interface every stage that generates text goes through."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Union

# A prompt is either chat messages ([{"role": ..., "content": ...}], templated by the engine)
# or raw text that is sent as it is (already templated, or a base model's plain prompt).
Prompt = Union[str, list]


@dataclass
class SamplingParams:
    max_new_tokens: int = 512
    temperature: float = 0.0          # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()        # stop strings; the text is cut before the first one
    logprobs: bool = False            # per-token log-probabilities (and self-certainty on hf)
    ignore_eos: bool = False          # generate exactly max_new_tokens (benchmarks)
    # First Finish Search: once this many traces of a prompt have finished, cancel the rest.
    stop_after_finished: int | None = None


@dataclass
class Trace:
    text: str
    completion_tokens: int            # tokens generated (all of them, also for cancelled traces)
    finish_reason: str                # "stop" (EOS or stop string), "length", or "cancelled"
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None         # log p(token) under the model (temperature 1)
    self_certainty: list[float] | None = None   # KL(uniform || p) per token (Kang et al. 2025)
    finish_order: int | None = None             # 0 for the first trace of its prompt to finish


@dataclass
class Generation:
    """The n traces of one prompt."""

    traces: list[Trace]
    prompt_tokens: int
    wall_s: float = 0.0


class Engine(Protocol):
    name: str            # "hf" or "openai"
    model_name: str      # what records name as `model`

    def generate(self, prompts: list[Prompt], n: int, params: SamplingParams) -> list[Generation]:
        """Generate n traces for each prompt; results come back in prompt order."""
        ...

    def close(self) -> None:
        ...
