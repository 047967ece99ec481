"""ttx's C decode-attention kernel (ttx.engines.attention) computes softmax(q K^T scale) V over the
real columns, as torch's attention does, on the cache's own strided views."""

from __future__ import annotations

import math

import pytest
import torch

from ttx.engines import attention

pytestmark = pytest.mark.skipif(not attention.available(64, 3),
                                reason="no C compiler with AVX2/OpenMP, or a CPU without AVX2")


def _reference(query, keys, values, real, scale):
    """float64 softmax attention with the query heads of a K/V head grouped (GQA)."""
    rows, heads, d = query.shape
    kv = keys.shape[1]
    q = query.double().reshape(rows, kv, heads // kv, d)
    keys, values = (t.double().masked_fill(~real[:, None, :, None], 0) for t in (keys, values))
    scores = q @ keys.transpose(-1, -2) * scale
    scores = scores.masked_fill(~real[:, None, None, :], -math.inf)
    return (scores.softmax(-1) @ values).reshape(rows, heads, d)


def _case(rows, heads, kv, d, cols, g, room=70):
    """query as the fused forward slices it (heads of a [q | k | v] row), K/V as views of a cache
    buffer with room on both sides (NaN there, as in uninitialised memory), left padding per
    row and a hole in the middle of one row (prefix reuse joins two padded parts)."""
    qkv = torch.randn(rows, 1, heads + 2 * kv, d, generator=g)
    query = qkv[:, :, :heads].transpose(1, 2)[:, :, 0]
    buffers = [torch.full((rows, kv, cols + room, d), math.nan) for _ in range(2)]
    keys, values = (b[:, :, 5:5 + cols] for b in buffers)
    real = torch.ones(rows, cols, dtype=torch.bool)
    for r in range(rows):
        real[r, :r % max(cols, 1)] = False             # left padding
    if cols > 12:
        real[0, 4:9] = False                           # a hole
    real[:, -1] = True                                 # the token being decoded
    keys.copy_(torch.randn(keys.shape, generator=g) * 2)
    values.copy_(torch.randn(values.shape, generator=g))
    keys.transpose(1, 2)[~real] = math.nan             # padding K/V may hold anything
    values.transpose(1, 2)[~real] = math.nan
    return query, keys, values, real


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("heads,kv", [(9, 3), (4, 4), (8, 2)])
@pytest.mark.parametrize("cols", [1, 7, 8, 61, 300])
def test_kernel_equals_softmax_attention_over_the_real_columns(d, heads, kv, cols):
    g = torch.Generator().manual_seed(d + heads + cols)
    query, keys, values, real = _case(5, heads, kv, d, cols, g)
    got = attention.decode_attention(query, keys, values, real, d ** -0.5)
    want = _reference(query, keys, values, real, d ** -0.5)
    assert got.shape == (5, heads, d) and got.dtype == torch.float32
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=2e-6)


def test_kernel_matches_torch_attention_of_the_fused_forward_on_long_peaked_scores():
    """Scores spread over ~60 (softmax weights down to e^-60, below float's exp range for some):
    the kernel's exponential stays within rounding of torch's."""
    g = torch.Generator().manual_seed(7)
    query, keys, values, real = _case(4, 9, 3, 64, 517, g)
    keys.mul_(4)
    got = attention.decode_attention(query, keys, values, real, 0.125)
    want = _reference(query, keys, values, real, 0.125)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=2e-6)


def test_bad_shapes_and_dtypes_are_refused():
    g = torch.Generator().manual_seed(0)
    query, keys, values, real = _case(2, 9, 3, 64, 10, g)
    with pytest.raises(ValueError, match="do not fit"):
        attention.decode_attention(query, keys, values, real[:, :-1], 0.125)
    with pytest.raises(ValueError, match="do not fit"):
        attention.decode_attention(query.double(), keys, values, real, 0.125)
    assert not attention.available(80, 3) and not attention.available(64, 17)
