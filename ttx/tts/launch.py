"""`ttx tts-run` from its options: validate everything before a model loads, open the engine,
plug in the stages' hooks (memory), run."""

from __future__ import annotations

from ttx.engines.options import EngineOptions
from ttx.errors import TtxError
from ttx.prompts import DEFAULT_INSTRUCTION
from ttx.tts.levels import RepeatRule
from ttx.tts.options import LevelOptions, MemoryOptions, PromptOptions, RunIO, Sampling, StrategyOptions
from ttx.tts.run import RunConfig, _level_settings, read_problems, run_tts
from ttx.tts.strategy import Strategy, StrategyConfig


def build_run(o: dict) -> tuple[RunConfig, type[Strategy], EngineOptions]:
    """A RunConfig from tts-run's option values (click's params), refusing what cannot run (one
    line, naming the option) before any model loads."""
    from ttx.engines import SamplingParams
    from ttx.options import build, given
    from ttx.tts.levels import parse_levels
    from ttx.tts.registry import strategy as strategy_class
    from ttx.tts.search import SearchConfig, local_tokenizer

    io, sampling = build(RunIO, o), build(Sampling, o)
    if (io.resume or io.force_resume) and io.output_path == "-":
        raise TtxError("continues an output file: records written to stdout cannot be read back "
                       "(give -o FILE)", field="--resume" if io.resume else "--force-resume")
    choice, levels = build(StrategyOptions, o), build(LevelOptions, o)
    engine, prompt = build(EngineOptions, o), build(PromptOptions, o)
    try:
        parsed_levels = parse_levels(levels.levels) if levels.levels else None
    except ValueError as exc:
        raise TtxError(str(exc), field="--levels") from None
    if levels.repeats is None and (levels.repeats_min or levels.repeats_max):
        lo, hi = levels.repeats_min or 3, levels.repeats_max or 10     # ARISE's defaults
        if lo > hi:
            raise TtxError(f"--repeats-min {lo} exceeds --repeats-max {hi}")
        rule = RepeatRule(lo, hi, levels.cv_threshold)
    else:
        rule = RepeatRule.fixed(levels.repeats or 1)
    cls = strategy_class(choice.strategy)
    knobs = given(SearchConfig, o)
    search = build(SearchConfig, o)
    search.validate(sampling.max_new_tokens)
    search.prm_system = prompt.system        # search-and-learn's Math-Shepherd PRM input opens with it
    params = SamplingParams(max_new_tokens=sampling.max_new_tokens,
                            temperature=sampling.temperature, top_p=sampling.top_p,
                            seed=sampling.seed, stop=sampling.stop)
    strategy = StrategyConfig(strategy=choice.strategy, n=choice.n, params=params,
                              scorer=choice.scorer, weighted=choice.weighted, ffs_k=choice.ffs_k,
                              invalid_votes=choice.invalid_votes, search=search)
    cls.check(strategy, engine=engine.engine, given=knobs)
    if engine.engine == "openai" and cls.scored and strategy.scorer == "self-certainty" \
            and not search.reward_model:
        raise TtxError("--scorer self-certainty needs the full token distribution, which a "
                       "server does not return: use --scorer logprob with --engine openai")
    if cls.continues and engine.engine == "openai" and prompt.chat:
        search.tokenizer = local_tokenizer(engine.model, choice.strategy)
    cfg = RunConfig(input=io.input_path, output=io.output_path, strategy=strategy,
                    levels=parsed_levels, repeats=rule, question_field=io.question_field,
                    answer_field=io.answer_field, id_field=io.id_field,
                    instruction=(DEFAULT_INSTRUCTION if prompt.instruction is None
                                 else (prompt.instruction or None)),
                    system=prompt.system, chat=prompt.chat, batch_rows=engine.batch_rows,
                    limit=io.limit, resume=io.resume, force_resume=io.force_resume,
                    progress=io.progress)
    _level_settings(cfg)                 # impossible level settings fail here too
    return cfg, cls, engine


def run_from_options(o: dict) -> dict:
    """`ttx tts-run`: build the run from its options, validate the input, open the engine, run."""
    from ttx.records import refuse_overlap

    cfg, _, engine = build_run(o)
    refuse_overlap(cfg.output, [cfg.input])   # before anything is read or written
    problems = read_problems(cfg)        # bad input fails here, before a model is loaded
    from ttx.memory.online import Recall, check_memory_options
    from ttx.options import build

    memory = build(MemoryOptions, o)
    check_memory_options(memory, cfg)    # and so does a bad memory bank or memory option
    opened = engine.open(cfg.batch_rows)
    try:
        # the hook always runs (without a bank it adds nothing): its options stay in the
        # resume fingerprint under the names they always had
        hooks = (Recall(memory, cfg, problems, opened),)
        summary = run_tts(opened, cfg, problems=problems, options=dict(o), hooks=hooks)
    finally:
        opened.close()
    return summary
