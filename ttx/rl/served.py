"""`ttx rl --engine openai`: the rollouts of each step sampled on a vLLM server that serves the
policy as it is then, while training stays in this process.

At every rollout step the current LoRA adapter is saved (PEFT format) to a folder the server can
read, loaded there through vLLM's runtime LoRA API under a name of its own (the previous step's
is unloaded), and the step's responses are sampled with model=<that name>. Prompts go as token
ids (ttx.engines.base.TokenPrompt, encoded by the in-process engine) and the sampled ids come back
(vLLM's return_token_ids), so the trained rollouts are exactly the ids the server sampled; their
old log-probabilities are recomputed in this process, as for in-process rollouts.
"""

from __future__ import annotations

import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

from ttx.engines.base import Generation, Prompt, SamplingParams, TokenPrompt
from ttx.errors import TtxError


class ServedPolicy:
    """The rollout engine of `ttx rl --engine openai`: generate() and encode() as the in-process
    engine offers them (rewards that sample more, MRT's forced answers, go through it too), the
    traces sampled by `server` (an OpenAIEngine) with the adapter of the last sync()."""

    name = "openai"
    supports_constraints = False

    def __init__(self, server, folder: Path):
        """server: ttx.engines.openai.OpenAIEngine; folder: where each step's adapter is saved, a
        path the server reads as it is. over() gives it the policy before the first sync()."""
        self.server = server
        self.local = None
        self.model = None
        self.folder = Path(folder).resolve()
        # a name no earlier run left loaded on the server (vLLM refuses a name loaded twice)
        self.tag = f"ttx-rl-{uuid.uuid4().hex[:8]}"
        self.current: tuple[str, Path] | None = None
        self.model_name = server.model_name

    def over(self, local, model) -> "ServedPolicy":
        """local: the in-process engine (its encode); model: the PEFT model being trained."""
        self.local, self.model = local, model
        return self

    def sync(self, step: int) -> str:
        """Save the adapter as it is now and serve it for the step's rollouts; return its name."""
        name = f"{self.tag}-step{step + 1}"
        path = self.folder / name
        if path.exists():
            shutil.rmtree(path)
        self.model.save_pretrained(str(path))
        try:
            self.server.load_adapter(name, str(path))
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        previous, self.current = self.current, (name, path)
        self.model_name = name
        if previous is not None:
            self._drop(*previous)
        return name

    def _drop(self, name: str, path: Path) -> None:
        self.server.unload_adapter(name)
        shutil.rmtree(path, ignore_errors=True)

    def encode(self, prompt: Prompt) -> list[int]:
        return self.local.encode(prompt)

    def generate(self, prompts: list[Prompt], n, params: SamplingParams | list) -> list[Generation]:
        if self.current is None:
            raise TtxError("internal: rollouts asked of the server before an adapter was loaded")
        ids = [p if isinstance(p, TokenPrompt) else TokenPrompt(self.local.encode(p)) for p in prompts]
        gens = self.server.generate(ids, n, params)
        for g in gens:
            for t in g.traces:
                if t.completion_tokens and not t.token_ids:
                    raise TtxError(f"{self.server.base_url}: the server returned no token ids "
                                   "(vLLM's return_token_ids); --engine openai rollouts need them")
        return gens

    def close(self) -> None:
        """Unload the last adapter and remove its saved folder (also after an error)."""
        try:
            if self.current is not None:
                current, self.current = self.current, None
                self._drop(*current)
        finally:
            try:
                self.folder.rmdir()        # only when empty: the folder may be the user's
            except OSError:
                pass
            self.server.close()


@contextmanager
def served_rollouts(cfg):
    """`ttx rl --engine openai`: the ServedPolicy (None for --engine hf), its server opened before
    the model loads (a bad URL fails first); its adapter unloaded on the way out, and after an
    error a failure to do so does not hide the error."""
    if cfg.engine != "openai":
        yield None
        return
    from ttx.engines import open_engine
    from ttx.models import DEFAULT_MODEL

    server = open_engine("openai", model=DEFAULT_MODEL, base_url=cfg.base_url,   # its first model
                         concurrency=cfg.concurrency, timeout_s=cfg.timeout_s,
                         max_retries=cfg.max_retries, deadline_s=cfg.deadline_s)
    policy = ServedPolicy(server, Path(cfg.served_adapters or Path(cfg.output) / "served"))
    try:
        yield policy
    except BaseException:
        try:
            policy.close()
        except Exception:
            pass
        raise
    policy.close()
