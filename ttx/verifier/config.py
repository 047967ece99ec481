"""verifier-train's options: one schema for the command line (ttx.options) and the library.
Light: `ttx --help` imports it."""

from __future__ import annotations

from dataclasses import dataclass

import click

from ttx.engines.options import device_field, dtype_field, model_field
from ttx.options import CSV, opt


@dataclass
class VerifierConfig:
    input: str = opt(
        None,
        "Scored tts-run records (ttx score --per-record; any with gold answers).",
        short="-i",
        required=True,
    )
    output: str = opt(
        None,
        "The verifier's folder: HF weights, ttx_reward.json, ttx_manifest.json.",
        short="-o",
        required=True,
    )
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
    top_p: float = opt(
        1.0,
        "Nucleus sampling: keep the smallest token set with this much probability.",
        type=click.FloatRange(min=0, max=1, min_open=True),
    )
    max_new_tokens: int = opt(256, "rollout: tokens per completion.", type=click.IntRange(min=1))
    batch_rows: int = opt(64, "rollout: completions decoded together.", type=click.IntRange(min=1))
    instruction: str | None = opt(None, "rollout: the --instruction tts-run built the prompts with.")
    system: str | None = opt(None, "rollout: the --system message tts-run used.")
    chat: bool = opt(True, "rollout: whether tts-run used the chat template.", secondary="--no-chat")
    model: str = model_field()
    device: str = device_field()
    dtype: str = dtype_field()
    lora_r: int = opt(
        16, "LoRA rank (merged into the saved weights); 0 trains every weight.", type=click.IntRange(min=0)
    )
    lora_alpha: int = opt(
        32, "LoRA scale numerator (the update is scaled by alpha / r).", type=click.IntRange(min=1)
    )
    lora_dropout: float = opt(0.0, "Dropout on the LoRA input.", type=click.FloatRange(min=0, max=1))
    lora_targets: tuple[str, ...] = opt(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        "Comma-separated module names that get LoRA.",
        type=CSV,
    )
    lr: float = opt(
        0.0001,
        "Peak learning rate (AdamW; linear warm-up, then cosine decay).",
        type=click.FloatRange(min=0, min_open=True),
    )
    weight_decay: float = opt(0.0, "AdamW weight decay.", type=click.FloatRange(min=0))
    epochs: int = opt(2, "Passes over the training set.", type=click.IntRange(min=1))
    batch_size: int = opt(8, "Examples per optimizer step (before --grad-accum).", type=click.IntRange(min=1))
    grad_accum: int = opt(1, "Micro-batches accumulated per optimizer step.", type=click.IntRange(min=1))
    warmup_ratio: float = opt(
        0.1, "Share of the steps spent warming the learning rate up.", type=click.FloatRange(min=0, max=1)
    )
    max_grad_norm: float = opt(
        1.0, "Gradients are clipped to this global norm.", type=click.FloatRange(min=0, min_open=True)
    )
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
    )
    eval_fraction: float = opt(
        0.2, "Share of problems held out for AUC and accuracy.", type=click.FloatRange(min=0, max=1)
    )
    save_every: int = opt(
        50, "Checkpoint every N steps; --resume continues from the newest.", type=click.IntRange(min=0)
    )
    mixed_precision: str = opt(
        "no", "Autocast dtype for training (no: the weights' dtype).", type=click.Choice(["no", "bf16", "fp16"])
    )
    seed: int = opt(0, "Random seed (sampling, shuffling, LoRA init).", type=int)
    resume: bool = opt(
        False,
        "Continue an interrupted run in the output folder (rollouts and checkpoints).",
        secondary="--no-resume",
    )
    stop_after: int | None = opt(
        None, "Stop after N steps, checkpointed; rerun with --resume.", type=click.IntRange(min=1)
    )
    overwrite: bool = opt(False, "Replace an existing output folder.", is_flag=True)
    progress: bool = opt(True, "Progress bars on stderr.", secondary="--no-progress")
    question_field: str = opt("question", "Record field holding the question.")
    answer_field: str = opt("answer", "Record field holding the gold answer.")
    id_field: str = opt("id", "Record field holding the id.")
    cli: dict = opt(None, cli=False)  # the options the user gave (set by the command)
