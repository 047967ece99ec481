"""ttx.engines.kv.GrowingLayer against plain tensor surgery on the same K/V."""

from __future__ import annotations

import torch

from ttx.engines.kv import GrowingLayer


def test_row_selection_and_trimming_in_place_equal_plain_indexing(nan_for_uninitialized):
    """Appends, rows leaving (select_rows), stale left padding dropped (trim_left) and more
    appends give the K/V that torch.cat and indexing give, with no regrow in between."""
    g = torch.Generator().manual_seed(0)
    layer, keys, values = GrowingLayer(), None, None

    def append(rows: int, tokens: int):
        nonlocal keys, values
        k = torch.randn(rows, 3, tokens, 8, generator=g)
        v = torch.randn(rows, 3, tokens, 8, generator=g)
        layer.update(k, v)
        keys = k if keys is None else torch.cat([keys, k], dim=2)
        values = v if values is None else torch.cat([values, v], dim=2)

    append(6, 5)
    append(6, 1)
    buffer = layer._kb.tensor
    keep = [0, 2, 3, 5]
    layer.select_rows(keep)
    keys, values = keys[keep], values[keep]
    layer.trim_left(2)
    keys, values = keys[:, :, 2:], values[:, :, 2:]
    for _ in range(3):
        append(len(keep), 1)
    assert layer._kb.tensor is buffer                      # moved in place, not regrown
    assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)
    assert layer.get_seq_length() == keys.shape[2]
    layer.select_rows([1])                                 # and after a regrow, still right
    keys, values = keys[[1]], values[[1]]
    append(1, 200)
    assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)


def test_filling_holes_moves_only_rows_past_the_new_size():
    from ttx.engines.hf import _fill_holes

    assert _fill_holes([0, 1, 2, 4, 5]) == [0, 1, 2, 5, 4]   # rows 5, 4 fill hole 3
    assert _fill_holes([1, 2, 3]) == [3, 1, 2]
    assert _fill_holes([0, 1]) == [0, 1]
    assert _fill_holes([]) == []
    g = torch.Generator().manual_seed(1)
    layer = GrowingLayer()
    k, v = torch.randn(6, 2, 4, 8, generator=g), torch.randn(6, 2, 4, 8, generator=g)
    layer.update(k, v)
    order = _fill_holes([1, 3, 4, 5])
    layer.select_rows(order)
    assert torch.equal(layer.keys, k[order]) and torch.equal(layer.values, v[order])


def test_reserve_widens_the_window_and_leaves_the_new_columns_to_the_caller(nan_for_uninitialized):
    """What the decode attention kernel relies on: reserve() gives views one column wider (the
    earlier K/V kept, across a regrow too) whose last column, once written, is the cache's."""
    g = torch.Generator().manual_seed(1)
    layer = GrowingLayer()
    k, v = torch.randn(4, 3, 7, 8, generator=g), torch.randn(4, 3, 7, 8, generator=g)
    layer.update(k, v)
    for step in range(100):                                # regrows on the way
        nk, nv = torch.randn(4, 3, 1, 8, generator=g), torch.randn(4, 3, 1, 8, generator=g)
        keys, values = layer.reserve(nk, nv)
        assert keys.shape[2] == 8 + step and torch.equal(keys[:, :, :-1], k)
        assert torch.equal(values[:, :, :-1], v)
        keys[:, :, -1:], values[:, :, -1:] = nk, nv
        k, v = torch.cat([k, nk], dim=2), torch.cat([v, nv], dim=2)
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)


def test_repeated_rows_equal_repeat_interleave_and_fill_to_their_limit_without_a_regrow(
        nan_for_uninitialized):
    """A prompt's K/V repeated for its traces (uneven counts, as DORA allocates) equals
    repeat_interleave; with the decode's limit known, appending up to it never regrows."""
    g = torch.Generator().manual_seed(2)
    layer = GrowingLayer()
    k, v = torch.randn(3, 2, 5, 8, generator=g), torch.randn(3, 2, 5, 8, generator=g)
    layer.update(k, v)
    counts = [2, 1, 3]
    layer.repeat_rows(counts, limit=5 + 90)
    k = k.repeat_interleave(torch.tensor(counts), dim=0)
    v = v.repeat_interleave(torch.tensor(counts), dim=0)
    assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)
    buffer = layer._kb.tensor
    for _ in range(90):
        nk, nv = torch.randn(6, 2, 1, 8, generator=g), torch.randn(6, 2, 1, 8, generator=g)
        layer.update(nk, nv)
        k, v = torch.cat([k, nk], dim=2), torch.cat([v, nv], dim=2)
    assert layer._kb.tensor is buffer and buffer.shape[2] == 95      # sized once, exactly
    assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)
    layer.update(nk, nv)                                   # past the limit: regrows, still right
    assert torch.equal(layer.keys, torch.cat([k, nk], dim=2))
