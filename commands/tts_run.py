"""`ttx tts-run`: test-time scaling over a JSONL file of problems."""

from __future__ import annotations

import click

from ttx.commands.options import config_option, model_options

STRATEGIES = ("greedy", "sample", "majority", "best-of-n", "ffs")


@click.command(name="tts-run")
@config_option
@click.option("-i", "--input", "input_path", required=True, help="Problems JSONL (path or -).")
@click.option("-o", "--output", "output_path", default="-", show_default=True,
              help="Records JSONL (path or -), one per problem, appended as each finishes.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="majority", show_default=True)
@click.option("--n", "n", type=click.IntRange(min=1), default=8, show_default=True,
              help="Traces per problem.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.7, show_default=True)
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--scorer", type=click.Choice(["logprob", "self-certainty"]), default="logprob",
              show_default=True, help="best-of-n: how a trace is scored.")
@click.option("--weighted", is_flag=True, help="best-of-n: sum scores per answer.")
@click.option("--ffs-k", type=click.IntRange(min=1), default=1, show_default=True,
              help="ffs: wait for k finished traces and vote among them.")
@click.option("--levels", "levels_spec", metavar="AXIS=V1,V2,...",
              help="Compute levels for ARISE: n=1,2,4,8 or max_new_tokens=64,128,256.")
@click.option("--repeats", type=click.IntRange(min=1),
              help="Fixed repeats per (problem, level) (default 1).")
@click.option("--repeats-min", type=click.IntRange(min=1),
              help="Dynamic repeats: at least this many (ARISE default 3).")
@click.option("--repeats-max", type=click.IntRange(min=1),
              help="Dynamic repeats: at most this many (ARISE default 10).")
@click.option("--cv-threshold", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="Dynamic repeats: stop once CV(accuracy) + CV(tokens) <= this.")
@click.option("--engine", "engine_name", type=click.Choice(["hf", "openai"]), default="hf",
              show_default=True)
@model_options
@click.option("--adapter", type=click.Path(exists=True, file_okay=False),
              help="hf: a PEFT adapter folder to apply.")
@click.option("--base-url", help="openai: server URL, e.g. http://127.0.0.1:8000/v1.")
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True,
              help="openai: requests in flight.")
@click.option("--batch-rows", type=click.IntRange(min=1), default=64, show_default=True,
              help="hf: traces decoded together (problems per call = rows / n).")
@click.option("--question-field", default="question", show_default=True)
@click.option("--answer-field", default="answer", show_default=True)
@click.option("--id-field", default="id", show_default=True)
@click.option("--instruction", help="Text appended to each question (default: asks for "
              "step-by-step work ending with 'The answer is N'; '' for none).")
@click.option("--system", help="System message.")
@click.option("--chat/--no-chat", default=True, show_default=True,
              help="Chat template (chat endpoint) or plain 'Question: ... Answer:' text.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N problems.")
@click.option("--resume", is_flag=True, help="Skip problems whose id is already in the output.")
@click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
def command(input_path, output_path, strategy, n, max_new_tokens, temperature, top_p, seed, stop,
            scorer, weighted, ffs_k, levels_spec, repeats, repeats_min, repeats_max,
            cv_threshold, engine_name, model, device, dtype, adapter, base_url,
            concurrency, batch_rows, question_field, answer_field, id_field, instruction, system,
            chat, limit, resume, no_progress):
    """Test-time scaling: sample, vote, search and refine with a model."""
    from ttx.engines import SamplingParams
    from ttx.engines import open_engine
    from ttx.tts.prompts import DEFAULT_INSTRUCTION
    from ttx.tts.run import RunConfig, read_problems, run_tts
    from ttx.tts.strategies import StrategyConfig

    from ttx.tts.levels import RepeatRule, parse_levels

    if ffs_k > n and not levels_spec:
        raise click.BadParameter(f"--ffs-k ({ffs_k}) must not exceed --n ({n})")
    try:
        levels = parse_levels(levels_spec) if levels_spec else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--levels") from None
    if repeats is not None and (repeats_min or repeats_max):
        raise click.BadParameter("give --repeats K or --repeats-min/--repeats-max, not both")
    if repeats_min or repeats_max:
        lo, hi = repeats_min or 3, repeats_max or 10
        if lo > hi:
            raise click.BadParameter(f"--repeats-min {lo} exceeds --repeats-max {hi}")
        rule = RepeatRule(lo, hi, cv_threshold)
    else:
        rule = RepeatRule.fixed(repeats or 1)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            seed=seed, stop=tuple(stop))
    cfg = RunConfig(input=input_path, output=output_path,
                    strategy=StrategyConfig(strategy=strategy, n=n, params=params, scorer=scorer,
                                            weighted=weighted, ffs_k=ffs_k),
                    levels=levels, repeats=rule, question_field=question_field,
                    answer_field=answer_field, id_field=id_field,
                    instruction=DEFAULT_INSTRUCTION if instruction is None else (instruction or None),
                    system=system, chat=chat, batch_rows=batch_rows, limit=limit, resume=resume,
                    progress=not no_progress)
    read_problems(cfg)   # fail on bad input before loading a model
    engine = open_engine(engine_name, model=model, device=device, dtype=dtype, adapter=adapter,
                         base_url=base_url, concurrency=concurrency)
    try:
        summary = run_tts(engine, cfg)
    finally:
        engine.close()
    click.echo(f"tts-run: {summary['written']} records written to {output_path} "
               f"in {summary['wall_s']:.1f}s", err=True)
