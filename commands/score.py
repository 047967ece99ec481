"""`ttx score`: accuracy, pass@k, maj@k, tokens, ARISE and plots from tts-run records.

    ttx score -i runs.jsonl
    ttx score -i n1.jsonl -i n2.jsonl -i n4.jsonl --json        # files in level order
    ttx score --compare greedy=a.jsonl --compare ffs=b.jsonl --plot cmp.png
"""

from __future__ import annotations

import json as json_module

import click

from ttx.commands.options import config_option


@click.command(name="score")
@config_option
@click.option("-i", "--input", multiple=True,
              help="tts-run records (path or -); several files are levels 1, 2, ... in order.")
@click.option("--compare", multiple=True, metavar="NAME=FILE",
              help="A named run to rank by ARISE (FILE1,FILE2 for levels); repeatable.")
@click.option("--answer-field", default="answer", show_default=True,
              help="Record field holding the gold answer.")
@click.option("--k", "k", multiple=True, type=click.IntRange(min=1),
              help="Extra k for pass@k and maj@k (powers of two are always reported).")
@click.option("--bootstrap", default=0, show_default=True, type=click.IntRange(min=0),
              help="maj@k as the mean over B random k-subsets (0: the first k traces).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for --bootstrap.")
@click.option("--json", is_flag=True, help="Print the summary as JSON.")
@click.option("--per-record", type=click.Path(dir_okay=False),
              help="Write the records with a `correct` field added (JSONL).")
@click.option("--plot", type=click.Path(dir_okay=False),
              help="Write a PNG of accuracy vs tokens per level.")
@click.option("--eps", default=1e-3, show_default=True, type=float,
              help="TTSPM: saturation when the gain per extra sample drops below this.")
@click.pass_context
def command(ctx, input, compare, answer_field, k, bootstrap, seed, json,
            per_record, plot, eps):
    """Score tts-run records: accuracy, pass@k, maj@k, tokens, ARISE, plots."""
    from ttx.scoring.report import render_table, score

    result = score(input, compare, answer_field=answer_field, ks=k, bootstrap=bootstrap,
                   seed=seed, eps=eps, per_record=per_record, plot=plot,
                   options=dict(ctx.params))
    click.echo(json_module.dumps(result, indent=2) if json else render_table(result))
