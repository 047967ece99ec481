"""inplace-ttt-convert's options: one schema for the command line (ttx.options) and the library.
Light: `ttx --help` imports it."""

from __future__ import annotations

from dataclasses import dataclass

import click

from ttx.engines.options import device_field, dtype_field, model_field
from ttx.options import opt
from ttx.train import options as T


@dataclass
class InplaceTTTConfig:
    """Convert a gated-MLP checkpoint to In-Place TTT and optionally continue training it.
    The conversion fields (layers, chunk, ttt_lr, ttt_input) are None when not given: a model
    that is already converted keeps its own values, and a given one that differs is refused."""

    model: str = model_field()
    device: str = device_field(resume_may_change=True)
    dtype: str = dtype_field()
    output: str = T.output(help="New checkpoint folder (config.json + safetensors + tokenizer).")
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
    limit: int | None = T.limit(help="Only the first N training documents.")
    trainable: str = opt(
        "all",
        "all: every parameter (the paper); ttt: only the conv and W_target.",
        type=click.Choice(["all", "ttt"]),
    )
    lr: float = T.lr(5e-06, type=click.FloatRange(min=0))
    warmup_ratio: float = T.warmup_ratio(0.02)
    weight_decay: float = T.weight_decay(0.1, "AdamW weight decay (matrices only).")
    max_grad_norm: float = T.max_grad_norm()
    batch_size: int = T.batch_size(1)
    grad_accum: int = T.grad_accum()
    epochs: int = T.epochs(1, "Passes over the training sequences.")
    steps: int | None = T.steps(None, "Optimizer steps (default: epochs).", aliases=("--max-steps",))
    save_every: int = T.save_every(50, "Checkpoint every N steps, for --resume (0: only when stopped early).")
    stop_after: int | None = T.stop_after()
    resume: bool = T.resume(help="Continue an interrupted --train run in -o.")
    seed: int = T.seed(help="Random seed (W_target init, shuffling).")
    overwrite: bool = T.overwrite()
    progress: bool = T.progress()
    report_to: str = T.report_to()
