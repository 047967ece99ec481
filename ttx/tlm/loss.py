"""TLM's objective (Hu et al. 2025, Sec. 4): input perplexity, weighted towards hard inputs.

    CE(x)  = mean token negative log-likelihood of the input x (its log-perplexity)
    S(x)   = λ · exp(CE_ref(x) - τ) · 1[CE_ref(x) > τ]                  sample-efficient weight
    loss   = Σ_x S(x) · CE(x) / Σ_x 1[CE_ref(x) > τ]                    (no update if none selected)
"""

from __future__ import annotations

import torch


def sample_weight(ce_ref: torch.Tensor, threshold: float = 3.0, lam: float = 0.1) -> torch.Tensor:
    """S(x): zero below the threshold τ = ln P0, growing exponentially with perplexity above it."""
    selected = ce_ref > threshold
    return torch.where(selected, lam * torch.exp(ce_ref - threshold), torch.zeros_like(ce_ref))


def tlm_loss(ce: torch.Tensor, ce_ref: torch.Tensor, threshold: float = 3.0,
             lam: float = 0.1) -> torch.Tensor | None:
    """The batch loss, or None when no input in the batch is selected (nothing to learn)."""
    selected = ce_ref > threshold
    if not bool(selected.any()):
        return None
    weights = sample_weight(ce_ref.detach(), threshold, lam)
    return (weights * ce).sum() / selected.sum()


def pad_batch(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and attention mask."""
    from ttx.train.pad import pad

    return pad(sequences, pad_id)


def sequence_ce(model, sequences: list[list[int]], pad_id: int) -> torch.Tensor:
    """CE(x) per sequence: mean NLL of tokens 2..L given their prefix (padding ignored)."""
    device = next(p for p in model.parameters()).device
    ids, mask = pad_batch(sequences, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    targets, keep = ids[:, 1:], mask[:, 1:].float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return (nll * keep).sum(1) / keep.sum(1).clamp(min=1)


@torch.no_grad()
def measure_ce(model, sequences: list[list[int]], pad_id: int, batch_size: int = 8) -> list[float]:
    """CE(x) for many sequences without gradients (sorted by length so padding stays small)."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = [0.0] * len(sequences)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        for i, value in zip(idx, sequence_ce(model, [sequences[i] for i in idx], pad_id).tolist()):
            out[i] = value
    model.train(was_training)
    return out
