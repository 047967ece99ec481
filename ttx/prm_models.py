"""ttx's own classes for the process reward models whose checkpoints ask for remote code.

Qwen/Qwen2.5-Math-PRM-7B/-72B (`Qwen2ForProcessRewardModel`, its folder's modeling_qwen2_rm.py
behind auto_map) and Skywork/Skywork-o1-Open-PRM-Qwen-2.5-1.5B/7B (`Qwen2ForPrmModel`, read by
SkyworkAI/skywork-o1-prm-inference's model_utils/prm_model.py) are a Qwen2 decoder with a
per-token head. ttx writes those heads itself, so their safetensors load without running a
folder's code: `NATIVE` maps the config's `architectures` name to the class, which ttx.tts.reward
loads with `from_pretrained` (their model_type is plain qwen2, so transformers' Auto factories,
keyed by config class, cannot tell them from Qwen2ForCausalLM). Each forward returns
TokenClassifierOutput logits [batch, T, labels]: 2 labels (Qwen, P(label 1) is the step's
score) or 1 (Skywork, its sigmoid).
"""

from __future__ import annotations

from torch import nn
from transformers import Qwen2Config, Qwen2Model, Qwen2PreTrainedModel
from transformers.modeling_outputs import TokenClassifierOutput


class _Qwen2PerTokenHead(Qwen2PreTrainedModel):
    """A Qwen2 decoder whose last hidden states go through `self.head_module()`."""

    config_class = Qwen2Config

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=position_ids, use_cache=False).last_hidden_state
        return TokenClassifierOutput(logits=self.head_module()(hidden))


class Qwen2ForProcessRewardModel(_Qwen2PerTokenHead):
    """Qwen2.5-Math-PRM: score = Linear(h, h), ReLU, Linear(h, 2) on every token (the model
    folder's modeling_qwen2_rm.py; vLLM's qwen2_rm.py names the same score.0 / score.2)."""

    LABELS = 2

    def __init__(self, config):
        super().__init__(config)
        self.model = Qwen2Model(config)
        self.score = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.ReLU(),
                                   nn.Linear(config.hidden_size, self.LABELS))
        self.post_init()

    def head_module(self):
        return self.score


class _ValueHead(nn.Module):
    """skywork-o1-prm-inference model_utils/prm_model.py:20-57: one Linear `summary` to a
    scalar (its dropout is off at inference)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)

    def forward(self, hidden):
        return self.summary(hidden.to(self.summary.weight.dtype))


class Qwen2ForPrmModel(_Qwen2PerTokenHead):
    """Skywork-o1-Open-PRM: the causal LM's last hidden state through `v_head.summary`
    (prm_model.py:152-162); the checkpoint's lm_head is not needed to score (vLLM's plugin,
    vllm_add_dummy_model/prm_model.py:276-279, skips it too)."""

    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config):
        super().__init__(config)
        self.model = Qwen2Model(config)
        self.v_head = _ValueHead(config.hidden_size)
        self.post_init()

    def head_module(self):
        return self.v_head


# config.json `architectures` name -> ttx's class (ttx.reward_inputs.NATIVE_PRMS: its input format)
NATIVE = {"Qwen2ForProcessRewardModel": Qwen2ForProcessRewardModel,
          "Qwen2ForPrmModel": Qwen2ForPrmModel}
