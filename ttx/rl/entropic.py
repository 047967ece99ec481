"""TTT-Discover's entropic advantages (Yuksekgonul et al. 2026, "Learning to Discover at Test Time").

Within a group of k rewards r_1..r_k the policy is pushed toward the tilted distribution
q_β(i) ∝ exp(β r_i); each sample's advantage is its leave-one-out weight minus one,

    e_i = exp(β (r_i − max_j r_j)),   Z_i = (Σ_j e_j − e_i) / (k − 1),   A_i = e_i / (Z_i + 1e-12) − 1

and β is set per group so that KL(q_β || uniform) = Σ_i q_i (log q_i + log k) = ln 2: doubling from
β = 1 until the KL reaches ln 2 (at most to 1e6, "best effort" past it), then 60 bisection steps on
[0, β_hi], keeping the upper end. This is the reference's `entropic_adaptive_beta`
(test-time-training/discover, tinker_cookbook/rl/train.py:73-125, float32 as there). A group whose
rewards are all equal carries no signal and is dropped before (reference: data_processing.py:196
`remove_constant_reward_groups`, enabled by recipes/ttt/train.py:251).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

DELTA = math.log(2)      # the KL target (train.py:74)
BETA_MAX = 1e6           # train.py:75
ITERS = 60               # bisection steps (train.py:76)
EPS = 1e-12              # train.py:77


def kl_to_uniform(rewards: torch.Tensor, beta: float) -> float:
    """KL(q_β || uniform) for q_β ∝ exp(β r) over the group's samples."""
    logits = rewards.new_tensor(beta) * (rewards - rewards.max())     # β in float32, as train.py:89
    logq = logits - torch.logsumexp(logits, dim=0)
    return float((logq.exp() * (logq + math.log(rewards.shape[0]))).sum())


def solve_beta(rewards: Sequence[float]) -> float:
    """β with KL(q_β || uniform) = ln 2 (0 for a group of one)."""
    r = torch.tensor([float(x) for x in rewards], dtype=torch.float32)
    if r.shape[0] < 2:
        return 0.0
    lo, hi = 0.0, 1.0
    if kl_to_uniform(r, hi) < DELTA:
        while hi < BETA_MAX and kl_to_uniform(r, hi) < DELTA:
            hi *= 2.0
        if kl_to_uniform(r, hi) < DELTA:
            return _f32(hi)               # the KL never reaches ln 2 (nearly constant rewards)
    for _ in range(ITERS):
        mid = 0.5 * (lo + hi)
        if kl_to_uniform(r, mid) < DELTA:
            lo = mid
        else:
            hi = mid
    return _f32(hi)


def _f32(x: float) -> float:
    """β as the reference keeps it: a float32 tensor (train.py:105, :114)."""
    return float(torch.tensor(x, dtype=torch.float32))


def entropic_advantages(rewards: Sequence[float], beta: float) -> list[float]:
    """A_i = e_i / (Z_i + ε) − 1 with the leave-one-out normaliser Z_i."""
    r = torch.tensor([float(x) for x in rewards], dtype=torch.float32)
    e = torch.exp(torch.tensor(beta, dtype=torch.float32) * (r - r.max()))
    k = r.shape[0]
    z = e if k == 1 else (e.sum() - e) / (k - 1)
    return (e / (z + EPS) - 1.0).tolist()


def is_constant(rewards: Sequence[float]) -> bool:
    return all(x == rewards[0] for x in rewards)


def group_entropic(rewards: Sequence[float], groups: Sequence[int], beta: float | None = None
                   ) -> tuple[list[float | None], dict[int, float]]:
    """Per-sample advantages (None for the samples of a dropped, constant-reward group) and β per
    kept group: solved for (beta None) or the fixed `beta`."""
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out: list[float | None] = [None] * len(rewards)
    betas: dict[int, float] = {}
    for g, idx in members.items():
        rs = [float(rewards[i]) for i in idx]
        if is_constant(rs):
            continue
        betas[g] = solve_beta(rs) if beta is None else _f32(beta)
        for i, a in zip(idx, entropic_advantages(rs, betas[g])):
            out[i] = a
    return out, betas
