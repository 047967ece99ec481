"""Text generation behind one interface (ttx.engines.base.Engine): `hf` and `openai`."""

from ttx.engines.base import Constraint, Engine, Generation, Prompt, SamplingParams, Trace

__all__ = ["Constraint", "Engine", "Generation", "Prompt", "SamplingParams", "Trace", "make_engine",
           "open_engine"]


def make_engine(name: str, **kwargs) -> Engine:
    """Build an engine by name: "hf" (local transformers) or "openai" (HTTP server)."""
    if name == "hf":
        from ttx.engines.hf import HFEngine
        return HFEngine(**kwargs)
    if name == "openai":
        from ttx.engines.openai import OpenAIEngine
        return OpenAIEngine(**kwargs)
    raise ValueError(f"unknown engine {name!r} (choose hf or openai)")


def open_engine(name: str, *, model: str, device: str = "auto", dtype: str = "auto",
                adapter: str | None = None, base_url: str | None = None,
                concurrency: int = 8, max_batch_rows: int = 64) -> Engine:
    """An engine from CLI options: every stage that generates text opens its engine here."""
    from ttx.errors import TtxError

    if name == "hf":
        return make_engine("hf", model=model, device=device, dtype=dtype, adapter=adapter,
                           max_batch_rows=max_batch_rows)
    if not base_url:
        raise TtxError("--engine openai needs --base-url or TTX_BASE_URL "
                       "(e.g. http://127.0.0.1:8000/v1)")
    if adapter:
        raise TtxError("--adapter applies to --engine hf; load adapters into the server instead")
    from ttx.models import ALIASES
    served = None if model in ALIASES else model     # None: the server's first model
    return make_engine("openai", base_url=base_url, model=served, concurrency=concurrency)
