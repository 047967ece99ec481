"""`ttx perk-metatrain`: meta-learn a LoRA that memorises a long context in a few gradient steps.

    python -m ttx.data.recall --n 200 --context-words 200 --seed 0 -o train.jsonl
    ttx perk-metatrain -i train.jsonl -o perk_dir --lora-r 16 --steps 100
    ttx perk-encode --perk perk_dir -i test.jsonl -o answers.jsonl
    ttx score -i answers.jsonl
"""

from __future__ import annotations

import click

from ttx.cli.options import config_option
from ttx.options import cli_options
from ttx.perk.config import MetaTrainConfig, PerkConfig


@click.command(name="perk-metatrain")
@config_option
@cli_options(MetaTrainConfig, PerkConfig)
def command(**options):
    """PERK: meta-learn a LoRA that encodes long context in a few gradient steps."""
    from ttx.options import build
    from ttx.perk.metatrain import metatrain

    cfg = build(MetaTrainConfig, options, perk=build(PerkConfig, options))
    s = metatrain(cfg, options)
    click.echo(f"perk-metatrain: {s['outer_steps']} outer steps (finished: {s['finished']}), "
               f"last loss {s['last_loss']}: {cfg.output}", err=True)
