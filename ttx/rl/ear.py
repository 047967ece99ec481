"""EAR: entropy-based advantage reshaping (Liu et al. 2025, ETTRL, arXiv 2508.11356, §3.2).

Early in TTRL the pseudo-labels are often wrong, and the few responses that agree with a weak
majority get large group-normalised advantages, which pushes the policy into over-confidence.
ETTRL reshapes the GRPO advantage with each response's entropy relative to its group:

    H_resp(o_i) = (1/T_i) Σ_t H_t(o_i)                              response entropy (mean token entropy)
    Y_i = 1 + (avg_g H_resp − H_resp(o_i)) / avg_g H_resp           relative-entropy factor
    Â^res_{i,t} = Y_i · Â_{i,t}                                     Adv-Res, the paper's main variant

so confident (low-entropy) responses weigh more and uncertain ones less, with no scale to tune
across models. The simpler variant clips instead:

    Â^clip_{i,t} = clip(Â_{i,t}, −β, β),  β = 2                     Adv-Clip

Both act in place on Rollouts whose advantages and entropies are already filled (ttx.rl.grpo).
"""

from __future__ import annotations

from collections.abc import Sequence

from ttx.rl.grpo import Rollout


def reshape_factors(mean_entropies: Sequence[float], groups: Sequence[int]) -> list[float]:
    """Y_i per response; a group whose mean entropy is 0 keeps its advantages (Y = 1)."""
    members: dict[int, list[float]] = {}
    for h, g in zip(mean_entropies, groups):
        members.setdefault(g, []).append(h)
    avg = {g: sum(hs) / len(hs) for g, hs in members.items()}
    return [1.0 + (avg[g] - h) / avg[g] if avg[g] > 0 else 1.0 for h, g in zip(mean_entropies, groups)]


def adv_reshape(rollouts: Sequence[Rollout]) -> None:
    """Adv-Res: Â ← Y_i Â."""
    factors = reshape_factors([r.mean_entropy() for r in rollouts], [r.group for r in rollouts])
    for r, y in zip(rollouts, factors):
        r.advantage *= y
        r.info["ear_factor"] = y


def adv_clip(rollouts: Sequence[Rollout], beta: float = 2.0) -> None:
    """Adv-Clip: Â ← clip(Â, −β, β)."""
    for r in rollouts:
        r.advantage = max(-beta, min(beta, r.advantage))
