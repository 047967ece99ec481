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

from ttx.commands.options import config_option, model_options


def _csv(ctx, param, value):
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return tuple(v.strip() for v in str(value).split(",") if v.strip())


@click.command(name="verifier-train")
@config_option
@click.option("-i", "--input", "input_path", required=True,
              help="Scored tts-run records (ttx score --per-record; any with gold answers).")
@click.option("-o", "--output", "output_path", required=True,
              help="The verifier's folder: HF weights, ttx_reward.json, ttx_manifest.json.")
@click.option("--kind", type=click.Choice(["orm", "prm"]), default="orm", show_default=True,
              help="orm: one score per trace; prm: one per step (Math-Shepherd step tags).")
@click.option("--prm-labels", type=click.Choice(["outcome", "rollout"]),
              help="prm: step labels from the trace's outcome, or from completions after each "
                   "step (Math-Shepherd) (default outcome).")
@click.option("--label-type", type=click.Choice(["hard", "soft"]),
              help="rollout: hard, good if any completion is right (HE); soft, the fraction (SE) "
                   "(default hard).")
@click.option("--rollouts", type=click.IntRange(min=1),
              help="rollout: completions per step prefix (default 8).")
@click.option("--rollout-model", help="rollout: the policy that completes the prefixes "
              "(default: the records' `model`).")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.7, show_default=True,
              help="rollout: sampling temperature.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="rollout: tokens per completion.")
@click.option("--batch-rows", type=click.IntRange(min=1), default=64, show_default=True,
              help="rollout: completions decoded together.")
@click.option("--instruction", help="rollout: the --instruction tts-run built the prompts with.")
@click.option("--system", help="rollout: the --system message tts-run used.")
@click.option("--chat/--no-chat", default=True, show_default=True,
              help="rollout: whether tts-run used the chat template.")
@model_options
@click.option("--lora-r", type=click.IntRange(min=0), default=16, show_default=True,
              help="LoRA rank (merged into the saved weights); 0 trains every weight.")
@click.option("--lora-alpha", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--lora-dropout", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--lora-targets", default=",".join(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                  "up_proj", "down_proj")),
              show_default=True, callback=_csv, help="Comma-separated module names that get LoRA.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--warmup-ratio", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--max-grad-norm", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True)
@click.option("--max-length", type=click.IntRange(min=8), default=1024, show_default=True,
              help="Tokens per input: a longer ORM input is left out, a PRM input is cut.")
@click.option("--balance/--no-balance", default=False, show_default=True,
              help="Weight the rarer label up so both classes count alike in the loss.")
@click.option("--eval", "eval_path", type=click.Path(dir_okay=False),
              help="Held-out scored records (default: --eval-fraction of the problems).")
@click.option("--eval-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.2,
              show_default=True, help="Share of problems held out for AUC and accuracy.")
@click.option("--save-every", type=click.IntRange(min=0), default=50, show_default=True,
              help="Checkpoint every N steps; --resume continues from the newest.")
@click.option("--mixed-precision", type=click.Choice(["no", "bf16", "fp16"]), default="no",
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume/--no-resume", default=False,
              help="Continue an interrupted run in the output folder (rollouts and checkpoints).")
@click.option("--stop-after", type=click.IntRange(min=1),
              help="Stop after N steps, checkpointed; rerun with --resume.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--question-field", default="question", show_default=True)
@click.option("--answer-field", default="answer", show_default=True)
@click.option("--id-field", default="id", show_default=True)
@click.option("--progress/--no-progress", default=True, help="Progress bars on stderr.")
@click.pass_context
def command(ctx, input_path, output_path, eval_path, **options):
    """Train an outcome or process reward model on a model's own scored traces."""
    from ttx.verifier.train import VerifierConfig, run_verifier_train

    given = {k: True for k in options
             if ctx.get_parameter_source(k) not in (click.core.ParameterSource.DEFAULT, None)}
    defaults = {"prm_labels": "outcome", "label_type": "hard", "rollouts": 8}
    options = {k: (defaults[k] if v is None and k in defaults else v) for k, v in options.items()}
    s = run_verifier_train(VerifierConfig(input=input_path, output=output_path, eval=eval_path,
                                          cli=given, **options))
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
