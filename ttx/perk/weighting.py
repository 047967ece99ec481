"""The token-weighting head of PERK's inner loss (Chen et al. 2025, §3.2).

The inner loop does not treat every context token alike: a small MLP reads the model's last hidden
state at each position and gives the token's weight in the loss,

    w_t = softplus_beta(MLP(h_t)),  beta = 3,  MLP = Linear(d, 128) -> GELU -> Linear(128, 1),
    L_inner = mean_t(w_t * CE_t)

The last linear layer starts at zero, so every token starts at weight softplus_3(0) = ln(2)/3; the
head is learned in the outer loop only (through the inner steps that are differentiated).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

SOFTPLUS_BETA = 3.0


class TokenWeighting(nn.Module):
    def __init__(self, hidden_size: int, width: int = 128):
        super().__init__()
        self.hidden = nn.Linear(hidden_size, width)
        self.out = nn.Linear(width, 1)
        nn.init.zeros_(self.out.weight)      # zero output layer: uniform weights ln2/3 at start
        nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Per-token weights (shape of h without its last dimension), all positive."""
        z = self.out(F.gelu(self.hidden(h.to(self.hidden.weight.dtype)))).squeeze(-1)
        return F.softplus(z, beta=SOFTPLUS_BETA)


def weighted_token_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None,
                        normaliser: float | None = None) -> torch.Tensor:
    """sum_t w_t CE_t over the positions that have a label, divided by `normaliser` (default: the
    number of such positions, i.e. the mean). Labels are already shifted: labels[:, t] is the token
    that logits[:, t] predicts; -100 marks positions without a loss."""
    mask = labels != -100
    ce = F.cross_entropy(logits.float().flatten(0, 1), labels.clamp(min=0).flatten(),
                         reduction="none").view(labels.shape)
    if weights is not None:
        ce = ce * weights.float()
    total = (ce * mask).sum()
    return total / (normaliser if normaliser is not None else mask.sum().clamp(min=1))
