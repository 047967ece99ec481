"""`ttx perk-encode`: answer long-context records with PERK (test-time learning).

    ttx perk-encode --perk perk_dir -i test.jsonl -o answers.jsonl
    ttx perk-encode --perk perk_dir -i long.jsonl -o answers.jsonl --inner-grad-accum 4
    ttx score -i answers.jsonl
"""

from __future__ import annotations

import click

from ttx.cli.options import config_option
from ttx.options import cli_options
from ttx.perk.config import EncodeConfig


@click.command(name="perk-encode")
@config_option
@cli_options(EncodeConfig)
def command(**options):
    """PERK at test time: encode each record's context into the LoRA, then answer."""
    from ttx.options import build
    from ttx.perk.encode import encode

    cfg = build(EncodeConfig, options)
    s = encode(cfg, options)
    click.echo(f"perk-encode: {s['written']} records written to {cfg.output} "
               f"in {s['wall_s']:.1f}s", err=True)
