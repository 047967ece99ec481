"""`ttx tlm-adapt`: Test-Time Learning, a LoRA learned from unlabeled test inputs.

    ttx tlm-adapt -i test.jsonl -o adapter_dir --generate answers.jsonl
    ttx tts-run --adapter adapter_dir -i test.jsonl -o runs.jsonl
"""

from __future__ import annotations

import click

from ttx.cli.options import config_option
from ttx.options import cli_options
from ttx.tlm.config import TLMConfig


@click.command(name="tlm-adapt")
@config_option
@cli_options(TLMConfig)
def command(**options):
    """Test-Time Learning: LoRA on unlabeled test inputs by perplexity minimisation."""
    from ttx.options import build
    from ttx.tlm.adapt import run_tlm

    cfg = build(TLMConfig, options)
    s = run_tlm(cfg)
    if not s:                                   # not the main process of a distributed run
        return
    if "stopped_at_step" in s:
        click.echo(f"tlm-adapt: stopped after step {s['stopped_at_step']} (checkpoint in "
                   f"{cfg.output}/checkpoints); continue with --resume", err=True)
        return
    click.echo(f"tlm-adapt: {s['selected']}/{s['seen']} inputs selected, "
               f"{s['backward_passes']} backward passes; log-PPL {s['mean_log_ppl_before']:.4f} -> "
               f"{s['mean_log_ppl_after']:.4f}; adapter in {cfg.output}", err=True)
