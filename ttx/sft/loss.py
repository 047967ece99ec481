"""sft's losses on the response tokens only: cross-entropy, and DCO (Direct Coverage Optimization,
Chen, Raventós, Cheng, Ganguli, Druckmann, "Rethinking Fine-Tuning when Scaling Test-Time
Compute", arXiv 2502.07154; no public code, so the paper's equations):

    p        = p(y | x), the sequence probability of the response tokens (the paper's p̂ for short
               answers); ℓ = log p = Σ_t log p(y_t | x, y_<t)
    L_CE     = -log p                                          the paper's cross-entropy
    L_DCO^N  = -log(1 - (1 - p)^N)                             -log pass@N coverage
    ∇L_DCO^N = F(N, p) ∇L_CE,  F(N, p) = N p (1-p)^(N-1) / (1 - (1-p)^N)

Stable in log space for every p in [0, 1] (no constant chosen; the regime switch at q^N = 1/2
is where both forms are exact to rounding): with q = 1 - p, 1 - q^N = p Σ_{k<N} q^k, so
    L_DCO = -ℓ - logsumexp_{k=0..N-1}(k log q)       where q^N >= 1/2 (p small)
          = -log1mexp(N log q)                      where q^N < 1/2 (L small, no cancellation)
    F     = N q^(N-1) / Σ_{k<N} q^k = exp(log N + (N-1) log q - logsumexp_k(k log q)),
p cancels out of F: F -> 1 as p -> 0, F -> 0 as p -> 1 (N > 1), F = 1 for N = 1 (DCO is CE).
log q = log(1 - e^ℓ) is log1mexp (Mächler 2012): log(-expm1(ℓ)) for ℓ > -ln 2, else
log1p(-exp(ℓ)); at p = 1 it is -inf, where q^k is 0 for k >= 1 and 1 for k = 0.
The factor is detached, as the paper's gradient: the loss's value is L_DCO, its gradient F ∇L_CE.
"""

from __future__ import annotations

import math

import torch

LOSSES = ("ce", "dco")


def log1mexp(logp: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x <= 0, accurate at both ends (Mächler 2012); -inf at x = 0."""
    x = logp.clamp(max=0.0)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _powers(logq: torch.Tensor, n: int) -> torch.Tensor:
    """k log q for k = 0..n-1 (last axis), with 0 · (-inf) read as 0 (q^0 = 1)."""
    k = torch.arange(n, dtype=logq.dtype, device=logq.device)
    terms = k * logq.unsqueeze(-1)
    return torch.where(k == 0, torch.zeros_like(terms), terms)


def dco_value(logp: torch.Tensor, n: int) -> torch.Tensor:
    """L_DCO^N = -log(1 - (1 - p)^N) from ℓ = log p (no gradient path through it): where
    q^N < 1/2, -log1mexp(N log q) (no cancellation as L -> 0); else -ℓ - logsumexp (p -> 0)."""
    logq = log1mexp(logp)
    small = -logp - torch.logsumexp(_powers(logq, n), dim=-1)
    return torch.where(n * logq < -math.log(2.0), -log1mexp(n * logq), small)


def dco_factor(logp: torch.Tensor, n: int) -> torch.Tensor:
    """F(N, p) = N p (1-p)^(N-1) / (1 - (1-p)^N), from ℓ = log p."""
    logq = log1mexp(logp)
    top = torch.zeros_like(logq) if n == 1 else (n - 1) * logq
    return torch.exp(math.log(n) + top - torch.logsumexp(_powers(logq, n), dim=-1))


def sequence_loss(logp: torch.Tensor, loss: str, n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence losses from the response log-probabilities ℓ (with grad), and the weights F
    their CE gradients get (1 for ce). dco: value L_DCO, gradient F(N, p) ∇(-ℓ), F detached."""
    ce = -logp
    if loss == "ce":
        return ce, torch.ones_like(ce)
    with torch.no_grad():
        value = dco_value(logp.double(), n).to(logp.dtype)
        factor = dco_factor(logp.double(), n).to(logp.dtype)
    return value + factor * (ce - ce.detach()), factor


def response_logprobs(module, rows: list[list[int]], prompt_lens: list[int], pad_id: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """ℓ = Σ log p(y_t | x, y_<t) over each row's response tokens (those at index >= its prompt
    length; prompt and padding masked out), and the response token counts."""
    from ttx.train.pad import pad

    device = next(p for p in module.parameters()).device
    ids, mask = pad(rows, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    logits = module(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    targets = ids[:, 1:]
    pos = torch.arange(1, ids.shape[1], device=device).unsqueeze(0)
    starts = torch.tensor(prompt_lens, device=device).unsqueeze(1)
    keep = (mask[:, 1:] > 0) & (pos >= starts)
    token_lp = -torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return (token_lp * keep).sum(1), keep.sum(1)
