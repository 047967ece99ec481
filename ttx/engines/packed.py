"""nn.Linear through oneDNN with its weight packed once, for inference on CPU.

`F.linear` on CPU runs MKL's sgemm, which re-lays out the weight on every call; at decode shapes
(32 rows x 576 x 1536, the 49152-wide head) that makes it 1.5-2.5x slower in float32 (1.3-1.9x
in bfloat16) than oneDNN's matmul on a weight packed once into its blocked layout
(bench/tts_engine.py measures both). The packed copy is rebuilt when the weight changes (another
tensor, or an in-place update: its version counter moves), so a model trained between engine
calls stays right; with autograd recording, the plain `F.linear` runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DTYPES = (torch.float32, torch.bfloat16)


def available(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether this build and device can run packed linears of this dtype."""
    return (torch.device(device).type == "cpu" and dtype in DTYPES
            and torch.backends.mkldnn.is_available())


class PackedLinear(nn.Linear):
    """A plain nn.Linear whose no-grad forward multiplies by a oneDNN-packed copy of its weight.

    Made by `pack_linears`, which swaps the class of existing modules (parameters, hooks and
    peft's references stay as they are); `unpack_linears` swaps it back."""

    _packed: torch.Tensor | None = None
    _packed_key: tuple | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (x.dtype != w.dtype or x.device.type != "cpu"
                or (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))):
            return F.linear(x, w, self.bias)
        key = (w.data_ptr(), w._version, w.dtype, tuple(w.shape))
        if key != self._packed_key:
            # the batch-size hint picks the blocked layout; any row count is right with it
            self._packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), 32)
            self._packed_key = key
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")


def pack_linears(model: nn.Module) -> int:
    """Swap every plain nn.Linear of `model` (not subclasses: bitsandbytes' 4-bit layers stay)
    whose weight is float32 or bfloat16 on CPU to PackedLinear; returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear and available(module.weight.device, module.weight.dtype):
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
