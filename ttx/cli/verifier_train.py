"""`ttx verifier-train`: an outcome or process reward model from a model's own scored traces.

    ttx tts-run -i train.jsonl -o samples.jsonl --strategy sample --n 8
    ttx score -i samples.jsonl --per-record scored.jsonl
    ttx verifier-train -i scored.jsonl -o orm
    ttx verifier-train -i scored.jsonl -o prm --kind prm --prm-labels rollout --rollouts 4
    ttx tts-run -i test.jsonl -o bon.jsonl --strategy best-of-n --n 8 --reward-model orm
    ttx tts-run -i test.jsonl -o beam.jsonl --strategy beam --n 8 --reward-model prm
"""

from __future__ import annotations

import click

from ttx.cli.options import config_option
from ttx.options import cli_options
from ttx.verifier.config import VerifierConfig


@click.command(name="verifier-train")
@config_option
@cli_options(VerifierConfig)
@click.pass_context
def command(ctx, **options):
    """Train an outcome or process reward model on a model's own scored traces."""
    from ttx.options import build
    from ttx.verifier.train import run_verifier_train

    given = {k: True for k in options
             if ctx.get_parameter_source(k) not in (click.core.ParameterSource.DEFAULT, None)}
    cfg = build(VerifierConfig, options, cli=given)
    output_path = cfg.output
    s = run_verifier_train(cfg)
    if not s:                                   # not the main process of a distributed run
        return
    if "stopped_at_step" in s:
        click.echo(f"verifier-train: stopped after step {s['stopped_at_step']} (checkpoint in "
                   f"{output_path}/checkpoints); continue with --resume", err=True)
        return
    if s.get("already_trained"):
        click.echo(f"verifier-train: {output_path} already holds a finished verifier", err=True)
        return
    click.echo(summary_line(s, output_path), err=True)


def summary_line(s: dict, output_path: str) -> str:
    t, b, a = s["train"], s["before"], s["after"]

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    line = (f"verifier-train: {s['kind']} ({s['labels']} labels) on {t['traces']} traces of "
            f"{t['problems']} problems, {t['correct']} correct / {t['wrong']} wrong; ")
    if a.get("traces"):
        line += (f"held-out ({a['traces']} traces) AUC {f(b.get('auc'))} -> {f(a.get('auc'))}, "
                 f"accuracy {f(b.get('accuracy'))} -> {f(a.get('accuracy'))}, best-of-n "
                 f"{f(a.get('best_of_n'))} (random {f(a.get('random_trace'))}, oracle "
                 f"{f(a.get('oracle'))}); ")
    else:
        line += "no held-out traces; "
    return line + f"{s['steps']} steps in {s['train_s']:.0f} s; verifier in {output_path}"
