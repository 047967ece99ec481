"""sft's options: one schema for the command line (ttx.options) and the library. Light:
`ttx --help` imports it."""

from __future__ import annotations

from dataclasses import dataclass

import click

from ttx.engines.options import device_field, dtype_field, model_field
from ttx.options import opt
from ttx.train import options as T


@dataclass
class SFTConfig:
    """sft's options (the command line is generated from them: ttx.options)."""

    input: str | None = opt(None, "Plain (prompt, response) JSONL: one training pair a line.",
                            short="-i", resume_may_change=True)    # fingerprinted by content
    from_records: str | None = opt(
        None, "tts-run records or `ttx score --per-record` output instead of -i: each trace is a "
        "response to its record's question (records need gold answers).", flag="--from",
        type=click.Path(dir_okay=False), resume_may_change=True)
    output: str = T.output(help="Output folder: the PEFT adapter (or the full model with "
                           "--lora-r 0), train_log.jsonl, ttx_manifest.json.")
    only_correct: bool = opt(False, "--from: keep only the traces whose answer equals the gold "
                             "one (ttx score's rule): rejection-sampling fine-tuning.", is_flag=True)
    loss: str = opt("ce", "ce: cross-entropy -log p of the response; dco: -log(1 - (1 - p)^N), "
                    "the pass@N-aligned loss (arXiv 2502.07154).", type=click.Choice(["ce", "dco"]))
    dco_n: int = opt(16, "dco: N, the number of samples pass@N will draw.",
                     type=click.IntRange(min=1), unset=True)
    model: str = model_field(resume_may_change=True)     # fingerprinted by content instead
    device: str = device_field(resume_may_change=True)
    dtype: str = dtype_field()
    load_in_4bit: bool = opt(False, "QLoRA: the base model in 4-bit NF4 (bitsandbytes).", is_flag=True)
    lora_r: int = T.lora_r(16, "LoRA rank; 0 trains every weight (the output is a full model).",
                           type=click.IntRange(min=0))
    lora_alpha: int = T.lora_alpha()
    lora_dropout: float = T.lora_dropout()
    lora_targets: tuple[str, ...] = T.lora_targets()
    lr: float = T.lr(1e-4)
    weight_decay: float = T.weight_decay(0.0)
    schedule: str = T.schedule()
    warmup_ratio: float = T.warmup_ratio(0.0)
    max_grad_norm: float = T.max_grad_norm(type=click.FloatRange(min=0, min_open=True))
    epochs: int = T.epochs(1, "Passes over the training pairs.")
    steps: int | None = T.steps(None, "Optimizer steps (default: --epochs over the pairs).")
    batch_size: int = T.batch_size(4, "Pairs per micro-batch.")
    grad_accum: int = T.grad_accum()
    max_length: int = opt(1024, "Tokens per pair (prompt and response): a longer pair is left out.",
                          type=click.IntRange(min=2))
    save_every: int = T.save_every(50, "Checkpoint every N steps; --resume continues from the newest.")
    mixed_precision: str = T.mixed_precision()
    seed: int = T.seed(help="Seed of the LoRA init and the data order.")
    prompt_field: str = opt("prompt", "-i: record field holding the prompt.")
    response_field: str = opt("response", "-i: record field holding the response (a number is "
                              "taken as its text).")
    question_field: str = T.question_field("question", "--from: record field holding the question.")
    answer_field: str = T.answer_field("answer", "--from: record field holding the gold answer.")
    id_field: str = T.id_field()
    instruction: str | None = opt(None, "Text appended to each prompt (as tts-run --instruction).")
    system: str | None = opt(None, "System message (as tts-run --system).")
    chat: bool = opt(True, "The chat template (as tts-run).", secondary="--no-chat")
    limit: int | None = T.limit(help="Only the first N records.")
    resume: bool = T.resume(help="Continue an interrupted run in the output folder.")
    stop_after: int | None = T.stop_after()
    overwrite: bool = T.overwrite()
    progress: bool = T.progress()
    report_to: str = T.report_to()
    cli: dict = opt(None, cli=False, resume_may_change=True)  # the options the user gave
