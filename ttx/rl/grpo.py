"""GRPO (Shao et al. 2024, DeepSeekMath §4.1.2): group-relative advantages and the clipped objective.

Nothing here knows where rewards come from. A stage builds Rollouts (prompt and response token ids,
the index of their group, a scalar reward); this module turns them into advantages, per-token
log-probabilities and entropies under the policy, and the micro-batch loss the shared training loop
minimises. TTRL (ttx.rl.ttrl) is one reward layer on top; any other RL recipe can be another.

The conventions are verl's, the code base TTRL's release is built on (PRIME-RL/TTRL,
verl/verl/trainer/ppo/core_algos.py: compute_grpo_outcome_advantage, compute_policy_loss,
kl_penalty, agg_loss):
  advantage   Â_i = (r_i − mean_g r) / (std_g r + ε)       std with Bessel's correction, ε = 1e-6;
              a group of one has mean 0 and std 1 (its advantage is its reward)
  ratio       ρ_t = exp(log π_θ(o_t | q, o_<t) − log π_old(o_t | q, o_<t))
  policy      ℓ_t = max(−Â ρ_t, −Â clip(ρ_t, 1 − ε_low, 1 + ε_high)),
              and where Â < 0 at most −Â c (dual-clip PPO, Ye et al. 2020, c = 3)
  KL          k3 "low_var_kl" = exp(ref − logp) − (ref − logp) − 1, clamped to [−10, 10]
  aggregate   token mean over the micro-batch ("token-mean"); the loop averages micro-batches
Log-probabilities and entropies are taken at the sampling temperature (verl divides the logits by it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class Rollout:
    """One sampled response to one prompt; `group` names the prompt (the GRPO group)."""

    group: int
    prompt_ids: list[int]
    response_ids: list[int]
    reward: float = 0.0
    advantage: float = 0.0
    old_logprobs: list[float] | None = None     # log π_old per response token (at sampling time)
    ref_logprobs: list[float] | None = None     # log π_ref per response token (KL term)
    entropies: list[float] | None = None        # H of π_old per response token
    # per-token advantages (one per response token, e.g. MRT's per-episode ones); when set the
    # loss uses them instead of broadcasting `advantage` over the response
    token_advantages: list[float] | None = None
    info: dict = field(default_factory=dict)    # what the stage wants to keep (text, answer, ...)

    def mean_entropy(self) -> float:
        """H_resp(o) = (1/T) Σ_t H_t, the response-level entropy (0 for an empty response)."""
        return sum(self.entropies) / len(self.entropies) if self.entropies else 0.0


@dataclass
class GRPOConfig:
    clip_low: float = 0.2            # ε_low
    clip_high: float = 0.2           # ε_high
    clip_c: float | None = 3.0       # dual-clip bound for negative advantages (None: off)
    kl_coef: float = 0.0             # β of the k3 KL to the reference (0: no reference pass)
    temperature: float = 1.0         # the sampling temperature (log-probs are taken at it)
    micro_batch_size: int = 2        # sequences per forward
    groups_per_update: int = 1       # prompts per optimizer update (verl's ppo_mini_batch_size)
    epochs: int = 1                  # passes over each rollout batch (verl's ppo_epochs, μ)
    eps: float = 1e-6                # ε of the advantage normalisation


def group_advantages(rewards: Sequence[float], groups: Sequence[int], eps: float = 1e-6) -> list[float]:
    """Â_i = (r_i − mean) / (std + ε) within each group (float32, as verl computes it)."""
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    scores = torch.tensor([float(r) for r in rewards], dtype=torch.float32)
    out = torch.empty_like(scores)
    for idx in members.values():
        s = scores[idx]
        if len(idx) == 1:
            mean, std = torch.tensor(0.0), torch.tensor(1.0)
        else:
            mean, std = s.mean(), s.std()
        out[idx] = (s - mean) / (std + eps)
    return out.tolist()


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_low: float = 0.2, clip_high: float = 0.2, clip_c: float | None = 3.0
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate (PPO's, per token, advantages broadcast over a response's tokens).

    logp, old_logp, mask: [B, T]; advantages: [B] or [B, T]. Returns the token-mean loss and
    clipfrac (share of tokens where the clipped term is the larger), ppo_kl (mean log π_old − log π)."""
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logp)
    mask = mask.to(logp.dtype)
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    stats = {"clipfrac": float(masked_mean((clipped > unclipped).to(logp.dtype), mask)),
             "ppo_kl": float(masked_mean(-log_ratio.detach(), mask))}
    if clip_c is not None:
        if clip_c <= 1.0:
            raise ValueError(f"the dual-clip bound must exceed 1, got {clip_c}")
        bounded = torch.minimum(per_token, -advantages * clip_c)
        per_token = torch.where(advantages < 0, bounded, per_token)
    return masked_mean(per_token, mask), stats


def low_var_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(π_θ || π_ref) per token, clamped to [−10, 10] as verl does."""
    d = ref_logp - logp
    return torch.clamp(torch.exp(d) - d - 1.0, min=-10.0, max=10.0)


def pad_left(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int):
    """Left-padded prompt+response rows, so every response ends at the last column.

    Returns (ids [B, W], attention mask [B, W], response mask [B, K]) with K the longest response."""
    from ttx.train.pad import pad

    ids, mask = pad([[*p, *r] for p, r in zip(prompts, responses)], pad_id, left=True)
    _, resp = pad(responses, 0, left=True)
    return ids, mask, resp


def sequence_logprobs(model, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                      pad_id: int, temperature: float = 1.0, entropy: bool = False):
    """log π(o_t | q, o_<t) for every response token, and optionally the entropy H_t of π there.

    Returns (logp [B, K], response mask [B, K], entropy [B, K] or None); only the last K+1 positions
    go through the output head."""
    device = next(p for p in model.parameters()).device
    ids, mask, resp = pad_left(prompts, responses, pad_id)
    ids, mask, resp = ids.to(device), mask.to(device), resp.to(device)
    k = resp.shape[1]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=k + 1)
    logits = out.logits[:, :-1].float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    targets = ids[:, ids.shape[1] - k:]
    # log p = z_target − logsumexp z (one formula on every path, so a first update sees ratio 1)
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets[..., None]).squeeze(-1) - lse
    ent = None
    if entropy:            # H = logsumexp z − Σ_v p_v z_v
        ent = lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return logp, resp, ent


def _pad_values(rows: Sequence[Sequence[float]], k: int, device) -> torch.Tensor:
    """Per-response-token values, right-aligned like pad_left's response mask."""
    out = torch.zeros((len(rows), k), dtype=torch.float32)
    for i, r in enumerate(rows):
        if r:
            out[i, k - len(r):] = torch.tensor(list(r), dtype=torch.float32)
    return out.to(device)


def _unpad(values: torch.Tensor, rollouts: Sequence[Rollout]) -> list[list[float]]:
    k = values.shape[1]
    return [values[i, k - len(r.response_ids):].tolist() if r.response_ids else []
            for i, r in enumerate(rollouts)]


@torch.no_grad()
def score_rollouts(model, batches: Sequence[Sequence[Rollout]], pad_id: int, temperature: float = 1.0,
                   *, reference: bool = False) -> None:
    """Fill old_logprobs and entropies (or, with reference=True, ref_logprobs) in eval mode.

    `batches` are the micro-batches the update will use, so a first update sees ratio 1 exactly."""
    was_training = model.training
    model.eval()
    for batch in batches:
        logp, _, ent = sequence_logprobs(model, [r.prompt_ids for r in batch],
                                         [r.response_ids for r in batch], pad_id, temperature,
                                         entropy=not reference)
        if reference:
            for r, v in zip(batch, _unpad(logp, batch)):
                r.ref_logprobs = v
        else:
            for r, v, h in zip(batch, _unpad(logp, batch), _unpad(ent, batch)):
                r.old_logprobs, r.entropies = v, h
    model.train(was_training)


def update_batches(rollouts: Sequence[Rollout], cfg: GRPOConfig) -> list[list[list[Rollout]]]:
    """Optimizer updates as lists of micro-batches: consecutive groups, groups_per_update at a time
    (verl splits a rollout batch into mini-batches in order, then into micro-batches)."""
    order: list[int] = []
    members: dict[int, list[Rollout]] = {}
    for r in rollouts:
        if r.group not in members:
            order.append(r.group)
            members[r.group] = []
        members[r.group].append(r)
    updates = []
    for start in range(0, len(order), cfg.groups_per_update):
        rows = [r for g in order[start:start + cfg.groups_per_update] for r in members[g]
                if r.response_ids]
        micro = [rows[i:i + cfg.micro_batch_size] for i in range(0, len(rows), cfg.micro_batch_size)]
        if micro:
            updates.append(micro)
    return updates


def grpo_loss(model, batch: Sequence[Rollout], cfg: GRPOConfig, pad_id: int
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """The micro-batch loss: clipped policy term (+ β·KL to the reference), token means."""
    logp, mask, _ = sequence_logprobs(model, [r.prompt_ids for r in batch], [r.response_ids for r in batch],
                                      pad_id, cfg.temperature)
    k = mask.shape[1]
    old = _pad_values([r.old_logprobs for r in batch], k, logp.device)
    adv = torch.tensor([r.advantage for r in batch], dtype=torch.float32, device=logp.device)
    if any(r.token_advantages is not None for r in batch):
        for r in batch:
            if r.token_advantages is not None and len(r.token_advantages) != len(r.response_ids):
                raise ValueError(f"{len(r.token_advantages)} token advantages for a response of "
                                 f"{len(r.response_ids)} tokens")
        adv = _pad_values([r.token_advantages if r.token_advantages is not None
                           else [r.advantage] * len(r.response_ids) for r in batch], k, logp.device)
    loss, stats = policy_loss(logp, old, adv, mask, cfg.clip_low, cfg.clip_high, cfg.clip_c)
    stats["pg_loss"] = float(loss.detach())
    if cfg.kl_coef:
        ref = _pad_values([r.ref_logprobs for r in batch], k, logp.device)
        kl = masked_mean(low_var_kl(logp, ref), mask.to(logp.dtype))
        stats["kl"] = float(kl.detach())
        loss = loss + cfg.kl_coef * kl
    return loss, stats
