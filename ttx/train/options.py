"""The training stages' shared option fields, declared once: LoRA, the trainer and record fields.

Each is a factory returning an `opt(...)` field, so a stage's schema keeps its own field order,
and its own default and help where they differ (`lr(5e-7, "...")`). The same knob has the same
name in every stage (`--steps`, `--epochs`, `--grad-accum`...); an old spelling stays an alias.
Fields a resume may change (they do not decide the weights) say so: `resume_may_change=True`
(ttx.options.resume_may_change reads it). Imports only click, so `ttx --help` stays light.
"""

from __future__ import annotations

import click

from ttx.options import CSV, opt

POS = click.IntRange(min=1)
SHARE = click.FloatRange(0, 1)
_RATE = click.FloatRange(min=0, min_open=True)

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _opt(default, help, type, kw):
    return opt(default, help, **{"type": type, **kw})


# -- LoRA ----------------------------------------------------------------------------------
def lora_r(default=16, help="LoRA rank.", **kw):
    return _opt(default, help, POS, kw)


def lora_alpha(default=32, help="LoRA scale numerator (the update is scaled by alpha / r).", **kw):
    return _opt(default, help, POS, kw)


def lora_dropout(default=0.0, help="Dropout on the LoRA input.", **kw):
    return _opt(default, help, SHARE, kw)


def lora_targets(default=ALL_PROJECTIONS, help="Comma-separated module names that get LoRA.", **kw):
    return _opt(default, help, CSV, kw)


# -- the trainer ---------------------------------------------------------------------------
def lr(default, help="Peak learning rate (AdamW; linear warm-up, then cosine decay).", **kw):
    return _opt(default, help, _RATE, kw)


def warmup_ratio(default, help="Share of the steps spent warming the learning rate up.", **kw):
    return _opt(default, help, SHARE, kw)


def weight_decay(default, help="AdamW weight decay.", **kw):
    return _opt(default, help, click.FloatRange(min=0), kw)


def max_grad_norm(default=1.0, help="Gradients are clipped to this global norm.", **kw):
    return _opt(default, help, click.FloatRange(min=0), kw)


def schedule(default="cosine", help="Learning-rate shape after warm-up.", **kw):
    return _opt(default, help, click.Choice(["cosine", "linear", "constant"]), kw)


def batch_size(default, help="Sequences per micro-batch.", **kw):
    return _opt(default, help, POS, kw)


def grad_accum(default=1, help="Micro-batches accumulated per optimizer step.", **kw):
    return _opt(default, help, POS, kw)


def epochs(default=1, help="Passes over the training data.", **kw):
    return _opt(default, help, POS, kw)


def steps(default=None, help="Optimizer steps (default: --epochs over the data).", **kw):
    return _opt(default, help, POS, kw)


def save_every(default, help="Checkpoint every N steps (0: only when stopped early).", **kw):
    return _opt(default, help, click.IntRange(min=0), {"resume_may_change": True, **kw})


def stop_after(help="Stop after N steps, checkpointed; rerun with --resume.", **kw):
    return _opt(None, help, POS, {"resume_may_change": True, **kw})


def resume(help="Continue from the newest checkpoint in the output folder.", **kw):
    return opt(False, help, **{"secondary": "--no-resume", "resume_may_change": True, **kw})


def seed(help="Random seed (sampling, shuffling, LoRA init).", **kw):
    return _opt(0, help, int, kw)


def overwrite(help="Replace the output folder if it already holds something (default: refused; "
                   "--resume continues an interrupted run).", **kw):
    return opt(False, help, **{"is_flag": True, "resume_may_change": True, **kw})


def progress(help="Progress bar on stderr.", **kw):
    return opt(True, help, **{"secondary": "--no-progress", "resume_may_change": True, **kw})


def mixed_precision(help="Autocast dtype for training (no: the weights' dtype).", **kw):
    return _opt("no", help, click.Choice(["no", "bf16", "fp16"]), kw)


def limit(help="Only the first N records.", **kw):
    return _opt(None, help, POS, kw)


# -- record fields -------------------------------------------------------------------------
def question_field(help="Record field holding the question.", **kw):
    return opt("question", help, **kw)


def answer_field(help="Record field holding the gold answer.", **kw):
    return opt("answer", help, **kw)


def id_field(help="Record field holding the id.", **kw):
    return opt("id", help, **kw)


def context_field(help="Record field holding the long context.", **kw):
    return opt("context", help, **kw)
