"""Per-token statistics of the policy on sampled responses, for label-free rewards: the entropy
H_t = logsumexp z − Σ_v p_v z_v and Intuitor's self-certainty logsumexp z − (1/V) Σ_v z_v
(KL(U ‖ p) + log V; sunblaze-ucb/Intuitor verl-intuitor/verl/utils/torch_functional.py:151), on
logits divided by the sampling temperature as ttx.rl.grpo takes them."""

from __future__ import annotations

from collections.abc import Sequence


def token_stats(model, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int,
                temperature: float = 1.0, micro_batch_size: int = 2) -> list[dict[str, list[float]]]:
    import torch

    from ttx.rl.grpo import pad_left

    device = next(p for p in model.parameters()).device
    out: list[dict[str, list[float]]] = []
    with torch.no_grad():
        for i in range(0, len(prompts), micro_batch_size):
            p, r = prompts[i:i + micro_batch_size], responses[i:i + micro_batch_size]
            if not any(r):
                out += [{"entropy": [], "self_certainty": []} for _ in r]
                continue
            ids, mask, resp = pad_left(p, r, pad_id)
            ids, mask = ids.to(device), mask.to(device)
            k = resp.shape[1]
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            z = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                      logits_to_keep=k + 1).logits[:, :-1].float()
            if temperature > 0 and temperature != 1.0:
                z = z / temperature
            lse = torch.logsumexp(z, dim=-1)
            ent = lse - (torch.softmax(z, dim=-1) * z).sum(-1)
            cert = lse - z.mean(-1)
            for j, rj in enumerate(r):
                n = len(rj)
                out.append({"entropy": ent[j, k - n:].tolist() if n else [],
                            "self_certainty": cert[j, k - n:].tolist() if n else []})
    return out
