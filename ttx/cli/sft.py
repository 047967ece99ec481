"""`ttx sft`: supervised fine-tuning, cross-entropy or the pass@N-aligned DCO loss.

    ttx sft -i pairs.jsonl -o adapter [--loss dco --dco-n 16]
    ttx sft --from scored.jsonl --only-correct -o adapter      # rejection-sampling fine-tuning
    ttx tts-run --adapter adapter -i test.jsonl -o runs.jsonl
"""

from __future__ import annotations

import click

from ttx.cli.options import config_option
from ttx.options import cli_options
from ttx.sft.config import SFTConfig


@click.command(name="sft")
@config_option
@cli_options(SFTConfig)
@click.pass_context
def command(ctx, **options):
    """Supervised fine-tuning on (prompt, response) pairs or correct traces; CE or DCO."""
    from ttx.options import build
    from ttx.sft.train import run_sft

    given = {k: True for k in options
             if ctx.get_parameter_source(k) not in (click.core.ParameterSource.DEFAULT, None)}
    cfg = build(SFTConfig, options, cli=given)
    s = run_sft(cfg)
    if not s:                                   # not the main process of a distributed run
        return
    if "stopped_at_step" in s:
        click.echo(f"sft: stopped after step {s['stopped_at_step']} (checkpoint in "
                   f"{cfg.output}/checkpoints); continue with --resume", err=True)
        return
    if s.get("already_trained"):
        click.echo(f"sft: {cfg.output} already holds a finished run", err=True)
        return
    click.echo(f"sft: {s['loss']} on {s['trained_pairs']} pairs, {s['steps']} steps, loss "
               f"{s['train_loss_first']} -> {s['train_loss_last']} in {s['train_s']:.0f} s; "
               f"{s['weights']} weights in {cfg.output}", err=True)
