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
              help="A named run to rank by ARISE (FILE1,FILE2 for levels); repeatable. Each run "
                   "after the first gets its paired difference to the first.")
@click.option("--answer-field", default="answer", show_default=True,
              help="Record field holding the gold answer.")
@click.option("--k", "k", multiple=True, type=click.IntRange(min=1),
              help="Extra k for pass@k and maj@k (powers of two are always reported).")
@click.option("--bootstrap", default=0, show_default=True, type=click.IntRange(min=0),
              help="maj@k as the mean over B random k-subsets (0: the first k traces).")
@click.option("--invalid-votes", type=click.Choice(["lm-eval", "skip"]), default="lm-eval",
              show_default=True,
              help="maj@k and majority votes: a trace with no extractable answer votes "
                   "'[invalid]' (lm-eval's filters; it can win and is never right) or casts "
                   "no vote (skip).")
@click.option("--arise-tokens", type=click.Choice(["total", "completion"]), default="total",
              show_default=True,
              help="ARISE's token count per record: prompt + completion, as ARISE's "
                   "evaluate.py (total), or generated tokens only (completion).")
@click.option("--cost", type=click.Choice(["tokens", "flops", "kinetics"]), default="tokens",
              show_default=True,
              help="The cost on ARISE's, the tables' and --plot's x axis: tokens "
                   "(--arise-tokens), FLOPs from the model's shape, or Kinetics' eFLOPs "
                   "(compute + KV-cache traffic x arithmetic intensity).")
@click.option("--cost-model", metavar="MODEL",
              help="--cost flops/kinetics: the model (alias, folder, .gguf) whose shape gives "
                   "the cost (default: each record's `model`).")
@click.option("--kinetics-intensity", type=click.FloatRange(min=0, min_open=True),
              default=562.5, show_default=True,
              help="--cost kinetics: FLOPs per byte of memory traffic (Kinetics' B200 value).")
@click.option("--ci-samples", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap samples of the 95% intervals (over problems); 0: none.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed for --bootstrap and the intervals.")
@click.option("--regrade", is_flag=True,
              help="Re-extract every trace's answer from its text with today's grader and "
                   "recompute votes (runs made before a grader fix).")
@click.option("--strict-gold/--no-strict-gold", default=False, show_default=True,
              help="A gold answer with no extractable final answer is an error (default: the "
                   "record is set aside and named).")
@click.option("--json/--no-json", "json", default=False, help="Print the summary as JSON.")
@click.option("--per-record", type=click.Path(dir_okay=False),
              help="Write the records with a `correct` field added (JSONL); with --regrade, "
                   "`old_pred` and `old_correct` where they differ.")
@click.option("--plot", type=click.Path(dir_okay=False),
              help="Write a PNG of accuracy (with 95% intervals) vs cost per level.")
@click.option("--eps", default=1e-3, show_default=True, type=float,
              help="TTSPM: saturation when the gain per extra sample drops below this.")
@click.pass_context
def command(ctx, input, compare, answer_field, k, bootstrap, invalid_votes, arise_tokens, cost,
            cost_model, kinetics_intensity, ci_samples, seed, regrade, strict_gold, json,
            per_record, plot, eps):
    """Score tts-run records: accuracy, pass@k, maj@k, tokens, ARISE, plots."""
    from ttx.io import json_safe
    from ttx.scoring.render import render_table
    from ttx.scoring.report import ScoreConfig, score

    cfg = ScoreConfig(answer_field=answer_field, ks=tuple(k), bootstrap=bootstrap, seed=seed,
                      eps=eps, invalid=invalid_votes, arise_tokens=arise_tokens, cost=cost,
                      cost_model=cost_model, kinetics_intensity=kinetics_intensity,
                      ci_samples=ci_samples, regrade=regrade, strict_gold=strict_gold)
    result = score(input, compare, cfg, per_record=per_record, plot=plot,
                   options=dict(ctx.params))
    click.echo(json_module.dumps(json_safe(result), indent=2, allow_nan=False) if json
               else render_table(result))
