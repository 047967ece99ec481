"""PERK's options: the meta-learned module's settings (PerkConfig, saved in perk_config.json),
meta-training (MetaTrainConfig) and test-time encoding (EncodeConfig). One schema for the
command line (ttx.options) and the library. Light: `ttx --help` imports it."""

from __future__ import annotations

from dataclasses import dataclass, field

import click

from ttx.engines.options import device_field, dtype_field, model_field
from ttx.options import CSV, opt

# every attention and MLP projection of Llama-like models (the paper: all of them)
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class PerkConfig:
    """What is meta-learned and how the inner loop runs (saved with the PERK folder)."""

    model: str = model_field()
    lora_r: int = opt(
        256,
        "LoRA rank (rsLoRA scaling alpha / sqrt(r)); the paper's 256 is slow on a CPU.",
        type=click.IntRange(min=1),
    )
    lora_alpha: float = opt(16.0, "LoRA scale numerator (rsLoRA: alpha / sqrt(r)).", type=float)
    lora_dropout: float = opt(
        0.1, "Dropout on the LoRA input (inner loop).", type=click.FloatRange(0, 1, max_open=True)
    )
    target_modules: tuple[str, ...] = opt(
        DEFAULT_TARGETS, "Comma-separated projections that get a LoRA.", type=CSV
    )
    inner_steps: int = opt(4, "Inner gradient steps on the LoRA per context.", type=click.IntRange(min=1))
    unroll: int = opt(
        2, "Last inner steps differentiated through (earlier ones first-order).", type=click.IntRange(min=0)
    )
    inner_lr: float = opt(
        5e-05,
        "Initial per-step per-tensor inner learning rate (learned, LSLR).",
        type=click.FloatRange(min=0, min_open=True),
    )
    segment_tokens: int = opt(
        128, "Context tokens per segment (`doc_i: ...<eos>` sequences).", type=click.IntRange(min=8)
    )
    head_width: int = opt(128, cli=False)  # the token-weighting head's hidden width


@dataclass
class MetaTrainConfig:
    """perk-metatrain: the outer loop (AdamW over the LoRA init, inner rates and weighting head)."""

    input: str = opt(
        None, "Training records JSONL {id, context, question, answer} (path or -).", short="-i", required=True
    )
    output: str = opt(
        None,
        "PERK folder: adapter/ (PEFT), perk_state.safetensors, manifest, checkpoints.",
        short="-o",
        required=True,
    )
    perk: PerkConfig = field(default_factory=PerkConfig, metadata={"cli": {"cli": False}})
    device: str = device_field()
    dtype: str = dtype_field()
    inner_grad_accum: int = opt(
        1, "Split a context's segments into this many gradient-accumulation parts.", type=click.IntRange(min=1)
    )
    steps: int | None = opt(None, "Outer steps (default: --epochs).", type=click.IntRange(min=1))
    epochs: int = opt(1, "Passes over the records (one record per outer step).", type=click.IntRange(min=1))
    lr: float = opt(
        1e-05, "Outer AdamW learning rate (the paper's).", type=click.FloatRange(min=0, min_open=True)
    )
    weight_decay: float = opt(0.01, "Outer AdamW weight decay.", type=click.FloatRange(min=0))
    warmup_ratio: float = opt(
        0.03, "Share of the outer steps spent warming the learning rate up.", type=click.FloatRange(0, 1)
    )
    schedule: str = opt(
        "cosine", "Learning-rate shape after warm-up.", type=click.Choice(["cosine", "linear", "constant"])
    )
    max_grad_norm: float = opt(
        1.0, "Outer gradients are clipped to this global norm.", type=click.FloatRange(min=0)
    )
    save_every: int = opt(
        50, "Checkpoint every N outer steps (0: only when stopped early).", type=click.IntRange(min=0)
    )
    stop_after: int | None = opt(
        None,
        "Stop (checkpointed) after N outer steps in this run; --resume continues.",
        type=click.IntRange(min=1),
    )
    context_field: str = opt("context", "Record field holding the long context.")
    question_field: str = opt("question", "Record field holding the question.")
    answer_field: str = opt("answer", "Record field holding the answer (the outer loss's target).")
    limit: int | None = opt(None, "Only the first N records.", type=click.IntRange(min=1))
    seed: int = opt(0, "Random seed (LoRA init, shuffling, dropout).", type=int)
    resume: bool = opt(
        False, "Continue from the newest checkpoint in the output folder.", secondary="--no-resume"
    )
    overwrite: bool = opt(
        False,
        "Replace the output folder if it already holds something (default: refused; --resume "
        "continues an interrupted run).",
        is_flag=True,
    )
    progress: bool = opt(True, "Progress bar on stderr.", secondary="--no-progress")


@dataclass
class EncodeConfig:
    """perk-encode: per record, adapt the meta-learned LoRA on its context, then answer."""

    input: str = opt(
        None, "Records JSONL {id, context, question[, answer]} (path or -).", short="-i", required=True
    )
    output: str = opt(
        "-", "Answer records JSONL (tts-run format, `ttx score` reads it), appended per record.", short="-o"
    )
    perk: str = opt(
        None,
        "A folder written by ttx perk-metatrain.",
        type=click.Path(exists=True, file_okay=False),
        required=True,
    )
    model: str | None = opt(
        None, "Base model (default: the one the PERK folder was meta-trained on).", short="-m"
    )
    device: str = device_field()
    dtype: str = dtype_field()
    inner_grad_accum: int = opt(
        1,
        "Split a long context's segments into this many accumulation parts (memory).",
        type=click.IntRange(min=1),
    )
    max_new_tokens: int = opt(
        16, "Tokens per answer (generation also stops at a newline).", type=click.IntRange(min=1)
    )
    seed: int = opt(0, "Seeds the inner loop's LoRA dropout per record.", type=int)
    resume: bool = opt(False, "Keep the output and skip ids already in it.", secondary="--no-resume")
    limit: int | None = opt(None, "Only the first N records.", type=click.IntRange(min=1))
    context_field: str = opt("context", "Record field holding the long context.")
    question_field: str = opt("question", "Record field holding the question.")
    answer_field: str = opt("answer", "Record field holding the gold answer (scored when present).")
    id_field: str = opt("id", "Record field holding the id.")
    progress: bool = opt(True, "Progress bar on stderr.", secondary="--no-progress")
