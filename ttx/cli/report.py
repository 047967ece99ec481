"""`ttx report`: one self-contained HTML page per run or comparison.

    ttx report -i runs.jsonl -o report.html
    ttx report -i n1.jsonl -i n2.jsonl -o report.html              # files in level order
    ttx report --compare greedy=g.jsonl --compare majority=m.jsonl -o report.html

The numbers are `ttx score`'s (the same function, the same options: --invalid-votes,
--arise-tokens, --cost, ... mean the same here).
"""

from __future__ import annotations

import click

from ttx.cli.options import compare_options, compared_runs, config_option
from ttx.options import cli_options
from ttx.score import ScoreConfig  # score's own schema: the definitions cannot drift


@click.command(name="report")
@config_option
@click.option("-i", "--input", multiple=True,
              help="tts-run records (path or -); several files are levels 1, 2, ... in order.")
@compare_options("A named run (FILE1,FILE2 for levels); repeatable, or several after one "
                 "flag. The first run given is the baseline of the paired differences.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="The HTML page to write (- for stdout); a manifest goes beside it.")
@click.option("--title", help="The page title (default: the run names).")
@click.option("--question-field", default="question", show_default=True,
              help="Record field holding the question.")
@click.option("--memory", "memory", type=click.Path(dir_okay=False),
              help="A memory bank whose items' texts to show beside their retrieved ids "
                   "(default: the bank named in the run's manifest, when it exists).")
@cli_options(ScoreConfig)
@click.pass_context
def command(ctx, input, compare, more_runs, output, title, question_field, memory,
            **score_options):
    """Write one self-contained HTML page to look at runs: scores, traces, votes, trees."""
    from ttx.options import build
    from ttx.report.page import build_report

    cfg = build(ScoreConfig, score_options)
    compare, options = compared_runs(ctx, compare, more_runs)
    result = build_report(input, compare, cfg, output=output, title=title,
                          question_field=question_field, memory=memory, options=options)
    if output != "-":
        names = ", ".join(f"{r['name']} {r['summary']['accuracy']:.3f}" for r in result["runs"])
        click.echo(f"report: wrote {output} (accuracy: {names})", err=True)
