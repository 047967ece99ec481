"""In-Place TTT model classes for the gated-MLP families transformers ships, registered with Auto*.

Importing this module registers `inplace_ttt_<family>` configs and models, so
`AutoModelForCausalLM.from_pretrained(converted_dir)` works without remote code once ttx has
loaded it (ttx.models.load_model imports it). Each class is the family's own causal LM with the
MLPs of `config.ttt_layers` replaced by InPlaceTTTMLP: the checkpoint keys are the original ones
plus `mlp.ttt_conv.weight` and `mlp.ttt_target.weight` per converted layer.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from ttx.inplace_ttt.cache import fast_weight_layer
from ttx.inplace_ttt.layer import InPlaceTTTMLP, TTTContext


class InPlaceTTTConfigMixin:
    """The TTT settings a converted checkpoint records (defaults from the paper)."""

    ttt_layers: list[int] | None = None    # converted decoder layers (None: every 6th from 0)
    ttt_chunk: int = 4096                  # C, tokens per fast-weight update
    ttt_lr: float = 3.0                    # eta
    ttt_input: str = "hidden"              # X of the target: MLP input or token embeddings
    ttt_conv_kernel: int = 5
    ttt_base_model_type: str | None = None

    def resolved_ttt_layers(self) -> list[int]:
        if self.ttt_layers is None:
            return list(range(0, self.num_hidden_layers, 6))
        return [int(i) for i in self.ttt_layers]


class InPlaceTTTModelMixin:
    """Forward: hand each TTT MLP the mask, the cache layer and (optionally) the embeddings."""

    def _convert_mlps(self) -> None:
        cfg = self.config
        for i in cfg.resolved_ttt_layers():
            layer = self.model.layers[i]
            layer.mlp = InPlaceTTTMLP(layer.mlp, cfg.hidden_size, cfg.ttt_chunk, cfg.ttt_lr,
                                      cfg.ttt_conv_kernel, cfg.ttt_input)

    def ttt_mlps(self) -> dict[int, InPlaceTTTMLP]:
        return {i: self.model.layers[i].mlp for i in self.config.resolved_ttt_layers()}

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0,
                ttt_segment_ids=None, **kwargs):
        """`ttt_segment_ids` (B, T), non-decreasing per row: fast weights restart at each new id."""
        if cache is None:
            cache = kwargs.pop("past_key_values", None)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        valid = None
        if attention_mask is not None and attention_mask.dim() == 2:
            valid = attention_mask[:, -length:].bool()
        embeddings = None
        if self.config.ttt_input == "embedding":
            if inputs_embeds is None:
                inputs_embeds = self.model.embed_tokens(input_ids)
                input_ids = None
            embeddings = inputs_embeds
        mlps = self.ttt_mlps()
        for i, mlp in mlps.items():
            layer = fast_weight_layer(cache, i) if cache is not None else None
            mlp.ttt_context = TTTContext(valid=valid, cache_layer=layer, embeddings=embeddings,
                                         segments=ttt_segment_ids)
        try:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                                   position_ids=position_ids, cache=cache,
                                   inputs_embeds=inputs_embeds, labels=labels,
                                   use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs)
        finally:
            for mlp in mlps.values():
                mlp.ttt_context = None


# family model_type -> (its config class, its causal LM class)
FAMILIES = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
            "qwen3": (Qwen3Config, Qwen3ForCausalLM), "mistral": (MistralConfig, MistralForCausalLM)}
CONFIGS: dict[str, type] = {}       # family -> InPlaceTTT<Family>Config
MODELS: dict[str, type] = {}        # family -> InPlaceTTT<Family>ForCausalLM


def _make_classes(family: str, config_base: type, model_base: type) -> tuple[type, type]:
    stem = model_base.__name__.removesuffix("ForCausalLM")
    annotations = {"ttt_layers": list[int] | None, "ttt_chunk": int, "ttt_lr": float,
                   "ttt_input": str, "ttt_conv_kernel": int, "ttt_base_model_type": str | None}
    fields = {k: getattr(InPlaceTTTConfigMixin, k) for k in annotations}
    config_cls = strict(type(f"InPlaceTTT{stem}Config", (InPlaceTTTConfigMixin, config_base),
                             {"model_type": f"inplace_ttt_{family}", "__annotations__": annotations,
                              "__module__": __name__, **fields}))

    def __init__(self, config):
        model_base.__init__(self, config)
        self._convert_mlps()
        self.post_init()

    model_cls = type(f"InPlaceTTT{stem}ForCausalLM", (InPlaceTTTModelMixin, model_base),
                     {"config_class": config_cls, "__init__": __init__, "__module__": __name__})
    return config_cls, model_cls


for _family, (_config_base, _model_base) in FAMILIES.items():
    CONFIGS[_family], MODELS[_family] = _make_classes(_family, _config_base, _model_base)
    globals()[CONFIGS[_family].__name__] = CONFIGS[_family]
    globals()[MODELS[_family].__name__] = MODELS[_family]
    AutoConfig.register(CONFIGS[_family].model_type, CONFIGS[_family], exist_ok=True)
    AutoModelForCausalLM.register(CONFIGS[_family], MODELS[_family], exist_ok=True)
