"""verifier-train's options: one schema for the command line (ttx.options) and the library.
Light: `ttx --help` imports it."""

from __future__ import annotations

from dataclasses import dataclass

import click

from ttx.engines.options import device_field, dtype_field, model_field
from ttx.options import opt
from ttx.train import options as T


@dataclass
class VerifierConfig:
    input: str = T.input(help="Scored tts-run records (ttx score --per-record; any with gold answers).")
    output: str = T.output(help="The verifier's folder: HF weights, ttx_reward.json, ttx_manifest.json.")
    kind: str = opt(
        "orm",
        "orm: one score per trace; prm: one per step (Math-Shepherd step tags).",
        type=click.Choice(["orm", "prm"]),
    )
    prm_labels: str = opt(
        "outcome",
        "prm: step labels from the trace's outcome, or from completions after each step (Math-Shepherd).",
        type=click.Choice(["outcome", "rollout"]),
        unset=True,
    )
    label_type: str = opt(
        "hard",
        "rollout: hard, good if any completion is right (HE); soft, the fraction (SE).",
        type=click.Choice(["hard", "soft"]),
        unset=True,
    )
    rollouts: int = opt(8, "rollout: completions per step prefix.", type=click.IntRange(min=1), unset=True)
    rollout_model: str | None = opt(
        None, "rollout: the policy that completes the prefixes (default: the records' `model`)."
    )
    temperature: float = opt(0.7, "rollout: sampling temperature.", type=click.FloatRange(min=0))
    top_p: float = T.top_p()
    max_new_tokens: int = opt(256, "rollout: tokens per completion.", type=click.IntRange(min=1))
    batch_rows: int = opt(64, "rollout: completions decoded together.", type=click.IntRange(min=1))
    instruction: str | None = opt(None, "rollout: the --instruction tts-run built the prompts with.")
    system: str | None = opt(None, "rollout: the --system message tts-run used.")
    chat: bool = opt(True, "rollout: whether tts-run used the chat template.", secondary="--no-chat")
    model: str = model_field(resume_may_change=True)     # fingerprinted by content instead
    device: str = device_field(resume_may_change=True)
    dtype: str = dtype_field()
    lora_r: int = T.lora_r(
        16, "LoRA rank (merged into the saved weights); 0 trains every weight.", type=click.IntRange(min=0)
    )
    lora_alpha: int = T.lora_alpha()
    lora_dropout: float = T.lora_dropout()
    lora_targets: tuple[str, ...] = T.lora_targets()
    lr: float = T.lr(0.0001)
    weight_decay: float = T.weight_decay(0.0)
    epochs: int = T.epochs(2, "Passes over the training set.")
    steps: int | None = T.steps(None, "Optimizer steps (default: --epochs over the training set).")
    batch_size: int = T.batch_size(8, "Examples per optimizer step (before --grad-accum).")
    grad_accum: int = T.grad_accum()
    warmup_ratio: float = T.warmup_ratio(0.1)
    max_grad_norm: float = T.max_grad_norm(type=click.FloatRange(min=0, min_open=True))
    max_length: int = opt(
        1024,
        "Tokens per input: a longer ORM input is left out, a PRM input is cut.",
        type=click.IntRange(min=8),
    )
    balance: bool = opt(
        False, "Weight the rarer label up so both classes count alike in the loss.", secondary="--no-balance"
    )
    eval: str | None = opt(
        None,
        "Held-out scored records (default: --eval-fraction of the problems).",
        type=click.Path(exists=False, file_okay=True, dir_okay=False),
        resume_may_change=True,                          # fingerprinted by content instead
    )
    eval_fraction: float = opt(
        0.2, "Share of problems held out for AUC and accuracy.", type=click.FloatRange(min=0, max=1)
    )
    save_every: int = T.save_every(50, "Checkpoint every N steps; --resume continues from the newest.")
    mixed_precision: str = T.mixed_precision()
    seed: int = T.seed()
    resume: bool = T.resume(help="Continue an interrupted run in the output folder (rollouts and checkpoints).")
    stop_after: int | None = T.stop_after()
    overwrite: bool = T.overwrite(help="Replace an existing output folder.")
    progress: bool = T.progress(help="Progress bars on stderr.")
    report_to: str = T.report_to()
    question_field: str = T.question_field()
    answer_field: str = T.answer_field()
    id_field: str = T.id_field()
    cli: dict = opt(None, cli=False, resume_may_change=True)  # the options the user gave (set by the command)
