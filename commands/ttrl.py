"""`ttx ttrl`: test-time reinforcement learning on unlabeled test questions (TTRL, ETTRL).

    ttx ttrl -i test.jsonl -o ttrl_adapter [--etmr] [--ear] --n 8 --steps 40
    ttx tts-run --adapter ttrl_adapter -i test.jsonl -o after.jsonl --strategy majority
"""

from __future__ import annotations

import click

from ttx.commands.options import config_option, model_options


def _csv(ctx, param, value):
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return tuple(v.strip() for v in str(value).split(",") if v.strip())


POS = click.IntRange(min=1)
FRAC = click.FloatRange(min=0)


@click.command(name="ttrl")
@config_option
@click.option("-i", "--input", "input_path", required=True,
              help="Questions JSONL (tts-run's format); gold answers, if any, are only logged.")
@click.option("-o", "--output", "output_path", required=True,
              help="Folder: the PEFT adapter (or, with --full, the model), train_log.jsonl, "
                   "rollouts.jsonl, ttx_manifest.json.")
@model_options
@click.option("--full", is_flag=True, help="Full fine-tuning instead of LoRA.")
@click.option("--lora-r", type=POS, default=16, show_default=True)
@click.option("--lora-alpha", type=POS, default=32, show_default=True)
@click.option("--lora-dropout", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--lora-targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
              show_default=True, callback=_csv, help="Comma-separated module names that get LoRA.")
@click.option("--n-votes", "--n", "n_votes", type=POS, default=64, show_default=True,
              help="Responses sampled per question for the majority vote.")
@click.option("--n-train", type=POS, help="Of those, trained on  [default: half the votes, TTRL's 32 of 64]")
@click.option("--temperature", type=FRAC, default=1.0, show_default=True, help="Rollout temperature.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True)
@click.option("--max-new-tokens", type=POS, default=3072, show_default=True)
@click.option("--batch-size", type=POS, default=8, show_default=True, help="Questions per rollout step.")
@click.option("--mini-batch-size", type=POS, default=1, show_default=True,
              help="Questions per optimizer update.")
@click.option("--micro-batch-size", type=POS, default=2, show_default=True, help="Sequences per forward pass.")
@click.option("--ppo-epochs", type=POS, default=1, show_default=True, help="Passes over each rollout batch.")
@click.option("--episodes", type=POS, default=10, show_default=True,
              help="Passes over the questions (the paper: 10 on MATH-500, 30 AMC, 80 AIME).")
@click.option("--steps", type=POS, help="Rollout steps (overrides --episodes).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=5e-7, show_default=True,
              help="AdamW learning rate (the paper's, for full fine-tuning; LoRA wants far more).")
@click.option("--warmup-ratio", type=click.FloatRange(0, 1), default=0.03, show_default=True)
@click.option("--weight-decay", type=FRAC, default=0.01, show_default=True)
@click.option("--max-grad-norm", type=FRAC, default=1.0, show_default=True, help="0: no clipping.")
@click.option("--clip-low", type=FRAC, default=0.2, show_default=True, help="ε_low of the clipped ratio.")
@click.option("--clip-high", type=FRAC, default=0.2, show_default=True, help="ε_high of the clipped ratio.")
@click.option("--clip-c", type=FRAC, default=3.0, show_default=True,
              help="Dual-clip bound for negative advantages (0: off).")
@click.option("--kl-coef", type=FRAC, default=0.001, show_default=True,
              help="β of the k3 KL to the initial policy (0: no reference pass).")
@click.option("--etmr", is_flag=True, help="ETTRL's entropy-fork tree rollouts instead of --n-votes samples.")
@click.option("--etmr-trees", type=POS, default=12, show_default=True, help="M: trees per question.")
@click.option("--etmr-forks", type=click.IntRange(min=0), default=2, show_default=True,
              help="N: highest-entropy fork points per tree.")
@click.option("--etmr-branches", type=click.IntRange(min=0), default=2, show_default=True,
              help="B: branches per fork point.")
@click.option("--ear", is_flag=True, help="ETTRL's Adv-Res: advantages scaled by relative response entropy.")
@click.option("--adv-clip", type=click.FloatRange(min=0, min_open=True),
              help="ETTRL's Adv-Clip: clip advantages to [-β, β] (the paper: 2).")
@click.option("--invalid-votes", type=click.Choice(["lm-eval", "skip"]), default="lm-eval", show_default=True,
              help="lm-eval: responses without an answer vote as one class; skip: they do not vote.")
@click.option("--question-field", default="question", show_default=True)
@click.option("--answer-field", default="answer", show_default=True, help="Gold answers (logged only).")
@click.option("--id-field", default="id", show_default=True)
@click.option("--instruction", help="Text appended to each question (as tts-run --instruction).")
@click.option("--system", help="System message (as tts-run --system).")
@click.option("--chat/--no-chat", default=True, show_default=True)
@click.option("--limit", type=POS, help="Only the first N questions.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--save-every", type=click.IntRange(min=0), default=5, show_default=True,
              help="Checkpoint every N rollout steps (0: only when stopping early).")
@click.option("--resume/--no-resume", default=False, help="Continue from the newest checkpoint in the output.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--stop-after", type=POS, help="Stop after N rollout steps, checkpointed; rerun with --resume.")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def command(input_path, output_path, clip_c, **options):
    """Test-time RL: majority-vote pseudo-labels, rewards for agreeing, GRPO (LoRA by default)."""
    from ttx.rl.ttrl import TTRLConfig, run_ttrl

    s = run_ttrl(TTRLConfig(input=input_path, output=output_path, clip_c=clip_c or None, **options))
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
