"""`ttx inplace-ttt-convert`: make an In-Place TTT checkpoint from a gated-MLP model; train it.

    ttx inplace-ttt-convert --model smollm2-135m-instruct -o ttt_dir --layers 0,6,12 --chunk 1024
    ttx inplace-ttt-convert --model ttt_dir --train long_docs.jsonl -o ttt_trained
    ttx tts-run --model ttt_trained -i problems.jsonl -o runs.jsonl     # generation uses TTT
"""

from __future__ import annotations

import click

from ttx.cli.options import config_option
from ttx.inplace_ttt.config import InplaceTTTConfig
from ttx.options import cli_options


@click.command(name="inplace-ttt-convert")
@config_option
@cli_options(InplaceTTTConfig)
def command(**options):
    """Make an In-Place TTT model from a checkpoint; optionally continue training it."""
    from ttx.inplace_ttt.convert import run_convert
    from ttx.options import build

    cfg = build(InplaceTTTConfig, options)
    s = run_convert(cfg)
    what = "converted" if s["converted"] else "loaded"
    line = (f"inplace-ttt-convert: {what} layers {s['ttt_layers']} (chunk {s['ttt_chunk']}, "
            f"eta {s['ttt_lr']}, +{s['ttt_parameters']:,} parameters)")
    if "max_abs_logit_diff_after_conversion" in s:
        line += f", max |logit diff| after conversion {s['max_abs_logit_diff_after_conversion']:.2e}"
    if "train" in s:
        t = s["train"]
        line += f"; trained {t['steps']} steps on {t['tokens']:,} tokens, loss {t['last_loss']}"
        if not t["finished"]:
            line += " (stopped early: --resume continues)"
    click.echo(f"{line}: {cfg.output}", err=True)
