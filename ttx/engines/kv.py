"""A K/V cache layer that grows in place: appending a decoded token writes into spare room of a
buffer instead of concatenating the whole cache (transformers' DynamicLayer does torch.cat every
step, which copies every layer's K/V once per token: quadratic in the trace's length).

`keys`/`values` read as views of the filled part, so transformers' attention and ttx's row
surgery (repeat, select, merge, trim: ttx.engines.hf) see plain tensors; assigning them (the
surgery) makes the given tensor the buffer, and the next append regrows it with room to spare.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

_ROOM = 64          # tokens of room a regrown buffer keeps beyond twice its length


def _length(t) -> int:
    return 0 if t is None or t.dim() < 3 else t.shape[-2]


class GrowingLayer(DynamicLayer):
    def __init__(self, **kwargs):
        self._k = self._v = None
        self._nk = self._nv = 0
        super().__init__(**kwargs)

    @property
    def keys(self):
        return None if self._k is None else self._k[:, :, :self._nk]

    @keys.setter
    def keys(self, value):
        self._k, self._nk = value, _length(value)

    @property
    def values(self):
        return None if self._v is None else self._v[:, :, :self._nv]

    @values.setter
    def values(self, value):
        self._v, self._nv = value, _length(value)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new, n = key_states.shape[-2], self._nk
        if n == 0 or n + new > _length(self._k) or n + new > _length(self._v):
            room = 2 * (n + new) + _ROOM
            k = key_states.new_empty((*key_states.shape[:2], room, key_states.shape[-1]))
            v = value_states.new_empty((*value_states.shape[:2], room, value_states.shape[-1]))
            if n:
                k[:, :, :n] = self._k[:, :, :n]
                v[:, :, :n] = self._v[:, :, :n]
            self._k, self._v = k, v
        self._k[:, :, n:n + new] = key_states
        self._v[:, :, n:n + new] = value_states
        self._nk = self._nv = n + new
        return self.keys, self.values


def growing(cache) -> None:
    """Swap a fresh DynamicCache's plain attention layers for GrowingLayer (others stay)."""
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer
                    for layer in cache.layers]
