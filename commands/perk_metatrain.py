"""`ttx perk-metatrain`: meta-learn a LoRA that memorises a long context in a few gradient steps.

    python -m ttx.data.recall --n 200 --context-words 200 --seed 0 -o train.jsonl
    ttx perk-metatrain -i train.jsonl -o perk_dir --lora-r 16 --steps 100
    ttx perk-encode --perk perk_dir -i test.jsonl -o answers.jsonl
    ttx score -i answers.jsonl
"""

from __future__ import annotations

import click

from ttx.commands.options import config_option, model_options, overwrite_option


@click.command(name="perk-metatrain")
@config_option
@click.option("-i", "--input", "input_path", required=True,
              help="Training records JSONL {id, context, question, answer} (path or -).")
@click.option("-o", "--output", "output_path", required=True,
              help="PERK folder: adapter/ (PEFT), perk_state.safetensors, manifest, checkpoints.")
@model_options
@click.option("--inner-steps", type=click.IntRange(min=1), default=4, show_default=True,
              help="Inner gradient steps on the LoRA per context.")
@click.option("--unroll", type=click.IntRange(min=0), default=2, show_default=True,
              help="Last inner steps differentiated through (earlier ones first-order).")
@click.option("--segment-tokens", type=click.IntRange(min=8), default=128, show_default=True,
              help="Context tokens per segment (`doc_i: ...<eos>` sequences).")
@click.option("--lora-r", type=click.IntRange(min=1), default=256, show_default=True,
              help="LoRA rank (rsLoRA scaling); the paper's 256 is slow on a CPU.")
@click.option("--lora-alpha", type=float, default=16.0, show_default=True)
@click.option("--lora-dropout", type=click.FloatRange(0, 1, max_open=True), default=0.1,
              show_default=True)
@click.option("--target-modules", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
              show_default=True, help="Comma-separated projections that get a LoRA.")
@click.option("--inner-lr", type=click.FloatRange(min=0, min_open=True), default=5e-5,
              show_default=True, help="Initial per-step per-tensor inner learning rate.")
@click.option("--inner-grad-accum", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split a context's segments into this many gradient-accumulation parts.")
@click.option("--steps", type=click.IntRange(min=1), help="Outer steps (default: --epochs).")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Passes over the records (one record per outer step).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-5,
              show_default=True, help="Outer AdamW learning rate.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.01, show_default=True)
@click.option("--warmup-ratio", type=click.FloatRange(0, 1), default=0.03, show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "linear", "constant"]), default="cosine",
              show_default=True)
@click.option("--max-grad-norm", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--save-every", type=click.IntRange(min=0), default=50, show_default=True,
              help="Checkpoint every N outer steps (0: only when stopped early).")
@click.option("--stop-after", type=click.IntRange(min=1),
              help="Stop (checkpointed) after N outer steps in this run; --resume continues.")
@click.option("--context-field", default="context", show_default=True)
@click.option("--question-field", default="question", show_default=True)
@click.option("--answer-field", default="answer", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N records.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume/--no-resume", default=False,
              help="Continue from the newest checkpoint in the output folder.")
@overwrite_option
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def command(**options):
    """PERK: meta-learn a LoRA that encodes long context in a few gradient steps."""
    from ttx.perk.metatrain import metatrain_from_options

    s = metatrain_from_options(**options)
    click.echo(f"perk-metatrain: {s['outer_steps']} outer steps (finished: {s['finished']}), "
               f"last loss {s['last_loss']}: {options['output_path']}", err=True)
