"""`ttx rl`'s curriculum plug-ins: questions a step adds to the test questions it trains on.

A curriculum is ttx/rl/curricula/<name>.py ("-" in the CLI name is "_" in the file) defining
`PLUGIN`, a subclass of Curriculum; dropping the file in registers it (names are read without
importing: keep module tops light). It may hold more of the model than the policy (TTCS's
synthesizer adapter): it attaches them once the stage's model and trainer exist, checkpoints
them with the stage's checkpoints (save/load), and its JSON state travels in state.json."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from pathlib import Path

from ttx.errors import TtxError

_DIR = Path(__file__).parent / "curricula"


class Curriculum:
    name = ""
    options: tuple[str, ...] = ()     # RLConfig fields this plug-in owns

    def __init__(self, cfg):
        self.cfg = cfg

    def check(self, problems: list) -> None:
        """Refuse bad input before a model loads."""

    def extra(self, batch: int) -> int:
        """The most questions a step adds to `batch` test questions (sizes the LR schedule)."""
        return 0

    def attach(self, *, model, tokenizer, engine, out: Path, pad_id: int, resume: bool) -> None:
        """Called once the stage's policy, trainer and engine exist, before the first step."""

    def problems(self, step: int, questions: list) -> tuple[list, dict[str, float]]:
        """Questions to train on this step besides the test ones, and numbers for train_log."""
        return [], {}

    def save(self) -> dict:
        """Checkpoint what is not JSON (called with every stage checkpoint); returns JSON state."""
        return {}

    def load(self, state: dict) -> None:
        """Restore from save()'s state on --resume."""

    def on_resume(self, start: int) -> None:
        """Cut the curriculum's own logs back to rollout step `start`."""

    def finish(self) -> None:
        """The run is done and saved: drop the curriculum's checkpoints."""


def curriculum_names() -> list[str]:
    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules([str(_DIR)])
                  if not m.name.startswith("_"))


def load_curriculum(name: str) -> type[Curriculum]:
    if name not in curriculum_names():
        raise TtxError(f"unknown {name!r}; expected one of {', '.join(curriculum_names())}",
                       field="--curriculum")
    return importlib.import_module(f"ttx.rl.curricula.{name.replace('-', '_')}").PLUGIN


def check_curriculum_options(cfg) -> None:
    """An option owned by a curriculum that is not chosen must keep its default."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    for name in curriculum_names():
        if name == cfg.curriculum:
            continue
        for o in load_curriculum(name).options:
            if getattr(cfg, o) != defaults[o]:
                chosen = f"--curriculum {cfg.curriculum}" if cfg.curriculum else "no --curriculum"
                raise TtxError(f"is read only by --curriculum {name}, not by {chosen}",
                               field="--" + o.replace("_", "-"))
