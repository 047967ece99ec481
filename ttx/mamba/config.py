"""distill-to-mamba's options: one schema for the command line (ttx.options) and the library.
Light: `ttx --help` imports it."""

from __future__ import annotations

from dataclasses import dataclass

import click

from ttx.engines.options import device_field, dtype_field, model_field
from ttx.options import opt
from ttx.train import options as T


@dataclass
class DistillConfig:
    """Which layers become Mamba-2, the two distillation stages (M1 / MambaInLlama), and data."""

    model: str = model_field()
    device: str = device_field(resume_may_change=True)
    dtype: str = dtype_field()
    output: str = T.output(help="Folder for the Bamba checkpoint (loads with AutoModelForCausalLM).")
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
    steps: int | None = T.steps(
        None, "Stage 2 optimizer steps (default: --epochs over the data; 0: no stage 2).",
        type=click.IntRange(min=0),
    )
    epochs: int = T.epochs(1, "Stage 2 passes over the data (without --steps).")
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
    batch_size: int = T.batch_size(4)
    grad_accum: int = T.grad_accum()
    lr: float = T.lr(1e-05, "Stage 2 peak learning rate (AdamW).")
    schedule: str = T.schedule()
    warmup_ratio: float = T.warmup_ratio(0.05)
    weight_decay: float = T.weight_decay(0.1, "Stage 2 AdamW weight decay (matrices only).")
    max_grad_norm: float = T.max_grad_norm()
    mixed_precision: str = T.mixed_precision(
        help="accelerate mixed precision (bf16 on GPUs; master weights stay float32)."
    )
    save_every: int = T.save_every(100, "Checkpoint every N steps (for --resume).")
    stop_after: int | None = T.stop_after(
        help="Stop after N steps (stage 1 and 2 together), checkpointed; rerun with --resume."
    )
    resume: bool = T.resume(help="Continue from the newest checkpoint in OUTPUT/train.")
    seed: int = T.seed(help="Random seed (Mamba init, shuffling, teacher sampling).")
    overwrite: bool = T.overwrite()
    progress: bool = T.progress(help="Progress bars on stderr.")
    report_to: str = T.report_to()
