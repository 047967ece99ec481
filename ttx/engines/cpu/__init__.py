"""ttx's hand-written CPU fast path, fenced in one place and switched off together.

    packed.py   nn.Linear on oneDNN-packed weights (PackedLinear, pack_linears)
    fused.py    the Llama-family forward on fused packed weights (FusedDecoder)
    kernels.py  float32 C kernels (decode attention, add + RMSNorm, SiLU * up, rotary), ctypes
    kernels.c   their source, compiled on first use
    native.py   the build cache: a private folder, hash-checked loads, compiler timeouts

One switch, `TTX_CPU_FASTPATH=0`, turns all of it off: no packing (the hf engine, reward models
and embedders), no fused forward, no C kernels; the hf engine then runs transformers' modules on
torch's ops, which is also what it does off CPU. Narrower: `--no-packed-weights`
(HFEngine(packed_weights=False)) for one engine, `TTX_NATIVE=0` for the C kernels alone.

Private APIs it relies on, tested with torch 2.13.0, transformers 5.25 and peft 0.22 (each
probed or guarded, so a release without it falls back to the plain path rather than failing):
  - torch.ops.mkldnn._reorder_linear_weight and torch.ops.mkldnn._linear_pointwise (inductor's
    CPU ops), probed once (packed._works);
  - Tensor._version (the staleness key of a packed copy);
  - Module._forward_hooks / _forward_pre_hooks and accelerate's `_hf_hook` (fused refuses a
    hooked module);
  - the class names of transformers' Llama / Mistral / Qwen2 modules and their attributes
    (q_proj ... down_proj, rotary_emb, variance_epsilon, head_dim, scaling), checked by
    FusedDecoder.build, which returns None for anything else;
  - peft.tuners.lora.layer.Linear's lora_A / lora_B / scaling / active_adapters and
    get_delta_weight (LoRA merged into the fused copies).
The engine's in-place K/V cache (ttx.engines.kv, a transformers DynamicLayer subclass) is outside
the fence: it serves every mode.
"""

from __future__ import annotations

import os

SWITCH = "TTX_CPU_FASTPATH"


def enabled() -> bool:
    """Whether the fast path may run (TTX_CPU_FASTPATH, default on)."""
    return os.environ.get(SWITCH, "1").strip() != "0"
