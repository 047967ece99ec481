"""The tts-run loop: read problems, run a strategy per chunk, level and repeat, append records.

Chunks are fixed by input order and every engine call's seed derives from --seed, the chunk, the
level and the repeat, so a resumed run regenerates an unfinished call exactly as an
uninterrupted run would and writes only the records that are missing.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field, replace

from ttx.engines.base import Engine
from ttx.errors import TtxError
from ttx.io import JsonlAppender, iter_jsonl, now_iso, read_jsonl, repair_torn_tail, write_manifest
from ttx.tts.levels import Levels, RepeatRule
from ttx.tts.prompts import DEFAULT_INSTRUCTION, build_prompt
from ttx.tts.seeds import call_seed
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
    progress: bool = True
    memory: str | None = None        # a memory bank (ttx memory-extract) to retrieve from
    memory_k: int = 1                # items per problem (ReasoningBank: k = 1 best); 0: all
    memory_update: bool = False      # learn online: the bank is updated after each problem
    memory_style: str = "reasoningbank"
    memory_item_format: str = "blocks"
    memory_judge: str = "gold"       # gold where a problem has one, else the model (self)
    memory_retriever: str = "bm25"   # or embedding (memory_embedder: a local model)
    memory_embedder: str | None = None
    memory_extract_tokens: int = 256


def read_problems(cfg: RunConfig) -> list[dict]:
    """All problems, validated before any generation starts; `id` defaults to the line number."""
    dynamic = cfg.repeats.maximum > cfg.repeats.minimum
    required = [cfg.question_field] + ([cfg.answer_field] if dynamic else [])
    problems, seen = [], {}
    for lineno, record in iter_jsonl(cfg.input, required=required):
        if not isinstance(record[cfg.question_field], str):
            raise TtxError("expected a string", path=cfg.input, line=lineno,
                           field=cfg.question_field)
        pid = str(record.get(cfg.id_field, lineno))
        if pid in seen:
            raise TtxError(f"duplicate id {pid!r} (first on line {seen[pid]})", path=cfg.input,
                           line=lineno, field=cfg.id_field)
        seen[pid] = lineno
        problems.append({**record, "id": record.get(cfg.id_field, lineno)})
        if cfg.limit is not None and len(problems) >= cfg.limit:
            break
    return problems


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


class _Done:
    """Records already in the output (for --resume), keyed by (id, level, repeat)."""

    def __init__(self, cfg: RunConfig):
        self.keys: set[tuple[str, int, int]] = set()
        if not cfg.resume or cfg.output == "-":
            return
        from pathlib import Path

        path = Path(cfg.output)
        if not path.exists():
            return
        repair_torn_tail(path)
        for r in read_jsonl(path):
            key = (str(r.get("id")), int(r.get("level", 1)), int(r.get("repeat", 0)))
            self.keys.add(key)

    def has(self, pid, level: int, repeat: int) -> bool:
        return (str(pid), level, repeat) in self.keys


def search_knobs() -> tuple[str, ...]:
    """tts-run options that fill a SearchConfig (None on the command line: not given)."""
    from dataclasses import fields

    from ttx.tts.search import SearchConfig

    return tuple(f.name for f in fields(SearchConfig) if f.name != "tokenizer")


def build_run(o: dict) -> tuple[RunConfig, type[Strategy]]:
    """A RunConfig from tts-run's resolved options, refusing what cannot run (one line, naming
    the option) before any model loads."""
    from ttx.engines import SamplingParams
    from ttx.tts.levels import parse_levels
    from ttx.tts.registry import strategy as strategy_class
    from ttx.tts.search import SearchConfig, local_tokenizer

    try:
        parsed_levels = parse_levels(o["levels"]) if o.get("levels") else None
    except ValueError as exc:
        raise TtxError(str(exc), field="--levels") from None
    if o.get("repeats") is None and (o.get("repeats_min") or o.get("repeats_max")):
        lo, hi = o.get("repeats_min") or 3, o.get("repeats_max") or 10     # ARISE's defaults
        if lo > hi:
            raise TtxError(f"--repeats-min {lo} exceeds --repeats-max {hi}")
        rule = RepeatRule(lo, hi, o.get("cv_threshold", 0.5))
    else:
        rule = RepeatRule.fixed(o.get("repeats") or 1)
    cls = strategy_class(o["strategy"])
    given = {k: o[k] for k in search_knobs() if o.get(k) is not None}
    search = SearchConfig(**given)
    search.validate(o["max_new_tokens"])
    params = SamplingParams(max_new_tokens=o["max_new_tokens"], temperature=o["temperature"],
                            top_p=o["top_p"], seed=o["seed"], stop=tuple(o.get("stop") or ()))
    strategy = StrategyConfig(strategy=o["strategy"], n=o["n"], params=params,
                              scorer=o.get("scorer", "logprob"), weighted=bool(o.get("weighted")),
                              ffs_k=o.get("ffs_k", 1),
                              invalid_votes=o.get("invalid_votes") or "lm-eval", search=search)
    engine = o.get("engine", "hf")
    cls.check(strategy, engine=engine, given=set(given))
    if engine == "openai" and cls.scored and strategy.scorer == "self-certainty" \
            and not search.reward_model:
        raise TtxError("--scorer self-certainty needs the full token distribution, which a "
                       "server does not return: use --scorer logprob with --engine openai")
    if cls.continues and engine == "openai" and o.get("chat", True):
        search.tokenizer = local_tokenizer(o["model"], o["strategy"])
    instruction = o.get("instruction")
    memory = {k: v for k, v in o.items() if k.startswith("memory_") and v is not None}
    cfg = RunConfig(input=o["input_path"], output=o["output_path"], strategy=strategy,
                    levels=parsed_levels, repeats=rule,
                    question_field=o.get("question_field", "question"),
                    answer_field=o.get("answer_field", "answer"), id_field=o.get("id_field", "id"),
                    instruction=DEFAULT_INSTRUCTION if instruction is None else (instruction or None),
                    system=o.get("system"), chat=o.get("chat", True),
                    batch_rows=o.get("batch_rows", 64), limit=o.get("limit"),
                    resume=bool(o.get("resume")), progress=o.get("progress", True),
                    memory=o.get("memory"), **memory)
    _level_settings(cfg)                 # impossible level settings fail here too
    return cfg, cls


def run_from_options(**o) -> dict:
    """`ttx tts-run`: build the run from CLI options, validate the input, open the engine, run."""
    from ttx.engines import open_engine

    cfg, _ = build_run(o)
    problems = read_problems(cfg)        # bad input fails here, before a model is loaded
    from ttx.memory.online import check_memory_options
    check_memory_options(cfg)            # and so does a bad memory bank or memory option
    opened = open_engine(o.get("engine", "hf"), model=o["model"], device=o.get("device", "auto"),
                         dtype=o.get("dtype", "auto"), adapter=o.get("adapter"),
                         base_url=o.get("base_url"), concurrency=o.get("concurrency", 8),
                         max_batch_rows=cfg.batch_rows)
    try:
        return run_tts(opened, cfg, problems=problems, options=dict(o))
    finally:
        opened.close()


def run_tts(engine: Engine, cfg: RunConfig, problems: list[dict] | None = None,
            options: dict | None = None) -> dict:
    """Run the strategy over every problem, level and repeat; returns the manifest summary."""
    from tqdm import tqdm

    from ttx.scoring.answers import answers_equal, extract_answer

    started = now_iso()
    problems = read_problems(cfg) if problems is None else problems
    settings = _level_settings(cfg)
    runner = _strategy_class(cfg)(cfg.strategy)
    runner.setup(engine)                 # reward models, embedders: once per run
    done = _Done(cfg)
    from ttx.memory.online import Recall
    recall = Recall(cfg, problems, engine)   # id -> (injected text or None, item ids)
    base_seed = cfg.strategy.params.seed
    dynamic = cfg.repeats.maximum > cfg.repeats.minimum
    t0 = time.perf_counter()
    bar = tqdm(total=len(problems) * len(settings), desc=f"tts-run {cfg.strategy.strategy}",
               unit="problem-level", file=sys.stderr, disable=not cfg.progress)
    stats = {"written": 0, "correct": 0, "graded": 0, "engine_calls": 0}

    def correct_of(problem: dict, pred) -> float | None:
        gold = problem.get(cfg.answer_field)
        if gold is None:
            return None
        return float(answers_equal(pred, extract_answer(str(gold))))

    try:
        with JsonlAppender(cfg.output, resume=cfg.resume) as out:
            for level, (key, value, strategy) in enumerate(settings, start=1):
                # problems per engine call: fill --batch-rows with this level's traces
                per_call = max(1, cfg.batch_rows // type(runner).rows(strategy))
                per_call = 1 if cfg.memory_update else per_call    # online memory: one at a time
                for c, start in enumerate(range(0, len(problems), per_call)):
                    chunk = problems[start:start + per_call]
                    history: dict[str, list[tuple[float, float]]] = {str(p["id"]): [] for p in chunk}
                    for repeat in range(cfg.repeats.maximum):
                        active = [p for p in chunk
                                  if cfg.repeats.wants_more(*_split(history[str(p["id"])]))]
                        if not active:
                            break
                        # A fixed count needs no outcomes, so a finished call is skipped on resume;
                        # the dynamic rule needs them, so it regenerates (same seed, same records).
                        if not dynamic and all(done.has(p["id"], level, repeat) for p in active):
                            continue
                        seed = call_seed(base_seed, level, c, repeat)
                        call_cfg = replace(strategy, params=replace(strategy.params, seed=seed))
                        tc = time.perf_counter()
                        prompts = [build_prompt(p[cfg.question_field], instruction=cfg.instruction,
                                                system=cfg.system, chat=cfg.chat,
                                                memory=recall[str(p["id"])][0]) for p in active]
                        outcomes = runner.run(engine, prompts, call_cfg)
                        stats["engine_calls"] += 1
                        share = (time.perf_counter() - tc) / len(active)
                        for problem, outcome in zip(active, outcomes):
                            acc = correct_of(problem, outcome.pred)
                            history[str(problem["id"])].append(
                                (acc if acc is not None else 0.0, float(outcome.completion_tokens)))
                            if done.has(problem["id"], level, repeat):
                                continue
                            record = _record(problem, engine, strategy, key, value, level, repeat,
                                             outcome, share)
                            record["memory_ids"] = recall[str(problem["id"])][1]
                            out.write(record)
                            recall.learn(problem, record)    # --memory-update: before the next
                            stats["written"] += 1
                            if acc is not None:
                                stats["graded"] += 1
                                stats["correct"] += acc
                    bar.update(len(chunk))
    finally:
        bar.close()
        runner.close()
    summary = {"problems": len(problems), "levels": len(settings), **stats,
               "wall_s": round(time.perf_counter() - t0, 3),
               "accuracy_of_written": stats["correct"] / stats["graded"] if stats["graded"]
               else None}
    summary.pop("correct")
    summary.pop("graded")
    options = {"cli": options or {}, "run": asdict(cfg), "engine": engine.name,
               "model": engine.model_name}
    summary.update(recall.summary())
    summary.update(runner.stats)
    write_manifest(cfg.output, stage="tts-run", options=options,
                   inputs=[cfg.input] + ([cfg.memory] if cfg.memory else []),
                   started=started, summary=summary)
    return summary


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
