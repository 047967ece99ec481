"""The training stages' shared option fields, declared once: LoRA, the trainer, the input and
output, record fields, rollout sampling.

Each is a factory returning an `opt(...)` field, so a stage's schema keeps its own field order,
and its own default and help where they differ (`lr(5e-7, "...")`; any other opt() keyword
too). The same knob has the same name in every stage (`--steps`, `--epochs`, `--grad-accum`...);
an old spelling stays an alias. Fields a resume may change (they do not decide the weights) say
so: `resume_may_change=True` (ttx.options.resume_may_change reads it). Imports only click, so
`ttx --help` stays light.
"""

from __future__ import annotations

import click

from ttx.options import CSV, opt

POS = click.IntRange(min=1)
SHARE = click.FloatRange(0, 1)

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_NO_DEFAULT = object()


def _field(default=_NO_DEFAULT, help: str = "", **base):
    """A factory of one shared field: `make(default, help, **opt_keywords)`; a factory made
    without a default needs one from every stage."""
    def make(default=default, help=help, **kw):
        if default is _NO_DEFAULT:
            raise TypeError("this shared field takes the stage's default")
        return opt(default, help, **{**base, **kw})
    return make


# -- LoRA ----------------------------------------------------------------------------------
lora_r = _field(16, "LoRA rank.", type=POS)
lora_alpha = _field(32, "LoRA scale numerator (the update is scaled by alpha / r).", type=POS)
lora_dropout = _field(0.0, "Dropout on the LoRA input.", type=SHARE)
lora_targets = _field(ALL_PROJECTIONS, "Comma-separated module names that get LoRA.", type=CSV)

# -- the trainer ---------------------------------------------------------------------------
lr = _field(help="Peak learning rate (AdamW; linear warm-up, then cosine decay).",
            type=click.FloatRange(min=0, min_open=True))
warmup_ratio = _field(help="Share of the steps spent warming the learning rate up.", type=SHARE)
weight_decay = _field(help="AdamW weight decay.", type=click.FloatRange(min=0))
max_grad_norm = _field(1.0, "Gradients are clipped to this global norm.", type=click.FloatRange(min=0))
schedule = _field("cosine", "Learning-rate shape after warm-up.",
                  type=click.Choice(["cosine", "linear", "constant"]))
batch_size = _field(help="Sequences per micro-batch.", type=POS)
grad_accum = _field(1, "Micro-batches accumulated per optimizer step.", type=POS)
epochs = _field(1, "Passes over the training data.", type=POS)
steps = _field(None, "Optimizer steps (default: --epochs over the data).", type=POS)
save_every = _field(help="Checkpoint every N steps (0: only when stopped early).",
                    type=click.IntRange(min=0), resume_may_change=True)
stop_after = _field(None, "Stop after N steps, checkpointed; rerun with --resume.", type=POS,
                    resume_may_change=True)
resume = _field(False, "Continue from the newest checkpoint in the output folder.",
                secondary="--no-resume", resume_may_change=True)
seed = _field(0, "Random seed (sampling, shuffling, LoRA init).", type=int)
overwrite = _field(False, "Replace the output folder if it already holds something (default: "
                   "refused; --resume continues an interrupted run).", is_flag=True,
                   resume_may_change=True)
progress = _field(True, "Progress bar on stderr.", secondary="--no-progress", resume_may_change=True)
mixed_precision = _field("no", "Autocast dtype for training (no: the weights' dtype).",
                         type=click.Choice(["no", "bf16", "fp16"]))
limit = _field(None, "Only the first N records.", type=POS)

# -- input and output (where they are: the fingerprint holds the content) --------------------
input = _field(None, short="-i", required=True, resume_may_change=True)
output = _field(None, short="-o", required=True, resume_may_change=True)

# -- record fields -------------------------------------------------------------------------
question_field = _field("question", "Record field holding the question.")
answer_field = _field("answer", "Record field holding the gold answer.")
id_field = _field("id", "Record field holding the id.")
context_field = _field("context", "Record field holding the long context.")

# -- rollout sampling (ttrl, verifier-train's rollout labels) ------------------------------
top_p = _field(1.0, "Nucleus sampling: keep the smallest token set with this much probability.",
               type=click.FloatRange(min=0, max=1, min_open=True))

# -- experiment tracking (accelerate's trackers, TRL's --report-to) --------------------------


class _Tracker(click.Choice):
    """none | tensorboard | wandb; a tracker whose package is missing fails at parse time."""

    PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}

    def __init__(self):
        super().__init__(["none", *self.PACKAGES])

    def convert(self, value, param, ctx):
        import importlib.util

        value = super().convert(value, param, ctx)
        package = self.PACKAGES.get(value)
        if package and importlib.util.find_spec(package) is None:
            self.fail(f"{value} is not installed (pip install 'ttx[track]')", param, ctx)
        return value


report_to = _field("none", "Mirror train_log.jsonl rows to a tracker: tensorboard (event files in "
                   "OUTPUT/runs/) or wandb (WANDB_MODE=offline keeps it local).", type=_Tracker(),
                   resume_may_change=True)
