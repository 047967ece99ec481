"""The Strategy shape: how tts-run turns a chunk of prompts into one Outcome per prompt.

Each strategy is a small class registered by name (ttx.tts.registry imports every strategy
module; `@register` adds the class). tts-run asks the class to `check` the options before a model
loads, builds one instance per run, calls `setup(engine)` once (reward models, embedders,
tokenizers), then `run(engine, prompts, cfg)` for every engine call (cfg: that call's settings:
its level's n, its seed), and `close()` at the end. `aggregate` recomputes a record's prediction
from its traces' answers (`ttx score --regrade`). The CLI's choice list, the level rules and the
README's strategy table come from the registry.

Token accounting (docs/tts-run.md): completion_tokens counts every generated token of every
engine call; sequential_tokens the longest chain that had to be waited for.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

from ttx.engines.base import SamplingParams
from ttx.errors import TtxError
from ttx.scoring.answers import DEFAULT_INVALID_VOTE
from ttx.tts.search import SearchConfig


@dataclass
class StrategyConfig:
    strategy: str = "majority"
    n: int = 8
    params: SamplingParams = field(default_factory=SamplingParams)
    scorer: str = "logprob"           # policy scorer of best-of-n / beam: logprob, self-certainty
    weighted: bool = False            # best-of-n: sum scores per answer instead of taking the max
    ffs_k: int = 1                    # ffs: wait for k finished traces and vote among them
    invalid_votes: str = DEFAULT_INVALID_VOTE    # how a trace without an answer votes
    search: SearchConfig = field(default_factory=SearchConfig)   # the search strategies' knobs


@dataclass
class Outcome:
    traces: list[dict]                # [{text, pred, completion_tokens, finish_reason, score}]
    pred: str | None
    completion_tokens: int
    sequential_tokens: int
    prompt_tokens: int
    extra: dict = field(default_factory=dict)     # strategy-specific record fields (added, never
                                                  # replacing the ones above)


class Strategy:
    """One test-time strategy. Subclasses set the class attributes and implement `run`."""

    name: ClassVar[str]
    rank: ClassVar[int] = 100                   # place in the choice list and the tables
    summary: ClassVar[str]                      # one line: --help, the README's table
    samples: ClassVar[bool] = True              # draws --n traces (greedy: one)
    axes: ClassVar[tuple[str, ...]] = ("n", "max_new_tokens")   # --levels it can scale
    knobs: ClassVar[tuple[str, ...]] = ()       # SearchConfig fields it reads
    scored: ClassVar[bool] = False              # takes --scorer / --reward-model
    continues: ClassVar[bool] = False           # continues traces as raw templated text
    needs_distribution: ClassVar[bool] = False  # self-certainty needs full distributions

    def __init__(self, cfg: StrategyConfig):
        self.cfg = cfg
        self.stats: dict = {}                   # run-level counters for the manifest

    # --- before a model loads -------------------------------------------------------------
    @classmethod
    def check(cls, cfg: StrategyConfig, *, engine: str, given: set[str]) -> None:
        """Refuse impossible combinations with one line naming the option (exit 2)."""
        foreign = sorted(given - set(cls.knobs))
        if foreign:
            opts = ", ".join("--" + k.replace("_", "-") for k in foreign)
            users = ", ".join(sorted(s.name for s in _REGISTRY.values()
                                     if set(foreign) <= set(s.knobs))) or "another strategy"
            raise TtxError(f"{opts} does not apply to --strategy {cls.name} (it applies to "
                           f"{users})")

    @classmethod
    def at_level(cls, cfg: StrategyConfig, key: str, value: int) -> StrategyConfig:
        """The config of one compute level (`--levels key=...`)."""
        if key not in cls.axes:
            raise TtxError(f"--levels {key}=... does not apply to --strategy {cls.name} "
                           f"(it scales {', '.join(cls.axes) or 'nothing'})")
        if key == "n":
            return replace(cfg, n=value)
        if key == "max_new_tokens":
            return replace(cfg, params=replace(cfg.params, max_new_tokens=value))
        return replace(cfg, search=replace(cfg.search, **{key: value}))

    @classmethod
    def rows(cls, cfg: StrategyConfig) -> int:
        """Traces one problem occupies in the engine (to size calls by --batch-rows)."""
        return cfg.n if cls.samples else 1

    # --- a run ----------------------------------------------------------------------------
    def setup(self, engine) -> None:
        """Load what the whole run shares (reward models, embedders): once."""

    def run(self, engine, prompts: list, cfg: StrategyConfig) -> list[Outcome]:
        raise NotImplementedError

    def close(self) -> None:
        """Free what setup loaded."""

    # --- after a run ----------------------------------------------------------------------
    @classmethod
    def aggregate(cls, record: dict, preds: list[str | None], invalid: str) -> str | None:
        """The record's prediction from its traces' (re-extracted) answers."""
        raise NotImplementedError


_REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    if cls.name in _REGISTRY:
        raise ValueError(f"strategy {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls
