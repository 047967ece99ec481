"""`ttx rl`'s plug-ins: rewards and advantage estimators, registered by their file's name.

A reward is a module ttx/rl/rewards/<name>.py (name with "-" for "_": self_certainty.py is
`--reward self-certainty`) defining `PLUGIN`, a subclass of Reward; an advantage estimator is
ttx/rl/advantages/<name>.py defining `PLUGIN`, a subclass of Advantage. Adding a file registers
it: the names are read from the folders without importing them (`ttx --help` stays light), and a
plug-in module imports torch only inside its methods.

A plug-in reads the stage's options (ttx.rl.config.RLConfig fields) through `self.cfg`; the
fields it owns are listed in `options`, and one of them set away from its default while another
plug-in is chosen is refused (check_options). Per-problem state that lives across rollout steps
(HAPO's history, a buffer of earlier solutions) is returned by state_dict() and given back by
load_state_dict() on --resume: it travels in the checkpoint's state.json, so it must be JSON
(dict keys are strings after a round trip; use the problem's `key`, a string).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ttx.errors import TtxError

_HERE = Path(__file__).parent


@dataclass
class Problem:
    """One question of the input: `key` is its stable name for per-problem state (str of its
    position in the input), `gold` its gold answer as a string (None when the record has none)."""

    key: str
    id: object
    question: str
    gold: str | None = None


@dataclass
class Group:
    """The responses sampled for one problem at one rollout step, before training picks any."""

    step: int                          # 0-based rollout step
    problem: Problem
    prompt_ids: list[int]
    response_ids: list[list[int]]      # every sampled response (the votes)
    texts: list[str]                   # their decoded text
    answers: list[str | None]          # their extracted answers (ttx.scoring.answers.extract_answer)
    # per-token statistics of the current policy at the sampling temperature, computed on demand:
    # token_stats() -> [{"entropy": [H_t], "self_certainty": [lse(z_t) - mean_v z_t,v]}] per response
    token_stats: Callable[[], list[dict[str, list[float]]]] = field(repr=False, default=lambda: [])
    # for rewards that sample more (MRT's forced answers): the rollout engine (ttx.engines),
    # the tokenizer, the step's SamplingParams and a seed of this group (derive sub-seeds from it
    # with ttx.seeds.call_seed so a resume regenerates the same samples); None in unit tests
    engine: object = field(repr=False, default=None)
    tokenizer: object = field(repr=False, default=None)
    params: object = field(repr=False, default=None)
    seed: int = 0


@dataclass
class Scored:
    """What a reward returns for a group: one reward per response (finite floats), fields for
    this group's row in rollouts.jsonl, and numbers averaged over the step's groups into
    train_log.jsonl."""

    rewards: list[float]
    record: dict = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    # per response (same length as rewards) or None: merged into each trained Rollout.info, where
    # an advantage estimator can read it (MRT's episode boundaries and progress, for example)
    infos: list[dict] | None = None


class Reward:
    """Base of the reward plug-ins."""

    name = ""
    needs_gold = False                 # refused before a model loads on a record without an answer
    label_free = False                 # True: the collapse indicators are logged
    kl_default = 0.001                 # β of the KL term when --kl-coef is not given
    options: tuple[str, ...] = ()      # RLConfig fields this plug-in owns
    summary: tuple[str, ...] = ()      # rollouts.jsonl record fields the manifest's per-step summary means

    def __init__(self, cfg):
        self.cfg = cfg

    def check(self, problems: list[Problem]) -> None:
        """Refuse bad input before a model loads (a TtxError naming the option/record)."""

    def prompt(self, problem: Problem, step: int, text: str) -> str:
        """The prompt to sample from for this problem at this step (`text`: the built prompt);
        a plug-in drawing start states from a buffer (TTT-Discover) returns another."""
        return text

    def score(self, group: Group) -> Scored:
        raise NotImplementedError

    def end_step(self, step: int, groups: list[Group], scored: list[Scored]) -> dict[str, float]:
        """Called once a step's groups are scored (update per-problem state here); returns
        numbers for the step's train_log row."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Advantage:
    """Base of the advantage estimators: set each trained rollout's `advantage` (and, if the
    estimator has them, `token_advantages`, one per response token) in place."""

    name = ""
    options: tuple[str, ...] = ()

    def __init__(self, cfg):
        self.cfg = cfg

    def compute(self, rollouts: list, eps: float = 1e-6) -> dict[str, float]:
        """`rollouts`: the step's trained ttx.rl.grpo.Rollouts (rewards set, groups by .group);
        returns numbers for the step's train_log row."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _names(kind: str) -> list[str]:
    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules([str(_HERE / kind)])
                  if not m.name.startswith("_"))


def reward_names() -> list[str]:
    return _names("rewards")


def advantage_names() -> list[str]:
    return _names("advantages")


def _load(kind: str, name: str, option: str):
    if name not in _names(kind):
        raise TtxError(f"unknown {name!r}; expected one of {', '.join(_names(kind))}", field=option)
    return importlib.import_module(f"ttx.rl.{kind}.{name.replace('-', '_')}").PLUGIN


def load_reward(name: str) -> type[Reward]:
    return _load("rewards", name, "--reward")


def load_advantage(name: str) -> type[Advantage]:
    return _load("advantages", name, "--advantage")


def check_options(cfg) -> None:
    """An option owned by a plug-in that is not chosen must keep its default."""
    chosen = {load_reward(cfg.reward), load_advantage(cfg.advantage)}
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    for kind, names in (("rewards", reward_names()), ("advantages", advantage_names())):
        for name in names:
            plugin = _load(kind, name, "--" + kind[:-1])
            if plugin in chosen:
                continue
            for o in plugin.options:
                if getattr(cfg, o) != defaults[o]:
                    flag = "--" + kind[:-1]
                    raise TtxError(f"is read only by {flag} {name}, not by {flag} "
                                   f"{cfg.reward if kind == 'rewards' else cfg.advantage}",
                                   field="--" + o.replace("_", "-"))
