"""`ttx rl`: test-time RL with a reward and an advantage estimator chosen by name (ttx/rl/rewards/,
ttx/rl/advantages/).

    ttx rl --reward hapo -i train.jsonl -o hapo_adapter --n 4 --steps 40
    ttx tts-run --adapter hapo_adapter -i test.jsonl -o after.jsonl
"""

from __future__ import annotations

import click

from ttx.cli.options import config_option
from ttx.options import cli_options
from ttx.rl.config import RLConfig


@click.command(name="rl")
@config_option
@cli_options(RLConfig)
def command(**options):
    """Test-time RL: rewards (majority, gold, self-certainty, entropy, hapo) and advantages as plug-ins."""
    from ttx.options import build
    from ttx.rl.stage import run_rl

    cfg = build(RLConfig, options, clip_c=options.get("clip_c") or None)   # 0: no dual clip
    output_path = cfg.output
    s = run_rl(cfg)
    if "stopped_at_step" in s:
        click.echo(f"rl: stopped after rollout step {s['stopped_at_step']} (checkpoint in "
                   f"{output_path}/checkpoints); continue with --resume", err=True)
        return
    first, last = s["first_step"] or {}, s["last_step"] or {}
    moved = "; ".join(f"{k} {first[k]:.3f} -> {last[k]:.3f}" for k in first
                      if k not in ("step", "rollout_tokens") and first.get(k) is not None
                      and last.get(k) is not None)
    click.echo(f"rl: --reward {cfg.reward}, {s['rollout_steps']} rollout steps, {s['updates']} updates, "
               f"{s['rollout_tokens']} rollout tokens{'; ' + moved if moved else ''}; saved in {output_path}",
               err=True)
