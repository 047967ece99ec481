"""The two distillation stages and the held-out evaluation, on the shared loop ttx.train.

Stage 1 (MOHAWK's hidden-state alignment, Bick et al. 2024, sec. 4.2): every new Mamba mixer
learns to reproduce its attention layer's output from the teacher's own input to that layer,
    L_align = mean_l || Mamba_l(u_l) - Attn_l(u_l) ||^2,   u_l = RMSNorm(h_l^teacher),
everything else frozen. Stage 2 (M1, sec. 3; Mamba in the Llama, sec. 3): end to end,
    L = (1 - w) CE(p_s, y) + w T^2 KL,  KL = KL(p_s || p_t) (reverse, default) or KL(p_t || p_s),
per target token, averaged over the tokens of a micro-batch, p = softmax(logits / T).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ttx.mamba.data import IGNORE


def token_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "reverse",
             temperature: float = 1.0) -> torch.Tensor:
    """KL per row (token) between the softened distributions, scaled by T^2 (Hinton et al. 2015)."""
    log_ps = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_pt = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if kind == "reverse":          # KL(p_s || p_t): mode seeking (M1)
        kl = (log_ps.exp() * (log_ps - log_pt)).sum(-1)
    elif kind == "forward":        # KL(p_t || p_s): mean seeking
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
    else:
        raise ValueError(f"unknown KL direction {kind!r}")
    return kl * temperature ** 2


def target_positions(labels: torch.Tensor) -> torch.Tensor:
    """Mask over logits positions [:, :-1] whose next token is a target (position t predicts t+1)."""
    return labels[:, 1:] != IGNORE


def distill_loss(student_logits, teacher_logits, labels, *, kind: str = "reverse",
                 kl_weight: float = 1.0, temperature: float = 1.0):
    """(loss, ce, kl): L = (1 - w) CE + w KL over the target tokens of the micro-batch."""
    keep = target_positions(labels)
    s = student_logits[:, :-1][keep]
    t = teacher_logits[:, :-1][keep]
    ce = F.cross_entropy(s.float(), labels[:, 1:][keep])
    kl = token_kl(s, t, kind, temperature).mean()
    return (1.0 - kl_weight) * ce + kl_weight * kl, ce, kl


class MixerAlignment(torch.nn.Module):
    """The student's new Mamba mixers, trained to match the teacher's attention outputs."""

    def __init__(self, student, layers: list[int]):
        super().__init__()
        self.layers = list(layers)
        self.mixers = torch.nn.ModuleDict({str(i): student.model.layers[i].mamba for i in layers})

    def forward(self, inputs: dict, targets: dict, mask: torch.Tensor):
        weight = mask.to(torch.float32)
        per_layer = []
        for i in self.layers:
            out = self.mixers[str(i)](hidden_states=inputs[i], attention_mask=mask)
            err = (out.float() - targets[i].float()).pow(2).mean(-1)     # (batch, tokens)
            per_layer.append((err * weight).sum() / weight.sum())
        return torch.stack(per_layer)


@torch.no_grad()
def attention_io(teacher, batch, layers: list[int]) -> tuple[dict, dict]:
    """The teacher's attention input u_l (after its input norm) and output at each layer l."""
    inputs, outputs = {}, {}

    def hook(index):
        def capture(module, args, kwargs, output):
            inputs[index] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            outputs[index] = output[0]
        return capture

    handles = [teacher.model.layers[i].self_attn.register_forward_hook(hook(i), with_kwargs=True)
               for i in layers]
    try:
        teacher.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    return inputs, outputs


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def run_align(student, teacher, batches: list, train_config, layers: list[int]):
    """Stage 1: train only the new mixers on hidden-state MSE; returns the TrainResult."""
    from ttx.train import Trainer

    for p in student.parameters():
        p.requires_grad_(False)
    module = MixerAlignment(student, layers)
    for p in module.parameters():
        p.requires_grad_(True)
    trainer = Trainer(module, train_config)
    device = trainer.accelerator.device

    def loss_fn(mod, batch):
        batch = _to(batch, device)
        inputs, targets = attention_io(teacher, batch, layers)
        per_layer = mod(inputs, targets, batch["attention_mask"])
        return per_layer.mean(), {"mse_max_layer": float(per_layer.detach().max())}

    result = trainer.fit(batches, loss_fn)
    if result.finished:
        trainer.save()          # the stage's end state, so a resumed run skips straight past it
    return result, trainer


def run_distill(student, teacher, batches: list, train_config, *, kind: str, kl_weight: float,
                temperature: float, freeze_mlp: bool):
    """Stage 2: end-to-end logit distillation of the whole student (or all but its MLPs)."""
    from ttx.train import Trainer

    for name, p in student.named_parameters():
        p.requires_grad_(not (freeze_mlp and ".feed_forward." in name))
    trainer = Trainer(student, train_config)
    device = trainer.accelerator.device

    def loss_fn(model, batch):
        batch = _to(batch, device)
        with torch.no_grad():
            t_logits = teacher(input_ids=batch["input_ids"],
                               attention_mask=batch["attention_mask"]).logits
        s_logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, ce, kl = distill_loss(s_logits, t_logits, batch["labels"], kind=kind,
                                    kl_weight=kl_weight, temperature=temperature)
        return loss, {"ce": float(ce.detach()), "kl": float(kl.detach())}

    result = trainer.fit(batches, loss_fn)
    return result, trainer


@torch.no_grad()
def evaluate(student, teacher, batches: list, device=None, teacher_cache: list | None = None) -> dict:
    """Held-out perplexity of both models and the per-token KL between them (T = 1).

    teacher_cache: a list kept between calls; it keeps the teacher's target logits so a later
    evaluation on the same batches does not run the teacher again."""
    if not batches:
        return {}
    device = device or next(student.parameters()).device
    was_training = student.training
    student.eval()
    sums = {"ce_student": 0.0, "ce_teacher": 0.0, "kl_reverse": 0.0, "kl_forward": 0.0}
    tokens = 0
    for index, batch in enumerate(batches):
        batch = _to(batch, device)
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        keep = target_positions(labels)
        y = labels[:, 1:][keep]
        s = student(input_ids=ids, attention_mask=mask).logits[:, :-1][keep].float()
        if teacher_cache is not None and index < len(teacher_cache):
            t = teacher_cache[index]
        else:
            t = teacher(input_ids=ids, attention_mask=mask).logits[:, :-1][keep].float()
            if teacher_cache is not None:
                teacher_cache.append(t)
        sums["ce_student"] += float(F.cross_entropy(s, y, reduction="sum"))
        sums["ce_teacher"] += float(F.cross_entropy(t, y, reduction="sum"))
        sums["kl_reverse"] += float(token_kl(s, t, "reverse").sum())
        sums["kl_forward"] += float(token_kl(s, t, "forward").sum())
        tokens += int(keep.sum())
    student.train(was_training)
    mean = {k: v / max(tokens, 1) for k, v in sums.items()}
    return {"ppl_student": math.exp(mean["ce_student"]), "ppl_teacher": math.exp(mean["ce_teacher"]),
            "kl_reverse": mean["kl_reverse"], "kl_forward": mean["kl_forward"], "tokens": tokens}
