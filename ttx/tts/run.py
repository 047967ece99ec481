"""The tts-run loop: read problems, run a strategy per chunk, level and repeat, append records.

Chunks are fixed by input order and every engine call's seed derives from --seed, the chunk, the
level and the repeat, so a resumed run regenerates an unfinished call exactly as an
uninterrupted run would and writes only the records that are missing; a resume whose options
differ from the first session's is refused (ttx.records.Output).

Stages plug into the loop through hooks (`RunHook`): memory (ttx.memory.online) says what goes
before each question and learns from each record once it is written. The loop imports none of
them; ttx.tts.launch builds a run from tts-run's options.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

from ttx.engines.base import Engine
from ttx.errors import TtxError
from ttx.prompts import DEFAULT_INSTRUCTION, build_prompt
from ttx.records import Output
from ttx.records import read_problems as read_input
from ttx.seeds import call_seed
from ttx.tts.levels import Levels, RepeatRule
from ttx.tts.strategy import Outcome, Strategy, StrategyConfig


@dataclass
class RunConfig:
    input: str
    output: str
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    levels: Levels | None = None     # None: one level at the strategy's own settings
    repeats: RepeatRule = field(default_factory=RepeatRule)
    question_field: str = "question"
    answer_field: str = "answer"
    id_field: str = "id"
    instruction: str | None = DEFAULT_INSTRUCTION
    system: str | None = None
    chat: bool = True
    batch_rows: int = 64             # traces decoded together: problems per call = rows // n
    limit: int | None = None
    resume: bool = False
    force_resume: bool = False       # resume even when the options differ (mixes records)
    progress: bool = True


class RunHook(Protocol):
    """What a stage adds to the loop (ttx.memory.online.Recall is one). The loop's config knows
    nothing of a hook's options: the hook says what of them decides the records (`fingerprint`)
    and which files it reads (`inputs`), and the loop's resume check covers both."""

    one_at_a_time: bool       # the next problem needs this one's record first (online memory)

    def fingerprint(self) -> dict:
        """The hook's options that decide the records, by option name."""

    def inputs(self) -> list[str]:
        """Files the hook reads (hashed for the resume check, refused as the output)."""

    def resume(self, records: list[dict]) -> None:
        """The records an earlier session wrote (on --resume), in file order."""

    def before(self, problem: dict) -> tuple[str | None, list[str]]:
        """(text put before the question, ids of what it holds) for a problem."""

    def after(self, problem: dict, record: dict) -> None:
        """A record was written."""

    def summary(self) -> dict:
        ...


def read_problems(cfg: RunConfig) -> list[dict]:
    """All problems, validated before any generation starts; `id` defaults to the line number."""
    dynamic = cfg.repeats.maximum > cfg.repeats.minimum
    return read_input(cfg.input, question_field=cfg.question_field, id_field=cfg.id_field,
                      answer_field=cfg.answer_field if dynamic else None, limit=cfg.limit)


# RunConfig fields that do not decide what the records hold (a resume may change them)
_VOLATILE = {"input", "output", "limit", "resume", "force_resume", "progress"}


def fingerprint(cfg: RunConfig, engine: Engine) -> dict:
    """The options that decide a run's records, flattened to their option names."""
    flat = {"model": engine.model_name, "engine": engine.name}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(k, v)
        else:
            flat[prefix] = list(value) if isinstance(value, tuple) else value

    for key, value in asdict(cfg).items():
        if key not in _VOLATILE:
            walk(key, value)
    return flat


def check_lengths(engine: Engine, cfg: RunConfig, problems: list[dict], new_tokens: int) -> None:
    """Refuse, naming the problem, a prompt that with --max-new-tokens exceeds the model's
    positions (engines that know their tokenizer and positions: hf)."""
    from ttx.engines.base import local

    policy = local(engine)
    if policy is None or not policy.max_positions:
        return
    limit = policy.max_positions
    for p in problems:
        n = len(policy.encode(build_prompt(p[cfg.question_field], instruction=cfg.instruction,
                                    system=cfg.system, chat=cfg.chat)))
        if n + new_tokens > limit:
            raise TtxError(f"problem {p['id']!r}: its prompt is {n} tokens, and with "
                           f"--max-new-tokens {new_tokens} that exceeds the model's {limit} "
                           "positions (shorten the question or lower --max-new-tokens)",
                           path=cfg.input, field=cfg.question_field)


# what a record holds besides its problem's fields (_record)
_RECORD_FIELDS = {"strategy", "n", "level_key", "level", "repeat", "traces", "pred", "model",
                  "completion_tokens", "sequential_tokens", "prompt_tokens", "wall_s", "memory_ids"}


def same_problems(cfg: RunConfig, problems: list[dict]):
    """A check, on --resume, that each record already written was made from the problem of its
    id as the input holds it now (question and answer): an input edited or replaced by another
    file, whatever its path, would otherwise mix old and new records."""
    by_id = {str(p["id"]): p for p in problems}
    fields = [f for f in (cfg.question_field, cfg.answer_field) if f not in _RECORD_FIELDS]

    def check(records: list[dict]) -> None:
        for r in records:
            problem = by_id.get(str(r.get("id")))
            if problem is None:
                continue                          # not in this run (--limit): left as it is
            for f in fields:
                if r.get(f) != problem.get(f):
                    raise TtxError(f"--resume: the records here for id {r.get('id')!r} were made "
                                   f"from another {f} than the input's now (--force-resume "
                                   "keeps the stale records; or write another output)",
                                   path=cfg.output, field=f)
    return check


def record_key(record: dict) -> tuple[str, int, int]:
    return (str(record.get("id")), int(record.get("level", 1)), int(record.get("repeat", 0)))


def _strategy_class(cfg: RunConfig) -> type[Strategy]:
    from ttx.tts.registry import strategy

    return strategy(cfg.strategy.strategy)


def _level_settings(cfg: RunConfig) -> list[tuple[str, int, StrategyConfig]]:
    """(level_key, value, strategy config) for each level, in level order."""
    cls, base = _strategy_class(cfg), cfg.strategy
    if cfg.levels is None:
        return [("n", base.n if cls.samples else 1, base)]
    return [(cfg.levels.key, value, cls.at_level(base, cfg.levels.key, value))
            for value in cfg.levels.values]


def run_tts(engine: Engine, cfg: RunConfig, problems: list[dict] | None = None,
            options: dict | None = None, hooks: tuple = ()) -> dict:
    """Run the strategy over every problem, level and repeat; returns the manifest summary."""
    from tqdm import tqdm

    problems = read_problems(cfg) if problems is None else problems
    settings = _level_settings(cfg)
    check_lengths(engine, cfg, problems, max(s.params.max_new_tokens for _, _, s in settings))
    inputs = [cfg.input] + [path for hook in hooks for path in hook.inputs()]
    prints = fingerprint(cfg, engine)
    for hook in hooks:
        prints.update(hook.fingerprint())
    out = Output(cfg.output, stage="tts-run", fingerprint=prints,
                 inputs=inputs, resume=cfg.resume, force=cfg.force_resume, key=record_key,
                 check_existing=same_problems(cfg, problems))
    runner = _strategy_class(cfg)(cfg.strategy)
    stats = {"written": 0, "correct": 0, "graded": 0, "engine_calls": 0}
    t0 = time.perf_counter()
    bar = tqdm(total=len(problems) * len(settings), desc=f"tts-run {cfg.strategy.strategy}",
               unit="problem-level", file=sys.stderr, disable=not cfg.progress)
    try:
        runner.setup(engine)                 # reward models, embedders: once per run
        for hook in hooks:
            hook.resume(out.existing)
        loop = _Loop(engine, cfg, runner, out, hooks, stats)
        for level, setting in enumerate(settings, start=1):
            loop.level(level, *setting, problems, bar)
    except BaseException:
        out.close()                          # the lock goes; the manifest still says running
        raise
    finally:
        bar.close()
        runner.close()
    summary = {"problems": len(problems), "levels": len(settings), **stats,
               "wall_s": round(time.perf_counter() - t0, 3),
               "accuracy_of_written": stats["correct"] / stats["graded"] if stats["graded"]
               else None}
    summary.pop("correct")
    summary.pop("graded")
    for hook in hooks:
        summary.update(hook.summary())
    summary.update(runner.stats)
    out.close(summary, options={"cli": options or {}, "run": asdict(cfg), "engine": engine.name,
                                "model": engine.model_name})
    return summary


class _Loop:
    """One run's loop over levels, chunks and repeats (run_tts)."""

    def __init__(self, engine, cfg: RunConfig, runner: Strategy, out: Output, hooks, stats):
        self.engine, self.cfg, self.runner, self.out, self.hooks = engine, cfg, runner, out, hooks
        self.stats = stats
        self.dynamic = cfg.repeats.maximum > cfg.repeats.minimum
        self.one_at_a_time = any(getattr(h, "one_at_a_time", False) for h in hooks)

    def level(self, level: int, key: str, value: int, strategy: StrategyConfig,
              problems: list[dict], bar) -> None:
        # problems per engine call: fill --batch-rows with this level's traces
        per_call = max(1, self.cfg.batch_rows // type(self.runner).rows(strategy))
        per_call = 1 if self.one_at_a_time else per_call
        for c, start in enumerate(range(0, len(problems), per_call)):
            self.chunk(level, key, value, strategy, c, problems[start:start + per_call])
            bar.update(len(problems[start:start + per_call]))

    def chunk(self, level, key, value, strategy, c, chunk) -> None:
        cfg, out = self.cfg, self.out
        history: dict[str, list[tuple[float, float]]] = {str(p["id"]): [] for p in chunk}
        for repeat in range(cfg.repeats.maximum):
            active = [p for p in chunk if cfg.repeats.wants_more(*_split(history[str(p["id"])]))]
            if not active:
                return
            # A fixed count needs no outcomes, so a finished call is skipped on resume;
            # the dynamic rule needs them, so it regenerates (same seed, same records).
            if not self.dynamic and all(out.has(record_key({"id": p["id"], "level": level,
                                                            "repeat": repeat})) for p in active):
                continue
            seed = call_seed(strategy.params.seed, level, c, repeat)
            call_cfg = replace(strategy, params=replace(strategy.params, seed=seed))
            tc = time.perf_counter()
            given = [self.before(p) for p in active]
            prompts = [build_prompt(p[cfg.question_field], instruction=cfg.instruction,
                                    system=cfg.system, chat=cfg.chat, memory=text)
                       for p, (text, _) in zip(active, given)]
            outcomes = self.runner.run(self.engine, prompts, call_cfg)
            self.stats["engine_calls"] += 1
            share = (time.perf_counter() - tc) / len(active)
            for problem, outcome, (_, ids) in zip(active, outcomes, given):
                acc = self.correct_of(problem, outcome.pred)
                history[str(problem["id"])].append(
                    (acc if acc is not None else 0.0, float(outcome.completion_tokens)))
                if out.has(record_key({"id": problem["id"], "level": level, "repeat": repeat})):
                    continue
                record = _record(problem, self.engine, strategy, key, value, level, repeat,
                                 outcome, share)
                record["memory_ids"] = ids
                out.write(record)
                for hook in self.hooks:
                    hook.after(problem, record)     # --memory-update: before the next problem
                self.stats["written"] += 1
                if acc is not None:
                    self.stats["graded"] += 1
                    self.stats["correct"] += acc

    def before(self, problem: dict) -> tuple[str | None, list[str]]:
        texts, ids = [], []
        for hook in self.hooks:
            text, got = hook.before(problem)
            if text:
                texts.append(text)
            ids += got
        return ("\n\n".join(texts) or None), ids

    def correct_of(self, problem: dict, pred) -> float | None:
        from ttx.scoring.answers import answers_equal, extract_answer

        gold = problem.get(self.cfg.answer_field)
        if gold is None:
            return None
        return float(answers_equal(pred, extract_answer(str(gold))))


def _split(history: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    return [a for a, _ in history], [t for _, t in history]


def _record(problem: dict, engine: Engine, strategy: StrategyConfig, key: str, value: int,
            level: int, repeat: int, outcome: Outcome, share: float) -> dict:
    record = {**problem, "strategy": strategy.strategy, "n": len(outcome.traces),
              "level_key": key, key: value, "level": level, "repeat": repeat,
              "traces": outcome.traces, "pred": outcome.pred,
              "completion_tokens": outcome.completion_tokens,
              "sequential_tokens": outcome.sequential_tokens,
              "prompt_tokens": outcome.prompt_tokens,
              "wall_s": round(share, 4),          # this problem's share of its batch's wall time
              "model": engine.model_name, **outcome.extra}
    return record
