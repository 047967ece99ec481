"""tlm-adapt's options: one schema for the command line (ttx.options) and the library. Light:
`ttx --help` imports it."""

from __future__ import annotations

from dataclasses import dataclass

import click

from ttx.engines.options import device_field, dtype_field, model_field
from ttx.options import opt
from ttx.train import options as T

_POS = click.IntRange(min=1)


@dataclass
class TLMConfig:
    """tlm-adapt's options (the command line is generated from them: ttx.options)."""

    input: str = T.input(help="Test inputs JSONL (tts-run's format; answers are never read).")
    output: str = T.output(help="Adapter folder (PEFT), with samples.jsonl and ttx_manifest.json.")
    mode: str = opt(
        "offline",
        "offline: learn from all inputs, then answer; online: answer each block, then learn from it.",
        type=click.Choice(["offline", "online"]),
    )
    generate: str | None = opt(
        None, "Write greedy answers (tts-run records) here.", type=click.Path(dir_okay=False),
        resume_may_change=True,
    )
    eval: tuple[str, ...] = opt(
        (),
        "Held-out or control inputs: mean log-perplexity before and after (repeatable).",
        multiple=True,
        type=click.Path(dir_okay=False),
        resume_may_change=True,
    )
    model: str = model_field()
    device: str = device_field(resume_may_change=True)
    dtype: str = dtype_field()
    load_in_4bit: bool = opt(False, "QLoRA: the base model in 4-bit NF4 (bitsandbytes).", is_flag=True)
    lora_r: int = T.lora_r(8)
    lora_alpha: int = T.lora_alpha(16, "LoRA alpha.")
    lora_dropout: float = T.lora_dropout(0.0, "LoRA dropout.")
    lora_targets: tuple[str, ...] = T.lora_targets(("q_proj", "v_proj"), show_default=True)
    lr: float = T.lr(5e-5, "AdamW learning rate (the paper: 1e-6 for reasoning data).")
    epochs: int = T.epochs(1, "offline: passes over the inputs.")
    steps: int | None = T.steps(None, "offline: optimizer steps (default: --epochs over the inputs).")
    threshold: float = opt(3.0, "τ = ln P0: inputs with log-perplexity above it are learned from.", type=float)
    lam: float = opt(0.1, "λ, the sample weight's scale.", flag="--lambda", type=click.FloatRange(min=0))
    stream_block: int = opt(100, "online: inputs per block.", type=_POS)
    max_length: int = opt(4096, "Tokens per input (longer ones are cut).", type=click.IntRange(min=2))
    batch_size: int = T.batch_size(1, "Inputs per micro-batch.")
    grad_accum: int = T.grad_accum(1, "Micro-batches per optimizer step.")
    warmup_ratio: float = T.warmup_ratio(
        0.1, "offline: warmup share of the cosine schedule (online is constant)."
    )
    save_every: int = T.save_every(50, "offline: checkpoint every N steps (online: after every block).")
    max_new_tokens: int = opt(512, "--generate: answer length.", type=_POS)
    question_field: str = T.question_field()
    id_field: str = T.id_field()
    instruction: str | None = opt(None, "Text appended to each question (as tts-run --instruction).")
    system: str | None = opt(None, "System message (as tts-run --system).")
    chat: bool = opt(True, "The chat template (as tts-run).", secondary="--no-chat")
    limit: int | None = T.limit(help="Only the first N inputs.")
    seed: int = T.seed(help="Seed of the LoRA init, the data order and --generate.", show_default=True)
    resume: bool = T.resume()
    stop_after: int | None = T.stop_after(
        help="Stop after N steps (online: blocks), checkpointed; rerun with --resume."
    )
    overwrite: bool = T.overwrite()
    progress: bool = T.progress()
    report_to: str = T.report_to()
    cli: dict = opt(None, cli=False, resume_may_change=True)
