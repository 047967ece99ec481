"""inplace-ttt-convert's options: one schema for the command line (ttx.options) and the library.
Light: `ttx --help` imports it."""

from __future__ import annotations

from dataclasses import dataclass

import click

from ttx.engines.options import device_field, dtype_field, model_field
from ttx.options import opt


@dataclass
class InplaceTTTConfig:
    """Convert a gated-MLP checkpoint to In-Place TTT and optionally continue training it.
    The conversion fields (layers, chunk, ttt_lr, ttt_input) are None when not given: a model
    that is already converted keeps its own values, and a given one that differs is refused."""

    model: str = model_field()
    device: str = device_field()
    dtype: str = dtype_field()
    output: str = opt(
        None, "New checkpoint folder (config.json + safetensors + tokenizer).", short="-o", required=True
    )
    layers: str | None = opt(None, "Converted decoder layers, e.g. 0,6,12 (default: every 6th from 0).")
    chunk: int | None = opt(
        None, "Tokens per fast-weight update, C (default 4096).", type=click.IntRange(min=1)
    )
    ttt_lr: float | None = opt(None, "Fast-weight step size eta (default 3).", type=click.FloatRange(min=0))
    ttt_input: str | None = opt(
        None,
        "Target input X: the MLP input (default) or the token embeddings.",
        type=click.Choice(["hidden", "embedding"]),
    )
    train: str | None = opt(
        None, "JSONL of long documents (`text`, or `documents`: a list) to continue training on.", short="-i"
    )
    text_field: str = opt("text", "Field(s) holding a record's text; several comma-separated ones are joined.")
    join_records: int = opt(
        1, "Concatenate N consecutive records into one long document.", type=click.IntRange(min=1)
    )
    max_length: int = opt(
        2048,
        "Tokens per training sequence (longer documents are cut into windows).",
        type=click.IntRange(min=2),
    )
    limit: int | None = opt(None, "Only the first N training documents.", type=click.IntRange(min=1))
    trainable: str = opt(
        "all",
        "all: every parameter (the paper); ttt: only the conv and W_target.",
        type=click.Choice(["all", "ttt"]),
    )
    lr: float = opt(
        5e-06, "Peak learning rate (AdamW; linear warm-up, then cosine decay).", type=click.FloatRange(min=0)
    )
    warmup_ratio: float = opt(
        0.02, "Share of the steps spent warming the learning rate up.", type=click.FloatRange(min=0, max=1)
    )
    weight_decay: float = opt(0.1, "AdamW weight decay (matrices only).", type=click.FloatRange(min=0))
    max_grad_norm: float = opt(1.0, "Gradients are clipped to this global norm.", type=click.FloatRange(min=0))
    batch_size: int = opt(1, "Sequences per micro-batch.", type=click.IntRange(min=1))
    grad_accum: int = opt(1, "Micro-batches accumulated per optimizer step.", type=click.IntRange(min=1))
    epochs: int = opt(1, "Passes over the training sequences.", type=click.IntRange(min=1))
    max_steps: int | None = opt(None, "Optimizer steps (default: epochs).", type=click.IntRange(min=1))
    save_every: int = opt(50, "Checkpoint every N steps, for --resume (0: never).", type=click.IntRange(min=0))
    resume: bool = opt(False, "Continue an interrupted --train run in -o.", is_flag=True)
    seed: int = opt(0, "Random seed (W_target init, shuffling).", type=int)
    overwrite: bool = opt(
        False,
        "Replace the output folder if it already holds something (default: refused; --resume "
        "continues an interrupted run).",
        is_flag=True,
    )
    progress: bool = opt(True, "Progress bar on stderr.", secondary="--no-progress")
