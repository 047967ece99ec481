"""distill-to-mamba's options: one schema for the command line (ttx.options) and the library.
Light: `ttx --help` imports it."""

from __future__ import annotations

from dataclasses import dataclass

import click

from ttx.engines.options import device_field, dtype_field, model_field
from ttx.options import opt


@dataclass
class DistillConfig:
    """Which layers become Mamba-2, the two distillation stages (M1 / MambaInLlama), and data."""

    model: str = model_field()
    device: str = device_field()
    dtype: str = dtype_field()
    output: str = opt(
        None, "Folder for the Bamba checkpoint (loads with AutoModelForCausalLM).", short="-o", required=True
    )
    input: str | None = opt(
        None, "Training JSONL: text, messages, prompt+completion or question+answer records.", short="-i"
    )
    eval_input: str | None = opt(
        None,
        "Held-out JSONL for the final KL and perplexity (default: the last --eval-records of --input,"
        " never trained on).",
    )
    eval_records: int = opt(
        16,
        "Records held out of --input for the final metrics (without --eval-input).",
        type=click.IntRange(min=0),
    )
    attn_layers: str | None = opt(None, "Layers that stay attention, e.g. 3,8,13.")
    attn_every: int | None = opt(
        None, "Keep every k-th layer as attention (the last layer included).", type=click.IntRange(min=1)
    )
    attn_fraction: float | None = opt(
        None,
        "Fraction of layers kept as attention, evenly spaced (default 0.25).",
        type=click.FloatRange(min=0, max=1),
    )
    conv_init: str = opt(
        "default",
        "Short conv: random default, or identity (last tap 1).",
        type=click.Choice(["identity", "default"]),
    )
    align_steps: int = opt(
        0, "Stage 1: hidden-state MSE steps per new layer (0 skips it).", type=click.IntRange(min=0)
    )
    align_lr: float = opt(
        0.001,
        "Stage 1 learning rate (per-layer hidden-state MSE).",
        type=click.FloatRange(min=0, min_open=True),
    )
    steps: int | None = opt(
        None,
        "Stage 2 optimizer steps (default: --epochs over the data; 0: no stage 2).",
        type=click.IntRange(min=0),
    )
    epochs: int = opt(1, "Stage 2 passes over the data (without --steps).", type=click.IntRange(min=1))
    kl: str = opt(
        "reverse",
        "reverse: KL(student||teacher), mode seeking (M1).",
        type=click.Choice(["reverse", "forward"]),
    )
    kl_weight: float = opt(1.0, "Loss = (1-w) CE + w KL.", type=click.FloatRange(min=0, max=1))
    temperature: float = opt(
        1.0, "Softmax temperature of the KL term.", type=click.FloatRange(min=0, min_open=True)
    )
    freeze_mlp: bool = opt(False, "Stage 2 trains all but the MLPs.", is_flag=True)
    teacher_generate: bool = opt(
        False, "Targets are the teacher's own completions of the input prompts.", is_flag=True
    )
    gen_max_new_tokens: int = opt(
        256, "--teacher-generate: tokens per teacher completion.", type=click.IntRange(min=1)
    )
    gen_temperature: float = opt(
        0.7, "--teacher-generate: sampling temperature (0: greedy).", type=click.FloatRange(min=0)
    )
    max_length: int = opt(512, "Tokens per sequence (longer ones are cut).", type=click.IntRange(min=8))
    batch_size: int = opt(4, "Sequences per micro-batch.", type=click.IntRange(min=1))
    grad_accum: int = opt(1, "Micro-batches accumulated per optimizer step.", type=click.IntRange(min=1))
    lr: float = opt(1e-05, "Stage 2 peak learning rate (AdamW).", type=click.FloatRange(min=0, min_open=True))
    schedule: str = opt(
        "cosine", "Learning-rate shape after warm-up.", type=click.Choice(["cosine", "linear", "constant"])
    )
    warmup_ratio: float = opt(
        0.05, "Share of the steps spent warming the learning rate up.", type=click.FloatRange(min=0, max=1)
    )
    weight_decay: float = opt(0.1, "Stage 2 AdamW weight decay (matrices only).", type=click.FloatRange(min=0))
    max_grad_norm: float = opt(1.0, "Gradients are clipped to this global norm.", type=click.FloatRange(min=0))
    mixed_precision: str = opt(
        "no",
        "accelerate mixed precision (bf16 on GPUs; master weights stay float32).",
        type=click.Choice(["no", "bf16", "fp16"]),
    )
    save_every: int = opt(100, "Checkpoint every N steps (for --resume).", type=click.IntRange(min=0))
    resume: bool = opt(False, "Continue from the newest checkpoint in OUTPUT/train.", secondary="--no-resume")
    seed: int = opt(0, "Random seed (Mamba init, shuffling, teacher sampling).", type=int)
    overwrite: bool = opt(
        False,
        "Replace the output folder if it already holds something (default: refused; --resume "
        "continues an interrupted run).",
        is_flag=True,
    )
    progress: bool = opt(True, "Progress bars on stderr.", secondary="--no-progress")
