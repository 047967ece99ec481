"""`ttx ttrl`: test-time reinforcement learning on unlabeled test questions (TTRL, ETTRL).

    ttx ttrl -i test.jsonl -o ttrl_adapter [--etmr] [--ear] --n 8 --steps 40
    ttx tts-run --adapter ttrl_adapter -i test.jsonl -o after.jsonl --strategy majority
"""

from __future__ import annotations

import click

from ttx.cli.options import config_option
from ttx.options import cli_options
from ttx.rl.config import TTRLConfig


@click.command(name="ttrl")
@config_option
@cli_options(TTRLConfig)
def command(**options):
    """Test-time RL: majority-vote pseudo-labels, rewards for agreeing, GRPO (LoRA by default)."""
    from ttx.options import build
    from ttx.rl.ttrl import run_ttrl

    cfg = build(TTRLConfig, options, clip_c=options.get("clip_c") or None)   # 0: no dual clip
    output_path = cfg.output
    s = run_ttrl(cfg)
    if not s:                                   # not the main process of a distributed run
        return
    if "stopped_at_step" in s:
        click.echo(f"ttrl: stopped after rollout step {s['stopped_at_step']} (checkpoint in "
                   f"{output_path}/checkpoints); continue with --resume", err=True)
        return
    first, last = s["first_step"] or {}, s["last_step"] or {}
    gold = ""
    if last.get("label_accuracy") is not None:
        gold = f"; label accuracy {first['label_accuracy']:.3f} -> {last['label_accuracy']:.3f}"
    click.echo(f"ttrl: {s['rollout_steps']} rollout steps, {s['updates']} updates, {s['rollout_tokens']} "
               f"rollout tokens; majority ratio {first.get('majority_ratio', 0):.3f} -> "
               f"{last.get('majority_ratio', 0):.3f}{gold}; saved in {output_path}", err=True)
