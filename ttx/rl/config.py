"""ttrl's options: one schema for the command line (ttx.options) and the library. Light:
`ttx --help` imports it."""

from __future__ import annotations

from dataclasses import dataclass

import click

from ttx.engines.options import device_field, dtype_field, model_field
from ttx.options import CSV, opt


@dataclass
class TTRLConfig:
    input: str = opt(
        None,
        "Questions JSONL (tts-run's format); gold answers, if any, are only logged.",
        short="-i",
        required=True,
    )
    output: str = opt(
        None,
        "Folder: the PEFT adapter (or, with --full, the model), train_log.jsonl, rollouts.jsonl, "
        "ttx_manifest.json.",
        short="-o",
        required=True,
    )
    model: str = model_field()
    device: str = device_field()
    dtype: str = dtype_field()
    full: bool = opt(False, "Full fine-tuning instead of LoRA.", is_flag=True)
    lora_r: int = opt(16, "LoRA rank.", type=click.IntRange(min=1))
    lora_alpha: int = opt(
        32, "LoRA scale numerator (the update is scaled by alpha / r).", type=click.IntRange(min=1)
    )
    lora_dropout: float = opt(0.0, "Dropout on the LoRA input.", type=click.FloatRange(min=0, max=1))
    lora_targets: tuple[str, ...] = opt(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        "Comma-separated module names that get LoRA.",
        type=CSV,
    )
    n_votes: int = opt(
        64,
        "Responses sampled per question for the majority vote.",
        type=click.IntRange(min=1),
        aliases=("--n",),
    )
    n_train: int | None = opt(
        None, "Of those, trained on (default: half the votes, TTRL's 32 of 64).", type=click.IntRange(min=1)
    )
    temperature: float = opt(1.0, "Rollout temperature.", type=click.FloatRange(min=0))
    top_p: float = opt(
        1.0,
        "Nucleus sampling: keep the smallest token set with this much probability.",
        type=click.FloatRange(min=0, max=1, min_open=True),
    )
    max_new_tokens: int = opt(3072, "Tokens per sampled response.", type=click.IntRange(min=1))
    batch_size: int = opt(8, "Questions per rollout step.", type=click.IntRange(min=1))
    mini_batch_size: int = opt(1, "Questions per optimizer update.", type=click.IntRange(min=1))
    micro_batch_size: int = opt(2, "Sequences per forward pass.", type=click.IntRange(min=1))
    ppo_epochs: int = opt(1, "Passes over each rollout batch.", type=click.IntRange(min=1))
    episodes: int = opt(
        10,
        "Passes over the questions (the paper: 10 on MATH-500, 30 AMC, 80 AIME).",
        type=click.IntRange(min=1),
    )
    steps: int | None = opt(None, "Rollout steps (overrides --episodes).", type=click.IntRange(min=1))
    lr: float = opt(
        5e-07,
        "AdamW learning rate (the paper's, for full fine-tuning; LoRA wants far more).",
        type=click.FloatRange(min=0, min_open=True),
    )
    warmup_ratio: float = opt(
        0.03, "Share of the steps spent warming the learning rate up.", type=click.FloatRange(min=0, max=1)
    )
    weight_decay: float = opt(0.01, "AdamW weight decay.", type=click.FloatRange(min=0))
    max_grad_norm: float = opt(1.0, "0: no clipping.", type=click.FloatRange(min=0))
    clip_low: float = opt(0.2, "ε_low of the clipped ratio.", type=click.FloatRange(min=0))
    clip_high: float = opt(0.2, "ε_high of the clipped ratio.", type=click.FloatRange(min=0))
    clip_c: float | None = opt(
        3.0, "Dual-clip bound for negative advantages (0: off).", type=click.FloatRange(min=0)
    )
    kl_coef: float = opt(
        0.001, "β of the k3 KL to the initial policy (0: no reference pass).", type=click.FloatRange(min=0)
    )
    etmr: bool = opt(False, "ETTRL's entropy-fork tree rollouts instead of --n-votes samples.", is_flag=True)
    etmr_trees: int = opt(12, "M: trees per question.", type=click.IntRange(min=1))
    etmr_forks: int = opt(2, "N: highest-entropy fork points per tree.", type=click.IntRange(min=0))
    etmr_branches: int = opt(2, "B: branches per fork point.", type=click.IntRange(min=0))
    ear: bool = opt(False, "ETTRL's Adv-Res: advantages scaled by relative response entropy.", is_flag=True)
    adv_clip: float | None = opt(
        None,
        "ETTRL's Adv-Clip: clip advantages to [-β, β] (the paper: 2).",
        type=click.FloatRange(min=0, min_open=True),
    )
    invalid_votes: str = opt(
        "lm-eval",
        "lm-eval: responses without an answer vote as one class; skip: they do not vote.",
        type=click.Choice(["lm-eval", "skip"]),
    )
    question_field: str = opt("question", "Record field holding the question.")
    answer_field: str = opt("answer", "Gold answers (logged only).")
    id_field: str = opt("id", "Record field holding the id.")
    instruction: str | None = opt(None, "Text appended to each question (as tts-run --instruction).")
    system: str | None = opt(None, "System message (as tts-run --system).")
    chat: bool = opt(True, "Wrap prompts in the model's chat template.", secondary="--no-chat")
    limit: int | None = opt(None, "Only the first N questions.", type=click.IntRange(min=1))
    seed: int = opt(0, "Random seed (sampling, shuffling, LoRA init).", type=int)
    save_every: int = opt(
        5, "Checkpoint every N rollout steps (0: only when stopping early).", type=click.IntRange(min=0)
    )
    resume: bool = opt(False, "Continue from the newest checkpoint in the output.", secondary="--no-resume")
    overwrite: bool = opt(False, "Replace an existing output folder.", is_flag=True)
    stop_after: int | None = opt(
        None, "Stop after N rollout steps, checkpointed; rerun with --resume.", type=click.IntRange(min=1)
    )
    progress: bool = opt(True, "Progress bar on stderr.", secondary="--no-progress")
