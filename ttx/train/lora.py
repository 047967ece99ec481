"""The one LoRA attachment the training stages share (tlm-adapt, perk, verifier-train, ttrl)."""

from __future__ import annotations

from collections.abc import Iterable

from ttx.errors import TtxError


def module_names(model) -> set[str]:
    """The last dotted part of every module's name (what LoRA's target_modules match)."""
    return {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}


def attach_lora(model, *, r: int, alpha: float, dropout: float, targets: Iterable[str],
                task_type: str = "CAUSAL_LM", rslora: bool = False, seed: int | None = None):
    """A PEFT LoRA over `targets` (--lora-r/-alpha/-dropout/-targets); a target the model lacks is
    refused in one line. seed: seeds torch first (the LoRA A init)."""
    import torch
    from peft import LoraConfig, get_peft_model

    targets = list(targets)
    missing = [t for t in targets if t not in module_names(model)]
    if missing:
        raise TtxError(f"the model has no module named {', '.join(missing)}", field="--lora-targets")
    if seed is not None:
        torch.manual_seed(seed)
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                            target_modules=targets, task_type=task_type,
                                            use_rslora=rslora))
