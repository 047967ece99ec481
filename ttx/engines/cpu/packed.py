"""nn.Linear through oneDNN with its weight packed once, for inference on CPU.

`F.linear` on CPU runs MKL's sgemm, which re-lays out the weight on every call; at decode shapes
(32 rows x 576 x 1536, the 49152-wide head) that makes it 1.5-2.5x slower in float32 (1.3-1.9x
in bfloat16) than oneDNN's matmul on a weight packed once into its blocked layout
(bench/tts_engine.py measures both). The packed copy is rebuilt when the weight changes (another
tensor, or an in-place update: its version counter moves), so a model trained between engine
calls stays right; with autograd recording, the plain `F.linear` runs. The cost is memory: the
packed copy sits beside the weight (0.5 GB more for the default 135M model in float32), which
`--no-packed-weights` (HFEngine(packed_weights=False)) spares.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

DTYPES = (torch.float32, torch.bfloat16)


def available(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether this build and device can run packed linears of this dtype."""
    return torch.device(device).type == "cpu" and dtype in DTYPES and _works(dtype)


def pack(weight: torch.Tensor, rows: int = 32) -> torch.Tensor:
    """oneDNN's blocked copy of an [out, in] weight; `rows` only picks the layout (any row count
    is right with it)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)


def packed_linear(x: torch.Tensor, packed: torch.Tensor,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ W^T (+ bias) on a weight from `pack`."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@functools.cache
def _works(dtype: torch.dtype) -> bool:
    """The packing ops are torch's private ones (inductor's CPU path): probe them once, so a
    torch without them (or without oneDNN) keeps the plain F.linear."""
    try:
        with torch.inference_mode():
            w, x = torch.eye(4, dtype=dtype), torch.arange(8, dtype=dtype).view(2, 4)
            y = packed_linear(x, pack(w, 2))
        return torch.equal(y, x)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


class PackedLinear(nn.Linear):
    """A plain nn.Linear whose no-grad forward multiplies by a oneDNN-packed copy of its weight.

    Made by `pack_linears`, which swaps the class of existing modules (parameters, hooks and
    peft's references stay as they are); `unpack_linears` swaps it back."""

    _packed: torch.Tensor | None = None
    _packed_key: tuple | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (x.dtype != w.dtype or x.device.type != "cpu" or w.is_inference()
                or (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))):
            return F.linear(x, w, self.bias)
        key = (w.data_ptr(), w._version, w.dtype, tuple(w.shape))
        if key != self._packed_key:
            self._packed, self._packed_key = pack(w.detach()), key
        return packed_linear(x, self._packed, self.bias)


def pack_linears(model: nn.Module) -> int:
    """Swap every plain nn.Linear of `model` (not subclasses: bitsandbytes' 4-bit layers stay)
    whose weight is float32 or bfloat16 on CPU to PackedLinear; returns how many (none with the
    fast path off: ttx.engines.cpu.enabled)."""
    from ttx.engines.cpu import enabled

    if not enabled():
        return 0
    count = 0
    for module in model.modules():
        w = module.weight if type(module) is nn.Linear else None
        if w is not None and not w.is_inference() and available(w.device, w.dtype):
            module.__class__ = PackedLinear
            count += 1
    return count


def unpack_linears(model: nn.Module) -> int:
    """Undo `pack_linears`: plain nn.Linear modules again, packed copies freed."""
    count = 0
    for module in model.modules():
        if type(module) is PackedLinear:
            module.__class__ = nn.Linear
            for name in ("_packed", "_packed_key"):
                module.__dict__.pop(name, None)
            count += 1
    return count
