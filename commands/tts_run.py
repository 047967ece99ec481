"""`ttx tts-run`: test-time scaling over a JSONL file of problems."""

from __future__ import annotations

import click

from ttx.commands.options import config_option, engine_options
from ttx.tts.strategies import SCORERS, STRATEGIES  # light: no torch at import time


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
@click.option("--scorer", type=click.Choice(SCORERS), default="logprob",
              show_default=True, help="best-of-n: how a trace is scored.")
@click.option("--weighted/--no-weighted", default=False, help="best-of-n: sum scores per answer.")
@click.option("--ffs-k", type=click.IntRange(min=1), default=1, show_default=True,
              help="ffs: wait for k finished traces and vote among them.")
@click.option("--levels", metavar="AXIS=V1,V2,...",
              help="Compute levels for ARISE: n=1,2,4,8 or max_new_tokens=64,128,256.")
@click.option("--repeats", type=click.IntRange(min=1),
              help="Fixed repeats per (problem, level) (default 1); wins over --repeats-min/max.")
@click.option("--repeats-min", type=click.IntRange(min=1),
              help="Dynamic repeats: at least this many (ARISE default 3).")
@click.option("--repeats-max", type=click.IntRange(min=1),
              help="Dynamic repeats: at most this many (ARISE default 10).")
@click.option("--cv-threshold", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="Dynamic repeats: stop once CV(accuracy) + CV(tokens) <= this.")
@engine_options
@click.option("--adapter", type=click.Path(exists=True, file_okay=False),
              help="hf: a PEFT adapter folder to apply.")
@click.option("--batch-rows", type=click.IntRange(min=1), default=64, show_default=True,
              help="hf: traces decoded together (problems per call = rows / n).")
@click.option("--question-field", default="question", show_default=True)
@click.option("--answer-field", default="answer", show_default=True)
@click.option("--id-field", default="id", show_default=True)
@click.option("--instruction", help="Text appended to each question (default: none, the "
              "question as it is; measured best for the default model).")
@click.option("--system", help="System message.")
@click.option("--chat/--no-chat", default=True, show_default=True,
              help="Chat template (chat endpoint) or plain 'Question: ... Answer:' text.")
@click.option("--memory", type=click.Path(dir_okay=False),
              help="A memory bank (ttx memory-extract): retrieved items go before each question.")
@click.option("--memory-k", type=click.IntRange(min=1), default=1, show_default=True,
              help="Memory items per problem (BM25 top-k, never from the same problem).")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N problems.")
@click.option("--resume/--no-resume", default=False,
              help="Keep the output and skip (problem, level, repeat) records already in it.")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def command(**options):
    """Test-time scaling: sample, vote, search and refine with a model."""
    from ttx.tts.run import run_from_options

    summary = run_from_options(**options)
    click.echo(f"tts-run: {summary['written']} records written to {options['output_path']} "
               f"in {summary['wall_s']:.1f}s", err=True)
