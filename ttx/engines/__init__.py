"""Text generation behind one interface (ttx.engines.base.Engine): `hf` and `openai`."""

from ttx.engines.base import (
    Constraint,
    Engine,
    Generation,
    LocalEngine,
    Prompt,
    SamplingParams,
    TokenPrompt,
    Trace,
    local,
)

__all__ = ["Constraint", "Engine", "Generation", "LocalEngine", "Prompt", "SamplingParams",
           "TokenPrompt", "Trace", "engine_over", "local", "make_engine", "open_engine"]


def make_engine(name: str, **kwargs) -> Engine:
    """Build an engine by name: "hf" (local transformers) or "openai" (HTTP server)."""
    if name == "hf":
        from ttx.engines.hf import HFEngine
        return HFEngine(**kwargs)
    if name == "openai":
        from ttx.engines.openai import OpenAIEngine
        return OpenAIEngine(**kwargs)
    raise ValueError(f"unknown engine {name!r} (choose hf or openai)")


def engine_over(model, tokenizer, *, name: str, max_batch_rows: int = 64) -> LocalEngine:
    """An hf engine over a model this process holds, which the stage may train between calls
    (ttrl, tlm-adapt, perk-encode, distill-to-mamba's teacher): each call generates with the
    weights as they are then, no K/V is kept between calls, nothing is packed or fused, and the
    model is left as it was given. The one way a stage that holds its model gets an engine; every
    other stage opens one with `open_engine`."""
    from ttx.engines.hf import HFEngine

    return HFEngine(model=name, loaded=(model, tokenizer), max_batch_rows=max_batch_rows,
                    prefix_cache_mb=0, packed_weights=False)


def open_engine(name: str, *, model: str, device: str = "auto", dtype: str = "auto",
                adapter: str | None = None, base_url: str | None = None,
                concurrency: int = 8, max_batch_rows: int = 64, timeout_s: float | None = None,
                max_retries: int | None = None, packed_weights: bool = True,
                deadline_s: float | None = None) -> Engine:
    """An engine from CLI options: every stage that generates text opens its engine here.

    openai only: timeout_s is the longest the server may stay silent (a read) before the attempt
    is retried, max_retries the retries after the first attempt (see "Faults" in
    ttx/engines/openai.py), deadline_s the longest one attempt may take in all ("Limits" there).
    None takes $TTX_TIMEOUT_S / $TTX_MAX_RETRIES / $TTX_DEADLINE_S, else 600 s / 4 / timeout_s
    plus 1 s per max_tokens.
    hf only: packed_weights (ttx.engines.cpu.packed) on CPU."""
    from ttx.errors import TtxError

    if name == "hf":
        return make_engine("hf", model=model, device=device, dtype=dtype, adapter=adapter,
                           max_batch_rows=max_batch_rows, packed_weights=packed_weights)
    if not base_url:
        raise TtxError("--engine openai needs --base-url or TTX_BASE_URL "
                       "(e.g. http://127.0.0.1:8000/v1)")
    if adapter:
        raise TtxError("--adapter applies to --engine hf; load adapters into the server instead")
    from ttx.models import ALIASES
    served = None if model in ALIASES else model     # None: the server's first model
    from ttx.engines.openai import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S
    if timeout_s is None:
        timeout_s = _from_env("TTX_TIMEOUT_S", float, DEFAULT_TIMEOUT_S, "a number of seconds > 0")
    if max_retries is None:
        max_retries = _from_env("TTX_MAX_RETRIES", int, DEFAULT_MAX_RETRIES, "an integer >= 0")
    if deadline_s is None:
        deadline_s = _from_env("TTX_DEADLINE_S", float, None, "a number of seconds > 0")
    return make_engine("openai", base_url=base_url, model=served, concurrency=concurrency,
                       timeout_s=timeout_s, max_retries=max_retries, deadline_s=deadline_s)


def _from_env(var: str, kind, default, what: str):
    """$var read as kind (default when unset or empty); a bad value is one TtxError line."""
    import math
    import os

    from ttx.errors import TtxError

    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
        ok = math.isfinite(value) and (value > 0 if kind is float else value >= 0)
    except ValueError:
        ok = False
    if not ok:
        raise TtxError(f"{var}={raw!r}: must be {what}")
    return value
