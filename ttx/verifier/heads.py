"""What the outcome and process verifiers share: LoRA, padded batches, the plain saved folder."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class HeadConfig:
    lora_r: int = 16                     # 0: train every weight (full fine-tuning)
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = LINEAR
    max_length: int = 1024
    seed: int = 0


def attach_lora(model, cfg: HeadConfig, task_type: str):
    """LoRA on the named linear layers; a sequence-classification head trains in full beside it
    (peft's SEQ_CLS keeps `score` trainable as a module to save)."""
    if cfg.lora_r == 0:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from ttx.train.lora import attach_lora as lora

    return lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                targets=cfg.lora_targets, task_type=task_type, seed=cfg.seed)


def plain(model):
    """The model to save: LoRA merged into the weights (in place), so the folder loads with no
    peft: AutoModelFor*.from_pretrained reads it as it is."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def length_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Micro-batches of similar length (less padding); ties in length broken by a seeded
    shuffle. The trainer reshuffles the order of the batches every epoch."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and attention mask."""
    from ttx.train.pad import pad as pad_rows

    ids, mask = pad_rows(rows, pad_id)
    return ids.to(device), mask.to(device)


def device_of(module) -> torch.device:
    return next(module.parameters()).device


def pad_id_of(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    return 0


def quiet_transformers():
    """Loading a causal LM into a classification head warns about the new head on stderr; the
    loading and saving bars stay off as in every stage (TTX_VERBOSE=1 shows them)."""
    from transformers.utils import logging

    from ttx.models import _quiet_transformers

    logging.set_verbosity_error()
    _quiet_transformers()
