"""`ttx report`: one self-contained HTML page per run or comparison.

    ttx report -i runs.jsonl -o report.html
    ttx report -i n1.jsonl -i n2.jsonl -o report.html              # files in level order
    ttx report --compare greedy=g.jsonl --compare majority=m.jsonl -o report.html

The numbers are `ttx score`'s (the same function, the same options: --invalid-votes,
--arise-tokens, --cost, ... mean the same here).
"""

from __future__ import annotations

import click

from ttx.commands.options import config_option
from ttx.commands.score import command as _score

# score's own options, shared as they are so the definitions cannot drift apart
SCORE_OPTIONS = ("answer_field", "k", "bootstrap", "invalid_votes", "arise_tokens", "cost",
                 "cost_model", "kinetics_intensity", "ci_samples", "seed", "regrade",
                 "strict_gold", "eps")


def _with_score_options(f):
    f.__click_params__ = getattr(f, "__click_params__", [])
    f.__click_params__ += [p for p in reversed(_score.params) if p.name in SCORE_OPTIONS]
    return f


@click.command(name="report")
@config_option
@click.option("-i", "--input", multiple=True,
              help="tts-run records (path or -); several files are levels 1, 2, ... in order.")
@click.option("--compare", multiple=True, metavar="NAME=FILE",
              help="A named run (FILE1,FILE2 for levels); repeatable. The first run given is "
                   "the baseline of the paired differences.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="The HTML page to write (- for stdout); a manifest goes beside it.")
@click.option("--title", help="The page title (default: the run names).")
@click.option("--question-field", default="question", show_default=True,
              help="Record field holding the question.")
@click.option("--memory", "memory", type=click.Path(dir_okay=False),
              help="A memory bank whose items' texts to show beside their retrieved ids "
                   "(default: the bank named in the run's manifest, when it exists).")
@_with_score_options
@click.pass_context
def command(ctx, input, compare, output, title, question_field, memory, **score_options):
    """Write one self-contained HTML page to look at runs: scores, traces, votes, trees."""
    from ttx.scoring.report import ScoreConfig
    from ttx.viewer.page import build_report

    o = score_options
    cfg = ScoreConfig(answer_field=o["answer_field"], ks=tuple(o["k"]), bootstrap=o["bootstrap"],
                      seed=o["seed"], eps=o["eps"], invalid=o["invalid_votes"],
                      arise_tokens=o["arise_tokens"], cost=o["cost"], cost_model=o["cost_model"],
                      kinetics_intensity=o["kinetics_intensity"], ci_samples=o["ci_samples"],
                      regrade=o["regrade"], strict_gold=o["strict_gold"])
    result = build_report(input, compare, cfg, output=output, title=title,
                          question_field=question_field, memory=memory, options=dict(ctx.params))
    if output != "-":
        names = ", ".join(f"{r['name']} {r['summary']['accuracy']:.3f}" for r in result["runs"])
        click.echo(f"report: wrote {output} (accuracy: {names})", err=True)
