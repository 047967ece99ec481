"""The forward pass of Llama-family decoders (Llama, Mistral, Qwen2) on fused, packed weights.

The hf engine's model calls spend about a sixth of a float32 decode step in transformers'
per-module Python (hooks, keyword plumbing, mask building, output classes) beside tensor work,
and run seven matrices per layer. This forward runs the same arithmetic as transformers'
modules in four matrices per layer, each a oneDNN-packed copy (ttx.engines.cpu.packed): q, k and v
as one [q + k + v, hidden] matrix, gate and up as one [2 * intermediate, hidden] matrix, then
o and down. Its logits are transformers' (tests/test_fused.py, float32: within 1e-5, except the
default model's decode steps within 2e-4, where decode attention's two matmuls round apart from
sdpa's kernel).

It serves only models whose every part is the plain one it reimplements: the exact classes of
the family, plain linear layers or peft's plain LoRA on them (its update B A x scaling merged
into the fused copy, as peft's own merge computes it), SiLU, no sliding window, no hooks.
Anything else (DoRA and the other LoRA variants, In-Place TTT's layers, Mamba hybrids,
accelerate's offloading hooks) keeps transformers' forward (`FusedDecoder.build` returns None).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ttx.engines.cpu import kernels
from ttx.engines.cpu.packed import PackedLinear, available, pack, packed_linear
from ttx.engines.kv import GrowingLayer

# the family's classes, by module name: (causal LM, decoder layer, attention, MLP, RMSNorm)
_FAMILY = {
    "llama": ("LlamaForCausalLM", "LlamaDecoderLayer", "LlamaAttention", "LlamaMLP",
              "LlamaRMSNorm"),
    "mistral": ("MistralForCausalLM", "MistralDecoderLayer", "MistralAttention", "MistralMLP",
                "MistralRMSNorm"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2DecoderLayer", "Qwen2Attention", "Qwen2MLP",
              "Qwen2RMSNorm"),
}


def _is(module, name: str) -> bool:
    return type(module).__name__ == name and type(module).__module__.startswith("transformers.")


def _plain(module: nn.Module) -> bool:
    """No hooks that a module call would run and this forward would skip."""
    return not (module._forward_hooks or module._forward_pre_hooks
                or getattr(module, "_hf_hook", None) is not None)


def _linear(module) -> bool:
    if _is_lora(module):
        return _plain_lora(module)
    return type(module) in (nn.Linear, PackedLinear) and _plain(module)


def _is_lora(module) -> bool:
    return type(module).__name__ == "Linear" and type(module).__module__ == "peft.tuners.lora.layer"


def _plain_lora(module) -> bool:
    """peft's LoRA on a plain linear: y = W x + sum over active adapters of B A x * scaling."""
    active = [a for a in module.active_adapters if a in module.lora_A]
    return (_linear(module.base_layer) and _plain(module) and not module.fan_in_fan_out
            and not any(a in module.lora_variant or getattr(module, "lora_bias", {}).get(a)
                        for a in active)
            and all(_plain(module.lora_A[a]) and _plain(module.lora_B[a]) for a in active))


def _weight(module) -> torch.Tensor:
    """The linear map's effective weight: a LoRA layer's with its active adapters merged."""
    if not _is_lora(module):
        return module.weight.detach()
    w = module.base_layer.weight.detach()
    if module.disable_adapters or module.merged:     # merged: the base weight holds them already
        return w
    for a in module.active_adapters:
        if a in module.lora_A:
            w = w + module.get_delta_weight(a).detach()
    return w


def _bias(module):
    module = module.base_layer if _is_lora(module) else module
    return None if module.bias is None else module.bias.detach()


def unwrap(model):
    """The transformers model under a peft wrapper (PeftModel -> LoraModel -> the model)."""
    if type(model).__module__.startswith("peft."):
        inner = getattr(getattr(model, "base_model", None), "model", None)
        return inner if inner is not None else model
    return model


def supported(model) -> bool:
    """Whether `model` is a plain Llama-family decoder this forward computes exactly."""
    if type(model).__module__.startswith("peft.") and (
            type(model.base_model).__name__ != "LoraModel" or not _plain(model)
            or not _plain(model.base_model)):
        return False
    params = list(model.parameters())
    model = unwrap(model)
    config = getattr(model, "config", None)
    names = _FAMILY.get(getattr(config, "model_type", None))
    if names is None or not _is(model, names[0]) or model.training:
        return False
    w = model.lm_head.weight
    if not available(w.device, w.dtype) or any(p.is_inference() for p in params):
        return False                    # (inference tensors keep no version to re-pack on)
    if getattr(config, "hidden_act", None) != "silu" or getattr(config, "sliding_window", None) \
            and getattr(config, "use_sliding_window", True):
        return False
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or []):
        return False
    inner = model.model
    if type(inner.embed_tokens) is not nn.Embedding or inner.embed_tokens.max_norm is not None:
        return False
    parts = [model, inner, inner.embed_tokens, inner.norm, inner.rotary_emb]
    if not _is(inner.norm, names[4]) or not _linear(model.lm_head) or _bias(model.lm_head) is not None:
        return False
    if len(inner.layers) != config.num_hidden_layers:
        return False
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        if not (_is(layer, names[1]) and _is(attn, names[2]) and _is(mlp, names[3])
                and _is(layer.input_layernorm, names[4])
                and _is(layer.post_attention_layernorm, names[4])):
            return False
        linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
                   mlp.gate_proj, mlp.up_proj, mlp.down_proj]
        if not all(_linear(m) for m in linears) \
                or type(mlp.act_fn).__name__ not in ("SiLU", "SiLUActivation"):
            return False
        weights = [_weight(m) for m in linears]          # a LoRA layer's merged once
        if any(x.dtype != w.dtype or x.device != w.device for x in weights):
            return False
        # fused matrices need all of their parts with a bias or none
        if len({_bias(m) is None for m in linears[:3]}) > 1 \
                or len({_bias(m) is None for m in linears[4:6]}) > 1:
            return False
        parts += [layer, attn, mlp, layer.input_layernorm, layer.post_attention_layernorm]
    return all(_plain(m) for m in parts)


def _cat(tensors):
    return None if tensors[0] is None else torch.cat(tensors)


class _Layer:
    """One decoder layer's packed matrices and norms."""

    def __init__(self, layer):
        attn, mlp = layer.self_attn, layer.mlp
        gate = _weight(mlp.gate_proj)
        self.qkv = pack(_cat([_weight(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj)]))
        self.qkv_bias = _cat([_bias(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj)])
        self.o = pack(_weight(attn.o_proj))
        self.o_bias = _bias(attn.o_proj)
        self.gate_up = pack(_cat([gate, _weight(mlp.up_proj)]))
        self.gate_up_bias = _cat([_bias(mlp.gate_proj), _bias(mlp.up_proj)])
        self.down = pack(_weight(mlp.down_proj))
        self.down_bias = _bias(mlp.down_proj)
        self.norm1 = (layer.input_layernorm.weight.detach(), layer.input_layernorm.variance_epsilon)
        self.norm2 = (layer.post_attention_layernorm.weight.detach(),
                      layer.post_attention_layernorm.variance_epsilon)
        self.intermediate = gate.shape[0]


def _rms_norm(x: torch.Tensor, norm) -> torch.Tensor:
    """transformers' LlamaRMSNorm: the statistics in float32, the weight in the input's dtype."""
    weight, eps = norm
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


class FusedDecoder:
    """`forward(input_ids, mask, positions, cache)`: the last position's logits (float32), as
    `model(..., logits_to_keep=1).logits[:, -1].float()` would give, writing the cache the same."""

    def __init__(self, model):
        self.model = model                  # as given (a peft wrapper's parameters include LoRA's)
        self.base = unwrap(model)
        config = self.base.config
        attn = self.base.model.layers[0].self_attn
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self._key = None
        self.refresh()

    @classmethod
    def build(cls, model) -> "FusedDecoder | None":
        from ttx.engines.cpu import enabled

        return cls(model) if enabled() and supported(model) else None

    def refresh(self) -> None:
        """Re-pack when any weight changed since the last packing (another tensor, or an
        in-place update)."""
        key = (tuple((p.data_ptr(), p._version) for p in self.model.parameters()),
               tuple((tuple(m.active_adapters), m.disable_adapters, m.merged)
                     for m in self.base.modules() if _is_lora(m)))
        if key == self._key:
            return
        inner = self.base.model
        self.layers = [_Layer(layer) for layer in inner.layers]
        self.embed = inner.embed_tokens.weight.detach()
        self.norm = (inner.norm.weight.detach(), inner.norm.variance_epsilon)
        self.head = pack(_weight(self.base.lm_head))
        # float32 runs ttx's C kernels where they build (ttx.engines.cpu.kernels), torch's ops
        # otherwise; decided with the weights, whose dtype a later call may find changed
        self.native = self.embed.dtype == torch.float32 and kernels.available()
        self.native_attention = self.native and kernels.serves_attention(
            self.head_dim, self.heads // self.kv_heads)
        self._key = key

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                cache, shared: tuple | None = None) -> torch.Tensor:
        """input_ids, positions [rows, q]; mask [rows, cached + q] (1: a real token); `cache` a
        DynamicCache whose layers take the new K/V (ttx.engines.kv); `shared` (source rows,
        columns), where rows hold equal K/V in their leading columns, for the decode attention
        kernel to read them from one row (ttx.engines.cpu.kernels.decode_attention)."""
        rows, q = input_ids.shape
        h = F.embedding(input_ids, self.embed)
        heads, kv, d = self.heads, self.kv_heads, self.head_dim
        half = d // 2
        cos, sin = self.base.model.rotary_emb(h, position_ids=positions)
        # rotary: x cos + rotate_half(x) sin, rotate_half(x) = (-x2, x1); the sign moves onto sin
        # (exact), so each layer swaps its halves without negating them
        sin = torch.cat((-sin[..., :half], sin[..., half:]), -1)
        attend = _attention_mask(mask, q)
        bias = real = None
        if q == 1 and self.native_attention:
            real = attend[:, 0, 0]
        elif q == 1 and h.dtype == torch.float32:   # bfloat16 keeps sdpa's float32 softmax
            bias = torch.zeros(attend.shape, device=h.device).masked_fill_(~attend, -math.inf)
        delta = None                                # the last layer's output, not yet added to h
        for i, layer in enumerate(self.layers):
            x = self._add_norm(h, delta, layer.norm1)
            qkv = packed_linear(x, layer.qkv, layer.qkv_bias).view(rows, q, heads + 2 * kv, d)
            if self.native:
                kernels.rotary_(qkv, heads + kv, cos, sin)
                qk = qkv
            else:
                qk = qkv[:, :, :heads + kv]
                qk = torch.cat((qk[..., half:], qk[..., :half]), dim=-1).mul_(sin[:, :, None]) \
                    .add_(qk * cos[:, :, None])
            query = qk[:, :, :heads].transpose(1, 2)
            k_new = qk[:, :, heads:heads + kv].transpose(1, 2)
            v_new = qkv[:, :, heads + kv:].transpose(1, 2)
            if real is not None:
                layer_cache = cache.layers[i]
                if isinstance(layer_cache, GrowingLayer):    # the kernel writes the new K/V
                    keys, values = layer_cache.reserve(k_new, v_new)
                    new = (k_new[:, :, 0], v_new[:, :, 0])
                else:
                    (keys, values), new = cache.update(k_new, v_new, i), None
                out = kernels.decode_attention(query[:, :, 0], keys, values, real,
                                               self.scaling, new, shared)
            else:
                keys, values = cache.update(k_new, v_new, i)
                out = self._attend(query, keys, values, attend, bias, rows, q)
            x = self._add_norm(h, packed_linear(out.reshape(rows, q, heads * d), layer.o,
                                                layer.o_bias), layer.norm2)
            gate_up = packed_linear(x, layer.gate_up, layer.gate_up_bias)
            if self.native:
                y = kernels.silu_mul(gate_up)
            else:
                gate, up = gate_up.split(layer.intermediate, dim=-1)
                y = F.silu(gate).mul_(up)
            delta = packed_linear(y, layer.down, layer.down_bias)
        h.add_(delta)
        h = _rms_norm(h[:, -1], self.norm)
        return packed_linear(h, self.head).float()

    def _add_norm(self, h, delta, norm):
        """h += delta (in place), then the layer's RMSNorm of h."""
        if self.native:
            return kernels.add_rms_norm(h, delta, *norm)
        if delta is not None:
            h.add_(delta)
        return _rms_norm(h, norm)

    def _attend(self, query, keys, values, attend, bias, rows, q):
        """torch's attention: prefill, bfloat16, and float32 decode without the C kernel."""
        heads, kv, d = self.heads, self.kv_heads, self.head_dim
        group = heads // kv
        if bias is not None:    # float32 decode: two matmuls beat sdpa's kernel (4%)
            scores = torch.matmul(query.reshape(rows, kv, group, d), keys.transpose(-1, -2))
            return torch.matmul(scores.mul_(self.scaling).add_(bias).softmax(-1), values)
        if q == 1:          # the query heads of a K/V head as its queries (transformers' pack_gqa)
            return F.scaled_dot_product_attention(
                query.reshape(rows, kv, group, d), keys, values, attn_mask=attend,
                scale=self.scaling)
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=attend,
                                             scale=self.scaling, enable_gqa=group > 1)
        return out.transpose(1, 2)


def _attention_mask(mask: torch.Tensor, q: int) -> torch.Tensor:
    """[rows, 1, q, columns] booleans: query i (at column columns - q + i) sees column j when j is
    a real token at or before it (a padding query sees nothing: torch's sdpa gives it zeros)."""
    real = mask.bool()[:, None, None, :]
    if q == 1:
        return real
    columns = mask.shape[1]
    at = torch.arange(columns - q, columns, device=mask.device)[:, None]
    return real & (torch.arange(columns, device=mask.device)[None, :] <= at)
