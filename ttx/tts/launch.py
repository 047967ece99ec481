"""`ttx tts-run` from its options: validate everything before a model loads, open the engine,
plug in the stages' hooks (memory), run."""

from __future__ import annotations

from ttx.errors import TtxError
from ttx.tts.levels import RepeatRule
from ttx.tts.prompts import DEFAULT_INSTRUCTION
from ttx.tts.run import RunConfig, _level_settings, read_problems, run_tts
from ttx.tts.strategy import Strategy, StrategyConfig


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
                    resume=bool(o.get("resume")), force_resume=bool(o.get("force_resume")),
                    progress=o.get("progress", True),
                    memory=o.get("memory"), **memory)
    _level_settings(cfg)                 # impossible level settings fail here too
    return cfg, cls


def run_from_options(**o) -> dict:
    """`ttx tts-run`: build the run from CLI options, validate the input, open the engine, run."""
    from ttx.engines import open_engine
    from ttx.records import refuse_overlap

    cfg, _ = build_run(o)
    refuse_overlap(cfg.output, [cfg.input])   # before anything is read or written
    problems = read_problems(cfg)        # bad input fails here, before a model is loaded
    from ttx.memory.online import Recall, check_memory_options
    check_memory_options(cfg)            # and so does a bad memory bank or memory option
    opened = open_engine(o.get("engine", "hf"), model=o["model"], device=o.get("device", "auto"),
                         dtype=o.get("dtype", "auto"), adapter=o.get("adapter"),
                         base_url=o.get("base_url"), concurrency=o.get("concurrency", 8),
                         max_batch_rows=cfg.batch_rows)
    try:
        hooks = (Recall(cfg, problems, opened),) if cfg.memory else ()
        return run_tts(opened, cfg, problems=problems, options=dict(o), hooks=hooks)
    finally:
        opened.close()


