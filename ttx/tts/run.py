"""The tts-run loop: read problems, run a strategy chunk by chunk, append one record per problem.

Chunks are fixed by input order and each chunk's seed derives from --seed and its index, so a
resumed run regenerates an unfinished chunk exactly as an uninterrupted run would.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field, replace

from ttx.engines.base import Engine
from ttx.errors import TtxError
from ttx.io import JsonlAppender, iter_jsonl, now_iso, read_done_ids, write_manifest
from ttx.tts.prompts import DEFAULT_INSTRUCTION, build_prompt
from ttx.tts.strategies import StrategyConfig, run_strategy


@dataclass
class RunConfig:
    input: str
    output: str
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    question_field: str = "question"
    answer_field: str = "answer"
    id_field: str = "id"
    instruction: str | None = DEFAULT_INSTRUCTION
    system: str | None = None
    chat: bool = True
    batch_size: int = 8              # problems per engine call (each with n traces)
    limit: int | None = None
    resume: bool = False
    progress: bool = True


def read_problems(cfg: RunConfig) -> list[dict]:
    """All problems, validated before any generation starts; `id` defaults to the line number."""
    problems, seen = [], {}
    for lineno, record in iter_jsonl(cfg.input, required=[cfg.question_field]):
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


def chunk_seed(seed: int | None, index: int) -> int | None:
    return None if seed is None else (seed * 1_000_003 + index) % (1 << 63)


def run_tts(engine: Engine, cfg: RunConfig) -> dict:
    """Run the strategy over every problem; returns the summary written to the manifest."""
    from tqdm import tqdm

    from ttx.scoring.answers import answers_equal, extract_answer

    started = now_iso()
    problems = read_problems(cfg)
    done = read_done_ids(cfg.output) if cfg.resume else set()
    strategy = cfg.strategy
    base_seed = strategy.params.seed
    t0 = time.perf_counter()
    bar = tqdm(total=len(problems), desc=f"tts-run {strategy.strategy}", unit="problem",
               file=sys.stderr, disable=not cfg.progress)
    written = correct = graded = 0
    with JsonlAppender(cfg.output, resume=cfg.resume) as out:
        for index in range(0, len(problems), cfg.batch_size):
            chunk = problems[index:index + cfg.batch_size]
            todo = [p for p in chunk if str(p["id"]) not in done]
            if not todo:
                bar.update(len(chunk))
                continue
            prompts = [build_prompt(p[cfg.question_field], instruction=cfg.instruction,
                                    system=cfg.system, chat=cfg.chat) for p in chunk]
            seed = chunk_seed(base_seed, index // cfg.batch_size)
            chunk_cfg = replace(strategy, params=replace(strategy.params, seed=seed))
            tc = time.perf_counter()
            outcomes = run_strategy(engine, prompts, chunk_cfg)
            share = (time.perf_counter() - tc) / len(chunk)
            for problem, outcome in zip(chunk, outcomes):
                if str(problem["id"]) in done:
                    continue
                record = {**problem, "strategy": strategy.strategy, "n": len(outcome.traces),
                          "level": 1, "repeat": 0, "traces": outcome.traces, "pred": outcome.pred,
                          "completion_tokens": outcome.completion_tokens,
                          "sequential_tokens": outcome.sequential_tokens,
                          "prompt_tokens": outcome.prompt_tokens, "wall_s": round(share, 4),
                          "model": engine.model_name}
                out.write(record)
                written += 1
                gold = problem.get(cfg.answer_field)
                if gold is not None:
                    graded += 1
                    correct += answers_equal(outcome.pred, extract_answer(str(gold)))
            bar.update(len(chunk))
    bar.close()
    summary = {"problems": len(problems), "written": written, "skipped_done": len(problems) - written
               if cfg.resume else 0, "wall_s": round(time.perf_counter() - t0, 3),
               "accuracy_of_written": correct / graded if graded else None}
    write_manifest(cfg.output, stage="tts-run", options=_options(cfg, engine), inputs=[cfg.input],
                   started=started, summary=summary)
    return summary


def _options(cfg: RunConfig, engine: Engine) -> dict:
    options = asdict(cfg)
    options["engine"] = engine.name
    options["model"] = engine.model_name
    return options
