"""ttx's C kernels (ttx.engines.cpu.kernels) compute what transformers' and torch's ops compute: decode
attention softmax(q K^T scale) V over the real columns on the cache's own strided views, RMSNorm
after the residual add, SiLU(gate) * up, the rotary embedding."""

from __future__ import annotations

import math

import pytest
import torch

from ttx.engines.cpu import kernels

pytestmark = pytest.mark.skipif(not kernels.serves_attention(64, 3),
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
    got = kernels.decode_attention(query, keys, values, real, d ** -0.5)
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
    got = kernels.decode_attention(query, keys, values, real, 0.125)
    want = _reference(query, keys, values, real, 0.125)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=2e-6)


def test_bad_shapes_and_dtypes_are_refused():
    g = torch.Generator().manual_seed(0)
    query, keys, values, real = _case(2, 9, 3, 64, 10, g)
    with pytest.raises(ValueError, match="do not fit"):
        kernels.decode_attention(query, keys, values, real[:, :-1], 0.125)
    with pytest.raises(ValueError, match="do not fit"):
        kernels.decode_attention(query.double(), keys, values, real, 0.125)
    assert not kernels.serves_attention(80, 3) and not kernels.serves_attention(64, 17)


def test_the_decoded_tokens_k_v_are_written_into_the_last_column_first():
    g = torch.Generator().manual_seed(3)
    query, keys, values, real = _case(6, 9, 3, 64, 40, g)
    k_new, v_new = torch.randn(6, 3, 64, generator=g), torch.randn(6, 3, 64, generator=g)
    keys[:, :, -1], values[:, :, -1] = math.nan, math.nan       # the room reserve() leaves open
    got = kernels.decode_attention(query, keys, values, real, 0.125, (k_new, v_new))
    assert torch.equal(keys[:, :, -1], k_new) and torch.equal(values[:, :, -1], v_new)
    torch.testing.assert_close(got.double(), _reference(query, keys, values, real, 0.125),
                               rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("prefix,cols", [(57, 120), (8, 9), (3, 40), (200, 201)])
def test_rows_reading_a_shared_prefix_from_one_row_get_the_same_result_to_the_bit(d, prefix, cols):
    """Three prompts x traces whose K/V agree on the prompt's columns: each row read with its
    prompt's first row as the source of those columns gives exactly the output of reading its
    own copy, and the copies are really not read (NaN in them would show)."""
    g = torch.Generator().manual_seed(d + prefix)
    counts = [3, 1, 4]
    rows = sum(counts)
    query, keys, values, real = _case(rows, 9, 3, d, cols, g)
    src = torch.tensor([first for first, n in zip([0, 3, 4], counts) for _ in range(n)])
    for t in (keys, values):
        t[:, :, :prefix] = t[src, :, :prefix]          # the traces' equal copies of the prompt
    real[:, :prefix] = real[src, :prefix]
    k_new, v_new = torch.randn(rows, 3, d, generator=g), torch.randn(rows, 3, d, generator=g)
    want = kernels.decode_attention(query, keys, values, real, d ** -0.5, (k_new, v_new))
    shared = min(prefix, cols - 1) // 8 * 8                # what the kernel reads from src
    copies = src != torch.arange(rows)
    saved = keys[copies, :, :shared].clone(), values[copies, :, :shared].clone()
    keys[copies, :, :shared] = math.nan
    values[copies, :, :shared] = math.nan
    got = kernels.decode_attention(query, keys, values, real, d ** -0.5, (k_new, v_new),
                                   shared=(src, torch.full((rows,), prefix)))
    assert torch.equal(got, want)
    keys[copies, :, :shared], values[copies, :, :shared] = saved
    outside = torch.tensor([rows + 5] * rows)            # a source row out of range: its own
    assert torch.equal(kernels.decode_attention(query, keys, values, real, d ** -0.5,
                                                shared=(outside, torch.full((rows,), prefix))),
                       want)
    with pytest.raises(ValueError, match="shared rows"):
        kernels.decode_attention(query, keys, values, real, 0.125,
                                 shared=(src.int(), torch.full((rows,), prefix)))


@pytest.mark.parametrize("shape", [(32, 1, 576), (3, 17, 64), (2, 5, 13)])
def test_add_rms_norm_is_the_residual_add_then_transformers_rms_norm(shape):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    g = torch.Generator().manual_seed(shape[-1])
    norm = LlamaRMSNorm(shape[-1], eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(shape[-1], generator=g) + 0.5)
    h, delta = torch.randn(shape, generator=g) * 3, torch.randn(shape, generator=g)
    want_h = h + delta
    with torch.no_grad():
        want = norm(want_h)
    got = kernels.add_rms_norm(h, delta, norm.weight.detach(), 1e-5)
    assert torch.equal(h, want_h)                          # the add is exact, and in place
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(kernels.add_rms_norm(h, None, norm.weight.detach(), 1e-5), want,
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="add_rms_norm"):
        kernels.add_rms_norm(h, delta, norm.weight.detach()[:-1], 1e-5)


@pytest.mark.parametrize("inter", [1536, 13])
def test_silu_mul_is_silu_of_the_gate_times_up(inter):
    g = torch.Generator().manual_seed(inter)
    gate_up = torch.randn(4, 3, 2 * inter, generator=g) * 6          # far into both tails
    gate_up[0, 0, :4] = torch.tensor([0.0, -0.0, 90.0, -90.0])
    gate, up = gate_up.split(inter, dim=-1)
    want = torch.nn.functional.silu(gate) * up
    torch.testing.assert_close(kernels.silu_mul(gate_up), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="silu_mul"):
        kernels.silu_mul(gate_up[..., :-1])


@pytest.mark.parametrize("q", [1, 7])
def test_rotary_is_transformers_apply_rotary_pos_emb_bit_for_bit(q):
    """x cos + rotate_half(x) sin for the q and k heads of a [q | k | v] row, v untouched."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    g = torch.Generator().manual_seed(q)
    heads, kv, d = 9, 3, 64
    qkv = torch.randn(5, q, heads + 2 * kv, d, generator=g)
    angle = torch.rand(5, q, d, generator=g) * 40
    cos, sin = angle.cos(), angle.sin()
    want_q, want_k = apply_rotary_pos_emb(qkv[:, :, :heads].transpose(1, 2),
                                          qkv[:, :, heads:heads + kv].transpose(1, 2), cos, sin)
    signed = torch.cat((-sin[..., :d // 2], sin[..., d // 2:]), -1)   # as the fused forward passes it
    got = qkv.clone()
    kernels.rotary_(got, heads + kv, cos, signed)
    assert torch.equal(got[:, :, :heads].transpose(1, 2), want_q)
    assert torch.equal(got[:, :, heads:heads + kv].transpose(1, 2), want_k)
    assert torch.equal(got[:, :, heads + kv:], qkv[:, :, heads + kv:])
