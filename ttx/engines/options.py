"""The engine's options, shared by every stage that generates text (tts-run, memory-extract)."""

from __future__ import annotations

from dataclasses import dataclass

import click

from ttx.options import opt

DTYPES = ("auto", "float32", "bfloat16", "float16")


def model_field(default: str = "smollm2-135m-instruct", **kw):
    """The --model option every stage that loads a model declares."""
    return opt(default, "Model alias, Hugging Face folder, or .gguf file.", short="-m", **kw)


def device_field(**kw):
    return opt("auto", "cpu, cuda, cuda:N or auto (cuda when present).", **kw)


def dtype_field():
    return opt("auto", "Weights dtype (auto: float32 on CPU, bfloat16 on GPU).",
               type=click.Choice(DTYPES))


@dataclass
class ModelOptions:
    model: str = model_field()
    device: str = device_field()
    dtype: str = dtype_field()


@dataclass
class EngineOptions(ModelOptions):
    engine: str = opt("hf", "hf: local transformers; openai: a server.",
                      type=click.Choice(["hf", "openai"]))
    base_url: str | None = opt(None, "openai: server URL, e.g. http://127.0.0.1:8000/v1 (env "
                               "TTX_BASE_URL).", envvar="TTX_BASE_URL")
    concurrency: int = opt(8, "openai: requests in flight.", type=click.IntRange(min=1))
    timeout_s: float | None = opt(None, "openai: seconds the server may stay silent before the "
                                  "request is retried (env TTX_TIMEOUT_S; default 600).",
                                  flag="--timeout", type=click.FloatRange(min=0, min_open=True),
                                  envvar="TTX_TIMEOUT_S")
    deadline_s: float | None = opt(None, "openai: seconds one attempt of a request may take in "
                                   "all (env TTX_DEADLINE_S; default --timeout + 1 s per "
                                   "--max-new-tokens).", flag="--deadline",
                                   type=click.FloatRange(min=0, min_open=True),
                                   envvar="TTX_DEADLINE_S")
    max_retries: int | None = opt(None, "openai: retries of a failed request (timeout, dropped "
                                  "connection, 429, 5xx, a cut stream) with backoff (env "
                                  "TTX_MAX_RETRIES; default 4).", type=click.IntRange(min=0),
                                  envvar="TTX_MAX_RETRIES")
    adapter: str | None = opt(None, "hf: a PEFT adapter folder to apply.",
                              type=click.Path(exists=True, file_okay=False))
    batch_rows: int = opt(64, "hf: traces decoded together (problems per call = rows / n).",
                          type=click.IntRange(min=1))
    packed_weights: bool = opt(True, "hf on CPU: linear layers on oneDNN-packed weights (about "
                               "1.5x float32 decode; one more copy of those weights in memory).",
                               secondary="--no-packed-weights")

    def open(self, batch_rows: int | None = None):
        from ttx.engines import open_engine

        return open_engine(self.engine, model=self.model, device=self.device, dtype=self.dtype,
                           adapter=self.adapter, base_url=self.base_url,
                           concurrency=self.concurrency, max_batch_rows=batch_rows or self.batch_rows,
                           timeout_s=self.timeout_s, max_retries=self.max_retries,
                           packed_weights=self.packed_weights, deadline_s=self.deadline_s)
