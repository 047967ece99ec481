"""tlm-adapt's options: one schema for the command line (ttx.options) and the library. Light:
`ttx --help` imports it."""

from __future__ import annotations

from dataclasses import dataclass

import click

from ttx.engines.options import device_field, dtype_field, model_field
from ttx.options import CSV, opt

_POS = click.IntRange(min=1)


@dataclass
class TLMConfig:
    """tlm-adapt's options (the command line is generated from them: ttx.options)."""

    input: str = opt(
        None, "Test inputs JSONL (tts-run's format; answers are never read).", short="-i", required=True
    )
    output: str = opt(
        None, "Adapter folder (PEFT), with samples.jsonl and ttx_manifest.json.", short="-o", required=True
    )
    mode: str = opt(
        "offline",
        "offline: learn from all inputs, then answer; online: answer each block, then learn from it.",
        type=click.Choice(["offline", "online"]),
    )
    generate: str | None = opt(
        None, "Write greedy answers (tts-run records) here.", type=click.Path(dir_okay=False)
    )
    eval: tuple[str, ...] = opt(
        (),
        "Held-out or control inputs: mean log-perplexity before and after (repeatable).",
        multiple=True,
        type=click.Path(dir_okay=False),
    )
    model: str = model_field()
    device: str = device_field()
    dtype: str = dtype_field()
    load_in_4bit: bool = opt(False, "QLoRA: the base model in 4-bit NF4 (bitsandbytes).", is_flag=True)
    lora_r: int = opt(8, "LoRA rank.", type=_POS)
    lora_alpha: int = opt(16, "LoRA alpha.", type=_POS)
    lora_dropout: float = opt(0.0, "LoRA dropout.", type=click.FloatRange(0, 1))
    lora_targets: tuple[str, ...] = opt(
        ("q_proj", "v_proj"), "Comma-separated module names that get LoRA.", type=CSV, show_default=True
    )
    lr: float = opt(
        5e-5,
        "AdamW learning rate (the paper: 1e-6 for reasoning data).",
        type=click.FloatRange(min=0, min_open=True),
    )
    epochs: int = opt(1, "offline: passes over the inputs.", type=_POS)
    threshold: float = opt(3.0, "τ = ln P0: inputs with log-perplexity above it are learned from.", type=float)
    lam: float = opt(0.1, "λ, the sample weight's scale.", flag="--lambda", type=click.FloatRange(min=0))
    stream_block: int = opt(100, "online: inputs per block.", type=_POS)
    max_length: int = opt(4096, "Tokens per input (longer ones are cut).", type=click.IntRange(min=2))
    batch_size: int = opt(1, "Inputs per micro-batch.", type=_POS)
    grad_accum: int = opt(1, "Micro-batches per optimizer step.", type=_POS)
    warmup_ratio: float = opt(
        0.1, "offline: warmup share of the cosine schedule (online is constant).", type=click.FloatRange(0, 1)
    )
    save_every: int = opt(
        50, "offline: checkpoint every N steps (online: after every block).", type=click.IntRange(min=0)
    )
    max_new_tokens: int = opt(512, "--generate: answer length.", type=_POS)
    question_field: str = opt("question", "Record field holding the question.")
    id_field: str = opt("id", "Record field holding the id.")
    instruction: str | None = opt(None, "Text appended to each question (as tts-run --instruction).")
    system: str | None = opt(None, "System message (as tts-run --system).")
    chat: bool = opt(True, "The chat template (as tts-run).", secondary="--no-chat")
    limit: int | None = opt(None, "Only the first N inputs.", type=_POS)
    seed: int = opt(0, "Seed of the LoRA init, the data order and --generate.", type=int, show_default=True)
    resume: bool = opt(
        False, "Continue from the newest checkpoint in the output folder.", secondary="--no-resume"
    )
    stop_after: int | None = opt(
        None, "Stop after N steps (online: blocks), checkpointed; rerun with --resume.", type=_POS
    )
    overwrite: bool = opt(
        False,
        "Replace the output folder if it already holds something "
        "(default: refused; --resume continues an interrupted run).",
        is_flag=True,
    )
    progress: bool = opt(True, "Progress bar on stderr.", secondary="--no-progress")
    cli: dict = opt(None, cli=False)
