"""A K/V cache layer that grows in place: appending a decoded token writes into spare room of a
buffer instead of concatenating the whole cache (transformers' DynamicLayer does torch.cat every
step, which copies every layer's K/V once per token: quadratic in the trace's length).

`keys`/`values` read as views of the live window of the buffer (rows [0, rows), columns
[start, end)), so transformers' attention and ttx's row surgery (repeat, merge: ttx.engines.hf)
see plain tensors; assigning them makes the given tensor the buffer, and the next append regrows
it with room to spare. The two operations of every decode step that a batch change needs work
inside the buffer: `select_rows` (finished traces leave) moves kept rows into the freed ones,
and `trim_left` (leading padding no row attends to any more) moves the window's start, so
neither is followed by a regrow (before, each copied the whole cache twice: the selection, then
the regrow of the next append).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

_ROOM = 64          # tokens of room a regrown buffer keeps beyond twice its length


class _Buffer:
    """One tensor [rows, heads, room, dim] and its live window: rows [0, rows), columns
    [start, end)."""

    def __init__(self, tensor=None):
        self.tensor = tensor
        self.limit = None               # the most columns the window will hold, where known
        live = tensor is not None and tensor.dim() >= 3
        self.rows = tensor.shape[0] if live else 0
        self.start, self.end = 0, (tensor.shape[-2] if live else 0)

    def view(self):
        if self.tensor is None or self.tensor.dim() < 3:
            return self.tensor
        return self.tensor[:self.rows, :, self.start:self.end]

    def append(self, states: torch.Tensor) -> None:
        self.extend(states)
        self.tensor[:self.rows, :, self.end - states.shape[-2]:self.end] = states

    def extend(self, states: torch.Tensor) -> None:
        """Widen the window by `states`' columns, regrowing the buffer if it has no room; the new
        columns are left for the caller to write."""
        new = states.shape[-2]
        if self.end == 0 or self.end + new > self.tensor.shape[-2] or states.shape[0] != self.rows:
            # a fresh buffer: the live window at column 0 and room for twice as much
            n = self.end - self.start
            grown = states.new_empty((states.shape[0], states.shape[1], self._room(n + new),
                                      states.shape[-1]))
            if n:
                grown[:, :, :n] = self.view()
            self.tensor, self.rows, self.start, self.end = grown, states.shape[0], 0, n
        self.end += new

    def _room(self, columns: int) -> int:
        """Columns of a regrown buffer: twice the window plus _ROOM, or the window's known limit
        where that is at most twice as much (no regrow left before the end, a bounded waste)."""
        double = 2 * columns + _ROOM
        if self.limit is not None and columns <= self.limit <= 2 * double:
            return self.limit
        return double

    def repeat(self, counts: list[int], limit: int | None = None) -> None:
        """Row i becomes counts[i] rows, written once into a buffer with the room the next append
        would regrow to (a plain repeat, then that regrow, copied each row's K/V twice); `limit`
        the most columns the window will hold (its prompt and every token to decode)."""
        live = self.view()
        cols = live.shape[-2]
        self.limit = limit
        grown = live.new_empty((sum(counts), live.shape[1], self._room(cols + 1),
                                live.shape[-1]))
        first = 0
        for i, count in enumerate(counts):
            grown[first:first + count, :, :cols] = live[i:i + 1]
            first += count
        self.tensor, self.rows, self.start, self.end = grown, first, 0, cols

    def select(self, keep: list[int]) -> None:
        live = slice(self.start, self.end)
        for j, i in enumerate(keep):
            if i != j:
                self.tensor[j, :, live] = self.tensor[i, :, live]
        self.rows = len(keep)

    def trim(self, columns: int) -> None:
        self.start = min(self.start + columns, self.end)


class GrowingLayer(DynamicLayer):
    def __init__(self, **kwargs):
        self._kb, self._vb = _Buffer(), _Buffer()
        super().__init__(**kwargs)

    @property
    def keys(self):
        return self._kb.view()

    @keys.setter
    def keys(self, value):
        self._kb = _Buffer(value)

    @property
    def values(self):
        return self._vb.view()

    @values.setter
    def values(self, value):
        self._vb = _Buffer(value)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._kb.append(key_states)
        self._vb.append(value_states)
        return self.keys, self.values

    def reserve(self, key_states: torch.Tensor, value_states: torch.Tensor):
        """`update` without the write: the returned views' last columns are for the caller to
        fill with these states (ttx's decode attention kernel writes them while it reads the
        rest: ttx.engines.cpu.kernels)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._kb.extend(key_states)
        self._vb.extend(value_states)
        return self.keys, self.values

    def repeat_rows(self, counts: list[int], limit: int | None = None) -> None:
        """Row i becomes counts[i] consecutive rows (repeat_interleave, in a buffer with room for
        `limit` columns where the caller knows it)."""
        self._kb.repeat(counts, limit)
        self._vb.repeat(counts, limit)

    def select_rows(self, keep: list[int]) -> None:
        """Row j becomes row keep[j], moved in place one row at a time: right when no row is
        overwritten before it is read, as for ascending rows (keep[j] >= j) or rows that move
        only into rows nobody keeps (ttx.engines.hf._fill_holes)."""
        self._kb.select(keep)
        self._vb.select(keep)

    def trim_left(self, columns: int) -> None:
        """Forget the window's first `columns` columns."""
        self._kb.trim(columns)
        self._vb.trim(columns)


def growing(cache) -> None:
    """Swap a fresh DynamicCache's plain attention layers for GrowingLayer (others stay)."""
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer
                    for layer in cache.layers]
