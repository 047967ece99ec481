"""PERK's options: the meta-learned module's settings (PerkConfig, saved in perk_config.json),
meta-training (MetaTrainConfig) and test-time encoding (EncodeConfig). One schema for the
command line (ttx.options) and the library. Light: `ttx --help` imports it."""

from __future__ import annotations

from dataclasses import dataclass, field

import click

from ttx.engines.options import device_field, dtype_field, model_field
from ttx.options import opt
from ttx.train import options as T

# every attention and MLP projection of Llama-like models (the paper: all of them)
DEFAULT_TARGETS = T.ALL_PROJECTIONS


@dataclass
class PerkConfig:
    """What is meta-learned and how the inner loop runs (saved with the PERK folder)."""

    model: str = model_field()
    lora_r: int = T.lora_r(256, "LoRA rank (rsLoRA scaling alpha / sqrt(r)); the paper's 256 is slow on a CPU.")
    lora_alpha: float = T.lora_alpha(16.0, "LoRA scale numerator (rsLoRA: alpha / sqrt(r)).", type=float)
    lora_dropout: float = T.lora_dropout(
        0.1, "Dropout on the LoRA input (inner loop).", type=click.FloatRange(0, 1, max_open=True)
    )
    # the shared --lora-targets name; --target-modules (this field's name) stays an alias
    target_modules: tuple[str, ...] = T.lora_targets(
        DEFAULT_TARGETS, "Comma-separated projections that get a LoRA.", flag="--lora-targets",
        aliases=("--target-modules",),
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

    input: str = T.input(help="Training records JSONL {id, context, question, answer} (path or -).")
    output: str = T.output(help="PERK folder: adapter/ (PEFT), perk_state.safetensors, manifest, checkpoints.")
    perk: PerkConfig = field(default_factory=PerkConfig, metadata={"cli": {"cli": False}})
    device: str = device_field(resume_may_change=True)
    dtype: str = dtype_field()
    inner_grad_accum: int = opt(
        1, "Split a context's segments into this many gradient-accumulation parts.", type=click.IntRange(min=1)
    )
    steps: int | None = T.steps(None, "Outer steps (default: --epochs).")
    epochs: int = T.epochs(1, "Passes over the records (one record per outer step).")
    lr: float = T.lr(1e-05, "Outer AdamW learning rate (the paper's).")
    weight_decay: float = T.weight_decay(0.01, "Outer AdamW weight decay.")
    warmup_ratio: float = T.warmup_ratio(0.03, "Share of the outer steps spent warming the learning rate up.")
    schedule: str = T.schedule()
    max_grad_norm: float = T.max_grad_norm(1.0, "Outer gradients are clipped to this global norm.")
    save_every: int = T.save_every(50, "Checkpoint every N outer steps (0: only when stopped early).")
    stop_after: int | None = T.stop_after(
        help="Stop (checkpointed) after N outer steps in this run; --resume continues."
    )
    context_field: str = T.context_field()
    question_field: str = T.question_field()
    answer_field: str = T.answer_field(help="Record field holding the answer (the outer loss's target).")
    limit: int | None = T.limit()
    seed: int = T.seed(help="Random seed (LoRA init, shuffling, dropout).")
    resume: bool = T.resume()
    overwrite: bool = T.overwrite()
    progress: bool = T.progress()
    grad_accum: int = T.grad_accum(help="Records (outer micro-batches) per optimizer step, over all "
                                   "processes' own micro-batches.")
    report_to: str = T.report_to()


@dataclass
class EncodeConfig:
    """perk-encode: per record, adapt the meta-learned LoRA on its context, then answer."""

    input: str = T.input(help="Records JSONL {id, context, question[, answer]} (path or -).")
    output: str = opt(
        "-", "Answer records JSONL (tts-run format, `ttx score` reads it), appended per record.", short="-o",
        resume_may_change=True,
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
    seed: int = T.seed(help="Seeds the inner loop's LoRA dropout per record.")
    resume: bool = T.resume(help="Keep the output and skip ids already in it.")
    limit: int | None = T.limit(resume_may_change=True)
    context_field: str = T.context_field()
    question_field: str = T.question_field()
    answer_field: str = T.answer_field(help="Record field holding the gold answer (scored when present).")
    id_field: str = T.id_field()
    progress: bool = T.progress()
