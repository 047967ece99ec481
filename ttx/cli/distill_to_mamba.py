"""`ttx distill-to-mamba`: replace attention layers with Mamba-2 layers and distill (M1).

    ttx distill-to-mamba -o hybrid --attn-layers 3,8,13 -i text.jsonl --steps 200
    ttx distill-to-mamba -o hybrid --attn-fraction 0.25 --steps 0        # convert only
    ttx tts-run --model hybrid -i problems.jsonl -o runs.jsonl
    accelerate launch -m ttx distill-to-mamba -o hybrid -i text.jsonl --mixed-precision bf16
"""

from __future__ import annotations

import click

from ttx.cli.options import config_option
from ttx.mamba.config import DistillConfig
from ttx.options import cli_options


@click.command(name="distill-to-mamba")
@config_option
@cli_options(DistillConfig)
def command(**options):
    """Replace attention with Mamba-2 layers and distill from the original model."""
    from ttx.mamba.run import run_distill_to_mamba
    from ttx.options import build

    cfg = build(DistillConfig, options)
    s = run_distill_to_mamba(cfg)
    if "stopped_in" in s:
        click.echo(f"distill-to-mamba: stopped after {s['stopped_in']} step {s['stopped_at_step']} "
                   f"(checkpoint in {cfg.output}/train); continue with --resume", err=True)
        return
    f = s["final"]
    tail = (f" final KL(s||t) {f['kl_reverse']:.4f}, ppl {f['ppl_student']:.2f} "
            f"(teacher {f['ppl_teacher']:.2f})" if f else "")
    click.echo(f"distill-to-mamba: {len(s['attn_layers'])} attention + {len(s['mamba_layers'])} "
               f"Mamba layers, {s['align_steps']} align + {s['distill_steps']} distill steps;"
               f"{tail}: {cfg.output}", err=True)
