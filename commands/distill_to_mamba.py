"""`ttx distill-to-mamba`: replace attention layers with Mamba-2 layers and distill (M1).

    ttx distill-to-mamba -o hybrid --attn-layers 3,8,13 -i text.jsonl --steps 200
    ttx distill-to-mamba -o hybrid --attn-fraction 0.25 --steps 0        # convert only
    ttx tts-run --model hybrid -i problems.jsonl -o runs.jsonl
    accelerate launch -m ttx distill-to-mamba -o hybrid -i text.jsonl --mixed-precision bf16
"""

from __future__ import annotations

import click

from ttx.commands.options import config_option, model_options, overwrite_option


@click.command(name="distill-to-mamba")
@config_option
@model_options
@click.option("-o", "--output", "output_path", required=True,
              help="Folder for the Bamba checkpoint (loads with AutoModelForCausalLM).")
@click.option("-i", "--input", "input_path",
              help="Training JSONL: text, messages, prompt+completion or question+answer records.")
@click.option("--eval-input", help="Held-out JSONL for the final KL and perplexity "
              "(default: the last --eval-records of --input, never trained on).")
@click.option("--eval-records", type=click.IntRange(min=0), default=16, show_default=True)
@click.option("--attn-layers", help="Layers that stay attention, e.g. 3,8,13.")
@click.option("--attn-every", type=click.IntRange(min=1),
              help="Keep every k-th layer as attention (the last layer included).")
@click.option("--attn-fraction", type=click.FloatRange(0, 1),
              help="Fraction of layers kept as attention, evenly spaced (default 0.25).")
@click.option("--conv-init", type=click.Choice(["identity", "default"]), default="default",
              show_default=True, help="Short conv: random default, or identity (last tap 1).")
@click.option("--align-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Stage 1: hidden-state MSE steps per new layer (0 skips it).")
@click.option("--align-lr", type=click.FloatRange(min=0, min_open=True), default=1e-3,
              show_default=True)
@click.option("--steps", type=click.IntRange(min=0),
              help="Stage 2 optimizer steps (default: --epochs over the data; 0: no stage 2).")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--kl", type=click.Choice(["reverse", "forward"]), default="reverse",
              show_default=True, help="reverse: KL(student||teacher), mode seeking (M1).")
@click.option("--kl-weight", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="Loss = (1-w) CE + w KL.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Softmax temperature of the KL term.")
@click.option("--freeze-mlp", is_flag=True, help="Stage 2 trains all but the MLPs.")
@click.option("--teacher-generate", is_flag=True,
              help="Targets are the teacher's own completions of the input prompts.")
@click.option("--gen-max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--gen-temperature", type=click.FloatRange(min=0), default=0.7, show_default=True)
@click.option("--max-length", type=click.IntRange(min=8), default=512, show_default=True,
              help="Tokens per sequence (longer ones are cut).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-5, show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "linear", "constant"]), default="cosine",
              show_default=True)
@click.option("--warmup-ratio", type=click.FloatRange(0, 1), default=0.05, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.1, show_default=True)
@click.option("--max-grad-norm", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--mixed-precision", type=click.Choice(["no", "bf16", "fp16"]), default="no",
              show_default=True)
@click.option("--save-every", type=click.IntRange(min=0), default=100, show_default=True,
              help="Checkpoint every N steps (for --resume).")
@click.option("--resume/--no-resume", default=False,
              help="Continue from the newest checkpoint in OUTPUT/train.")
@click.option("--seed", type=int, default=0, show_default=True)
@overwrite_option
@click.option("--progress/--no-progress", default=True, help="Progress bars on stderr.")
def command(**options):
    """Replace attention with Mamba-2 layers and distill from the original model."""
    from ttx.mamba.run import distill_from_options

    s = distill_from_options(**options)
    f = s["final"]
    tail = (f" final KL(s||t) {f['kl_reverse']:.4f}, ppl {f['ppl_student']:.2f} "
            f"(teacher {f['ppl_teacher']:.2f})" if f else "")
    click.echo(f"distill-to-mamba: {len(s['attn_layers'])} attention + {len(s['mamba_layers'])} "
               f"Mamba layers, {s['align_steps']} align + {s['distill_steps']} distill steps;"
               f"{tail}: {options['output_path']}", err=True)
