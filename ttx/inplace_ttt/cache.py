"""The fast-weight state rides in the KV cache layer of its decoder layer.

A converted layer's cache layer gets the FastWeightState as `ttt_state`, and its class gains the
batch surgery for it, so whatever repeats rows (cache.batch_repeat_interleave), drops rows
(batch_select_indices, reorder_cache), or does either through ttx's hf engine (batch_rows), or
stacks two batches (batch_concat, called by the engine when prompts join a running batch) keeps
each row's fast weight with its keys and values.
"""

from __future__ import annotations

import torch

from ttx.inplace_ttt.layer import FastWeightState

_CLASSES: dict[type, type] = {}


class FastWeightCacheMethods:
    """Methods given to a subclass of each converted layer's cache layer class (see below).

    They call the KV layer class through `self._kv_class`, because the subclass is built with
    type() on the layer's own class so an existing layer object can switch to it in place.
    """

    def _map_state(self, fn) -> None:
        s = getattr(self, "ttt_state", None)
        if s is not None:
            self.ttt_state = FastWeightState(fill=fn(s.fill), x=fn(s.x), z=fn(s.z),
                                             delta=None if s.delta is None else fn(s.delta))

    def batch_rows(self, pick) -> None:
        """Apply a batch-axis operation (repeat, select rows) to the state: ttx's hf engine
        calls this for keys/values and every other per-row state alike."""
        self._map_state(pick)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._kv_class.batch_repeat_interleave(self, repeats)
        self._map_state(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._kv_class.batch_select_indices(self, indices)
        self._map_state(lambda t: t[indices.to(t.device)])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._kv_class.reorder_cache(self, beam_idx)
        self._map_state(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def reset(self) -> None:
        self._kv_class.reset(self)
        self.ttt_state = None

    def crop(self, tokens_to_remove: int) -> None:
        s = self.ttt_state
        if tokens_to_remove and s is not None:
            if bool((s.fill < abs(tokens_to_remove)).any()):
                raise ValueError("In-Place TTT cache: cannot crop past a fast-weight update")
            s.fill = s.fill - abs(tokens_to_remove)
        self._kv_class.crop(self, tokens_to_remove)

    def batch_concat(self, other) -> None:
        """Append `other`'s rows after this layer's rows (keys/values are the caller's job)."""
        a, b = self.ttt_state, getattr(other, "ttt_state", None)
        if a is None and b is None:
            return
        if a is None or b is None:
            raise ValueError("In-Place TTT cache: cannot merge a batch without fast-weight state")
        width = max(a.x.shape[1], b.x.shape[1])

        def pad(t):   # left-aligned buffers: pad on the right, the slots past `fill` are unused
            return torch.cat([t, t.new_zeros(t.shape[0], width - t.shape[1], t.shape[2])], dim=1)

        delta = None
        if a.delta is not None or b.delta is not None:
            like = a.delta if a.delta is not None else b.delta
            da = a.delta if a.delta is not None else like.new_zeros(len(a.fill), *like.shape[1:])
            db = b.delta if b.delta is not None else like.new_zeros(len(b.fill), *like.shape[1:])
            delta = torch.cat([da, db])
        self.ttt_state = FastWeightState(fill=torch.cat([a.fill, b.fill]),
                                         x=torch.cat([pad(a.x), pad(b.x)]),
                                         z=torch.cat([pad(a.z), pad(b.z)]), delta=delta)


def fast_weight_layer(cache, layer_idx: int):
    """The cache layer for `layer_idx`, turned into a fast-weight carrier on first use."""
    while len(cache.layers) <= layer_idx:
        if getattr(cache, "layer_class_to_replicate", None) is None:
            raise ValueError(f"cache has no layer {layer_idx} for the In-Place TTT state")
        cache.layers.append(cache.layer_class_to_replicate())
    layer = cache.layers[layer_idx]
    if getattr(layer, "_kv_class", None) is None:
        base = type(layer)
        if base not in _CLASSES:
            methods = {k: v for k, v in vars(FastWeightCacheMethods).items()
                       if callable(v) and not k.startswith("__")}
            # _layer_type None: never registered in transformers' layer-type mapping
            _CLASSES[base] = type(f"FastWeight{base.__name__}", (base,),
                                  {**methods, "_kv_class": base, "_layer_type": None})
        layer.__class__ = _CLASSES[base]
        layer.ttt_state = None
    return layer
