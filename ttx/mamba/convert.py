"""Turn a Llama-style checkpoint into a transformers Bamba (hybrid Mamba-2 / attention) model.

Kept layers copy their attention as it is; replaced layers get a Mamba-2 mixer initialised from
the attention weights (Mamba in the Llama, Wang et al. 2024, sec. 2; M1, Wang et al. 2025):
linear attention y_t = sum_s (q_t . k_s) v_s is the Mamba-2 SSD recurrence with A -> 0, so
C <- Q, B <- K, x <- V, out_proj <- o_proj, one Mamba head (and group) per attention head.
"""

from __future__ import annotations

import math

from ttx.errors import TtxError

CONV_INITS = ("identity", "default")


def choose_attn_layers(num_layers: int, attn_layers=None, attn_every: int | None = None,
                       attn_fraction: float | None = None) -> list[int]:
    """Indices of the layers that stay attention (exactly one way of choosing may be given);
    at least one must stay (transformers' Bamba hybrid has no all-Mamba form)."""
    layers = _choose(num_layers, attn_layers, attn_every, attn_fraction)
    if not layers:
        raise TtxError("no attention layer would stay: transformers' Bamba hybrid needs at least "
                       "one (give --attn-layers, or a larger --attn-fraction)",
                       field="--attn-fraction" if attn_layers is None else "--attn-layers")
    return layers


def _choose(num_layers: int, attn_layers, attn_every, attn_fraction) -> list[int]:
    given = [x is not None for x in (attn_layers, attn_every, attn_fraction)]
    if sum(given) > 1:
        raise TtxError("give only one of --attn-layers, --attn-every, --attn-fraction")
    if attn_layers is not None:
        if isinstance(attn_layers, str):
            try:
                layers = [int(x) for x in attn_layers.split(",") if x.strip()]
            except ValueError:
                raise TtxError(f"--attn-layers {attn_layers!r}: expected comma-separated "
                               "layer indices, e.g. 3,8,13") from None
        else:
            layers = [int(x) for x in attn_layers]
        bad = [i for i in layers if not 0 <= i < num_layers]
        if bad:
            raise TtxError(f"--attn-layers {bad}: the model has layers 0..{num_layers - 1}")
        return sorted(set(layers))
    if attn_every is not None:
        if attn_every < 1:
            raise TtxError("--attn-every must be at least 1")
        # every k-th layer, counted so that the last layer is attention (as M1 spaces them)
        return sorted(range(num_layers - 1, -1, -attn_every))
    fraction = 0.25 if attn_fraction is None else attn_fraction
    if not 0.0 <= fraction <= 1.0:
        raise TtxError(f"--attn-fraction {fraction}: expected a value in [0, 1]")
    count = round(fraction * num_layers)
    if attn_fraction is None:
        count = max(1, count)            # the default keeps at least one attention layer
    if count == 0:
        return []
    # evenly spaced, the last layer included: i_j = round((j + 1) * L / count) - 1
    return sorted({round((j + 1) * num_layers / count) - 1 for j in range(count)})


def bamba_config(teacher_config, attn_layers: list[int]):
    """A BambaConfig whose attention layers compute exactly what the Llama layers do."""
    from transformers import BambaConfig

    c = teacher_config
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    d_inner = heads * head_dim
    if d_inner % c.hidden_size:
        raise TtxError(f"heads x head_dim = {d_inner} is not a multiple of hidden_size "
                       f"{c.hidden_size}: Bamba's mamba_expand must be an integer")
    rope = dict(getattr(c, "rope_parameters", None) or {})
    rope.setdefault("rope_theta", getattr(c, "rope_theta", 10000.0))
    rope.setdefault("rope_type", "default")
    rope["partial_rotary_factor"] = 1.0          # Bamba's default is 0.5; Llama rotates all dims
    return BambaConfig(
        vocab_size=c.vocab_size, tie_word_embeddings=bool(c.tie_word_embeddings),
        hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=head_dim, hidden_act=c.hidden_act,
        initializer_range=c.initializer_range, rms_norm_eps=c.rms_norm_eps,
        max_position_embeddings=c.max_position_embeddings,
        pad_token_id=c.pad_token_id, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
        attention_bias=bool(getattr(c, "attention_bias", False)),
        mlp_bias=bool(getattr(c, "mlp_bias", False)),
        attn_layer_indices=list(attn_layers),
        # Mamba heads mirror attention heads: one head and one B/C group per query head, d_state = d_head
        mamba_n_heads=heads, mamba_d_head=head_dim, mamba_n_groups=heads, mamba_d_state=head_dim,
        mamba_expand=d_inner // c.hidden_size, mamba_d_conv=4, mamba_conv_bias=True,
        mamba_proj_bias=False, rope_parameters=rope,
    )


def _expand_kv(weight, num_kv_heads: int, num_heads: int):
    """Repeat each KV head's rows for the query heads that share it (as `repeat_kv` does)."""
    rows, cols = weight.shape
    per_head = weight.view(num_kv_heads, rows // num_kv_heads, cols)
    return per_head.repeat_interleave(num_heads // num_kv_heads, dim=0).reshape(-1, cols)


def init_mixer_from_attention(mixer, attn_sd: dict, config, conv_init: str, generator) -> None:
    """Fill a BambaMixer from one attention layer's q/k/v/o weights (in place).

    in_proj rows are [z | x | B | C | dt]: x <- V, B <- K, C <- Q (expanded per query head),
    out_proj <- o_proj; z, dt rows and the gated norm keep their defaults.
    """
    import torch

    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    d_inner = mixer.intermediate_size
    d_bc = mixer.n_groups * mixer.ssm_state_size
    with torch.no_grad():
        w = mixer.in_proj.weight
        w[d_inner:2 * d_inner] = _expand_kv(attn_sd["v_proj.weight"], kv_heads, heads)
        w[2 * d_inner:2 * d_inner + d_bc] = _expand_kv(attn_sd["k_proj.weight"], kv_heads, heads)
        w[2 * d_inner + d_bc:2 * d_inner + 2 * d_bc] = attn_sd["q_proj.weight"]
        mixer.out_proj.weight.copy_(attn_sd["o_proj.weight"])
        n = mixer.num_heads
        # A = -exp(A_log), A_log = log(U(1, 16)) per head (Mamba-2 init)
        mixer.A_log.copy_(torch.log(torch.empty(n).uniform_(1, 16, generator=generator)))
        mixer.D.fill_(1.0)
        # dt ~ exp(U(log 1e-3, log 1e-1)) clamped at 1e-4; dt_bias = softplus^-1(dt) = dt + log(1 - e^-dt)
        log_dt = torch.empty(n).uniform_(math.log(1e-3), math.log(1e-1), generator=generator)
        dt = torch.exp(log_dt).clamp(min=1e-4)
        mixer.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        if conv_init == "identity":
            # the short conv starts as a pass-through: only the last tap (the current token) is 1
            mixer.conv1d.weight.zero_()
            mixer.conv1d.weight[:, 0, -1] = 1.0
            if mixer.conv1d.bias is not None:
                mixer.conv1d.bias.zero_()


# Llama name (after "model.layers.{i}.") -> Bamba name; attention and MLP layouts are the same.
_LAYER_RENAMES = {"mlp.": "feed_forward.", "post_attention_layernorm.": "pre_ff_layernorm.",
                  "input_layernorm.": "input_layernorm.", "self_attn.": "self_attn."}


def convert(teacher, attn_layers: list[int], conv_init: str = "identity", seed: int = 0):
    """Build a BambaForCausalLM from a loaded Llama-style model; returns (student, report)."""
    import torch
    from transformers import BambaForCausalLM

    if conv_init not in CONV_INITS:
        raise TtxError(f"conv init {conv_init!r}: choose one of {', '.join(CONV_INITS)}")
    sd = teacher.state_dict()
    needed = ["model.embed_tokens.weight", "model.norm.weight"] + [
        f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(teacher.config.num_hidden_layers)
        for p in "qkvo"]
    missing = [k for k in needed if k not in sd]
    if missing:
        arch = ", ".join(getattr(teacher.config, "architectures", None) or [type(teacher).__name__])
        raise TtxError(f"checkpoint of architecture {arch} is not Llama-style "
                       f"(no {missing[0]})", field="architectures")
    config = bamba_config(teacher.config, attn_layers)
    torch.manual_seed(seed)                       # the default-initialised parts (z, dt rows, conv)
    generator = torch.Generator().manual_seed(seed)
    dtype = next(teacher.parameters()).dtype
    student = BambaForCausalLM(config).to(dtype)
    student.generation_config = teacher.generation_config
    target = student.state_dict()
    new: dict = {"model.embed_tokens.weight": sd["model.embed_tokens.weight"],
                 "model.final_layernorm.weight": sd["model.norm.weight"]}
    if "lm_head.weight" in target and not config.tie_word_embeddings:
        new["lm_head.weight"] = sd["lm_head.weight"]
    for key, value in sd.items():
        if not key.startswith("model.layers."):
            continue
        _, _, index, rest = key.split(".", 3)
        if rest.startswith("self_attn.") and int(index) not in attn_layers:
            continue                               # becomes a Mamba mixer below
        for old, renamed in _LAYER_RENAMES.items():
            if rest.startswith(old):
                new[f"model.layers.{index}.{renamed}{rest[len(old):]}"] = value
                break
        else:
            if "rotary_emb" not in rest:
                raise TtxError(f"unexpected weight {key} for a Llama-style model")
    unknown = sorted(set(new) - set(target))
    if unknown:
        raise TtxError(f"weight {unknown[0]} has no place in the Bamba model")
    student.load_state_dict(new, strict=False)
    for i, layer in enumerate(student.model.layers):
        if i in attn_layers:
            continue
        prefix = f"model.layers.{i}.self_attn."
        attn_sd = {k[len(prefix):]: v.to(dtype) for k, v in sd.items() if k.startswith(prefix)}
        init_mixer_from_attention(layer.mamba, attn_sd, config, conv_init, generator)
    student.eval()
    mamba_layers = [i for i in range(config.num_hidden_layers) if i not in attn_layers]
    return student, {"attn_layers": list(attn_layers), "mamba_layers": mamba_layers,
                     "conv_init": conv_init, "seed": seed}
