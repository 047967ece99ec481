"""PERK's inner loop: a few gradient steps on the LoRA weights only, run functionally.

The base model never changes; the LoRA weights are passed to `torch.func.functional_call` as a
dict, so the adapted weights are plain tensors that stay in the autograd graph of the outer loop.
Each step is (Chen et al. 2025, eq. 2, with per-step per-tensor learned learning rates, LSLR)

    phi_{k+1}[j] = phi_k[j] - alpha_{k,j} * grad_j L_inner(phi_k)

With truncated unrolling (§3.3) only the last `unroll` steps are differentiated through
(create_graph=True: second-order terms, and the weighting head gets its gradient there); the
earlier steps are first-order: their gradient is detached, so d phi_{k+1} / d phi_k = I and
d phi_{k+1} / d alpha_k = -g_k still reach the LoRA initialisation and the step sizes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from ttx.perk.segments import Segments
from ttx.perk.weighting import weighted_token_loss

# loss(params, part, differentiate) -> scalar; the parts' losses sum to the full inner loss
InnerLoss = Callable[[dict[str, torch.Tensor], int, bool], torch.Tensor]


def inner_loop(loss: InnerLoss, params: dict[str, torch.Tensor], lrs: torch.Tensor, *,
               unroll: int, parts: int = 1) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Run len(lrs) inner steps from `params`; lrs[k, j] is step k's rate for tensor j.

    Returns the adapted params (in the outer graph as far as `unroll` allows) and the inner loss
    before each step."""
    steps = lrs.shape[0]
    if not 0 <= unroll <= steps:
        raise ValueError(f"unroll must be between 0 and the number of inner steps ({steps})")
    if lrs.shape[1] != len(params):
        raise ValueError(f"lrs has {lrs.shape[1]} columns for {len(params)} tensors")
    names = list(params)
    history = []
    for k in range(steps):
        differentiate = k >= steps - unroll
        if differentiate:
            current = params
        else:      # first-order step: the gradient is taken at a detached copy
            current = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        grads: list[torch.Tensor] | None = None
        total = 0.0
        for part in range(parts):
            value = loss(current, part, differentiate)
            g = torch.autograd.grad(value, [current[n] for n in names], create_graph=differentiate,
                                    allow_unused=True)
            g = [torch.zeros_like(current[n]) if x is None else x for n, x in zip(names, g)]
            grads = g if grads is None else [a + b for a, b in zip(grads, g)]
            total += float(value.detach())
        history.append(total)
        if not differentiate:
            grads = [g.detach() for g in grads]
        # eq. 2: phi_{k+1} = phi_k - alpha_k * grad L_inner(phi_k), one rate per tensor
        params = {n: params[n] - lrs[k, j].to(params[n].dtype) * grads[j]
                  for j, n in enumerate(names)}
    return params, history


def segment_loss(module, params: dict[str, torch.Tensor], segments: Segments,
                 normaliser: float, differentiate: bool) -> torch.Tensor:
    """The token-weighted LM loss of one group of segments under LoRA weights `params`."""
    # SDPA's fused kernels have no double backward; a differentiated step needs the math kernel.
    kernel = sdpa_kernel(SDPBackend.MATH) if differentiate else contextlib.nullcontext()
    with kernel:
        out = functional_call(module.model, params, args=(),
                              kwargs={"input_ids": segments.input_ids,
                                      "attention_mask": segments.attention_mask,
                                      "output_hidden_states": True, "use_cache": False})
    # The head reads detached hidden states: the inner steps cannot lower the loss by lowering
    # the weights; the head itself learns in the outer loop through the differentiated steps.
    h = out.hidden_states[-1].detach()
    with torch.set_grad_enabled(differentiate and torch.is_grad_enabled()):
        weights = module.weighting(h)
    if not differentiate:
        weights = weights.detach()
    return weighted_token_loss(out.logits, segments.labels, weights, normaliser)


def adapt(module, segments: Segments, *, unroll: int, grad_accum: int = 1,
          init: dict[str, torch.Tensor] | None = None, lrs: torch.Tensor | None = None,
          ) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Encode the context into LoRA weights: the inner loop from the (meta-learned) init."""
    groups = segments.split(grad_accum)
    normaliser = float(max(segments.loss_tokens, 1))
    init = module.lora_init() if init is None else init
    lrs = module.inner_lrs if lrs is None else lrs
    was_training = module.model.training
    module.model.train()      # LoRA dropout is part of the inner loop, as in meta-training
    try:
        return inner_loop(lambda p, part, d: segment_loss(module, p, groups[part], normaliser, d),
                          init, lrs, unroll=unroll, parts=len(groups))
    finally:
        module.model.train(was_training)


def answer_loss(module, params: dict[str, torch.Tensor], input_ids: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
    """The outer loss: cross-entropy on the answer tokens with the adapted LoRA, no context."""
    was_training = module.model.training
    module.model.eval()
    try:
        out = functional_call(module.model, params, args=(),
                              kwargs={"input_ids": input_ids, "use_cache": False})
    finally:
        module.model.train(was_training)
    return weighted_token_loss(out.logits, labels, None)
