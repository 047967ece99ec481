"""`ttx score`: accuracy, pass@k, maj@k, tokens, ARISE and plots from tts-run records.

    ttx score -i runs.jsonl
    ttx score -i n1.jsonl -i n2.jsonl -i n4.jsonl --json        # files in level order
    ttx score --compare greedy=a.jsonl --compare ffs=b.jsonl --plot cmp.png
"""

from __future__ import annotations

import json as json_module

import click

from ttx.cli.options import compare_options, compared_runs, config_option
from ttx.options import cli_options
from ttx.score import ScoreConfig  # light: click and the schema only


@click.command(name="score")
@config_option
@click.option("-i", "--input", multiple=True,
              help="tts-run records (path or -); several files are levels 1, 2, ... in order.")
@compare_options("A named run to rank by ARISE (FILE1,FILE2 for levels); repeatable, or "
                 "several after one flag. Each run after the first gets its paired difference "
                 "to the first.")
@cli_options(ScoreConfig)
@click.option("--json/--no-json", "json", default=False, help="Print the summary as JSON.")
@click.option("--per-record", type=click.Path(dir_okay=False),
              help="Write the records with a `correct` field added (JSONL); with --regrade, "
                   "`old_pred` and `old_correct` where they differ.")
@click.option("--plot", type=click.Path(dir_okay=False),
              help="Write a PNG of accuracy (with 95% intervals) vs cost per level.")
@click.pass_context
def command(ctx, input, compare, more_runs, json, per_record, plot, **options):
    """Score tts-run records: accuracy, pass@k, maj@k, tokens, ARISE, plots."""
    from ttx.io import json_safe
    from ttx.options import build
    from ttx.score import score
    from ttx.scoring.render import render_table

    compare, given = compared_runs(ctx, compare, more_runs)
    result = score(input, compare, build(ScoreConfig, options), per_record=per_record, plot=plot,
                   options=given)
    click.echo(json_module.dumps(json_safe(result), indent=2, allow_nan=False) if json
               else render_table(result))
